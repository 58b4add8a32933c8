"""Tiny random VAE / T5 / STDiT, built and saved locally (no hub access).

For tests and the demo's smoke run of the model stack. Their weights are random, not trained:
what they generate is noise. Real weights load through the same paths (see README).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_T5_DIM = 32
TINY_MAX_LEN = 16


def save_tiny_vae(path: Path, seed: int = 0) -> Path:
    """A 2-level diffusers AutoencoderKL (spatial factor 2) with 4 latent channels."""
    from diffusers.models import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    vae.save_pretrained(path)
    return path


def save_tiny_vae_x8(path: Path, seed: int = 0) -> Path:
    """A 4-level AutoencoderKL with SD's spatial factor 8 (still tiny: 8 channels per level)."""
    from diffusers.models import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    vae.save_pretrained(path)
    return path


def save_tiny_t5(path: Path, seed: int = 0) -> Path:
    """A 2-layer T5 encoder (d_model 32) with a byte-level ByT5 tokenizer (needs no vocab file)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = ByT5Tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=TINY_T5_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    T5EncoderModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_stdit_config(caption_channels: int = TINY_T5_DIM, model_max_length: int = TINY_MAX_LEN) -> dict:
    return dict(
        input_size=[4, 8, 8],
        in_channels=4,
        patch_size=[1, 2, 2],
        hidden_size=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        caption_channels=caption_channels,
        model_max_length=model_max_length,
        space_scale=0.5,
        time_scale=1.0,
    )


def save_tiny_stdit(ckpt: Path, config_json: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random tiny STDiT: its constructor args as JSON and its weights as safetensors (written by
    `save_weights`, so `ckpt` also carries its config; `config.json` lands beside it).

    The zero-initialised output layers get small random values so the samples depend on the caption.
    """
    from models.checkpoint import save_weights
    from models.stdit import STDiT

    cfg = tiny_stdit_config()
    config_json.write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = STDiT(**cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    save_weights(model, ckpt)
    return ckpt, config_json
