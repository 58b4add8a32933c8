"""`models.json` of a run folder: the VAE and text encoder it was trained with, so the run alone
is enough to sample from it (`python cli.py sample --ckpt RUN`).

Local model folders are stored relative to the run folder (a run moved together with its models,
e.g. a whole `runs/` tree, keeps working); hub ids are stored as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODELS_FILE = "models.json"


def _store(path: str, run_dir: Path) -> dict[str, str]:
    p = Path(path).expanduser()
    if p.exists():
        return {"path": os.path.relpath(p.resolve(), Path(run_dir).resolve())}
    return {"hub": str(path)}


def record_models(run_dir: Path, vae: str, text_encoder: str, **extra: Any) -> Path:
    """Write RUN/models.json (`extra`: more JSON facts, e.g. that the models are tiny random ones)."""
    data = {"vae": _store(vae, run_dir), "text_encoder": _store(text_encoder, run_dir), **extra}
    out = Path(run_dir) / MODELS_FILE
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, out)
    return out


class MissingModelError(FileNotFoundError):
    pass


def run_models(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """{"vae": path or hub id, "text_encoder": ..., "local": bool} of a run; None when it has no
    models.json. A recorded local folder that is gone raises MissingModelError (one line)."""
    file = Path(run_dir) / MODELS_FILE
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in ("vae", "text_encoder")}
    local = True
    for key in ("vae", "text_encoder"):
        entry = data[key]
        if "path" in entry:
            path = (file.parent / entry["path"]).resolve()
            if not (path / "config.json").is_file():
                raise MissingModelError(
                    f"the run's {key.replace('_', ' ')} is missing: {path} (recorded in {file} as "
                    f"{entry['path']!r}, relative to the run folder); move it back or pass --{key.replace('_', '-')}"
                )
            out[key] = str(path)
        else:
            out[key], local = entry["hub"], False
    out["local"] = local
    return out
