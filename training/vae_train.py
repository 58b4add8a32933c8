"""The `vae` stage: train (or fine-tune) a diffusers `AutoencoderKL`, the class of sd-vae-ft-ema, on
the frames of a curated set, with a reconstruction + KL loss.

runs/<run>/
    vae/                 the trained AutoencoderKL (diffusers folder: config.json + weights)
    vae_config.json      the resolved VaeConfig
    data/rows.parquet    the frozen selection (as the STDiT stages)
    metrics.jsonl        {"step", "loss", "rec", "kl"} per step; {"step", "val_loss", "val_psnr"} at validation
    loss.png             the loss curves

STDiT stages take the result by run folder: `model.vae=runs/<run>` (see `vae_path`). The frames
are decoded once into memory (`frames_per_clip` per clip): sized for small sets and domains.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import selection
from .config import ConfigError, DataConfig

log = logging.getLogger("training")
VAE_DIR, VAE_CONFIG = "vae", "vae_config.json"


@dataclass
class VaeConfig:
    resolution: int = 64  # frames are resized to cover resolution², then centre-cropped
    frames_per_clip: int = 8  # evenly spaced frames decoded from each clip
    crop: int | None = (
        32  # train on random crops of this size (the model is convolutional); None: whole frames
    )
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 32])  # 3 levels: ×4
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    init_from: str | None = None  # a diffusers AutoencoderKL folder or a vae run to fine-tune
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    kl_weight: float = 1e-6
    val_fraction: float = 0.15  # held-out clips (by clip id, as the STDiT stages)
    val_every: int = 50
    permute_colours: bool = False  # augment: each sample's RGB channels in a random order (unseen colours)
    hue_rotate: bool = False  # augment: each sample's colours turned by a random angle about the grey axis
    # Scale equivariance (as EQ-VAE): the latent average-pooled 2x must decode to the frame pooled 2x,
    # with this weight; the latent's channel values, not fine patterns in it, then carry colour.
    equivariance: float = 0.0
    seed: int = 0


def vae_path(path: str | Path) -> str | Path:
    """A vae run folder -> its `vae/` model; anything else (hub id, diffusers folder) unchanged."""
    p = Path(path)
    return p / VAE_DIR if (p / VAE_CONFIG).is_file() and (p / VAE_DIR / "config.json").is_file() else path


def _frames(rows: list[dict[str, Any]], cfg: VaeConfig) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1]: `frames_per_clip` evenly spaced frames of each row."""
    from .data import decode_frames, resize_crop
    from .selection import media_path

    out = []
    for row in rows:
        path, is_cut = media_path(row, "source")
        start, end = int(row["start_frame"]), int(row["end_frame"])
        if path is None or end <= start:
            continue
        picks = np.linspace(start, end - 1, min(cfg.frames_per_clip, end - start)).round().astype(int)
        indices = sorted({int(i) - (start if is_cut else 0) for i in picks})
        out += [resize_crop(f, cfg.resolution, cfg.resolution) for f in decode_frames(path, indices)]
    if not out:
        raise ConfigError("the vae stage found no decodable frames in its rows")
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def build_vae(cfg: VaeConfig):
    from diffusers.models import AutoencoderKL

    if cfg.init_from:
        return AutoencoderKL.from_pretrained(str(vae_path(cfg.init_from)), local_files_only=True)
    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
    )
    with torch.no_grad():  # start from a nearly deterministic posterior (std e^-3): the decoder
        vae.quant_conv.bias[cfg.latent_channels :] = -6.0  # is not first drowned in sampling noise
    return vae


def hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1], each image's RGB turned by `angle[i]` radians about the grey axis
    (Rodrigues' rotation about (1, 1, 1)/√3): its hues move, its grey levels stay; clamped to [-1, 1]."""
    k = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    rot = torch.eye(3) + sin * k + (1 - cos) * (k @ k)
    return torch.einsum("nij,njhw->nihw", rot, x).clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale)."""
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def _losses(vae, x: torch.Tensor, sample: bool, equivariance: float = 0.0):
    """(reconstruction MSE [+ weighted equivariance MSE], KL per value, reconstruction)."""
    post = vae.encode(x).latent_dist
    z = post.sample() if sample else post.mode()
    rec = vae.decode(z).sample
    kl = post.kl().mean() / x[0].numel()  # per pixel value, as the reconstruction term
    mse = torch.nn.functional.mse_loss(rec, x)
    if equivariance:
        pool = torch.nn.functional.avg_pool2d
        mse = mse + equivariance * torch.nn.functional.mse_loss(vae.decode(pool(z, 2)).sample, pool(x, 2))
    return mse, kl, rec


@torch.no_grad()
def evaluate(vae, frames: torch.Tensor, cfg: VaeConfig) -> dict[str, float]:
    vae.eval()
    recs, mse, kl = [], 0.0, 0.0
    for i in range(0, len(frames), cfg.batch_size):
        x = frames[i : i + cfg.batch_size]
        r, k, rec = _losses(vae, x, sample=False)
        mse, kl, recs = mse + float(r) * len(x), kl + float(k) * len(x), [*recs, rec]
    vae.train()
    n = len(frames)
    return {"val_loss": (mse + cfg.kl_weight * kl) / n, "val_psnr": psnr(torch.cat(recs), frames)}


def train_vae(
    rows: list[dict[str, Any]], card: dict[str, Any], run_dir: Path, cfg: VaeConfig
) -> dict[str, Any]:
    """Train on `rows` (a set's rows), hold out a slice of clips for validation; returns the summary."""
    from .metrics import METRICS_FILE
    from .plots import loss_curve

    run_dir = Path(run_dir)
    if (run_dir / VAE_DIR / "config.json").is_file():  # a finished run: nothing to do
        return json.loads((run_dir / "vae_summary.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    table = selection.normalise(_table(rows))
    selection.freeze(run_dir, table, card)
    (run_dir / VAE_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    held_out = DataConfig(val_fraction=cfg.val_fraction, val_min_rows=4, val_max=64)  # the STDiT stages' rule
    train_rows, val_rows = selection.split_validation(table.to_pylist(), held_out)
    torch.manual_seed(cfg.seed)
    train_x, val_x = _frames(train_rows, cfg), _frames(val_rows, cfg) if val_rows else None
    vae = build_vae(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, records = time.time(), []
    with open(run_dir / METRICS_FILE, "w") as metrics:

        def write(record: dict[str, Any]) -> None:
            records.append(record)
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

        if val_x is not None:
            write({"step": 0, **evaluate(vae, val_x, cfg)})
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(0, len(train_x), (cfg.batch_size,), generator=gen)
            x = train_x[idx]
            if cfg.crop and cfg.crop < cfg.resolution:
                top, left = torch.randint(0, cfg.resolution - cfg.crop + 1, (2,), generator=gen).tolist()
                x = x[..., top : top + cfg.crop, left : left + cfg.crop]
            x = torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x, x.flip(-1))
            if cfg.permute_colours:
                order = torch.argsort(torch.rand(len(x), 3, generator=gen), dim=1)
                x = torch.gather(x, 1, order[:, :, None, None].expand_as(x))
            if cfg.hue_rotate:
                x = hue_rotate(x, torch.rand(len(x), generator=gen) * (2 * math.pi))
            rec, kl, _ = _losses(vae, x, sample=True, equivariance=cfg.equivariance)
            loss = rec + cfg.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            write({"step": step, "loss": float(loss), "rec": float(rec), "kl": float(kl)})
            if val_x is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                write({"step": step, **evaluate(vae, val_x, cfg)})
                log.info(
                    "vae step %d: loss %.4f, val_loss %.4f, val PSNR %.1f dB",
                    step,
                    float(loss),
                    records[-1]["val_loss"],
                    records[-1]["val_psnr"],
                )
    vals = [r for r in records if "val_loss" in r]
    summary = {
        "steps": cfg.steps,
        "seconds": round(time.time() - start, 1),
        "train_frames": len(train_x),
        "val_frames": 0 if val_x is None else len(val_x),
        "val_clips": [r["clip_id"] for r in val_rows],
        "val_loss": [vals[0]["val_loss"], vals[-1]["val_loss"]] if vals else None,
        "val_psnr": vals[-1]["val_psnr"] if vals else None,
    }
    # As SD's 0.18215: latents scaled to unit std, the scale the diffusion stages assume.
    with torch.no_grad():
        z = torch.cat(
            [vae.encode(train_x[i : i + 64]).latent_dist.mode() for i in range(0, len(train_x), 64)]
        )
    vae.register_to_config(scaling_factor=float(1 / z.std().clamp_min(1e-6)))
    summary["scaling_factor"] = vae.config.scaling_factor
    tmp = run_dir / f".{VAE_DIR}.tmp"
    vae.save_pretrained(tmp)
    (run_dir / "vae_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    tmp.rename(run_dir / VAE_DIR)
    loss_curve(run_dir)
    return summary


def _table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows)
