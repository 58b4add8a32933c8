"""Building blocks of STDiT (Open-Sora 1.0 layout, PixArt-α key names).

Every module keeps the attribute names of the original so state dicts load one for one.
Attention goes through `F.scaled_dot_product_attention`; LayerNorms run in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# Fixed sin-cos tables
# --------------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin(p·ω_k), cos(p·ω_k)] with ω_k = 10000^(-k/(dim/2)); float64, shape (len(pos), dim)."""
    assert dim % 2 == 0, "sin-cos embedding needs an even dim"
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def spatial_pos_embed(
    dim: int, grid_hw: tuple[int, int], scale: float = 1.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """2-D table (1, H*W, dim): channels [:dim/2] encode the column (w), [dim/2:] the row (h).

    Coordinates are `arange(n) / scale`, computed in float32 (as the reference does), the rest
    in float64; tokens are row-major (w fastest).
    """
    h, w = grid_hw
    gh = torch.arange(h, dtype=torch.float32, device=device) / scale
    gw = torch.arange(w, dtype=torch.float32, device=device) / scale
    rows, cols = torch.meshgrid(gh, gw, indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    return emb.float().unsqueeze(0)


def temporal_pos_embed(
    dim: int, length: int, scale: float = 1.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """1-D table (1, length, dim) at positions `arange(length) / scale` (float64)."""
    pos = torch.arange(length, dtype=torch.float64, device=device) / scale
    return sincos_1d(dim, pos).float().unsqueeze(0)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep features, **cos first**: [cos(t·f_k), sin(t·f_k)], float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# --------------------------------------------------------------------------------------------
# Small layers
# --------------------------------------------------------------------------------------------


class LayerNormFP32(nn.LayerNorm):
    """Affine-free LayerNorm computed in float32 and cast back (sane in bf16/fp16)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, None, None, self.eps).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when p == 0)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """fc1 → GELU(tanh) → fc2 (timm `Mlp` key names)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch; (B, C, T, H, W) → (B, N, D), tokens in (t, h, w) order."""

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pad T, H, W up to a multiple of the patch (no-op for the usual sizes)
        pads: list[int] = []
        for size, p in zip(reversed(x.shape[2:]), reversed(self.patch_size), strict=True):
            pads += [0, (-size) % p]
        if any(pads):
            x = F.pad(x, pads)
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps → sinusoidal features → Linear → SiLU → Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class CaptionEmbedder(nn.Module):
    """Caption projection (fc1 → GELU(tanh) → fc2) plus the null caption used for dropout / CFG.

    `y_embedding` is a buffer (L, C_cap) holding the learned "null caption" of the checkpoint.
    """

    def __init__(self, in_channels: int, hidden_size: int, uncond_prob: float, token_num: int):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)
        self.uncond_prob = uncond_prob

    def token_drop(self, caption: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace whole captions by the null caption: randomly (p = uncond_prob) or where force_drop_ids == 1."""
        if force_drop_ids is None:
            drop = torch.rand(caption.shape[0], device=caption.device) < self.uncond_prob
        else:
            drop = torch.as_tensor(force_drop_ids, device=caption.device) == 1
        if caption.shape[-2:] != self.y_embedding.shape:
            raise ValueError(
                f"caption dropout needs captions of shape (B, 1, {tuple(self.y_embedding.shape)}), "
                f"got {tuple(caption.shape)}"
            )
        null = self.y_embedding.to(caption.dtype)
        return torch.where(drop[:, None, None, None], null, caption)

    def forward(
        self, caption: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        return self.y_proj(caption)


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv (split as 3 × heads × head_dim)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MultiHeadCrossAttention(nn.Module):
    """Cross-attention from video tokens to caption tokens.

    `mask` (B, L) bool marks valid caption tokens; masked tokens get exactly zero weight (they
    are excluded from the softmax, like the packed variable-length attention of the original).
    A sample with no valid token gets a zero attention output, so this block adds only
    `proj.bias` for it (never NaN).
    """

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        assert d_model % num_heads == 0, "d_model must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        L = cond.shape[1]
        q = self.q_linear(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_linear(cond).view(B, L, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, head_dim)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            empty = ~mask.any(dim=1)  # samples without a single valid token
            attn_mask = (mask | empty[:, None])[:, None, None, :]  # keep softmax finite for them
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            out = out.masked_fill(empty[:, None, None, None], 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class T2IFinalLayer(nn.Module):
    """adaLN-single output head: LayerNorm → modulate with (table + t) → Linear."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int):
        super().__init__()
        self.norm_final = LayerNormFP32(hidden_size)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
