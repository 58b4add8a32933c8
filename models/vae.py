"""Video VAE: Stable Diffusion's image ``AutoencoderKL`` applied frame by frame (Open-Sora 1.0)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

with warnings.catch_warnings():  # diffusers 0.29 warns about its own deprecated import path
    warnings.filterwarnings("ignore", message=".*Transformer2DModelOutput.*", category=FutureWarning)
    from diffusers.models import AutoencoderKL
    from diffusers.utils.torch_utils import randn_tensor

from .defaults import DEFAULT_VAE


class VideoAutoencoderKL(nn.Module):
    """Per-frame KL autoencoder for (B, 3, T, H, W) videos in [-1, 1].

    ``from_pretrained`` is a Hugging Face hub id or a local directory holding a diffusers
    ``AutoencoderKL`` (``config.json`` + weights).  Latents are ``scaling_factor`` times the
    posterior sample, shaped (B, 4, T, H/8, W/8).  ``micro_batch_size`` bounds how many frames go
    through the VAE at once (None: all frames of the batch together).
    """

    def __init__(
        self,
        from_pretrained: str = DEFAULT_VAE,
        micro_batch_size: int | None = None,
        scaling_factor: float | None = None,  # None: the model config's (0.18215 for SD's VAEs)
        subfolder: str | None = None,
        dtype: torch.dtype | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        super().__init__()
        kwargs = dict(cache_dir=cache_dir, local_files_only=local_files_only)
        if subfolder is not None:
            kwargs["subfolder"] = subfolder
        if dtype is not None:
            kwargs["torch_dtype"] = dtype
        self.module: AutoencoderKL = AutoencoderKL.from_pretrained(from_pretrained, **kwargs)
        self.module.eval().requires_grad_(False)
        self.out_channels = self.module.config.latent_channels
        # Spatial downsampling: one factor of 2 per down block after the first.
        self.spatial_factor = 2 ** (len(self.module.config.block_out_channels) - 1)
        self.patch_size = (1, self.spatial_factor, self.spatial_factor)
        self.micro_batch_size = micro_batch_size
        self.scaling_factor = (
            scaling_factor if scaling_factor is not None else self.module.config.scaling_factor
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _chunks(self, n: int) -> list[slice]:
        step = self.micro_batch_size or n
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    @staticmethod
    def _to_frames(x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B*T, C, H, W), frames of a video adjacent

    @staticmethod
    def _to_video(x: torch.Tensor, b: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        return x.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)

    def _frame_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(z | frame), unscaled, (B*T, 4, H/8, W/8) each, micro-batch by micro-batch."""
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, T, H, W), got {tuple(x.shape)}")
        frames = self._to_frames(x.to(self.device, self.dtype))
        dists = [self.module.encode(frames[sl]).latent_dist for sl in self._chunks(frames.shape[0])]
        return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])

    @torch.no_grad()
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] -> mean and std of the latent distribution, each
        (B, 4, T, H/8, W/8) and scaled like the latents."""
        mean, std = self._frame_posterior(x)
        b = x.shape[0]
        return self._to_video(mean, b) * self.scaling_factor, self._to_video(std, b) * self.scaling_factor

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 4, T, H/8, W/8) latents (posterior sample, or its mode).

        The noise is drawn once for all frames, so `micro_batch_size` does not change the sample.
        """
        z, std = self._frame_posterior(x)  # z: the mode (= mean)
        if sample_posterior:  # diffusers' randn_tensor accepts a CPU generator for a CUDA VAE
            z = z + std * randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return self._to_video(z * self.scaling_factor, x.shape[0])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 4, T, h, w) latents -> (B, 3, T, 8h, 8w) video, roughly in [-1, 1] (not clamped)."""
        if z.ndim != 5:
            raise ValueError(f"expected (B, C, T, H, W), got {tuple(z.shape)}")
        b = z.shape[0]
        frames = self._to_frames(z.to(self.device, self.dtype)) / self.scaling_factor
        out = [self.module.decode(frames[sl]).sample for sl in self._chunks(frames.shape[0])]
        return self._to_video(torch.cat(out), b)

    def get_latent_size(self, input_size: tuple[int, int, int] | list[int]) -> list[int]:
        """(T, H, W) of a video -> (T, H/8, W/8) of its latent; H and W must divide by 8."""
        latent = []
        for size, patch in zip(input_size, self.patch_size, strict=True):
            if size % patch:
                raise ValueError(f"input size {tuple(input_size)} is not divisible by {self.patch_size}")
            latent.append(size // patch)
        return latent
