"""Process group set-up for torchrun (or a single plain process) and small collective helpers.

We initialise the process group ourselves instead of `colossalai.launch_from_torch`: that
function ignores its `backend` argument and takes the accelerator's (nccl with CUDA, gloo
without), so the backend a run asked for would not be the one it got. The Booster only needs an
initialised default group. The backend actually in use is logged and recorded in the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto") -> DistContext:
    """Join torchrun's group (RANK/WORLD_SIZE/MASTER_ADDR set) or make a group of one."""
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise RuntimeError("train.backend=nccl needs CUDA; use gloo on CPU")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, init_method="env://")
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    actual = dist.get_backend()
    if actual != backend:
        raise RuntimeError(f"asked for a {backend} process group, got {actual}")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, actual)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's value on every rank (a small picklable object)."""
    if ctx.world_size == 1:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def all_mean(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise mean over ranks (float64 on the wire)."""
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(t)
        t /= ctx.world_size
    return t.tolist()


def all_true(flag: bool, ctx: DistContext) -> bool:
    """True when the flag holds on every rank."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
