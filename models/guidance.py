"""Classifier-free guidance math, shared by STDiT's own CFG forward and the samplers."""

from __future__ import annotations

import torch


def combine_cfg(
    model_output: torch.Tensor, cfg_scale: float, eps_channels: int, cfg_channels: int | None = None
) -> torch.Tensor:
    """Classifier-free guidance on a batch laid out as [cond ; uncond].

    Guidance ``uncond + s * (cond - uncond)`` is applied to the first ``cfg_channels`` channels
    (default: all ``eps_channels`` eps channels) and written to both halves; the other channels
    (e.g. the learned variance) of each half are kept as the model produced them.
    ``cfg_channels=3`` reproduces Open-Sora 1.0, which guided only 3 of the 4 latent channels.
    """
    n_guided = eps_channels if cfg_channels is None else cfg_channels
    guided, rest = model_output[:, :n_guided], model_output[:, n_guided:]
    cond, uncond = guided.chunk(2, dim=0)
    half = uncond + cfg_scale * (cond - uncond)
    return torch.cat([torch.cat([half, half], dim=0), rest], dim=1)
