"""The demo's time per part (and its learned-model figures), with the load average.

.venv/bin/python bench/bench_demo.py [--workspace DIR]   # writes bench/results/demo.txt
.venv/bin/python bench/bench_demo.py --pipeline-only --out /tmp/demo.txt   # samples + pipeline only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument(
        "--summary", type=Path, help="Report a finished demo's demo_summary.json instead of running one."
    )
    parser.add_argument(
        "--pipeline-only",
        action="store_true",
        help="Run the demo with --no-curate --no-train (samples and pipeline: a smoke run).",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo.txt")
    args = parser.parse_args()
    ws = args.workspace or Path(tempfile.mkdtemp()) / "demo"
    load_before, wall = os.getloadavg(), None
    if args.summary is None:
        start = time.perf_counter()
        parts = ["--no-curate", "--no-train"] if args.pipeline_only else []
        subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "demo", "-w", str(ws), *parts],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
    summary = json.loads((args.summary or ws / "demo_summary.json").read_text())
    lines = [
        f"demo on {len(os.sched_getaffinity(0))} cores; load average before {load_before[0]:.1f}, "
        f"at its end {summary['load_average'][0]:.1f}"
    ]
    lines += [f"  {name:<32} {sec:7.1f} s" for name, sec in summary["seconds"].items()]
    lines += [f"  {'total (parts)':<32} {sum(summary['seconds'].values()):7.1f} s"]
    lines += [f"  {'wall (with start-up)':<32} {wall:7.1f} s"] if wall is not None else []
    if "vae" in summary:  # a demo run with training (not --pipeline-only)
        lines += [
            f"vae held-out PSNR {summary['vae']['val_psnr']:.1f} dB; prompts nearest their own clip's colour "
            f"{summary['prompts_nearest_own']}/{len(summary['prompts'])}"
        ]
        lines += [
            f"  {s}: val loss {' -> '.join(f'{v:.3f}' for v in d['val_loss'])}"
            for s, d in summary["stages"].items()
        ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
