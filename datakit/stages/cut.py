"""Cut: extract clip spans as frame-exact H.264 files (PyAV re-encode; no ffmpeg binary, no shell).

Each clip is read with the frame-exact reader (seek to the keyframe before the start, decode
forward, frames identified by pts), optionally resampled by frame picking and resized, then
encoded with libx264/yuv420p to `<clips>/<video_id>/<clip_id>.mp4` through a temporary name and a
rename, so a file under its final name is always complete.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from fractions import Fraction
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

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(kw_only=True)
class CutStage(Stage):
    """One item per clip span; writes one clip file and one `cuts` row."""

    name = "cut"
    marker_table = "cuts"
    order = 40
    run_by_default = False  # clip files are optional: training reads spans from the sources
    order_by = "i.video_id, i.start_frame"  # consecutive clips of one video hit a warm page cache

    fps: float | None = option(None, "Target frame rate by frame picking (never upsamples); default: the source's.", min=0.1)
    short_side: int | None = option(None, "Resize so the short side is this (even sizes); default: keep.", min=2)
    crf: int = option(18, "libx264 quality (lower is better).", min=0, max=51)
    preset: str = option("veryfast", "libx264 speed preset.", choices=PRESETS)
    commit_every: int = option(32, "Items per committed part file.", min=1)

    def setup(self, ctx: WorkerContext) -> None:
        self._out_dir = ctx.clips_dir

    def items_sql(self) -> str:
        return """
            SELECT clip_id, video_id, start_frame, end_frame, fps, width, height, source_path AS path
            FROM clips
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
        )
        params = json.dumps({"fps": self.fps, "short_side": self.short_side, "crf": self.crf, "preset": self.preset})
        return {"cuts": [{"clip_id": item["clip_id"], **row, "params": params}]}


STAGE = CutStage


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def cut_clip(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    start: int,
    end: int,
    *,
    src_fps: float,
    fps: float | None = None,
    short_side: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> dict:
    """Encode source frames [start, end) to `dst` (atomically). Returns a `cuts` row (without id)."""
    import av  # imported here: listing stages (`datakit status`) must stay cheap

    from datakit.avio import av_open
    from datakit.video_io import even_size, iter_frames, pick_indices

    dst = Path(dst)
    pick = fps is not None and fps < src_fps
    expected = len(pick_indices(start, end, src_fps, fps)) if pick else end - start
    out_rate = _rate(fps if pick else src_fps)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.{uuid.uuid4().hex[:8]}.tmp.mp4")
    written, size = 0, None
    try:
        with av_open(str(tmp), mode="w", format="mp4") as out:
            stream = None
            frames = iter_frames(src, start, end, size=short_side, fps_pick=(src_fps, fps) if pick else None)
            for arr in frames:
                if stream is None:
                    size = even_size(arr.shape[1], arr.shape[0])
                    stream = out.add_stream("libx264", rate=out_rate)
                    stream.width, stream.height = size
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": preset}
                if arr.shape[1::-1] != size:  # odd source dimensions: drop the last row/column
                    arr = arr[: size[1], : size[0]]
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = written
                for packet in stream.encode(frame):
                    out.mux(packet)
                written += 1
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
        if written != expected:
            raise ValueError(f"decoded {written} of {expected} frames for [{start}, {end})")
        os.replace(tmp, dst)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        return {"status": "error", "error": f"cut failed: {exc}"}
    return {
        "status": "ok",
        "path": str(dst.absolute()),
        "width": size[0],
        "height": size[1],
        "fps": float(out_rate),
        "num_frames": written,
        "bytes": dst.stat().st_size,
    }
