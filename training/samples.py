"""Periodic samples during a run: `train.sample_prompts` → `<run>/samples/step-<N>/<i>-<prompt>.mp4`.

Drawn by rank 0 from the current weights with IDDPM (`train.sample_steps`, guidance scale
`train.sample_cfg_scale`) at the stage's largest frame count and smallest resolution, square,
seeded by `train.seed`: the same noise at every step, so the files show what training changed.
Torch's global RNG is forked around the sampling, so a run with samples trains exactly like one
without. The step's folder is written under a temp name and renamed when complete.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from .build import Models, set_latent_shape
from .config import RunConfig

FPS = 8  # 24 fps sources at Open-Sora's frame interval of 3


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


@torch.no_grad()
def write_samples(
    models: Models, cfg: RunConfig, run_dir: Path, step: int, device: torch.device
) -> list[Path]:
    from models.diffusion import IDDPM
    from models.pipeline import TextToVideoPipeline, save_mp4

    assert models.vae is not None and models.text_encoder is not None, "load the encoders first"
    t, stdit = cfg.train, models.stdit
    factor = models.vae.spatial_factor
    size = min(cfg.data.resolution) // factor
    previous, was_training = tuple(stdit.input_size), stdit.training
    set_latent_shape(stdit, (max(cfg.data.num_frames), size, size))
    scheduler = IDDPM(num_sampling_steps=t.sample_steps, cfg_scale=t.sample_cfg_scale)
    final = Path(run_dir) / "samples" / f"step-{step:08d}"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            pipeline = TextToVideoPipeline(stdit, models.vae, models.text_encoder, scheduler, device=device)
            videos = pipeline(t.sample_prompts, seed=t.seed, progress=False)
        names = [f"{i:02d}-{slug(p)}.mp4" for i, p in enumerate(t.sample_prompts)]
        for name, frames in zip(names, videos, strict=True):
            save_mp4(frames, tmp / name, fps=FPS)
    finally:
        stdit.train(was_training)
        set_latent_shape(stdit, previous)
    if final.exists():  # a resumed run that reached this step again
        shutil.rmtree(final)
    os.replace(tmp, final)
    return [final / name for name in names]
