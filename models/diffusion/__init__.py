"""Diffusion schedulers: Open-Sora 1.0's IDDPM and a DPM-Solver++ fast sampler."""

from .dpm_solver import DPMSolver
from .gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    MeanType,
    VarType,
    discretized_gaussian_log_likelihood,
    get_named_beta_schedule,
    mean_flat,
    normal_kl,
)
from .iddpm import IDDPM, combine_cfg, forward_with_cfg, prepare_cfg_inputs
from .respace import SpacedDiffusion, space_timesteps

__all__ = [
    "DPMSolver",
    "GaussianDiffusion",
    "IDDPM",
    "LossType",
    "MeanType",
    "SpacedDiffusion",
    "VarType",
    "combine_cfg",
    "discretized_gaussian_log_likelihood",
    "forward_with_cfg",
    "get_named_beta_schedule",
    "mean_flat",
    "normal_kl",
    "prepare_cfg_inputs",
    "space_timesteps",
]


def build_scheduler(
    sampler: str = "iddpm", num_sampling_steps: int | None = None, **kwargs
) -> IDDPM | DPMSolver:
    """``"iddpm"`` (default 100 steps) or ``"dpm-solver"`` (default 20 steps)."""
    name = sampler.lower().replace("_", "-")
    if name == "iddpm":
        return IDDPM(num_sampling_steps=num_sampling_steps or 100, **kwargs)
    if name in ("dpm-solver", "dpmsolver", "dpm-solver++"):
        return DPMSolver(num_sampling_steps=num_sampling_steps or 20, **kwargs)
    raise ValueError(f"unknown sampler {sampler!r} (use 'iddpm' or 'dpm-solver')")
