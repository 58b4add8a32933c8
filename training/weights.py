"""fp32 views of the trained weights, and the EMA kept from them.

Under TorchDDP the fp32 weights are the parameters themselves. Under ZeRO-2 with bf16 the
parameters are bf16 working copies and the fp32 master weights live in the optimizer, split
across ranks as flat, padded shards. `WeightView` hides the difference: `shards()` gives this
rank's fp32 tensors (whole parameters under DDP), `gather()` reassembles full tensors for a
checkpoint (a collective under ZeRO), `load_full()` puts full fp32 tensors back (resume).
The EMA (fp32, as Open-Sora) is kept shard by shard from the master weights; it starts from the
fp32 weights taken before boosting (`fp32_snapshot`), not from masters made of bf16 copies.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class WeightView:
    def __init__(self, module: nn.Module, optimizer: object | None = None, zero: bool = False):
        self.module, self.optimizer, self.zero = module, optimizer, zero
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}

    def _world(self) -> tuple[int, int]:
        return (dist.get_world_size(), dist.get_rank()) if self.zero else (1, 0)

    def shards(self) -> dict[str, torch.Tensor]:
        if not self.zero:
            return self.params
        master = self.optimizer.get_working_to_master_map()
        return {n: master[id(p)] for n, p in self.params.items()}

    def split(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's piece of a full tensor, laid out as the optimizer shards it."""
        world, rank = self._world()
        if world == 1:
            return full
        flat = full.reshape(-1)
        pad = self.optimizer.get_param_padding_size(self.params[name])
        if pad:
            flat = torch.nn.functional.pad(flat, [0, pad])
        return flat.chunk(world)[rank]

    @torch.no_grad()
    def gather(self, shards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full fp32 CPU tensors from per-rank shards (every rank must call it under ZeRO)."""
        world, _ = self._world()
        out = {}
        for name, shard in shards.items():
            param = self.params[name]
            if world == 1:
                full = shard
            else:
                flat = torch.empty(shard.numel() * world, dtype=shard.dtype, device=shard.device)
                dist.all_gather_into_tensor(flat, shard.contiguous())
                full = flat[: param.numel()].view(param.shape)
            out[name] = full.detach().float().cpu().clone()
        return out

    @torch.no_grad()
    def load_full(self, full: dict[str, torch.Tensor]) -> None:
        """Set the trained weights (and, under ZeRO, the fp32 masters) from full fp32 tensors."""
        shards = self.shards()
        for name, param in self.params.items():
            param.copy_(full[name].to(param.device, param.dtype))
            if self.zero:
                shards[name].copy_(self.split(name, full[name]).to(shards[name].device, shards[name].dtype))


def fp32_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 CPU copies of the trainable weights, taken before the Booster casts them to bf16."""
    return {n: p.detach().float().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def start_from(view: WeightView, fp32: dict[str, torch.Tensor]) -> EMA:
    """Set the (ZeRO master) weights from the fp32 snapshot and start the EMA from it: under ZeRO
    the masters were made from the bf16 working copies, which lose the low bits of every weight."""
    if view.zero:
        view.load_full(fp32)
    return EMA.from_full(fp32, view)


def grads_finite(optimizer: object) -> bool:
    """ZeRO-2: whether this rank's reduced gradient slices are all finite, read before `step()`
    (ColossalAI 0.5.0's bf16 path never checks: it would step on NaN and report the norm after)."""
    grads = [
        g
        for store in optimizer.pg_to_grad_store.values()
        for group in range(optimizer.num_param_groups)
        for g in store.get_working_grads_by_group_id(group)
    ]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class EMA:
    """fp32 exponential moving average: ema = decay * ema + (1 - decay) * weights, per shard."""

    def __init__(self, shards: dict[str, torch.Tensor]):
        self.shadow = {n: t.detach().float().clone() for n, t in shards.items()}

    @classmethod
    def from_full(cls, full: dict[str, torch.Tensor], view: WeightView) -> EMA:
        """This rank's EMA shards from full fp32 tensors (laid out as the optimizer shards them)."""
        shards = view.shards()
        return cls({n: view.split(n, full[n]).to(shards[n].device, torch.float32) for n in shards})

    @torch.no_grad()
    def update(self, shards: dict[str, torch.Tensor], decay: float) -> None:
        for name, value in shards.items():
            self.shadow[name].mul_(decay).add_(value.detach().float(), alpha=1 - decay)

    def load_full(self, full: dict[str, torch.Tensor], view: WeightView) -> None:
        for name, shadow in self.shadow.items():
            shadow.copy_(view.split(name, full[name]).to(shadow.device, torch.float32))
