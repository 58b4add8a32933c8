"""Open-Sora 1.0's ``IDDPM`` scheduler: improved-DDPM training loss and CFG ancestral sampling."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..guidance import combine_cfg
from .gaussian_diffusion import LossType, MeanType, NoiseSource, VarType, get_named_beta_schedule
from .respace import SpacedDiffusion, space_timesteps


class TextEncoderLike(Protocol):
    """What the samplers need from a text encoder."""

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]: ...  # {"y": (B,1,L,C), "mask": (B,L)}

    def null(self, n: int) -> torch.Tensor: ...  # (n,1,L,C) null caption


def forward_with_cfg(
    model: Any,
    x: torch.Tensor,
    timestep: torch.Tensor,
    y: torch.Tensor,
    cfg_scale: float,
    mask: torch.Tensor | None = None,
    cfg_channels: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Run ``model`` once on [first half of x ; the same again] with y = [cond ; null] and guide.

    Uses the model's own ``forward_with_cfg`` when it has one (STDiT does), else :func:`combine_cfg`.
    """
    own = getattr(model, "forward_with_cfg", None)
    if own is not None:
        out = own(x, timestep, y, cfg_scale, mask=mask, cfg_channels=cfg_channels, **kwargs)
    else:
        half = x[: len(x) // 2]
        out = model(torch.cat([half, half], dim=0), timestep, y, mask=mask, **kwargs)
        out = combine_cfg(out, cfg_scale, eps_channels=x.shape[1], cfg_channels=cfg_channels)
    return out.to(x.dtype)


def prepare_cfg_inputs(
    text_encoder: TextEncoderLike, prompts: list[str], additional_args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Encode prompts and append the null caption: y = [cond ; null]; the token mask stays (n, L)."""
    model_args = dict(text_encoder.encode(prompts))
    y_null = text_encoder.null(len(prompts)).to(model_args["y"])
    model_args["y"] = torch.cat([model_args["y"], y_null], dim=0)
    if additional_args is not None:
        model_args.update(additional_args)
    return model_args


class IDDPM(SpacedDiffusion):
    """Improved DDPM as configured by Open-Sora 1.0 (argument names and defaults kept).

    ``IDDPM(timestep_respacing="")`` is the training scheduler (all 1000 steps);
    ``IDDPM(num_sampling_steps=100, cfg_scale=7.0)`` is the 1.0 inference scheduler.
    ``cfg_channels``: None guides all eps channels; 3 reproduces 1.0 samples bit for bit.
    """

    def __init__(
        self,
        num_sampling_steps: int | None = None,
        timestep_respacing: str | list[int] | None = None,
        noise_schedule: str = "linear",
        use_kl: bool = False,
        sigma_small: bool = False,
        predict_xstart: bool = False,
        learn_sigma: bool = True,
        rescale_learned_sigmas: bool = False,
        diffusion_steps: int = 1000,
        cfg_scale: float = 4.0,
        cfg_channels: int | None = None,
    ) -> None:
        if num_sampling_steps is not None:
            if timestep_respacing not in (None, ""):
                raise ValueError("give num_sampling_steps or timestep_respacing, not both")
            timestep_respacing = str(num_sampling_steps)
        if timestep_respacing is None or timestep_respacing == "":
            timestep_respacing = [diffusion_steps]

        if use_kl:
            loss_type = LossType.RESCALED_KL
        elif rescale_learned_sigmas:
            loss_type = LossType.RESCALED_MSE
        else:
            loss_type = LossType.MSE
        if learn_sigma:
            var_type = VarType.LEARNED_RANGE
        else:
            var_type = VarType.FIXED_SMALL if sigma_small else VarType.FIXED_LARGE

        betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
        super().__init__(
            use_timesteps=space_timesteps(diffusion_steps, timestep_respacing),
            betas=betas,
            mean_type=MeanType.START_X if predict_xstart else MeanType.EPSILON,
            var_type=var_type,
            loss_type=loss_type,
        )
        self.cfg_scale = cfg_scale
        self.cfg_channels = cfg_channels

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
        step_noise: NoiseSource = None,
        x_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text-conditioned ancestral sampling with classifier-free guidance.

        Draws ``z = randn(n, *z_size)`` (unless ``z`` is given), runs the chain on [z ; z] with
        y = [cond ; null], and returns the first half (n, *z_size).  RNG order matches Open-Sora 1.0
        (z first, then one ``randn_like`` per step), so a fixed seed gives the same samples.
        ``mask`` (n, T) with ``x_cond`` (n, C, T, H, W): keep the frames whose mask is 0 from ``x_cond``.
        """
        n = len(prompts)
        if z is None:
            z = torch.randn(n, *z_size, device=device)
        z = torch.cat([z, z], dim=0).to(device)
        model_args = prepare_cfg_inputs(text_encoder, prompts, additional_args)

        def guided(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return forward_with_cfg(
                model, x, t, cfg_scale=self.cfg_scale, cfg_channels=self.cfg_channels, **kwargs
            )

        samples = self.p_sample_loop(
            guided,
            z.shape,
            noise=z,
            clip_denoised=False,
            model_kwargs=model_args,
            device=device,
            progress=progress,
            step_noise=step_noise,
            frame_mask=mask,
            x_cond=x_cond,
        )
        return samples[:n]
