"""Build the VAE, the T5 encoder and the STDiT for a run (tiny random ones for `--preset tiny`)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.stdit import STDIT_PRESETS, STDiT
from models.text_encoder import T5Encoder
from models.vae import VideoAutoencoderKL

from .config import RunConfig

log = logging.getLogger(__name__)

# STDiT constructor arguments that define the architecture (taken from a run we start from)
ARCH_KEYS = (
    "in_channels",
    "patch_size",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "pred_sigma",
    "caption_channels",
    "model_max_length",
    "no_temporal_pos_emb",
    "drop_path",
)


@dataclass
class Models:
    vae: VideoAutoencoderKL | None  # None while training from the feature cache (until sampling)
    text_encoder: T5Encoder | None
    stdit: STDiT
    stdit_args: dict[str, Any]  # JSON-able constructor args, saved beside every checkpoint
    size_multiple: int  # pixels per latent patch: VAE factor × STDiT spatial patch


def ensure_tiny_models(tiny_dir: str | os.PathLike) -> tuple[str, str]:
    """Tiny RANDOM VAE (×8) and T5 under `tiny_dir`, built once (any process may race: a lock)."""
    from models.tiny import save_tiny_t5, save_tiny_vae_x8

    root = Path(tiny_dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "READY").is_file():
            tmp = root.with_name(f".{root.name}.{uuid.uuid4().hex[:8]}")
            save_tiny_vae_x8(tmp / "vae")
            save_tiny_t5(tmp / "t5")
            (tmp / "READY").write_text("tiny random models (weights are noise, for tests and demos)\n")
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
    return str(root / "vae"), str(root / "t5")


def run_stdit_args(run_dir: Path) -> dict[str, Any] | None:
    """STDiT constructor args saved by a previous run (None when the path is not one of our runs)."""
    path = Path(run_dir) / "config.json"
    if Path(run_dir).is_dir() and path.is_file():
        args = json.loads(path.read_text())
        return args.get("constructor_args", args)
    return None


def stdit_arch(cfg: RunConfig, caption_channels: int | None = None) -> dict[str, Any]:
    """STDiT architecture args (a previous run's, the tiny one, a preset or a JSON file) with
    `model.stdit_args` applied; no input size or stage settings yet."""
    m = cfg.model
    previous = run_stdit_args(Path(m.init_from)) if m.init_from else None
    if previous is not None:
        args = {k: v for k, v in previous.items() if k in ARCH_KEYS}
    elif m.tiny:
        from models.tiny import TINY_T5_DIM, tiny_stdit_config

        args = tiny_stdit_config(
            caption_channels=caption_channels or TINY_T5_DIM, model_max_length=m.model_max_length
        )
    elif m.stdit in STDIT_PRESETS:
        args = dict(STDIT_PRESETS[m.stdit])
    elif Path(m.stdit).is_file():
        from models.pipeline import load_stdit_config

        args = load_stdit_config(m.stdit)[1]
    else:
        raise ValueError(
            f"model.stdit {m.stdit!r} is neither a preset ({sorted(STDIT_PRESETS)}) nor a JSON file"
        )
    args = {k: v for k, v in args.items() if k not in ("dtype", "grad_checkpointing", "freeze")}
    args.update(m.stdit_args)
    args["patch_size"] = list(args.get("patch_size", (1, 2, 2)))
    return args


def stdit_args_for(cfg: RunConfig, caption_channels: int, latent: tuple[int, int, int]) -> dict[str, Any]:
    """Constructor args: the architecture (`stdit_arch`) + this stage's shape and settings."""
    m = cfg.model
    args = stdit_arch(cfg, caption_channels)
    args.setdefault("caption_channels", caption_channels)
    args.setdefault("model_max_length", m.model_max_length)
    if args["caption_channels"] != caption_channels:
        raise ValueError(
            f"STDiT caption_channels={args['caption_channels']} but the text encoder gives {caption_channels}"
        )
    args.update(
        input_size=list(latent),
        space_scale=m.space_scale if m.space_scale is not None else min(cfg.data.resolution) / 512,
        time_scale=m.time_scale,
        class_dropout_prob=cfg.train.caption_dropout,
    )
    return args


def encoder_paths(cfg: RunConfig) -> tuple[str, str]:
    """(VAE, T5): hub ids or local folders (`--preset tiny`: the tiny ones, built on first use,
    except a VAE given as a local folder). `model.vae` may be a `vae` stage's run folder."""
    from .vae_train import vae_path

    m = cfg.model
    if not m.tiny:
        return str(vae_path(m.vae)), m.text_encoder
    vae, t5 = ensure_tiny_models(m.tiny_dir)
    return (str(vae_path(m.vae)) if Path(m.vae).is_dir() else vae), t5


def encoder_dtype(device: torch.device, compute_dtype: torch.dtype) -> torch.dtype:
    """VAE and T5 run in the compute dtype on CUDA (bf16 by default) and in fp32 on CPU."""
    return compute_dtype if device.type == "cuda" else torch.float32


def build_encoders(
    cfg: RunConfig, device: torch.device, compute_dtype: torch.dtype
) -> tuple[VideoAutoencoderKL, T5Encoder]:
    """The frozen VAE and T5 of a run (the feature cache stage encodes with the same)."""
    m = cfg.model
    vae_path, t5_path = encoder_paths(cfg)
    dtype = encoder_dtype(device, compute_dtype)
    vae = VideoAutoencoderKL(
        vae_path, micro_batch_size=m.vae_micro_batch_size, dtype=dtype, local_files_only=m.local_files_only
    ).to(device)
    t5 = T5Encoder(
        t5_path,
        model_max_length=m.model_max_length,
        device=device,
        dtype=dtype,
        local_files_only=m.local_files_only,
    )
    return vae, t5


def encoder_shapes(cfg: RunConfig) -> tuple[int, int]:
    """(VAE spatial factor, T5 width) read from the models' config files, loading no weights."""
    from diffusers.models import AutoencoderKL
    from transformers import AutoConfig

    vae_path, t5_path = encoder_paths(cfg)
    local = cfg.model.local_files_only
    vae_config = AutoencoderKL.load_config(vae_path, local_files_only=local)
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)  # as VideoAutoencoderKL derives it
    return factor, int(AutoConfig.from_pretrained(t5_path, local_files_only=local).d_model)


def build_models(
    cfg: RunConfig,
    device: torch.device,
    compute_dtype: torch.dtype,
    resume_args: dict[str, Any] | None = None,
    encoders: bool = True,
) -> Models:
    """`resume_args`: the STDiT args of the checkpoint being resumed (its weights load later, so
    `model.init_from` is neither read nor needed then). `encoders=False` (training from the
    feature cache) leaves the VAE and T5 unloaded; `load_encoders` adds them when needed."""
    m = cfg.model
    vae = t5 = None
    if encoders:
        vae, t5 = build_encoders(cfg, device, compute_dtype)
        factor, caption_channels = vae.spatial_factor, t5.output_dim
    else:
        factor, caption_channels = encoder_shapes(cfg)
    frames, res = cfg.data.num_frames[0], min(cfg.data.resolution)
    latent = (frames, res // factor, res // factor)
    args = dict(resume_args) if resume_args is not None else stdit_args_for(cfg, caption_channels, latent)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and in every launch
    stdit = STDiT(**{**args, "patch_size": tuple(args["patch_size"])})
    if m.init_from and resume_args is None:
        from models.checkpoint import load_pretrained

        report = load_pretrained(stdit, m.init_from, use_ema=m.init_use_ema)
        log.info("init from %s\n%s", m.init_from, report)
    if m.grad_checkpointing:
        stdit.enable_gradient_checkpointing()
    if t5 is not None:
        t5.y_embedder = stdit.y_embedder  # the null caption is the model's (as 1.0)
    multiple = factor * int(args["patch_size"][1])
    return Models(vae, t5, stdit.to(device), args, multiple)


def load_encoders(models: Models, cfg: RunConfig, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Add the VAE and T5 to models built without them (the first time a sample is drawn)."""
    if models.vae is None or models.text_encoder is None:
        models.vae, models.text_encoder = build_encoders(cfg, device, compute_dtype)
        models.text_encoder.y_embedder = models.stdit.y_embedder


def set_latent_shape(model: STDiT, shape: tuple[int, int, int]) -> None:
    """Point an STDiT at another latent (T, H, W): token grid and sin-cos tables.

    1.0's STDiT computes its position tables for one `input_size`; its weights do not depend on
    it, so a bucketed batch of another shape only needs the grid and the tables recomputed.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(model.input_size) == shape:
        return
    grid = tuple(s // p for s, p in zip(shape, model.patch_size, strict=True))
    if any(s % p for s, p in zip(shape, model.patch_size, strict=True)):
        raise ValueError(f"latent {shape} is not divisible by the patch {model.patch_size}")
    model.input_size, model.grid = shape, grid
    model.num_temporal, model.num_spatial = grid[0], grid[1] * grid[2]
    model.num_patches = model.num_temporal * model.num_spatial
    for block in model.blocks:
        block.d_s, block.d_t = model.num_spatial, model.num_temporal
    model.reset_pos_embeds()
