"""CLIP embeddings (open_clip) and the LAION "improved aesthetic predictor" head.

`load_clip(model, pretrained)` accepts what open_clip accepts: a built-in architecture name with a
pretrained tag (`ViT-L-14`, `openai`) or a weights file path, `local-dir:/folder` or `hf-hub:org/repo`,
and additionally a path to a model config `.json` (registered under its file stem), so a custom or
tiny architecture loads through the same `create_model_and_transforms(name, pretrained=path)` call
as released weights.

`load_aesthetic_head(path)` loads the released `sac+logos+ava1-l14-linearMSE.pth` (a state dict of an
`nn.Sequential` held as `layers`) as is, from a path or a URL, with `weights_only=True`.

`save_tiny_clip` / `save_tiny_aesthetic_head` build RANDOM models for tests and the demo: their scores
mean nothing; they exercise the code path that real weights take.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

AESTHETIC_HIDDEN = (1024, 128, 64, 16)


class AestheticHead(nn.Module):
    """The LAION aesthetic MLP: embedding (L2-normalised) -> score (about 1..10 with real weights)."""

    def __init__(self, in_features: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def load_aesthetic_head(path: str | os.PathLike) -> torch.nn.Module:
    """The aesthetic head from a state dict file or URL (keys layers.0/2/4/6/7.weight/bias), in eval mode."""
    ref = str(path)
    if _is_url(ref):
        state = torch.hub.load_state_dict_from_url(ref, map_location="cpu", progress=False, weights_only=True)
    else:
        if not os.path.isfile(ref):
            raise FileNotFoundError(f"aesthetic head weights not found: {ref}")
        state = torch.load(ref, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a Lightning checkpoint
        state = state["state_dict"]
    expected = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    if not isinstance(state, dict) or set(state) != expected:
        found = sorted(state)[:12] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{ref} is not an aesthetic head state dict: expected keys {sorted(expected)}, found {found}"
        )
    head = AestheticHead(in_features=state["layers.0.weight"].shape[1])
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{ref}: layer sizes differ from Linear(D->1024->128->64->16->1): {exc}") from None
    return head.eval()


# ----------------------------------------------------------------------------------------- CLIP
def _register_config(model: str) -> str:
    """A `.json` model config is registered with open_clip under its file stem; other names pass."""
    if model.endswith(".json") and os.path.isfile(model):
        import open_clip

        open_clip.add_model_config(Path(model).absolute())
        return Path(model).stem
    return model


def preprocess_config(model: str, pretrained: str | None) -> dict:
    """open_clip's inference preprocessing settings for a model, without building the model.

    Same sources as open_clip's factory: defaults, the architecture's image size, the pretrained
    tag's settings, a local/hub config's `preprocess_cfg`. `setup` checks the loaded model agrees.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    name = _register_config(model)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(
            f"unknown open_clip model {model!r} (a name from open_clip.list_models(), "
            "local-dir:/folder, hf-hub:org/repo, or a model config .json)"
        )
    pp = asdict(PreprocessCfg())
    if name.startswith(("local-dir:", "hf-hub:")):
        raw = _schema_config(name)
        pp = merge_preprocess_dict(pp, raw.get("preprocess_cfg", {}))
    elif pretrained and (tag_cfg := open_clip.get_pretrained_cfg(name, pretrained)):
        pp = merge_preprocess_dict(pp, tag_cfg)
    size = cfg.get("vision_cfg", {}).get("image_size")
    if size is None:
        raise ValueError(f"model {model!r} declares no vision_cfg.image_size; datakit cannot size its frames")
    pp["size"] = size
    return pp


def _schema_config(name: str) -> dict:
    from open_clip.factory import _get_hf_config

    schema, ident = name.split(":", 1)
    if schema == "local-dir":
        return json.loads((Path(ident) / "open_clip_config.json").read_text())
    return _get_hf_config(ident)


@functools.lru_cache(maxsize=4)
def image_transform(model: str, pretrained: str | None):
    """PIL image -> normalised tensor, as open_clip preprocesses for inference."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**preprocess_config(model, pretrained)), is_train=False)


def _same_cfg(a: dict, b: dict) -> bool:
    def norm(d: dict) -> dict:
        out = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in d.items()}
        if isinstance(out.get("size"), int):
            out["size"] = (out["size"], out["size"])
        return out

    return norm(a) == norm(b)


@torch.no_grad()
def in_fixed_calls(fn, x: torch.Tensor, rows: int) -> torch.Tensor:
    """fn over the rows of x in calls of exactly `rows` rows (the last one zero-padded).

    A matrix product's kernel (its blocking and reduction order) depends on the number of rows, so
    a row's result changes by ~1e-7 with the size of the batch it travels in; at a fixed shape it
    does not depend on its neighbours or its position. So a clip scores the same bits whichever
    clips share its batch (a rerun after a kill batches the remaining clips differently).
    """
    outs = []
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows]
        if len(chunk) < rows:
            chunk = torch.cat([chunk, chunk.new_zeros((rows - len(chunk), *chunk.shape[1:]))])
        outs.append(fn(chunk)[: min(rows, len(x) - start)])
    return torch.cat(outs) if outs else fn(x)


@dataclass
class Clip:
    model: Any
    tokenizer: Any
    device: str
    embed_dim: int

    def _autocast(self):
        enabled = self.device.startswith("cuda")
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, call_rows: int | None = None) -> torch.Tensor:
        """(N, 3, S, S) preprocessed pixels -> (N, D) L2-normalised float32 embeddings.

        One model call; with `call_rows`, calls of exactly that many rows (see `in_fixed_calls`).
        """

        def encode(x: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                out = self.model.encode_image(x.to(self.device, non_blocking=True))
            return nn.functional.normalize(out.float(), dim=-1)

        return encode(pixels) if call_rows is None else in_fixed_calls(encode, pixels, call_rows)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], call_rows: int | None = None) -> torch.Tensor:
        """Texts -> (N, D) L2-normalised float32 embeddings; `call_rows` as in `encode_images`."""

        def encode(tokens: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                out = self.model.encode_text(tokens)
            return nn.functional.normalize(out.float(), dim=-1)

        tokens = self.tokenizer(texts).to(self.device)
        return encode(tokens) if call_rows is None else in_fixed_calls(encode, tokens, call_rows)


def load_clip(model: str, pretrained: str | None, device: str = "cpu", cache_dir: str | None = None) -> Clip:
    """A CLIP model in eval mode on `device`; refuses to run with random weights unless none were asked."""
    import open_clip

    name = _register_config(model)
    net, _, _ = open_clip.create_model_and_transforms(
        name,
        pretrained=pretrained or None,
        device=device,
        cache_dir=cache_dir,
        require_pretrained=bool(pretrained),
    )
    net.eval()
    expected = preprocess_config(model, pretrained)
    actual = open_clip.get_model_preprocess_cfg(net)
    if not _same_cfg({k: actual.get(k) for k in expected}, expected):
        raise RuntimeError(
            f"preprocessing of {model} differs from what datakit derived: {actual} vs {expected}"
        )
    embed_dim = (
        int(net.text_projection.shape[1]) if getattr(net, "text_projection", None) is not None else None
    )
    if embed_dim is None:
        embed_dim = int(open_clip.get_model_config(name)["embed_dim"])
    return Clip(net, open_clip.get_tokenizer(name), device, embed_dim)


# ----------------------------------------------------------------------------- tiny random models
TINY_CLIP_CONFIG = {
    "embed_dim": 768,  # the aesthetic head's input size (as ViT-L/14's)
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_clip(folder: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """A tiny RANDOM open_clip model: (config .json, weights .pt). Load with load_clip(config, weights)."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "tiny-random-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    torch.manual_seed(seed)
    open_clip.add_model_config(config.absolute())
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # open_clip warns that no weights were loaded: none exist
    try:
        net = open_clip.create_model(config.stem, pretrained=None)
    finally:
        root.level = level
    weights = folder / "tiny-random-clip.pt"
    torch.save(net.state_dict(), weights)
    return config, weights


def save_tiny_aesthetic_head(path: str | os.PathLike, in_features: int = 768, seed: int = 0) -> Path:
    """A RANDOM head with the released layout (keys layers.0/2/4/6/7), saved as a plain state dict."""
    torch.manual_seed(seed)
    head = AestheticHead(in_features)
    with torch.no_grad():  # scale the output to about 5 +- 1.5 on random unit vectors (recipes select some)
        probe = nn.functional.normalize(torch.randn(256, in_features), dim=-1)
        head.layers[7].weight.mul_(1.5 / head(probe).std())
        head.layers[7].bias.add_(5.0 - head(probe).mean())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), path)
    return path
