"""Cut: extract clip spans as frame-exact H.264 files (PyAV re-encode; no ffmpeg binary, no shell).

Each clip is read with `datakit.video_io` (seek to the keyframe before the start, decode forward,
frames identified by pts), optionally resampled by frame picking and resized, then encoded with
libx264/yuv420p to `<out_dir>/<video_id>/<clip_id>.mp4` through a temporary name and a rename, so
a file under its final name is always complete.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from datakit.avio import av_open
from datakit.stage import Stage
from datakit.video_io import even_size, iter_frames, pick_indices


@dataclass
class CutStage(Stage):
    """One item per clip span; writes one clip file and one `cuts` row."""

    out_dir: str | None = None  # clip root (the pipeline fills in <workspace>/clips)
    fps: float | None = None  # target frame rate by frame picking (never upsamples); None keeps the source's
    short_side: int | None = None  # resize so the short side is this (even dims); None keeps the size
    crf: int = 18  # libx264 quality (lower is better)
    preset: str = "veryfast"  # libx264 speed preset
    batch_size: int = 32

    name = "cut"
    marker_table = "cuts"

    def pending_sql(self) -> str:
        # Ordered by video and start so consecutive clips of one video hit a warm page cache.
        return """
            SELECT clip_id, video_id, start_frame, end_frame, fps, width, height, source_path AS path
            FROM clips
            WHERE cut_status IS NULL OR cut_status NOT IN ('ok', 'error')
            ORDER BY video_id, start_frame
        """

    def process(self, item: dict) -> dict[str, list[dict]]:
        if not self.out_dir:
            raise ValueError("CutStage.out_dir is not set")
        row = cut_clip(
            item["path"],
            Path(self.out_dir) / item["video_id"] / f"{item['clip_id']}.mp4",
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
