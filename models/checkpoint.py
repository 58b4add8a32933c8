"""Loading PixArt-α, Open-Sora 1.0 and our own weights into STDiT.

Accepted sources (`load_pretrained(model, source)`):
* a `.safetensors` file (PixArt-α converted, Open-Sora, or ours);
* a torch `.pth` / `.pt` / `.bin` file, read with `weights_only=True` (no arbitrary unpickling):
  a raw state dict or one wrapped in `state_dict` / `ema` / `model` / `module` (PixArt-α releases
  use `{"state_dict": ...}`; Open-Sora 1.0 releases are plain EMA state dicts);
* a directory holding our checkpoint: `ema.safetensors` and/or `model.safetensors`
  (see `save_weights`), or an Open-Sora training directory with `ema.pt`;
* a bare released file name (`PixArt-XL-2-512x512.pth`, `OpenSora-v1-16x256x256.pth`, ...):
  looked up in the working directory and `./pretrained_models/`, then on the Hugging Face Hub.

Our checkpoints also carry the model config: `save_weights` writes the STDiT constructor
arguments to `config.json` beside the weights (and into the safetensors header), and
`models.stdit.build_from_checkpoint(dir)` / `STDiT.from_pretrained(dir)` rebuild the model from it.
This module knows no model class (models/stdit.py imports it, never the reverse): building an
STDiT from a checkpoint, and writing Open-Sora's `.pth`, live with the model in models/stdit.py.

Conversion: `module.` / `_orig_mod.` prefixes are stripped, a 4-D (Conv2d) patch-embed weight
gets a singleton temporal axis, and `pos_embed` / `pos_embed_temporal` are never taken from the
checkpoint: the model recomputes its own sin-cos tables (they depend only on the config).
Tensors are cast to the model's dtype. Too few matching keys raise `CheckpointMismatchError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# released checkpoints → Hugging Face repo holding them
KNOWN_CHECKPOINTS: dict[str, str] = {
    "PixArt-XL-2-256x256.pth": "PixArt-alpha/PixArt-alpha",
    "PixArt-XL-2-512x512.pth": "PixArt-alpha/PixArt-alpha",
    "PixArt-XL-2-1024-MS.pth": "PixArt-alpha/PixArt-alpha",
    "OpenSora-v1-16x256x256.pth": "hpcai-tech/Open-Sora",
    "OpenSora-v1-HQ-16x256x256.pth": "hpcai-tech/Open-Sora",
    "OpenSora-v1-HQ-16x512x512.pth": "hpcai-tech/Open-Sora",
}

# buffers the model always recomputes (fixed sin-cos tables)
RECOMPUTED_KEYS = ("pos_embed", "pos_embed_temporal")
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPERS_EMA_FIRST = ("ema", "state_dict", "model", "module")
_WRAPPERS_MODEL_FIRST = ("state_dict", "model", "module", "ema")
CONFIG_FILE = "config.json"  # beside our weights: {"model_class": "STDiT", "constructor_args": {...}}
_CONFIG_METADATA_KEY = "model_config"  # the same document in a safetensors header


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model (too few keys matched)."""


@dataclass
class LoadReport:
    """What `load_pretrained` did. `missing` lists model keys not taken from the checkpoint
    (including the recomputed position tables), in state-dict order."""

    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)  # meta tensors filled by the model's init

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.mismatched

    def __str__(self) -> str:
        def names(keys: list[str], limit: int = 12) -> str:
            shown = ", ".join(keys[:limit])
            return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")

        n_model = len(self.matched) + len(self.missing) + len(self.mismatched)
        lines = [f"Loaded {self.source}: {len(self.matched)}/{n_model} model tensors matched"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}, kept from the model): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}, ignored): {names(self.unexpected)}")
        for key, got, want in self.mismatched[:12]:
            lines.append(f"  shape mismatch (ignored): {key}: checkpoint {list(got)} vs model {list(want)}")
        if len(self.mismatched) > 12:
            lines.append(f"  ... and {len(self.mismatched) - 12} more shape mismatches")
        if self.initialized:
            lines.append(f"  initialised fresh ({len(self.initialized)}): {names(self.initialized)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def resolve_checkpoint(source: str | os.PathLike[str]) -> Path:
    """Local path as is; a known released file name from ./ or ./pretrained_models/ or the Hub."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    name = str(source)
    local = Path("pretrained_models") / name
    if local.exists():
        return local
    if name not in KNOWN_CHECKPOINTS:
        raise FileNotFoundError(f"checkpoint not found: {name}")
    repo = KNOWN_CHECKPOINTS[name]
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo, filename=name))
    except Exception as err:  # no network, no hub package, gated repo, ...
        raise FileNotFoundError(
            f"{name} is not available locally and could not be downloaded from "
            f"https://huggingface.co/{repo} ({type(err).__name__}: {err}). Download it yourself, "
            f"e.g. `huggingface-cli download {repo} {name} --local-dir pretrained_models`, "
            f"and pass the file path."
        ) from err


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, use_ema: bool, notes: list[str]) -> dict[str, torch.Tensor]:
    """Descend through `{"ema": ...}` / `{"state_dict": ...}` / ... wrappers to the tensors."""
    order = _WRAPPERS_EMA_FIRST if use_ema else _WRAPPERS_MODEL_FIRST
    path: list[str] = []
    while isinstance(obj, dict) and not _is_state_dict(obj):
        key = next((k for k in order if isinstance(obj.get(k), dict)), None)
        if key is None:
            # a dict mixing tensors with metadata (e.g. {"step": 3, ...}): keep only the tensors
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                obj = tensors
                break
            raise CheckpointMismatchError(
                f"no state dict found in the checkpoint (top-level keys: {sorted(map(str, obj))[:10]})"
            )
        path.append(key)
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    if path:
        notes.append("unwrapped " + "".join(f"[{k!r}]" for k in path))
    return obj


def read_state_dict(
    source: str | os.PathLike[str], *, use_ema: bool = True, notes: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Read a raw (unconverted) state dict from any supported source, on the CPU."""
    from safetensors.torch import load_file

    notes = [] if notes is None else notes
    path = resolve_checkpoint(source)
    if path.is_dir():
        order = ("ema.safetensors", "model.safetensors", "ema.pt")
        if not use_ema:
            order = ("model.safetensors", "ema.safetensors", "ema.pt")
        found = next((path / f for f in order if (path / f).exists()), None)
        if found is None:
            raise FileNotFoundError(f"{path} is a directory without {' or '.join(order)}")
        notes.append(f"read {found.name} from checkpoint directory")
        path = found
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointMismatchError(
            f"could not read {path} as a tensors-only torch checkpoint ({type(err).__name__}: {err}). "
            "Arbitrary pickled objects are refused; re-save the state dict with safetensors."
        ) from err
    return _unwrap(obj, use_ema, notes)


def convert_state_dict(
    sd: dict[str, torch.Tensor], model_sd: dict[str, torch.Tensor], notes: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """PixArt-α / Open-Sora / DDP / compiled-model dict → STDiT key names and shapes."""
    notes = [] if notes is None else notes
    out: dict[str, torch.Tensor] = {}
    stripped = 0
    for key, value in sd.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key, stripped = key[len(prefix) :], stripped + 1
        out[key] = value
    if stripped:
        notes.append(f"stripped {'/'.join(_PREFIXES)} prefixes from {stripped} keys")
    w = out.get("x_embedder.proj.weight")
    target = model_sd.get("x_embedder.proj.weight")
    if w is not None and target is not None and w.ndim == 4 and target.ndim == 5:
        out["x_embedder.proj.weight"] = w.unsqueeze(2)
        notes.append(
            f"x_embedder.proj.weight {list(w.shape)} -> {list(w.unsqueeze(2).shape)} (Conv2d -> Conv3d)"
        )
    dropped = [k for k in RECOMPUTED_KEYS if out.pop(k, None) is not None]
    if dropped:
        notes.append(f"ignored {', '.join(dropped)} from the checkpoint (recomputed by the model)")
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike[str] | dict[str, torch.Tensor],
    *,
    strict_min_fraction: float = 0.75,
    assign: bool = False,
    use_ema: bool = True,
    verbose: bool = False,
) -> LoadReport:
    """Load weights into `model` (non-strict) and report what matched.

    strict_min_fraction: raise `CheckpointMismatchError` unless at least this fraction of the
        model's loadable tensors (all but the recomputed position tables) AND of the checkpoint's
        tensors matched by name and shape. PixArt-α → STDiT-XL/2 matches 436/548 (0.80) of the
        model and all of the checkpoint; an unrelated or differently sized checkpoint fails.
    assign: use the checkpoint tensors directly (`load_state_dict(assign=True)`), e.g. for a
        model built under `torch.device("meta")`; forced on when the model has meta tensors.
        Model tensors the checkpoint lacks (e.g. `attn_temp.*` from PixArt) that are still on
        meta afterwards are allocated on the CPU and initialised as at construction.
    use_ema: prefer EMA weights when a checkpoint holds both (wrapped dict or directory).
    """
    notes: list[str] = []
    if isinstance(source, dict):
        name = "<state dict>"
        raw = _unwrap(source, use_ema, notes)
    else:
        name = str(source)
        raw = read_state_dict(source, use_ema=use_ema, notes=notes)

    model_sd = model.state_dict(keep_vars=True)
    sd = convert_state_dict(raw, model_sd, notes)
    report = LoadReport(source=name, notes=notes)

    to_load: dict[str, torch.Tensor] = {}
    for key, target in model_sd.items():
        value = sd.get(key)
        if value is None or key in RECOMPUTED_KEYS:
            report.missing.append(key)
        elif tuple(value.shape) != tuple(target.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
        else:
            report.matched.append(key)
            to_load[key] = value.to(target.dtype)
    report.unexpected = [k for k in sd if k not in model_sd]

    n_model = len([k for k in model_sd if k not in RECOMPUTED_KEYS])
    n_ckpt = len(sd)
    frac_model = len(report.matched) / max(n_model, 1)
    frac_ckpt = len(report.matched) / max(n_ckpt, 1)
    if frac_model < strict_min_fraction or frac_ckpt < strict_min_fraction:
        raise CheckpointMismatchError(
            f"checkpoint {name} does not fit {type(model).__name__}: matched {len(report.matched)} of "
            f"{n_model} model tensors ({frac_model:.0%}) and of {n_ckpt} checkpoint tensors "
            f"({frac_ckpt:.0%}); required {strict_min_fraction:.0%}. Wrong model size/config or not "
            f"an STDiT/PixArt-α checkpoint?\n{report}"
        )

    has_meta = any(t.is_meta for t in model_sd.values())
    model.load_state_dict(to_load, strict=False, assign=assign or has_meta)

    if hasattr(model, "materialize_"):
        fresh = model.materialize_("cpu")
        report.initialized = [k for k in fresh if k not in RECOMPUTED_KEYS]
    if hasattr(model, "reset_pos_embeds"):
        model.reset_pos_embeds()
    if verbose:
        print(report)
    return report


def save_weights(
    model_or_sd: nn.Module | dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Write a state dict as safetensors (our format; a training checkpoint directory holds
    `model.safetensors` and `ema.safetensors`).

    config: the model's constructor arguments; defaults to `model.config` when a model with one
        (an STDiT) is given. Written to `config.json` in the file's directory (replacing one
        already there) and into the file's header, so `build_from_checkpoint` rebuilds the model
        from the checkpoint alone.
    """
    from safetensors.torch import save_file

    if config is None and isinstance(model_or_sd, nn.Module):
        config = getattr(model_or_sd, "config", None)
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt", **(metadata or {})}
    if config is not None:
        document = json.dumps({"model_class": "STDiT", "constructor_args": dict(config)}, indent=2)
        header[_CONFIG_METADATA_KEY] = document
        (path.parent / CONFIG_FILE).write_text(document + "\n")
    save_file(sd, str(path), metadata=header)


# --------------------------------------------------------------------------------------------
# Rebuilding a model from our checkpoints
# --------------------------------------------------------------------------------------------


def _parse_config(text: str, where: str) -> dict[str, Any]:
    """`{"model_class": "STDiT", "constructor_args": {...}}` (save_weights) or the arguments alone.
    (`STDiT.from_pretrained` checks the arguments against its constructor.)"""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from err
    args = document.get("constructor_args", document) if isinstance(document, dict) else None
    if not isinstance(args, dict) or not args or document.get("model_class", "STDiT") != "STDiT":
        raise ValueError(
            f"{where} is not an STDiT config: expected STDiT constructor arguments, alone or as "
            '{"model_class": "STDiT", "constructor_args": {...}} (as save_weights writes)'
        )
    return args


def read_model_config(source: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The STDiT constructor arguments stored with a checkpoint of ours: `config.json` in a
    checkpoint directory, or the header of a `.safetensors` file. None when there are none
    (released PixArt-α / Open-Sora files, Open-Sora training directories)."""
    path = resolve_checkpoint(source)
    if path.is_dir():
        file = path / CONFIG_FILE
        return _parse_config(file.read_text(), str(file)) if file.is_file() else None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(_CONFIG_METADATA_KEY)
        return None if text is None else _parse_config(text, f"the header of {path}")
    return None
