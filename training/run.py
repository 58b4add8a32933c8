"""Start or resume a run: config, process group, run folder, frozen selection, then the trainer.

runs/<run>/
    train_config.json    the resolved config (`--resume` reads it back)
    run.json             launch facts: world size, process-group backend, device, versions, command
    data/rows.parquet    the frozen selection; data/card.json (name, version, recipe, row count)
    data/features.parquet  with data.source=features: each row's cached features (shard, index, bucket)
    train.log  metrics.jsonl  tensorboard/  samples/step-N/*.mp4 (train.sample_every)
    checkpoints/step-N/  checkpoints/latest  {model,ema}.safetensors  config.json  (see checkpoint.py)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import selection
from .config import ConfigError, RunConfig, from_dict
from .dist import DistContext, broadcast_object, init_distributed
from .errors import RunError
from .inputs import inputs_for
from .metrics import setup_logging

CONFIG_FILE = "train_config.json"
LOCK_FILE = ".train.lock"
T = TypeVar("T")


@dataclass
class Source:
    """Where new runs take their rows from: a curated set (`NAME[@vN]`) or SQL over the views."""

    workspace: Path
    set_spec: str | None = None
    select: str | None = None

    def read(self):
        if self.set_spec is not None:
            return selection.read_set(self.workspace, self.set_spec)
        return selection.run_select(self.workspace, self.select or "")


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only; every rank gets its result or raises its (user-facing) error."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except (ConfigError, RunError, selection.SelectionError, FileExistsError, FileNotFoundError) as err:
            error = err
    result, error = broadcast_object((result, error), ctx)
    if error is not None:
        raise error
    return result


def resolve_auto(cfg: RunConfig, cuda: bool) -> RunConfig:
    """Fill the `auto` choices for this machine: ZeRO-2 + HybridAdam + bf16 on CUDA, DDP + AdamW + fp32 on CPU."""
    t, o = cfg.train, cfg.optim
    if t.plugin == "auto":
        t.plugin = "zero2" if cuda else "ddp"
    if t.precision == "auto":
        t.precision = "bf16" if cuda else "fp32"
    if o.name == "auto":
        o.name = "hybrid_adam" if cuda else "adamw"
    if t.backend == "auto":
        t.backend = "nccl" if cuda else "gloo"
    if t.plugin == "zero2" and (not cuda or t.precision != "bf16"):
        raise ConfigError("train.plugin=zero2 needs CUDA and train.precision=bf16 (use plugin=ddp on CPU)")
    return cfg


def default_run_dir(stage: str) -> Path:
    return Path("runs") / f"{stage}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def read_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} not found (is {run_dir} a training run folder?)")
    return from_dict(json.loads(path.read_text()))


def _prepare_new_run(run_dir: Path, cfg: RunConfig, source: Source, ctx: DistContext) -> None:
    if (run_dir / CONFIG_FILE).exists():
        raise FileExistsError(
            f"{run_dir} already holds a run: pass --resume to continue it, or a new --run-dir"
        )
    table, card = source.read()
    table = selection.normalise(table)
    rows, inputs = table.to_pylist(), inputs_for(cfg)
    inputs.before_freeze(rows)
    run_dir.mkdir(parents=True, exist_ok=True)
    selection.freeze(run_dir, table, card)
    inputs.after_freeze(run_dir, source.workspace, cfg, rows)
    _write_json(run_dir / CONFIG_FILE, cfg.to_dict())
    from models.run_models import record_models

    from .build import encoder_paths

    vae, t5 = encoder_paths(cfg)
    record_models(run_dir, vae, t5, tiny_random_text_encoder=cfg.model.tiny)  # sample --ckpt RUN reads it


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# what `--resume` may change: when to stop, checkpoint, validate, sample and log; how many loader
# processes decode. Anything else (optimizer, data, model, seed, precision) would not continue
# the run exactly, so it is refused.
RESUME_CHANGEABLE = (
    "train.max_steps",
    "train.epochs",
    "train.ckpt_every",
    "train.keep_last",
    "train.val_every",
    "train.sample_every",
    "train.progress",
    "train.optim_shard_mb",
    "data.num_workers",
    "data.worker_start",
)


def lock_run_dir(run_dir: Path) -> Any:
    """Hold an exclusive lock on the run folder for this process's life (rank 0 only): a second
    `train` into the same folder stops at once instead of interleaving steps and checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise RunError(
            f"{run_dir} is in use by another train run (pid {owner}); wait for it to end or give another --run-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "stdit_args":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def release_run_dir(handle: Any, run_dir: Path) -> None:
    """Drop the lock; a folder this launch created and left without a run (a refused selection)
    is removed again, so a failed launch leaves nothing behind."""
    try:
        if not (run_dir / CONFIG_FILE).exists() and {p.name for p in run_dir.iterdir()} == {LOCK_FILE}:
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()
    finally:
        handle.close()


def check_same_run(
    saved: RunConfig, given: RunConfig | None, source: Source | None, card: dict[str, Any]
) -> None:
    """`--resume` with the original command line: it must describe the run being resumed."""
    if given is not None:
        old, new = _flatten(saved.to_dict()), _flatten(given.to_dict())
        diff = [k for k in old if k not in RESUME_CHANGEABLE and old[k] != new.get(k)]
        if diff:
            shown = "; ".join(f"{k}: run has {old[k]!r}, command gives {new.get(k)!r}" for k in diff)
            raise ConfigError(
                f"--resume: the command changes {len(diff)} setting(s) that an exact resume needs unchanged "
                f"({shown}); only {', '.join(RESUME_CHANGEABLE)} may change"
            )
    if source is not None:
        name, version = selection.parse_set_spec(source.set_spec) if source.set_spec else ("select", None)
        same = card.get("name") == name and version in (None, card.get("version"))
        if source.select is not None:
            same = card.get("name") == "select" and card.get("recipe") == source.select
        if not same:
            raise ConfigError(
                f"--resume: the run was frozen from {card.get('name')}, not from this --set/--select"
            )


def launch(
    cfg: RunConfig | None,
    *,
    run_dir: Path | None,
    source: Source | None,
    resume: bool,
    resume_overrides: dict[str, Any] | None = None,
) -> Path:
    """Everything `python cli.py train` does after parsing its options. Returns the run folder.

    `resume`: continue the run in `run_dir` from its last checkpoint; with no run there yet, start
    it (so one command line can be relaunched as is, e.g. by a job scheduler). A `cfg`/`source`
    given with `resume` must match the run's own (only max_steps and ckpt_every may change).
    """
    cuda = torch.cuda.is_available()
    if cfg is not None:
        cfg = resolve_auto(cfg, cuda)
    if resume and run_dir is None:
        raise ConfigError("--resume needs --run-dir (the run to continue)")
    resume = resume and (Path(run_dir) / CONFIG_FILE).is_file()
    if resume:
        saved = read_run_config(run_dir)
        check_same_run(saved, cfg, source, selection.load_frozen(run_dir)[1])
        base = (cfg or saved).to_dict()  # a command line given differs only in RESUME_CHANGEABLE
        train = {**base["train"], **(resume_overrides or {})}  # e.g. a larger --max-steps
        cfg = from_dict({**base, "train": train})  # validated before anything is written
    elif cfg is None or source is None:
        raise ConfigError("give --stage and one of --set NAME[@vN] / --select SQL (no run to resume there)")
    ctx = init_distributed(cfg.train.backend)
    run_dir = Path(broadcast_object(str(run_dir or default_run_dir(cfg.stage)), ctx))
    held: list[Any] = []  # the run folder's lock, held until this function returns
    try:
        on_main(ctx, lambda: held.append(lock_run_dir(run_dir)))
        if resume:
            on_main(ctx, lambda: _write_json(run_dir / CONFIG_FILE, cfg.to_dict()))
        else:
            on_main(ctx, lambda: _prepare_new_run(run_dir, cfg, source, ctx))
        setup_logging(run_dir, ctx.rank)
        rows, card = selection.load_frozen(run_dir)
        if resume:
            on_main(ctx, lambda: _check_inputs(run_dir, cfg, rows))
        on_main(ctx, lambda: _record_launch(run_dir / "run.json", _run_facts(ctx, card, resume)))

        from .trainer import Trainer

        trainer = Trainer(cfg, run_dir, ctx, rows, resume=resume)
        out = trainer.fit()
        if cfg.train.clip_losses:  # the data-centric loop: per-clip loss back into the manifest
            from .clip_loss import write_clip_losses

            write_clip_losses(trainer, source.workspace if source is not None else card.get("workspace"))
        return out
    finally:
        for handle in held:
            release_run_dir(handle, run_dir)


def _check_inputs(run_dir: Path, cfg: RunConfig, rows: list[dict[str, Any]]) -> None:
    """Before a resume builds anything: the media files, or the feature shards, are all there."""
    inputs_for(cfg).before_resume(run_dir, cfg, rows)


def _record_launch(path: Path, facts: dict[str, Any]) -> None:
    """run.json lists every launch of the run (the first start, then each --resume)."""
    launches = json.loads(path.read_text())["launches"] if path.is_file() else []
    _write_json(path, {"launches": [*launches, facts]})


def _run_facts(ctx: DistContext, card: dict[str, Any], resume: bool) -> dict[str, Any]:
    import colossalai

    return {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "resumed": resume,
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "device": str(ctx.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "colossalai": colossalai.__version__,
        "command": sys.argv,
        "set": {k: card.get(k) for k in ("name", "version", "row_count")},
    }
