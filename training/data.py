"""Clip dataset: decode only a clip's span with PyAV, pick frames, resize, crop, flip, normalise.

An item is addressed by a `SampleKey` (row index, epoch) from the sampler; all of its randomness
(temporal window, flip) comes from a generator seeded by (seed, epoch, index), so a sample is the
same whichever worker decodes it and whether or not the run was resumed. A clip that fails to
decode becomes a `failed` entry of its batch (counted and logged by the trainer), never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import astuple
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mediaio import iter_frames_at

from .buckets import Bucket, assign_bucket
from .config import DataConfig
from .selection import media_path

log = logging.getLogger(__name__)


class SampleKey(NamedTuple):
    index: int
    epoch: int


class ClipDecodeError(RuntimeError):
    pass


def window_frames(
    start: int, end: int, frames: int, interval: int, rng: np.random.Generator | None
) -> list[int]:
    """Source frame indices of a sample: `frames` frames `interval` apart inside [start, end).

    The window starts at a random offset (`rng`) or, without one, is centred (validation).
    """
    window = (frames - 1) * interval + 1
    slack = end - start - window
    if slack < 0:
        raise ClipDecodeError(
            f"span of {end - start} frames is shorter than {frames} frames at interval {interval}"
        )
    offset = int(rng.integers(0, slack + 1)) if rng is not None else slack // 2
    return [start + offset + k * interval for k in range(frames)]


def resize_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale to cover height×width (aspect kept), then take the centre."""
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        frame = cv2.resize(frame, (new_w, new_h), interpolation=interp)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return frame[top : top + height, left : left + width]


def decode_frames(path: str, indices: Sequence[int]) -> list[np.ndarray]:
    """Upright RGB frames at `indices` (ascending), decoded from the span they cover only."""
    frames = list(iter_frames_at(path, indices))
    if len(frames) != len(indices):
        raise ClipDecodeError(
            f"decoded {len(frames)} of {len(indices)} frames in [{indices[0]}, {indices[-1]}]"
        )
    return frames


def to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
    return video.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def clip_window(
    row: dict[str, Any], bucket: Bucket, cfg: DataConfig, rng: np.random.Generator | None
) -> list[int]:
    """Source frame indices of a clip's sample: a random window with `rng`, else the centred one.
    A 1-frame sample of a row with a `frame` (the @image recipe's chosen frame) is that frame."""
    if bucket.frames == 1 and row.get("frame") is not None:
        return [int(row["frame"])]
    start, end = int(row["start_frame"]), int(row["end_frame"])
    return window_frames(start, end, bucket.frames, cfg.frame_interval, rng)


def load_clip(
    row: dict[str, Any], bucket: Bucket, cfg: DataConfig, indices: list[int], flip: bool = False
) -> torch.Tensor:
    """(3, T, H, W) in [-1, 1]: the frames at `indices` decoded from their span only, resized to
    cover the bucket, centre-cropped, optionally flipped."""
    path, is_cut = media_path(row, cfg.prefer)
    if path is None:
        raise ClipDecodeError("file not found")
    if is_cut:  # a cut file starts at the clip's first frame
        indices = [i - int(row["start_frame"]) for i in indices]
    frames = [resize_crop(f, bucket.height, bucket.width) for f in decode_frames(path, indices)]
    if flip:
        frames = [f[:, ::-1] for f in frames]
    return to_tensor(frames)


class ClipDataset(Dataset):
    """Rows of a frozen selection as (3, T, H, W) videos in [-1, 1] plus their captions.

    `multiple`: bucket sizes are multiples of it (VAE downsampling × STDiT patch).
    `train=False`: centred windows and no flip (the validation slice).
    """

    def __init__(
        self, rows: Sequence[dict[str, Any]], cfg: DataConfig, multiple: int, seed: int, train: bool = True
    ):
        keep = ("clip_id", "source_path", "path", "start_frame", "end_frame", "caption", "frame")
        self.rows = [{k: r.get(k) for k in keep} for r in rows]
        self.buckets: list[Bucket | None] = [assign_bucket(r, cfg, multiple) for r in rows]
        self.cfg, self.seed, self.train = cfg, seed, train

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, int) else key
        row, bucket = self.rows[index], self.buckets[index]
        try:
            if bucket is None:
                raise ClipDecodeError("too short for the smallest frame count")
            rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
            indices = clip_window(row, bucket, self.cfg, rng)  # drawn before the flip
            flip = self.train and self.cfg.flip and bool(rng.random() < 0.5)
            video = load_clip(row, bucket, self.cfg, indices, flip)
            return {
                "index": index,
                "clip_id": row["clip_id"],
                "caption": row["caption"] or "",
                "bucket": bucket,
                "video": video,
            }
        except Exception as err:  # any decoder failure is data, not a crash
            return {"index": index, "clip_id": row["clip_id"], "error": f"{type(err).__name__}: {err}"}


def collate(items: list[dict[str, Any]], tensors: Sequence[str] = ("video",)) -> dict[str, Any]:
    """Stack the decoded samples of a batch (`tensors`: None when none decoded); failed ones go to
    `failed` as (clip_id, error). `bucket` is the batch's (frames, height, width) in pixels."""
    good = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {
        name: torch.stack([it[name] for it in good]) if good else None for name in tensors
    }
    batch.update(
        caption=[it["caption"] for it in good],
        clip_id=[it["clip_id"] for it in good],
        bucket=list(astuple(good[0]["bucket"])) if good else None,
        failed=[(it["clip_id"], it["error"]) for it in items if "error" in it],
    )
    return batch


def worker_init(_: int) -> None:
    """Loader workers decode; keep each to one OpenCV / torch thread so they do not oversubscribe."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
