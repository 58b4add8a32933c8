"""Fast sampling: DPM-Solver++ (multistep, order 2) on the IDDPM discrete schedule.

The solver is diffusers' ``DPMSolverMultistepScheduler`` fed with our float64 beta table, so the
network sees integer timesteps of the original 1000-step schedule (as with IDDPM).  Only the eps
channels of the output are used; the learned variance is not needed by the ODE solver.
"""

from __future__ import annotations

from typing import Any

import torch

from .gaussian_diffusion import get_named_beta_schedule
from .iddpm import TextEncoderLike, forward_with_cfg, prepare_cfg_inputs


class DPMSolver:
    """DPM-Solver++(2M) text-to-video sampler with classifier-free guidance.

    ``sample`` has the same signature as :meth:`IDDPM.sample`. ``cfg_channels`` works as there.
    """

    def __init__(
        self,
        num_sampling_steps: int = 20,
        cfg_scale: float = 4.0,
        cfg_channels: int | None = None,
        noise_schedule: str = "linear",
        diffusion_steps: int = 1000,
        solver_order: int = 2,
        algorithm_type: str = "dpmsolver++",
    ) -> None:
        self.num_sampling_steps = num_sampling_steps
        self.cfg_scale = cfg_scale
        self.cfg_channels = cfg_channels
        self.betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
        self.scheduler_config = dict(
            num_train_timesteps=diffusion_steps,
            trained_betas=self.betas,
            solver_order=solver_order,
            algorithm_type=algorithm_type,
            prediction_type="epsilon",
            lower_order_final=True,
            final_sigmas_type="zero",
            timestep_spacing="linspace",
        )

    def make_scheduler(self) -> Any:
        """A fresh diffusers ``DPMSolverMultistepScheduler`` with the timesteps set (it keeps per-run state)."""
        from diffusers import DPMSolverMultistepScheduler  # imported lazily: IDDPM alone needs no diffusers

        scheduler = DPMSolverMultistepScheduler(**self.scheduler_config)
        scheduler.set_timesteps(self.num_sampling_steps)
        return scheduler

    def solve(
        self,
        eps_fn: Any,
        x: torch.Tensor,
        progress: bool = False,
    ) -> torch.Tensor:
        """Integrate from x = x_T to x_0 with ``eps_fn(x, t) -> eps`` (t: (B,) int64 original steps)."""
        scheduler = self.make_scheduler()
        timesteps = scheduler.timesteps
        iterator: Any = timesteps
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(timesteps, desc="dpm-solver")
        for t in iterator:
            t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            with torch.no_grad():
                eps = eps_fn(x, t_batch)
            x = scheduler.step(eps, t, x).prev_sample
        return x

    def sample(
        self,
        model: Any,
        text_encoder: TextEncoderLike,
        z_size: tuple[int, ...],
        prompts: list[str],
        device: torch.device | str,
        additional_args: dict[str, Any] | None = None,
        mask: torch.Tensor | None = None,
        progress: bool = True,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample (n, *z_size) latents for ``prompts``; deterministic given z (one randn draw)."""
        if mask is not None:
            raise NotImplementedError("frame-mask conditioning is only implemented for the IDDPM sampler")
        n = len(prompts)
        if z is None:
            z = torch.randn(n, *z_size, device=device)
        z = z.to(device)
        model_args = prepare_cfg_inputs(text_encoder, prompts, additional_args)
        channels = z.shape[1]

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = forward_with_cfg(
                model,
                torch.cat([x, x], dim=0),
                torch.cat([t, t], dim=0),
                cfg_scale=self.cfg_scale,
                cfg_channels=self.cfg_channels,
                **model_args,
            )
            return out[:n, :channels]

        return self.solve(eps_fn, z, progress=progress)
