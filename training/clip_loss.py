"""Per-clip training loss, written back into the manifest at the end of a run (`train_losses`).

Each training clip's mean IDDPM loss at the run's `val_timesteps`, with its centred window, the
VAE posterior mode, the caption kept, and noise seeded by the clip id: the same clip gets the
same draws in every run, so runs are comparable and `clips.train_loss` ranks what a model
cannot fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("training")


def _seed(clip_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(clip_id.encode(), digest_size=8).digest(), "little") >> 1


@torch.no_grad()
def clip_losses(trainer) -> list[dict[str, Any]]:
    """(clip_id, train_loss) of every training clip, one clip at a time (rank 0 only)."""
    from .bucket_sampler import BucketBatchSampler
    from .build import load_encoders, set_latent_shape
    from .data import ClipDataset
    from .selection import load_frozen, split_validation

    cfg, dev, stdit = trainer.cfg, trainer.ctx.device, trainer.models.stdit
    if not trainer.inputs.encoders_in_step:  # the feature cache: the VAE and T5 are built on first use
        load_encoders(trainer.models, cfg, dev, trainer.compute_dtype)
    rows, _ = split_validation(load_frozen(trainer.run_dir)[0], cfg.data)
    data = ClipDataset(rows, cfg.data, trainer.models.size_multiple, cfg.train.seed, train=False)
    sampler = BucketBatchSampler(data.buckets, 1, world_size=1, rank=0, shuffle=False)
    stdit.eval()
    out = []
    for keys in sampler:
        for key in keys:
            item = data[key]
            video = item["video"][None].to(dev)
            x0 = trainer.models.vae.encode(video, sample_posterior=False).float()
            text = trainer.models.text_encoder.encode([item["caption"]])
            set_latent_shape(stdit, tuple(x0.shape[2:]))
            gen = torch.Generator(dev).manual_seed(_seed(item["clip_id"]))
            losses = []
            for ts in cfg.train.val_timesteps:
                t = torch.full((1,), ts, device=dev, dtype=torch.long)
                noise = torch.randn(x0.shape, generator=gen, device=dev)
                kwargs = {
                    "y": text["y"],
                    "mask": text["mask"],
                    "force_drop_ids": torch.zeros(1, dtype=torch.long, device=dev),
                }
                losses.append(
                    float(
                        trainer.diffusion.training_losses(stdit, x0, t, model_kwargs=kwargs, noise=noise)[
                            "loss"
                        ].mean()
                    )
                )
            out.append({"clip_id": item["clip_id"], "train_loss": sum(losses) / len(losses)})
    stdit.train()
    return out


def write_clip_losses(trainer, workspace: Path | None) -> int:
    """Measure and append the run's per-clip losses to `train_losses` in `workspace` (rank 0)."""
    if workspace is None or not trainer.ctx.is_main:
        return 0
    try:
        return _write(trainer, Path(workspace))
    except Exception as err:  # the run itself is done and saved: say so, never fail it here
        log.warning("per-clip losses not written to %s: %s: %s", workspace, type(err).__name__, err)
        return 0


def _write(trainer, workspace: Path) -> int:
    from datakit.workspace import Workspace

    run = str(trainer.run_dir)
    step = int(trainer.state.step)
    key = hashlib.blake2b(
        f"{Path(run).resolve().name}:{trainer.cfg.stage}:{step}".encode(), digest_size=6
    ).hexdigest()
    now, ts = time.time(), json.dumps(list(trainer.cfg.train.val_timesteps))
    rows = [
        {
            "row_id": f"{key}:{r['clip_id']}",
            "clip_id": r["clip_id"],
            "status": "ok",
            "model_key": key,
            "run": run,
            "stage": trainer.cfg.stage,
            "step": step,
            "train_loss": r["train_loss"],
            "timesteps": ts,
            "scored_at": now,
        }
        for r in clip_losses(trainer)
    ]
    Workspace(Path(workspace), create=False).write("train_losses", rows)
    log.info(
        "wrote the training loss of %d clips to %s (train_losses, model key %s)", len(rows), workspace, key
    )
    return len(rows)
