"""STDiT: the spatial-temporal diffusion transformer of Open-Sora 1.0.

Same constructor arguments, state-dict keys and numerics as Open-Sora 1.0's `STDiT` (checked
against golden tensors in tests/golden/opensora-v1.0), written on plain PyTorch:
SDPA attention, no xformers/apex/flash-attn dependency, CPU-friendly caption dropout,
optional per-block gradient checkpointing and meta-device construction.

Per block (adaLN-single, PixArt-α style):
    x += gate1 * SpatialAttn(modulate(norm1(x), shift1, scale1))   # within each frame
    x += gate1 * TemporalAttn(x [+ temporal pos-embed in block 0])  # per location, no norm
    x += CrossAttn(x, caption)                                      # no norm, no gate
    x += gate2 * MLP(modulate(norm2(x), shift2, scale2))
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from .checkpoint import load_pretrained, read_model_config, resolve_checkpoint
from .guidance import combine_cfg
from .layers import (
    Attention,
    CaptionEmbedder,
    DropPath,
    LayerNormFP32,
    Mlp,
    MultiHeadCrossAttention,
    PatchEmbed3D,
    T2IFinalLayer,
    TimestepEmbedder,
    modulate,
    spatial_pos_embed,
    temporal_pos_embed,
)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Accept a torch dtype or a name such as "float32", "bf16", "torch.bfloat16"."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _jsonable(value: Any) -> Any:
    """Constructor argument -> JSON value (tuples -> lists, dtypes -> names such as "float32")."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


class STDiTBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        d_s: int,
        d_t: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.d_s, self.d_t = d_s, d_t  # spatial tokens per frame, frames
        self.norm1 = LayerNormFP32(hidden_size)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNormFP32(hidden_size)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        self.attn_temp = Attention(hidden_size, num_heads, qkv_bias=True)

    def forward(
        self,
        x: torch.Tensor,  # (B, T*S, C)
        y: torch.Tensor,  # (B, L, C) projected caption
        t0: torch.Tensor,  # (B, 6*C)
        y_mask: torch.Tensor | None = None,  # (B, L) bool
        tpe: torch.Tensor | None = None,  # (1, T, C) temporal pos-embed (block 0 only)
    ) -> torch.Tensor:
        B, N, C = x.shape
        T, S = self.d_t, self.d_s
        mod = self.scale_shift_table[None] + t0.reshape(B, 6, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)

        # spatial attention, within each frame
        h = modulate(self.norm1(x), shift_msa, scale_msa).reshape(B * T, S, C)
        h = self.attn(h).reshape(B, N, C)
        x = x + self.drop_path(gate_msa * h)

        # temporal attention on the updated residual (no norm); the spatial gate is reused
        h = x.reshape(B, T, S, C).transpose(1, 2).reshape(B * S, T, C)
        if tpe is not None:
            h = h + tpe
        h = self.attn_temp(h).reshape(B, S, T, C).transpose(1, 2).reshape(B, N, C)
        x = x + self.drop_path(gate_msa * h)

        # cross-attention to the caption (no norm, no gate)
        x = x + self.cross_attn(x, y, y_mask)

        # MLP
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + self.drop_path(gate_mlp * h)


class STDiT(nn.Module):
    """Open-Sora 1.0 STDiT. `forward(x, timestep, y, mask)` → (B, out_channels, T, H, W) float32.

    Args follow Open-Sora 1.0. `enable_flashattn`, `enable_layernorm_kernel` and
    `enable_sequence_parallelism` are accepted for config compatibility and ignored: attention is
    always SDPA (which picks flash / memory-efficient kernels itself) and LayerNorm runs in
    float32. `dtype` is stored as a hint (`self.dtype_hint`); the model computes in the dtype of
    its parameters (`model.to(torch.bfloat16)`) or under autocast, like the original after
    its `model.to(dtype)`. Output is always float32.
    """

    def __init__(
        self,
        input_size: Sequence[int] = (1, 32, 32),
        in_channels: int = 4,
        patch_size: Sequence[int] = (1, 2, 2),
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        pred_sigma: bool = True,
        drop_path: float = 0.0,
        no_temporal_pos_emb: bool = False,
        caption_channels: int = 4096,
        model_max_length: int = 120,
        dtype: str | torch.dtype | None = torch.float32,
        space_scale: float = 1.0,
        time_scale: float = 1.0,
        freeze: str | None = None,
        enable_flashattn: bool = False,
        enable_layernorm_kernel: bool = False,
        enable_sequence_parallelism: bool = False,
        grad_checkpointing: bool = False,
    ):
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # before any other local
        super().__init__()
        if enable_sequence_parallelism:
            raise NotImplementedError("sequence parallelism is not implemented")
        self.input_size = tuple(int(s) for s in input_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.in_channels = in_channels
        self.pred_sigma = pred_sigma
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.caption_channels = caption_channels
        self.model_max_length = model_max_length
        self.space_scale = space_scale
        self.time_scale = time_scale
        self.no_temporal_pos_emb = no_temporal_pos_emb  # stored only, as in the original
        self.dtype_hint = parse_dtype(dtype)
        self.gradient_checkpointing = grad_checkpointing
        # every constructor argument, JSON-ready: `save_weights` writes it beside the weights so a
        # checkpoint rebuilds its model (`STDiT.from_pretrained`)
        self.config: dict[str, Any] = {k: _jsonable(v) for k, v in args.items()}

        self.grid = tuple(s // p for s, p in zip(self.input_size, self.patch_size, strict=True))
        self.num_temporal = self.grid[0]
        self.num_spatial = self.grid[1] * self.grid[2]
        self.num_patches = self.num_temporal * self.num_spatial

        self.register_buffer("pos_embed", self._spatial_pos_embed())
        self.register_buffer("pos_embed_temporal", self._temporal_pos_embed())

        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        dpr = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            STDiTBlock(hidden_size, num_heads, self.num_spatial, self.num_temporal, mlp_ratio, dpr[i])
            for i in range(depth)
        )
        self.final_layer = T2IFinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)

        self.initialize_weights()
        if freeze is not None:
            self.freeze(freeze)

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike[str], *, use_ema: bool = True, **overrides: Any
    ) -> STDiT:
        """Rebuild the model a checkpoint of ours describes (its `config.json`) and load its weights.

        `overrides` replace stored constructor arguments, e.g. `input_size` to sample at another
        size. Released PixArt-α / Open-Sora `.pth` files carry no config: build the model yourself
        (`build_stdit`) and use `models.checkpoint.load_pretrained`.
        """
        return build_from_checkpoint(source, use_ema=use_ema, **overrides)

    # ---------------------------------------------------------------- buffers and init
    def _spatial_pos_embed(self, device: torch.device | str | None = None) -> torch.Tensor:
        return spatial_pos_embed(self.hidden_size, self.grid[1:], self.space_scale, device=device)

    def _temporal_pos_embed(self, device: torch.device | str | None = None) -> torch.Tensor:
        return temporal_pos_embed(self.hidden_size, self.num_temporal, self.time_scale, device=device)

    @torch.no_grad()
    def reset_pos_embeds(self, device: torch.device | str | None = None) -> None:
        """Recompute the fixed sin-cos buffers (after meta construction or `to_empty`).

        `device` defaults to the buffers' device, or the CPU if they are on `meta`.
        """
        if device is None:
            device = self.pos_embed.device
            if device.type == "meta":
                device = next((p.device for p in self.parameters() if not p.is_meta), torch.device("cpu"))
        self.pos_embed = self._spatial_pos_embed("cpu").to(device)
        self.pos_embed_temporal = self._temporal_pos_embed("cpu").to(device)

    @torch.no_grad()
    def initialize_weights(self, only: Iterable[str] | None = None) -> None:
        """Initialise like Open-Sora 1.0 (xavier Linears, zero-init of cross_attn.proj,
        attn_temp.proj and final_layer.linear, N(0, 0.02) for the t/caption MLPs and t_block).

        `only`: restrict to these state-dict names (used to fill tensors a checkpoint lacked).
        """
        names = None if only is None else set(only)

        def want(name: str) -> bool:
            return names is None or name in names

        zero_init = ("attn_temp.proj", "cross_attn.proj", "final_layer.linear")
        std002 = (
            "t_embedder.mlp.0",
            "t_embedder.mlp.2",
            "t_block.1",
            "y_embedder.y_proj.fc1",
            "y_embedder.y_proj.fc2",
        )
        for mname, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if want(f"{mname}.weight"):
                    if mname.endswith(zero_init):
                        nn.init.zeros_(m.weight)
                    elif mname in std002:
                        nn.init.normal_(m.weight, std=0.02)
                    else:
                        nn.init.xavier_uniform_(m.weight)
                if m.bias is not None and want(f"{mname}.bias"):
                    nn.init.zeros_(m.bias)
        # patch embedding initialised like a Linear on the flattened kernel; bias: Conv default
        proj = self.x_embedder.proj
        if want("x_embedder.proj.weight"):
            nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if want("x_embedder.proj.bias"):
            bound = 1 / math.sqrt(proj.weight[0].numel())
            nn.init.uniform_(proj.bias, -bound, bound)
        for i, block in enumerate(self.blocks):
            if want(f"blocks.{i}.scale_shift_table"):
                block.scale_shift_table.copy_(
                    torch.randn_like(block.scale_shift_table) / self.hidden_size**0.5
                )
        if want("final_layer.scale_shift_table"):
            table = self.final_layer.scale_shift_table
            table.copy_(torch.randn_like(table) / self.hidden_size**0.5)
        if want("y_embedder.y_embedding"):
            emb = self.y_embedder.y_embedding
            emb.copy_(torch.randn_like(emb) / self.caption_channels**0.5)
        if names is not None and names & {"pos_embed", "pos_embed_temporal"}:
            self.reset_pos_embeds()

    @torch.no_grad()
    def materialize_(self, device: torch.device | str = "cpu") -> list[str]:
        """Allocate every tensor still on the `meta` device on `device` and initialise it as at
        construction. Returns the names that were materialised."""
        todo: list[str] = []
        for mname, m in self.named_modules():
            for kind in ("_parameters", "_buffers"):
                for name, t in getattr(m, kind).items():
                    if t is None or not t.is_meta:
                        continue
                    new = torch.empty_like(t, device=device)
                    if kind == "_parameters":
                        new = nn.Parameter(new, requires_grad=t.requires_grad)
                    getattr(m, kind)[name] = new
                    todo.append(f"{mname}.{name}" if mname else name)
        if todo:
            self.initialize_weights(only=todo)
        return todo

    def freeze(self, what: str) -> None:
        """As Open-Sora 1.0: "not_temporal" trains only `attn_temp`; "text" freezes `cross_attn`."""
        if what == "not_temporal":
            for name, p in self.named_parameters():
                p.requires_grad_("attn_temp" in name)
        elif what == "text":
            for name, p in self.named_parameters():
                if "cross_attn" in name:
                    p.requires_grad_(False)
        else:
            raise ValueError(f"unknown freeze option {what!r}")

    # ---------------------------------------------------------------- options
    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype = dtype of the parameters."""
        return self.x_embedder.proj.weight.dtype

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        x: (B, C, T, H, W) latent video; timestep: (B,); y: (B, 1, L, C_cap) caption embeddings;
        mask: (B', L) caption token mask, 1 = valid (B' divides B: repeated, as in the original);
        force_drop_ids: (B,) 1 = replace this caption by the null caption (also in eval mode).
        In train mode, captions are dropped with probability `class_dropout_prob`; the mask is
        not changed for dropped captions (as in the original).
        """
        dtype = self.dtype
        B = x.shape[0]
        x = x.to(dtype)
        if y.ndim == 3:
            y = y.unsqueeze(1)
        y = y.to(dtype)

        # embeddings
        x = self.x_embedder(x)  # (B, N, C)
        x = (x.view(B, self.num_temporal, self.num_spatial, -1) + self.pos_embed.to(dtype)).flatten(1, 2)
        t = self.t_embedder(timestep)  # (B, C)
        t0 = self.t_block(t)  # (B, 6C)
        y = self.y_embedder(y, self.training, force_drop_ids).squeeze(1)  # (B, L, C)

        y_mask = None
        if mask is not None:
            mask = mask.reshape(mask.shape[0], -1)
            if mask.shape[0] != B:
                mask = mask.repeat(B // mask.shape[0], 1)
            y_mask = mask != 0

        tpe = self.pos_embed_temporal.to(dtype)
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            args = (x, y, t0, y_mask, tpe if i == 0 else None)
            if use_ckpt:
                x = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)

        x = self.final_layer(x, t)  # (B, N, prod(patch) * C_out)
        return self.unpatchify(x).float()

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, pt*ph*pw*C_out) → (B, C_out, T, H, W); per-token values ordered (pt, ph, pw, C_out)."""
        nt, nh, nw = self.grid
        pt, ph, pw = self.patch_size
        x = x.reshape(x.shape[0], nt, nh, nw, pt, ph, pw, self.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], self.out_channels, nt * pt, nh * ph, nw * pw)

    @torch.no_grad()
    def null_caption(self, batch_size: int) -> torch.Tensor:
        """The null caption (B, 1, L, C_cap) for classifier-free guidance."""
        return self.y_embedder.y_embedding[None, None].expand(batch_size, 1, -1, -1)

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        mask: torch.Tensor | None = None,
        cfg_channels: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Classifier-free guidance, like Open-Sora's `forward_with_cfg`.

        x, timestep, y have batch 2B with y = [cond ; uncond]. Only the first half of x is used
        (duplicated). The guided eps = uncond + s·(cond − uncond) is written to both halves for
        output channels [0, cfg_channels); the remaining channels (variance values) stay as the
        model produced them per half. `cfg_channels=None` guides all `in_channels` eps channels;
        `cfg_channels=3` reproduces Open-Sora 1.0 exactly (its quirk: 3 of 4 latent channels).
        A (B, L) mask is repeated, so the null caption shares the real caption's mask (as in 1.0).
        """
        half = x[: len(x) // 2]
        out = self(torch.cat([half, half], dim=0), timestep, y, mask=mask, **kwargs)
        return combine_cfg(out, cfg_scale, eps_channels=self.in_channels, cfg_channels=cfg_channels)


# ------------------------------------------------------------------------------------ presets

STDIT_PRESETS: dict[str, dict[str, Any]] = {
    "STDiT-XL/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=(1, 2, 2)),
}


def build_stdit(name: str, from_pretrained: str | None = None, **overrides: Any) -> STDiT:
    """Build a named preset, e.g. `build_stdit("STDiT-XL/2", input_size=(16, 32, 32), space_scale=0.5)`.

    `from_pretrained` (as in Open-Sora configs) loads weights with `models.checkpoint.load_pretrained`.
    """
    if name not in STDIT_PRESETS:
        raise KeyError(f"unknown STDiT preset {name!r}; known: {sorted(STDIT_PRESETS)}")
    model = STDiT(**{**STDIT_PRESETS[name], **overrides})
    if from_pretrained is not None:
        load_pretrained(model, from_pretrained)
    return model


def STDiT_XL_2(from_pretrained: str | None = None, **kwargs: Any) -> STDiT:
    return build_stdit("STDiT-XL/2", from_pretrained=from_pretrained, **kwargs)


# ------------------------------------------------------------------------------------ save / load
def build_from_checkpoint(source: str | os.PathLike[str], *, use_ema: bool = True, **overrides: Any) -> STDiT:
    """Build the STDiT a checkpoint of ours describes and load its weights; every tensor must match.

    `overrides` replace stored constructor arguments (e.g. `input_size` to sample at another size;
    the position tables are recomputed for it). Built on the meta device: no throwaway init.
    """
    import inspect

    path = resolve_checkpoint(source)
    args = read_model_config(path)
    if args is None:
        raise FileNotFoundError(
            f"{path} carries no model config (config.json in a checkpoint directory or a "
            "safetensors header, written by save_weights). For released PixArt-α / Open-Sora "
            "weights build the model yourself (build_stdit('STDiT-XL/2', ...)) and call load_pretrained."
        )
    unknown = sorted(set(args) - set(inspect.signature(STDiT).parameters))
    if unknown:
        raise ValueError(f"{path} is not an STDiT config: unknown constructor arguments {unknown}")
    with torch.device("meta"):
        model = STDiT(**{**args, **overrides})
    load_pretrained(model, path, use_ema=use_ema, strict_min_fraction=1.0)
    return model


def save_opensora_pth(model: STDiT, path: str | os.PathLike[str]) -> Path:
    """Write `model` as Open-Sora 1.0 writes and releases STDiT weights: one plain state dict (no
    wrapper, no `module.` prefix) of fp32 tensors under their names, the two sin-cos position
    buffers included, so their STDiT loads it with `load_state_dict(strict=True)`. Atomic."""
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        torch.save(sd, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_opensora_pth(
    source: str | os.PathLike[str], output: str | os.PathLike[str], *, use_ema: bool = True
) -> Path:
    """A checkpoint of ours (run folder, step folder or file) -> Open-Sora 1.0 `.pth` (EMA weights by default)."""
    return save_opensora_pth(build_from_checkpoint(source, use_ema=use_ema).eval(), output)
