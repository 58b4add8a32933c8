"""Timestep respacing: run a diffusion on a subset of the original timesteps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Pick which of ``num_timesteps`` original steps to keep.

    ``section_counts`` is either ``"ddimN"`` (the evenly strided set ``range(0, T, stride)`` that
    has exactly N elements) or a list / comma string of counts: the timeline is cut into that many
    equal sections and each section is sampled evenly with its count of steps.  Positions are
    accumulated as floats and rounded with Python's round-half-to-even, so 5 steps over 1000 give
    {0, 250, 500, 749, 999}.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot make exactly {wanted} equally strided steps out of {num_timesteps}")
        section_counts = [int(part) for part in section_counts.split(",")]

    n_sections = len(section_counts)
    base, extra = divmod(num_timesteps, n_sections)
    kept: list[int] = []
    start = 0
    for i, count in enumerate(section_counts):
        size = base + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    return set(kept)


class SpacedDiffusion(GaussianDiffusion):
    """A :class:`GaussianDiffusion` over a subset ``use_timesteps`` of a base beta schedule.

    The respaced betas keep the cumulative products: beta'_i = 1 - abar(t_i) / abar(t_{i-1}).
    The network always sees the *original* timesteps: ``timestep_map[i]``.
    """

    def __init__(self, use_timesteps: Iterable[int], betas: np.ndarray, **kwargs: Any) -> None:
        self.use_timesteps = set(use_timesteps)
        base = GaussianDiffusion(betas, **kwargs)
        self.original_num_steps = base.num_timesteps
        timestep_map: list[int] = []
        new_betas: list[float] = []
        prev_abar = 1.0
        for i, abar in enumerate(base.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1.0 - abar / prev_abar)
                prev_abar = abar
                timestep_map.append(i)
        self.timestep_map = np.array(timestep_map, dtype=np.int64)
        super().__init__(np.array(new_betas, dtype=np.float64), **kwargs)

    def _model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.timestep_map).to(t.device)[t].to(t.dtype)
