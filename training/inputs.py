"""What a step trains on, one class per `data.source`, chosen once per run by `inputs_for`.

- `PixelInputs` ("pixels", as Open-Sora 1.0): clips decoded from their spans (a random window and
  flip for training, the centred window for validation) and encoded in the step by the frozen VAE
  (a posterior sample; its mode without a generator) and T5;
- `CachedInputs` ("features"): what `datakit features` stored for each clip (posterior mean and
  std, caption embedding and mask); the latents are drawn from the posterior with the step's
  generator, in the VAE's own layout (`features.sample_latents`). No decoding, VAE or T5 in the step.

Both give datasets whose items carry a bucket, and `encode(batch, generator)` -> (latents x0,
{"y", "mask"}). The class methods are what a launch checks and freezes before anything is built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from . import features, selection
from .build import Models
from .config import RunConfig
from .data import ClipDataset

log = logging.getLogger("training")
Rows = Sequence[dict[str, Any]]


class Inputs:
    encoders_in_step: ClassVar[bool]  # the VAE and T5 are built with the STDiT (else on first use)
    tensors: ClassVar[tuple[str, ...]]  # what `data.collate` stacks
    left_out: ClassVar[str]  # why a training clip has no bucket (for the run log)

    def __init__(self, cfg: RunConfig, run_dir: Path, models: Models, device: torch.device):
        self.cfg, self.run_dir, self.models, self.device = cfg, Path(run_dir), models, device

    # --- a launch, before the trainer is built
    @classmethod
    def before_freeze(cls, rows: Rows) -> None:
        """A new run, before its rows are frozen: fail fast on inputs that are missing."""

    @classmethod
    def after_freeze(cls, run_dir: Path, workspace: Path, cfg: RunConfig, rows: Rows) -> None:
        """A new run, its rows frozen: freeze whatever else it reads beside them."""

    @classmethod
    def before_resume(cls, run_dir: Path, cfg: RunConfig, rows: Rows) -> None:
        """A resume, before anything is built: everything the run reads is still there."""
        raise NotImplementedError

    # --- the run
    def dataset(self, rows: Rows, train: bool) -> Dataset:
        """`train=False`: the validation slice (no random window or flip)."""
        raise NotImplementedError

    def encode(self, batch: dict[str, Any], gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        """A batch -> (fp32 latents on the device, caption conditioning {"y", "mask"})."""
        raise NotImplementedError

    def log_left_out(self, dataset: Dataset) -> None:
        """What the run log says about clips this source leaves out (beyond the count)."""


class PixelInputs(Inputs):
    encoders_in_step = True
    tensors = ("video",)
    left_out = "too short"

    @classmethod
    def before_freeze(cls, rows: Rows) -> None:
        selection.check_files(rows)

    @classmethod
    def before_resume(cls, run_dir: Path, cfg: RunConfig, rows: Rows) -> None:
        selection.check_files(rows)

    def dataset(self, rows: Rows, train: bool) -> ClipDataset:
        return ClipDataset(rows, self.cfg.data, self.models.size_multiple, self.cfg.train.seed, train=train)

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        video = batch["video"].to(self.device, non_blocking=True)
        x0 = self.models.vae.encode(video, sample_posterior=gen is not None, generator=gen).float()
        text = self.models.text_encoder.encode(batch["caption"])
        return x0, {"y": text["y"], "mask": text["mask"]}


class CachedInputs(Inputs):
    encoders_in_step = False
    tensors = ("mean", "std", "y", "mask")
    left_out = "too short or not encoded by the features stage"

    def __init__(self, cfg: RunConfig, run_dir: Path, models: Models, device: torch.device):
        super().__init__(cfg, run_dir, models, device)
        self.index = features.load_index(self.run_dir)

    @classmethod
    def after_freeze(cls, run_dir: Path, workspace: Path, cfg: RunConfig, rows: Rows) -> None:
        features.freeze_index(run_dir, workspace, cfg, rows)  # checks the shards it names

    @classmethod
    def before_resume(cls, run_dir: Path, cfg: RunConfig, rows: Rows) -> None:
        features.check_shards(list(features.load_index(run_dir).values()))

    def dataset(self, rows: Rows, train: bool) -> features.FeatureDataset:
        return features.FeatureDataset(rows, self.index)  # one centred, unflipped window per clip

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        mean, std = (batch[k].to(self.device, non_blocking=True) for k in ("mean", "std"))
        x0 = features.sample_latents(mean, std, gen).float()
        return x0, {"y": batch["y"].to(self.device)[:, None], "mask": batch["mask"].to(self.device)}

    def log_left_out(self, dataset: features.FeatureDataset) -> None:
        for clip_id, why in dataset.excluded()[:5]:
            log.warning("no features for clip %s: %s", clip_id, why)
        log.info("reading the feature cache: one centred window per clip, no flips, no VAE/T5 in the step")


def inputs_for(cfg: RunConfig) -> type[Inputs]:
    return {"pixels": PixelInputs, "features": CachedInputs}[cfg.data.source]
