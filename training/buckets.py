"""Shape buckets: every clip gets one (frames, height, width) so a batch shares a shape.

Sizes per resolution R keep the area of an R×R square for each aspect ratio (16:9 at 256 px is
192×336), rounded to a multiple of the latent patch (VAE factor × STDiT patch, 16 for 1.0). A clip
takes the aspect ratio closest to its own (in log space), the largest resolution not above its short
side (the smallest when none is), and the largest frame count whose span at the frame interval fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .config import DataConfig, parse_ratio


@dataclass(frozen=True, order=True)
class Bucket:
    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def size_for(resolution: int, ratio: float, multiple: int) -> tuple[int, int]:
    """(height, width) with width/height ≈ ratio and area ≈ resolution², multiples of `multiple`."""
    height = resolution / math.sqrt(ratio)
    width = resolution * math.sqrt(ratio)
    return (
        max(multiple, round(height / multiple) * multiple),
        max(multiple, round(width / multiple) * multiple),
    )


def frames_bucket(span: int, num_frames: list[int], interval: int) -> int | None:
    """Largest frame count whose window ((n - 1) * interval + 1 frames) fits in `span` frames."""
    fitting = [n for n in num_frames if (n - 1) * interval + 1 <= span]
    return max(fitting) if fitting else None


def assign_bucket(row: dict[str, Any], cfg: DataConfig, multiple: int) -> Bucket | None:
    """The bucket of a clip, or None when it is too short for the smallest frame count."""
    frames = frames_bucket(
        int(row["end_frame"]) - int(row["start_frame"]), cfg.num_frames, cfg.frame_interval
    )
    if frames is None:
        return None
    width, height = int(row["width"] or 0), int(row["height"] or 0)
    ratio = width / height if width > 0 and height > 0 else 1.0
    short = min(width, height) if width > 0 and height > 0 else 0
    fitting = [r for r in cfg.resolution if r <= short]
    resolution = max(fitting) if fitting else min(cfg.resolution)
    ratios = [parse_ratio(r) for r in cfg.aspect_ratios] or [1.0]
    best = min(ratios, key=lambda r: abs(math.log(r / ratio)))
    h, w = size_for(resolution, best, multiple)
    return Bucket(frames, h, w)
