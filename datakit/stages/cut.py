"""Cut: extract clip spans as frame-exact H.264 files (PyAV re-encode; no ffmpeg binary, no shell).

Each clip is read with the frame-exact reader (seek to the keyframe before the start, decode
forward, frames identified by pts), optionally resampled by frame picking and resized, then
encoded with libx264/yuv420p to `<clips>/<video_id>/<clip_id>.mp4` through a temporary name and a
rename, so a file under its final name is always complete.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from datakit.stage import Stage, WorkerContext, option
from datakit.tables import Column as C
from datakit.tables import Table

TABLES = (
    Table.marker(
        "cuts",
        C("clip_id", "VARCHAR", "id of the clip"),
        "Extracted clip files. Written by `cut`.",
        (
            C("path", "VARCHAR", "absolute path of the extracted clip file"),
            C("width", "INTEGER", "width of the extracted file"),
            C("height", "INTEGER", "height of the extracted file"),
            C("fps", "DOUBLE", "frame rate of the extracted file"),
            C("num_frames", "BIGINT", "frames written"),
            C("bytes", "BIGINT", "file size"),
            C("params", "VARCHAR", "JSON of the cut settings (fps, short_side, crf, preset)"),
        ),
    ),
)

MAX_PIXELS_DEFAULT = 8192 * 4352  # mediaio.MAX_PIXELS (not imported here: listing stages stays cheap)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(kw_only=True)
class CutStage(Stage):
    """One item per clip span; writes one clip file and one `cuts` row."""

    name = "cut"
    marker_table = "cuts"
    tables = TABLES
    after = ("scenes",)
    run_by_default = False  # clip files are optional: training reads spans from the sources
    order_by = "i.video_id, i.start_frame"  # consecutive clips of one video hit a warm page cache

    fps: float | None = option(
        None, "Target frame rate by frame picking (never upsamples); default: the source's.", min=0.1
    )
    short_side: int | None = option(
        None, "Resize so the short side is this (even sizes); default: keep.", min=2
    )
    crf: int = option(18, "libx264 quality (lower is better).", min=0, max=51)
    preset: str = option("veryfast", "libx264 speed preset.", choices=PRESETS)
    max_pixels: int = option(MAX_PIXELS_DEFAULT, "Refuse sources with larger frames (0: no limit).", min=0)
    commit_every: int = option(32, "Items per committed part file.", min=1)

    def begin_run(self, ctx: WorkerContext) -> None:
        removed = clean_stale_temps(ctx.clips_dir)  # no worker runs yet: every temp is a leftover
        if removed:
            print(f"cut: removed {removed} temporary file(s) left by a killed run")

    def setup(self, ctx: WorkerContext) -> None:
        self._out_dir = ctx.clips_dir

    def items_sql(self) -> str:
        from datakit.clip_keys import CLIP_SPANS_SQL  # the rows of `clips` without its score joins

        return f"""
            SELECT clip_id, video_id, start_frame, end_frame, fps, width, height, source_path AS path
            FROM ({CLIP_SPANS_SQL})
            WHERE media_type = 'video'  -- images need no clip file
        """

    def process(self, item: dict) -> dict[str, list[dict]]:
        row = cut_clip(
            item["path"],
            Path(self._out_dir) / item["video_id"] / f"{item['clip_id']}.mp4",
            int(item["start_frame"]),
            int(item["end_frame"]),
            src_fps=float(item["fps"]),
            fps=self.fps,
            short_side=self.short_side,
            crf=self.crf,
            preset=self.preset,
            max_pixels=self.max_pixels,
        )
        params = json.dumps(
            {"fps": self.fps, "short_side": self.short_side, "crf": self.crf, "preset": self.preset}
        )
        return {"cuts": [{"clip_id": item["clip_id"], **row, "params": params}]}


TEMP_SUFFIX = ".partial"  # never a media extension: globbing or ingesting a clip folder skips temps
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}(\.partial|\.tmp\.mp4)$")  # ours, and the old `.tmp.mp4` ones


def temp_path(dst: Path) -> Path:
    """Where `dst` is written before its rename: `.<name>.<8 hex>.partial` next to it."""
    return dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def clean_stale_temps(out_dir: str | os.PathLike, min_age_s: float = 0.0) -> int:
    """Remove the temporary files a killed `cut` left under `out_dir`; returns how many.

    Only names `temp_path` makes (and the `.tmp.mp4` names older versions made) are touched, and
    only those unmodified for `min_age_s` seconds. 0 is right before any worker starts (the stage
    lock keeps other runs out); from a worker's setup, while other workers of the run may already
    be writing, pass a margin (a temp being written is modified at every muxed packet)."""
    removed = 0
    now = time.time()
    for path in Path(out_dir).rglob(".*"):
        if not _TEMP_NAME.match(path.name):
            continue
        try:
            if path.is_file() and now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # finished or removed meanwhile
            pass
    return removed


def cut_clip(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    start: int,
    end: int,
    *,
    src_fps: float | None = None,
    fps: float | None = None,
    short_side: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
    max_pixels: int | None = None,
) -> dict:
    """Encode source frames [start, end) to `dst` (atomically). Returns a `cuts` row (without id).

    Frames are counted in presentation order from 0 (the probe's counting), identified by their
    timestamps, and turned upright. Timing: without `fps` (or with `fps` at or above the source's)
    the clip keeps the source's timing: a constant rate when the span's frames are evenly spaced,
    else the source timestamps of the span, from 0 (a VFR span stays VFR; `fps` in the row is then
    its average). A lower `fps` makes a constant-rate clip whose frame k is the source frame on
    screen at k / fps after the span start. `src_fps` is unused (the rate is read from the file);
    it stays for callers that pass the probe's value. `max_pixels`: refuse larger source frames
    (None: mediaio's default).
    """
    from mediaio import MAX_PIXELS, ClipWriter, iter_frames_at, plan_frames

    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    try:
        if end <= start:
            raise ValueError(f"empty span [{start}, {end})")
        plan = plan_frames(src, start, end, fps=fps)
        if plan.num_frames is not None and end > plan.num_frames:
            n = plan.num_frames
            raise ValueError(f"span [{start}, {end}) ends after the last frame (the video has {n})")
        writer = ClipWriter(tmp, time_base=plan.time_base, fps=plan.fps, crf=crf, preset=preset)
        with writer:
            frames = iter_frames_at(src, plan.indices, size=short_side, max_pixels=max_pixels)
            for k, arr in enumerate(frames):
                pts = plan.pts[k]
                duration = (plan.pts[k + 1] if k + 1 < len(plan) else plan.end_pts) - pts
                writer.write(arr, pts, duration)
        if writer.frames != len(plan):
            raise ValueError(f"decoded {writer.frames} of {len(plan)} frames for [{start}, {end})")
        os.replace(tmp, dst)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        return {"status": "error", "error": f"cut failed: {exc}"}
    return {
        "status": "ok",
        "path": str(dst.absolute()),
        "width": writer.size[0],
        "height": writer.size[1],
        "fps": float(plan.fps),
        "num_frames": writer.frames,
        "bytes": dst.stat().st_size,
    }
