"""Shared pieces of the score stages: model keys, reproducible frame positions, frame reading.

Versioned model outputs (scores, embeddings) are keyed by `row_id = <clip_id>:<model_key>`, where
the model key is a short hash of everything that changes the output (model, weights, settings and
our own scorer version). A rerun with other weights writes rows under a new key instead of
overwriting; the `clips` view shows the latest row (`scored_at`) per clip.

Frames are read at fixed fractions of a clip's span, so reruns read the same frames. Videos are
read with mediaio's frame-exact reader, upright; an image is a one-frame video. Nothing heavy is
imported at module level.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from datakit.clip_keys import CLIP_SPANS_SQL
from datakit.stage import OptionError, Rows, Stage, option
from datakit.tables import Column

_WEIGHT_SUFFIXES = (".json", ".pt", ".pth", ".bin", ".safetensors", ".npz")
# Consecutive wanted frames at most this far apart are decoded in one pass instead of two seeks.
_ONE_PASS_GAP = 48


def model_key(**parts) -> str:
    """Short stable hash of the settings that determine a model's output."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


@functools.lru_cache(maxsize=32)
def _digest_cached(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """Content hash of a weights file (cached per path, size and mtime)."""
    st = os.stat(path)
    return _digest_cached(str(Path(path).absolute()), st.st_size, st.st_mtime_ns)


def weights_ref(ref: str | None) -> str | None:
    """How a weights reference enters a model key: a local file by its content, a tag or URL as is."""
    if ref and os.path.isfile(ref):
        return f"file:{file_digest(ref)}"
    return ref


def describe_ref(ref: str | None) -> str:
    """A weights reference for humans: a file with its content hash, a tag or URL as is; None: RANDOM."""
    if not ref:
        return "RANDOM"
    return f"{ref} (blake2b {file_digest(ref)})" if os.path.isfile(ref) else ref


def missing_local_ref(ref: str | None) -> bool:
    """Whether a model or weights reference names a local file or folder that does not exist.

    Local: `local-dir:PATH`, a path with a separator, or a weights/config file name. Tags, open_clip
    names, `hf-hub:` names and URLs are not local."""
    if not ref or ref.startswith(("http://", "https://", "hf-hub:")):
        return False
    path = ref.removeprefix("local-dir:")
    local = ref.startswith("local-dir:") or os.sep in path or path.endswith(_WEIGHT_SUFFIXES)
    return local and not Path(path).exists()


def clip_model_id(model: str) -> str:
    """An open_clip model as it enters a model key: a config .json by its content, names as they are."""
    return f"config:{file_digest(model)}" if model.endswith(".json") and os.path.isfile(model) else model


def now() -> float:
    return time.time()


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def frame_positions(start: int, end: int, fractions: list[float] | tuple[float, ...]) -> list[int]:
    """Frame indices at `fractions` of the span [start, end): start + floor(f * n), clamped inside."""
    n = end - start
    if n <= 0:
        raise ValueError(f"empty clip span [{start}, {end})")
    return [start + min(n - 1, max(0, int(f * n))) for f in fractions]


def read_frames_at(
    path: str | os.PathLike, indices: list[int], *, size: int | tuple[int, int] | None = None
) -> list[np.ndarray]:
    """Upright RGB frames at the given indices (any order, repeats allowed), frame-exact (mediaio).

    Nearby indices share one decode pass; distant ones each seek to their own keyframe. An image is
    a one-frame video (index 0). Raises ValueError when the file ends before a wanted frame."""
    from mediaio import iter_frames_at

    wanted = sorted(set(indices))
    groups: list[list[int]] = []
    for i in wanted:
        if groups and i - groups[-1][-1] <= _ONE_PASS_GAP:
            groups[-1].append(i)
        else:
            groups.append([i])
    got: dict[int, np.ndarray] = {}
    for group in groups:
        got.update(zip(group, iter_frames_at(path, group, size=size), strict=False))
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ValueError(f"frames {missing} are past the end of {path}")
    return [got[i] for i in indices]


# What the score stages read per clip: the source span, and the cut file as a fallback.
CLIP_ITEMS_SQL = f"""
    SELECT c.clip_id, c.media_type, c.source_path, c.start_frame, c.end_frame, c.fps,
           k.path AS cut_path, k.num_frames AS cut_frames, k.fps AS cut_fps
    FROM ({CLIP_SPANS_SQL}) c  -- the spans without the score joins (datakit.clip_keys)
    LEFT JOIN (SELECT * FROM _latest_cuts WHERE status = 'ok') k USING (clip_id)
"""


def clip_file(item: dict) -> tuple[str, int, int, float | None, str]:
    """(file, start, end, fps, 'source' or 'cut') to read a clip row of CLIP_ITEMS_SQL from.

    The source span when the source file exists (exact, any frame rate), else the whole cut file
    (the rule of `datakit.sets.media_path`, which the trainer uses too)."""
    from datakit.sets import media_path

    source = item["source_path"]
    path, is_cut = media_path({"source_path": source, "path": item.get("cut_path")}, "source")
    if path and not is_cut:
        return source, int(item["start_frame"]), int(item["end_frame"]), item["fps"], "source"
    if path:
        return path, 0, int(item["cut_frames"]), item["cut_fps"], "cut"
    raise FileNotFoundError(f"neither the source {source} nor a cut file of clip {item['clip_id']} exists")


def latest_ok_sql(table: str, columns: str, *, key: str = "clip_id") -> str:
    """The newest ok row per clip of a versioned score table (by `scored_at`)."""
    return (
        f"SELECT {key}, {columns} FROM _latest_{table} WHERE status = 'ok' "
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY scored_at DESC, row_id DESC) = 1"
    )


# ------------------------------------------------------------------------------- score stages
def identity_columns(key_doc: str, model_doc: str) -> tuple[Column, ...]:
    """clip_id, model_key and model: the columns every versioned score row carries."""
    return (
        Column("clip_id", "VARCHAR", "id of the clip"),
        Column("model_key", "VARCHAR", key_doc),
        Column("model", "VARCHAR", model_doc),
    )


@dataclass(kw_only=True)
class ScoreStage(Stage):
    """A stage whose rows are versioned by model: `row_id = <clip_id>:<score_key>`, each row
    (error rows included) with the identity columns and the time it was written."""

    time_column: ClassVar[str] = "scored_at"

    @property
    def score_key(self) -> str:
        raise NotImplementedError

    @property
    def score_model(self) -> str:
        """Readable: the model, weights and versions behind `score_key`."""
        raise NotImplementedError

    def identity(self, item: dict) -> dict:
        return {"clip_id": item["clip_id"], "model_key": self.score_key, "model": self.score_model}

    def failure_extra(self, item: dict) -> dict:
        """Columns besides the identity that an error row keeps (e.g. the caption it compared)."""
        return {}

    def failure_rows(self, item: dict, exc: BaseException) -> Rows:
        rows = super().failure_rows(item, exc)
        for row in rows[self.marker_table]:
            row.update(self.identity(item), **self.failure_extra(item), **{self.time_column: now()})
        return rows


@dataclass(kw_only=True)
class ClipOptions:
    """The open_clip options of every CLIP stage (aesthetic, text match): one declaration, so the
    stages share names, defaults and checks and cannot silently default to different models."""

    model: str = option(
        "ViT-L-14", "open_clip model: a name, local-dir:/folder, hf-hub:org/repo or a config .json."
    )
    pretrained: str | None = option(
        "openai", "open_clip pretrained tag or weights file (none: random weights)."
    )
    cache_dir: str | None = option(None, "Where open_clip (and torch hub) cache downloaded weights.")

    def check_clip_refs(self, *extra: tuple[str, str | None]) -> None:
        for label, ref in (("model", self.model), ("pretrained", self.pretrained), *extra):
            if missing_local_ref(ref):
                raise OptionError(f"{self.name}: {label} not found: {ref}")  # type: ignore[attr-defined]

    def clip_identity(self) -> dict:
        """What of the CLIP model enters a model key."""
        return {"model": clip_model_id(self.model), "pretrained": weights_ref(self.pretrained)}

    def clip_model_description(self) -> str:
        from importlib.metadata import version

        return f"open_clip {self.model} pretrained={describe_ref(self.pretrained)} (open_clip {version('open_clip_torch')})"
