"""Run logs: `metrics.jsonl` (one JSON object per optimizer step), TensorBoard events, `train.log`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("training")

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"
TB_SCALARS = ("loss", "lr", "grad_norm", "samples_per_s", "data_wait", "val_loss")  # as train/<name>


def setup_logging(run_dir: Path, rank: int) -> None:
    """Rank 0 logs INFO to the console and `train.log`; other ranks log warnings with their rank."""
    root = logging.getLogger("training")
    root.handlers.clear()
    root.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if rank == 0:
        file = logging.FileHandler(Path(run_dir) / "train.log")
        file.setFormatter(fmt)
        root.addHandler(file)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


class MetricsWriter:
    """Appends step records to metrics.jsonl (flushed per line) and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            self._truncate(resume_step)
        self.file = open(self.path, "a")
        from torch.utils.tensorboard import SummaryWriter

        # on resume, TensorBoard drops the earlier launch's events past the checkpoint (written again)
        purge = resume_step + 1 if resume_step is not None else None
        self.tb = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=purge)

    def _truncate(self, step: int) -> None:
        """On resume, drop records after the checkpoint (the resumed run writes them again)."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):  # a line cut by a kill
                continue
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key in TB_SCALARS:
            if record.get(key) is not None:
                self.tb.add_scalar(f"train/{key}", record[key], record["step"])
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()
