"""Training checkpoints: written to a temp folder, then renamed, so a kill never leaves half of one.

<run>/checkpoints/step-00000120/
    model.safetensors   fp32 weights (gathered ZeRO master weights)    } what `load_pretrained`
    ema.safetensors     fp32 EMA weights                               } and `sample` read
    config.json         STDiT constructor args
    optimizer/          optimizer state through the Booster, sharded (index + files of at most
                        `train.optim_shard_mb`; older checkpoints: one optimizer.bin)
    scheduler.bin       LR scheduler state (through the Booster)
    trainer_state.json  step, epoch, data position, counters
    rng/rank-<r>.pt     each rank's torch / numpy / python RNG states
<run>/checkpoints/latest -> step-00000120
<run>/{model,ema}.safetensors, <run>/config.json -> checkpoints/latest/... (so a run folder is a checkpoint)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dist import DistContext, barrier, broadcast_object

LATEST = "latest"
ROOT_LINKS = ("model.safetensors", "ema.safetensors", "config.json")
STATE_FILE = "trainer_state.json"
OPTIMIZER_DIR = "optimizer"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# ------------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------------ writing
def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def save_checkpoint(
    run_dir: Path,
    step: int,
    ctx: DistContext,
    *,
    booster: Any,
    optimizer: Any,
    scheduler: Any,
    model_weights: dict[str, torch.Tensor],
    ema_weights: dict[str, torch.Tensor],
    stdit_args: dict[str, Any],
    state: dict[str, Any],
    keep_last: int,
    optim_shard_mb: int = 1024,
) -> Path:
    """Every rank calls this (the optimizer save is collective under ZeRO). Returns the folder."""
    from models.checkpoint import save_weights

    root = Path(run_dir) / "checkpoints"
    final = root / step_dir_name(step)
    tmp = root / broadcast_object(f".tmp-{step_dir_name(step)}-{uuid.uuid4().hex[:8]}", ctx)
    if ctx.is_main:
        (tmp / "rng").mkdir(parents=True)
    barrier(ctx)
    # sharded: rank 0 writes the gathered state one file at a time (at most optim_shard_mb held)
    # instead of building the whole Adam state in memory first
    booster.save_optimizer(optimizer, str(tmp / OPTIMIZER_DIR), shard=True, size_per_shard=optim_shard_mb)
    booster.save_lr_scheduler(scheduler, str(tmp / "scheduler.bin"))
    torch.save(rng_state(), tmp / "rng" / f"rank-{ctx.rank}.pt")
    if ctx.is_main:
        meta = {"step": str(step)}
        # save_weights also writes config.json (the STDiT constructor args) beside the weights
        save_weights(model_weights, tmp / "model.safetensors", metadata=meta, config=stdit_args)
        save_weights(ema_weights, tmp / "ema.safetensors", metadata=meta, config=stdit_args)
        (tmp / STATE_FILE).write_text(
            json.dumps({**state, "step": step, "world_size": ctx.world_size}, indent=2)
        )
    barrier(ctx)
    if ctx.is_main:
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (a resumed run that reached it): replace
            shutil.rmtree(final)
        os.replace(tmp, final)
        _replace_symlink(root / LATEST, final.name)
        for name in ROOT_LINKS:
            link = Path(run_dir) / name
            if not link.is_symlink():
                _replace_symlink(link, f"checkpoints/{LATEST}/{name}")
        _fsync_dir(root)
        for old in sorted(root.glob("step-*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
    barrier(ctx)
    return final


# ------------------------------------------------------------------------------------ reading
def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (temp folders never count)."""
    root = Path(run_dir) / "checkpoints"
    link = root / LATEST
    if link.is_symlink() and (link.resolve() / STATE_FILE).is_file():
        return link.resolve()
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def optimizer_path(ckpt: Path) -> Path:
    """The sharded optimizer folder, or the single file of checkpoints written before it."""
    legacy = Path(ckpt) / "optimizer.bin"
    return legacy if legacy.is_file() else Path(ckpt) / OPTIMIZER_DIR


def load_optimizer(booster: Any, optimizer: Any, ckpt: Path) -> None:
    """Load the optimizer state through the Booster (sharded folder or a legacy single file)."""
    from colossalai.accelerator import CpuAccelerator, get_accelerator

    accelerator = get_accelerator()
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())  # the Booster's torch.load of its files warns
        warnings.simplefilter("ignore", FutureWarning)
        if isinstance(accelerator, CpuAccelerator):
            # 0.5.0's sharded loader ends with accelerator.synchronize(), which the CPU accelerator
            # refuses; on a CPU there is nothing to wait for
            accelerator.synchronize = lambda *args, **kwargs: None  # an instance attribute, removed after
            stack.callback(vars(accelerator).pop, "synchronize", None)
        booster.load_optimizer(optimizer, str(optimizer_path(ckpt)))


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE_FILE).read_text())


def load_weights(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / f"{name}.safetensors"), device="cpu")


def load_rng(ckpt: Path, rank: int) -> dict[str, Any] | None:
    path = ckpt / "rng" / f"rank-{rank}.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None
