"""Motion score: OpenCV Farneback optical flow on downscaled frame pairs (CPU), and a static flag.

`pairs` frame pairs are taken at evenly spaced positions of the clip span, the two frames of a pair
`gap_s` seconds apart. Frames are shrunk to `short_side` pixels (short side), turned to grey, and
the mean flow magnitude of each pair is divided by the short side and by the pair's time gap, so
`motion` reads "short sides per second": 0.25 means content crosses a quarter of the frame's short
side each second, whatever the resolution or frame rate. `static` is motion < `static_threshold`.
Images (one frame) have no motion and are not scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from datakit.scoring import (
    CLIP_ITEMS_SQL,
    ScoreStage,
    clip_file,
    identity_columns,
    model_key,
    now,
    read_frames_at,
    sql_str,
)
from datakit.stage import option
from datakit.tables import ClipColumns, Table
from datakit.tables import Column as C

SCORER_VERSION = 1

TABLES = (
    Table.marker(
        "motion_scores",
        C("row_id", "VARCHAR", "'<clip_id>:<model_key>'"),
        "Optical-flow motion per clip and settings. Written by `score motion`.",
        (
            *identity_columns(
                "short hash of the flow settings, threshold and scorer version",
                "readable: method, OpenCV version and settings",
            ),
            C("motion", "DOUBLE", "mean flow magnitude in short sides per second"),
            C("static", "BOOLEAN", "motion below the static threshold"),
            C("pair_motion", "FLOAT[]", "motion of each frame pair"),
            C("frames", "VARCHAR", 'JSON: {"file": "source" or "cut", "pairs": [[i, j], ...]}'),
            C("scored_at", "DOUBLE", "unix time of scoring"),
        ),
    ),
)


def pair_indices(start: int, end: int, fps: float, pairs: int, gap_s: float) -> list[tuple[int, int]]:
    """`pairs` (i, i + gap) inside [start, end), at evenly spaced positions; gap = gap_s in frames (>= 1)."""
    n = end - start
    if n < 2:
        raise ValueError(f"a clip of {n} frame(s) has no motion")
    gap = min(n - 1, max(1, round(fps * gap_s)))
    first = [start + int((k + 0.5) * n / pairs) for k in range(pairs)]
    return sorted({(min(i, end - 1 - gap), min(i, end - 1 - gap) + gap) for i in first})


def flow_magnitude(a, b) -> float:
    """Mean Farneback flow magnitude (pixels) between two grey frames."""
    import cv2
    import numpy as np

    flow = cv2.calcOpticalFlowFarneback(
        a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
    )
    return float(np.linalg.norm(flow, axis=2).mean())


@dataclass(kw_only=True)
class MotionStage(ScoreStage):
    """Optical-flow motion of each video clip (Farneback on CPU) and a static-clip flag."""

    name = "motion"
    marker_table = "motion_scores"
    tables = TABLES
    after = ("cut",)
    clip_columns = (ClipColumns("motion_scores", ("motion", "static")),)
    cli_path = ("score", "motion")

    pairs: int = option(4, "Frame pairs per clip, evenly spaced over the span.", min=1)
    gap_s: float = option(0.1, "Seconds between the two frames of a pair (at least one frame).", min=0)
    short_side: int = option(128, "Frames are shrunk to this short side before the flow.", min=16)
    static_threshold: float = option(
        0.01, "Motion (short sides per second) below which a clip is static.", min=0
    )
    commit_every: int = option(128, "Items per committed part file.", min=1)

    @cached_property
    def settings_key(self) -> str:
        return model_key(
            method="farneback",
            pairs=self.pairs,
            gap_s=self.gap_s,
            short_side=self.short_side,
            static_threshold=self.static_threshold,
            version=SCORER_VERSION,
        )

    @cached_property
    def description(self) -> str:
        import cv2

        return (
            f"farneback (OpenCV {cv2.__version__}) pairs={self.pairs} gap_s={self.gap_s} "
            f"short_side={self.short_side} static<{self.static_threshold}"
        )

    def items_sql(self) -> str:
        return (
            f"SELECT *, clip_id || ':' || {sql_str(self.settings_key)} AS row_id "
            f"FROM ({CLIP_ITEMS_SQL}) WHERE media_type = 'video'"
        )

    def process(self, item: dict) -> dict:
        import cv2

        path, start, end, fps, kind = clip_file(item)
        if not fps:
            raise ValueError(f"clip {item['clip_id']} has no frame rate")
        pairs = pair_indices(start, end, float(fps), self.pairs, self.gap_s)
        wanted = [i for pair in pairs for i in pair]
        grey = dict(
            zip(
                wanted,
                (
                    cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
                    for f in read_frames_at(path, wanted, size=self.short_side)
                ),
                strict=True,
            )
        )
        short = min(next(iter(grey.values())).shape)
        per_pair = [flow_magnitude(grey[i], grey[j]) / short / ((j - i) / float(fps)) for i, j in pairs]
        motion = sum(per_pair) / len(per_pair)
        row = {
            "row_id": item["row_id"],
            "clip_id": item["clip_id"],
            "model_key": self.settings_key,
            "model": self.description,
            "status": "ok",
            "motion": motion,
            "static": motion < self.static_threshold,
            "pair_motion": per_pair,
            "frames": json.dumps({"file": kind, "pairs": pairs}),
            "scored_at": now(),
        }
        return {"motion_scores": [row]}

    @property
    def score_key(self) -> str:
        return self.settings_key

    @property
    def score_model(self) -> str:
        return self.description
