"""The feature cache, trainer side: which cache a config reads, its shards, the run's frozen index.

`datakit features` (training/features_stage.py) stores, for each clip of a selection and a
training config, the VAE posterior (mean and std, scaled like the latents) of the clip's centred
window, unflipped, and the T5 embedding of its caption (valid tokens only) with the token mask, in
safetensors shards under `<workspace>/data/features/<key>/`. Tensors keep the dtype the encoders
ran in (bf16 on GPU, fp32 on CPU).

A run with `data.source=features` freezes the rows it needs into `<run>/data/features.parquet` at
launch and then reads shards only: no decoding, no VAE or T5 in the step. Latents are drawn from
the stored posterior with the step's generator in the order and layout `VideoAutoencoderKL.encode`
draws them, so a step sees the latents of the online path (up to float rounding of the scaling).
The cache holds one window per clip without flips: no temporal jitter or flip augmentation.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .buckets import Bucket
from .config import RunConfig
from .selection import SelectionError

FEATURES_VERSION = 1  # bump when a change here or in the stage changes what a shard holds
INDEX_FILE = "features.parquet"  # in <run>/data/
ENTRY_TENSORS = ("mean", "std", "text", "mask")
INDEX_COLUMNS = ("clip_id", "status", "error", "shard", "shard_index", "frames", "height", "width")


# ------------------------------------------------------------------------------------ keys
def model_ref(ref: str) -> str:
    """How an encoder enters the key: a local folder by its absolute path, a hub id as it is."""
    return f"local:{Path(ref).resolve()}" if os.path.exists(ref) else ref


def features_key(cfg: RunConfig) -> str:
    """Short hash of everything that changes the cached tensors of a training config."""
    from datakit.scoring import model_key

    from .build import stdit_arch

    m, d = cfg.model, cfg.data
    if m.tiny:  # built on first use from fixed seeds: the folder names them
        vae, t5 = (f"tiny:{Path(m.tiny_dir).resolve() / name}" for name in ("vae", "t5"))
    else:
        vae, t5 = model_ref(m.vae), model_ref(m.text_encoder)
    return model_key(
        vae=vae,
        text_encoder=t5,
        model_max_length=m.model_max_length,
        num_frames=d.num_frames,
        frame_interval=d.frame_interval,
        resolution=d.resolution,
        aspect_ratios=d.aspect_ratios,
        patch=stdit_arch(cfg)["patch_size"][1:],
        version=FEATURES_VERSION,
    )


def caption_md5(caption: str | None) -> str:
    """The caption digest rows carry (DuckDB's md5() of the same UTF-8 text gives the same)."""
    return hashlib.md5((caption or "").encode()).hexdigest()


# ------------------------------------------------------------------------------------ shards
def shard_name(key: str, clip_ids: Sequence[str]) -> str:
    """Content-addressed: the same clips under the same key always land in the same file, so a
    batch redone after a kill replaces its shard instead of adding one."""
    digest = hashlib.blake2b("\n".join(clip_ids).encode(), digest_size=10).hexdigest()
    return f"{key}/{digest}.safetensors"


def write_shard(path: Path, entries: Sequence[dict[str, torch.Tensor]], metadata: dict[str, str]) -> None:
    """One safetensors file, `<i>/<tensor>` per clip (CPU tensors that share no storage); written
    to a temp name, synced, renamed."""
    from safetensors.torch import save_file

    tensors = {f"{i}/{name}": t.contiguous() for i, e in enumerate(entries) for name, t in e.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_entry(path: str | os.PathLike, index: int) -> dict[str, torch.Tensor]:
    """The tensors of clip `index` of a shard (only those are read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(f"{index}/{name}") for name in ENTRY_TENSORS}


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, C, T, h, w) posterior -> latents: mean + std · noise, the noise drawn in the VAE's frame
    layout (B·T, C, h, w) as `VideoAutoencoderKL.encode` draws it; the mean without a generator."""
    if generator is None:
        return mean
    from diffusers.utils.torch_utils import randn_tensor

    b, c, t, h, w = mean.shape
    noise = randn_tensor((b * t, c, h, w), generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def padded_text(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(L, C) caption embedding from its valid tokens: zeros where the mask is 0 (the model gives
    masked tokens exactly zero attention, so what they hold never matters)."""
    out = text.new_zeros((mask.shape[0], text.shape[-1]))
    out[mask.bool()] = text
    return out


# ------------------------------------------------------------------------------------ the run's index
def freeze_index(run_dir: Path, workspace: Path, cfg: RunConfig, rows: Sequence[dict[str, Any]]) -> None:
    """Look up the cached features of every row and write `<run>/data/features.parquet`.

    Clips with no row under this config's key, or whose caption changed since, stop the launch
    with the count, examples and the command that computes them; clips the stage failed on
    (status 'error') are kept in the index and left out of training like undecodable clips."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datakit.workspace import Workspace, WorkspaceError

    key = features_key(cfg)
    try:
        ws = Workspace(workspace, create=False)
        columns = ", ".join(INDEX_COLUMNS)
        found = ws.sql(f"SELECT {columns}, caption_md5 FROM features WHERE model_key = ?", [key])
    except WorkspaceError as err:
        raise SelectionError(f"data.source=features: {err}") from None
    by_clip = {r["clip_id"]: r for r in found}
    missing = [r["clip_id"] for r in rows if r["clip_id"] not in by_clip]
    stale = [
        r["clip_id"]
        for r in rows
        if r["clip_id"] in by_clip and by_clip[r["clip_id"]]["caption_md5"] != caption_md5(r.get("caption"))
    ]
    if missing or stale:
        counts = [f"{len(missing)} have none"] if missing else []
        counts += [f"{len(stale)} were cached for an older caption"] if stale else []
        selection = Path(run_dir) / "data" / "rows.parquet"
        command = (
            f"python cli.py datakit features -w {ws.root} --selection {selection} "
            f"--train-stage {cfg.stage}{' --preset tiny' if cfg.model.tiny else ''}"
        )
        raise SelectionError(
            f"data.source=features: of the {len(rows)} clips, {' and '.join(counts)} under this config's "
            f"features key {key} (e.g. {', '.join((missing + stale)[:3])}). Compute them with\n  {command}\n"
            "plus this launch's --config / overrides as --train-config / -o 'overrides=[...]', "
            "then launch again."
        )
    stage_dir = ws.root / "data" / "features"
    index = [{k: by_clip[r["clip_id"]][k] for k in INDEX_COLUMNS} for r in rows]
    for entry in index:  # absolute paths: the run does not need the workspace again
        entry["shard"] = str(stage_dir / entry["shard"]) if entry["shard"] else None
    check_shards(index)
    tmp = Path(run_dir) / "data" / f".{INDEX_FILE}.tmp"
    pq.write_table(pa.Table.from_pylist(index), tmp)
    os.replace(tmp, tmp.with_name(INDEX_FILE))


def load_index(run_dir: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    path = Path(run_dir) / "data" / INDEX_FILE
    if not path.is_file():
        raise SelectionError(f"{run_dir} trains from features but has no {path}")
    return {r["clip_id"]: r for r in pq.read_table(path).to_pylist()}


def check_shards(index: Sequence[dict[str, Any]], examples: int = 5) -> None:
    """Fail fast when shards of the index moved or vanished."""
    lost = sorted({e["shard"] for e in index if e["shard"] and not os.path.isfile(e["shard"])})
    if lost:
        shown = "\n".join(f"  {p}" for p in lost[:examples])
        raise SelectionError(
            f"{len(lost)} feature shard(s) of this run are missing (moved or deleted?):\n{shown}"
        )


# ------------------------------------------------------------------------------------ the dataset
class FeatureDataset(Dataset):
    """Rows of a frozen selection read from the cache: posterior (mean, std), padded caption
    embedding `y` (L, C) and its `mask` (L,). Clips without usable features get no bucket (the
    sampler leaves them out); a shard that fails to read becomes a `failed` entry of its batch."""

    def __init__(self, rows: Sequence[dict[str, Any]], index: dict[str, dict[str, Any]]):
        self.rows = [{"clip_id": r["clip_id"], "caption": r.get("caption") or ""} for r in rows]
        self.entries = [index[r["clip_id"]] for r in rows]
        self.buckets: list[Bucket | None] = [
            Bucket(e["frames"], e["height"], e["width"]) if e["status"] == "ok" and e["shard"] else None
            for e in self.entries
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index = key if isinstance(key, int) else key.index
        row, entry = self.rows[index], self.entries[index]
        try:
            if self.buckets[index] is None:  # the sampler never asks for these
                raise ValueError(f"no features: {entry['error'] or entry['status']}")
            t = read_entry(entry["shard"], entry["shard_index"])
            return {
                "index": index,
                "clip_id": row["clip_id"],
                "caption": row["caption"],
                "bucket": self.buckets[index],
                "mean": t["mean"],
                "std": t["std"],
                "y": padded_text(t["text"], t["mask"]),
                "mask": t["mask"].long(),
            }
        except Exception as err:  # a damaged shard is data, not a crash
            return {"index": index, "clip_id": row["clip_id"], "error": f"{type(err).__name__}: {err}"}

    def excluded(self) -> list[tuple[str, str]]:
        """(clip_id, why) of the clips the features stage could not encode."""
        return [
            (r["clip_id"], e["error"] or e["status"])
            for r, e, b in zip(self.rows, self.entries, self.buckets, strict=True)
            if b is None
        ]
