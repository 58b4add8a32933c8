"""Frame-exact video reading with PyAV: decode a span [start, end) of a video at a target size.

Frames are numbered in presentation order from 0, the same counting as a sequential decode and as
the probe's `num_frames`. To read a span we seek the container to the keyframe at or before the
start, decode forward and identify every decoded frame by its timestamp (pts -> frame index), so
B-frames, reordering and containers with coarse time bases (mkv, webm: 1 ms) stay exact.

Two pts -> index mappings:
- `CfrTiming` (default): index = round((pts - start_pts) * time_base * fps). Exact for constant
  frame rate streams; needs nothing but the stream header.
- `PtsTable`: the sorted pts of every packet (a demux pass, no decoding). Exact for variable frame
  rate too; `iter_frames(..., index="auto")` switches to it when the CFR mapping is inconsistent.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np

from datakit.avio import av_open


class VideoReadError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------ mappings
@dataclass(frozen=True)
class CfrTiming:
    """pts <-> frame index for a constant-frame-rate stream."""

    time_base: Fraction
    fps: Fraction
    start_pts: int = 0

    def index_of(self, pts: int) -> int:
        return round((pts - self.start_pts) * self.time_base * self.fps)

    def pts_of(self, index: int) -> int:
        return self.start_pts + math.floor(index / (self.fps * self.time_base))


@dataclass(frozen=True)
class PtsTable:
    """pts <-> frame index from the sorted packet timestamps of the whole stream (VFR-safe)."""

    pts: tuple[int, ...]

    def index_of(self, pts: int) -> int:
        i = bisect.bisect_left(self.pts, pts)
        if i < len(self.pts) and self.pts[i] == pts:
            return i
        return -1  # a timestamp the demuxer never showed: the caller treats it as inconsistent

    def pts_of(self, index: int) -> int:
        return self.pts[min(max(index, 0), len(self.pts) - 1)]


def stream_fps(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoReadError("video stream has no frame rate")
    return Fraction(rate)


def cfr_timing(stream) -> CfrTiming:
    start = stream.start_time if stream.start_time is not None else 0
    return CfrTiming(Fraction(stream.time_base), stream_fps(stream), int(start))


@functools.lru_cache(maxsize=64)
def _pts_table_cached(path: str, _size: int, _mtime_ns: int) -> PtsTable:
    with av_open(path) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
    return PtsTable(tuple(pts))


def pts_table(path: str | os.PathLike) -> PtsTable:
    """Exact pts index of a file (cached per path, size and mtime)."""
    st = os.stat(path)
    return _pts_table_cached(str(path), st.st_size, st.st_mtime_ns)


def frame_index_from_pts(pts: int, stream) -> int:
    """Frame index of a decoded frame's pts in a CFR stream (see `CfrTiming`)."""
    return cfr_timing(stream).index_of(pts)


# ------------------------------------------------------------------------------------ sizes
def even_size(width: int, height: int, short_side: int | None = None) -> tuple[int, int]:
    """Output (width, height) keeping aspect, short side `short_side` (None: source), both even."""
    if short_side:
        scale = short_side / min(width, height)
        width, height = width * scale, height * scale
    w, h = max(2, int(round(width)) // 2 * 2), max(2, int(round(height)) // 2 * 2)
    return w, h


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWxC frame to (width, height); INTER_AREA when shrinking."""
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interp)


def pick_indices(start: int, end: int, src_fps: float, dst_fps: float | None) -> list[int]:
    """Source frame indices in [start, end) that resample the span to `dst_fps` by frame picking.

    Output frame k shows the source frame on screen at time k / dst_fps (floor). Never upsamples:
    a target at or above the source rate keeps every frame.
    """
    if not dst_fps or dst_fps >= src_fps:
        return list(range(start, end))
    step = src_fps / dst_fps
    n = math.ceil((end - start) / step - 1e-9)
    return [start + math.floor(k * step + 1e-9) for k in range(n)]


# ------------------------------------------------------------------------------------ reading
def open_video(path: str | os.PathLike, *, threads: bool = True):
    """Open a file for decoding its first video stream (threaded by default)."""
    container = av_open(str(path))
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"no video stream in {path}")
    stream = container.streams.video[0]
    if threads:
        stream.thread_type = "AUTO"
    return container, stream


def _decode_span(
    container, stream, mapping, start: int, end: int, seeked: bool
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (index, frame) for start <= index < end from the current position.

    Raises _Overshoot when the first decoded frame is already past `start` (seek landed late) and
    _Inconsistent when timestamps do not map to consecutive indices.
    """
    expected: int | None = None
    counter = -1
    for frame in container.decode(stream):
        counter += 1
        if frame.pts is None:
            if seeked:
                raise _Inconsistent("frame without pts after a seek")
            idx = counter
        else:
            idx = mapping.index_of(frame.pts)
        if expected is None:
            if idx < 0:
                raise _Inconsistent(f"unknown pts {frame.pts}")
            if idx > start:
                raise _Overshoot(idx)
        elif idx != expected:
            raise _Inconsistent(f"frame index {idx} after {expected - 1} (pts {frame.pts})")
        expected = idx + 1
        if idx >= end:
            return
        if idx >= start:
            yield idx, frame


class _Overshoot(Exception):
    pass


class _Inconsistent(Exception):
    pass


def iter_video_frames(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    *,
    index: str = "auto",
    threads: bool = True,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (frame_index, av.VideoFrame) for frames start <= index < end, frame-exact.

    Seeks to the keyframe at or before `start` (falling back to earlier targets, then to the file
    start, if the demuxer lands late), then decodes forward.
    `index`: 'cfr' (timestamp arithmetic), 'pts' (exact packet table) or 'auto' (cfr, switching
    to pts when the stream turns out not to be CFR before anything was yielded).
    Ends early, without error, when the video has fewer frames than `end`.
    """
    end = end if end is not None else 2**62
    if end <= start:
        return
    modes = ["cfr", "pts"] if index == "auto" else [index]
    for mode in modes:
        yielded = 0
        try:
            with av_open(str(path)) as probe:
                if not probe.streams.video:
                    raise VideoReadError(f"no video stream in {path}")
                vs = probe.streams.video[0]
                mapping = cfr_timing(vs) if mode == "cfr" else pts_table(path)
                fps = float(stream_fps(vs))
            # Seek targets: the start itself, then earlier ones, then no seek at all.
            targets = [t for t in (start, start - int(fps), start - int(10 * fps)) if t > 0] + [0]
            for target in dict.fromkeys(targets):
                container, stream = open_video(path, threads=threads)
                try:
                    if target > 0:
                        container.seek(mapping.pts_of(target), stream=stream, backward=True)
                    for item in _decode_span(container, stream, mapping, start, end, target > 0):
                        yielded += 1
                        yield item
                    return
                except _Overshoot:
                    if target == 0:
                        raise _Inconsistent("first frame is past the start") from None
                finally:
                    container.close()
        except _Inconsistent as exc:
            if yielded or mode == modes[-1]:
                raise VideoReadError(
                    f"frame timestamps of {path} do not map to frame indices: {exc}"
                ) from None


def frame_to_array(
    frame: av.VideoFrame, size: tuple[int, int] | None = None, fmt: str = "rgb24"
) -> np.ndarray:
    arr = frame.to_ndarray(format=fmt)
    return resize(arr, size) if size else arr


def iter_frames(
    path: str | os.PathLike,
    start: int,
    end: int,
    *,
    size: int | tuple[int, int] | None = None,
    fps_pick: tuple[float, float] | None = None,
    fmt: str = "rgb24",
    index: str = "auto",
) -> Iterator[np.ndarray]:
    """Yield HxWx3 uint8 frames for source frames [start, end).

    size: None (source size), an int short side (even dims, aspect kept) or (width, height).
    fps_pick: (source_fps, target_fps) to resample by frame picking (see `pick_indices`).
    """
    wanted = set(pick_indices(start, end, *fps_pick)) if fps_pick else None
    out_size: tuple[int, int] | None = None
    for idx, frame in iter_video_frames(path, start, end, index=index):
        if wanted is not None and idx not in wanted:
            continue
        if out_size is None:
            out_size = (even_size(frame.width, frame.height, size) if isinstance(size, int) else size) or (
                frame.width,
                frame.height,
            )
        yield frame_to_array(frame, out_size, fmt)


def read_frames(
    path: str | os.PathLike,
    start: int,
    end: int,
    *,
    size: int | tuple[int, int] | None = None,
    fps_pick: tuple[float, float] | None = None,
    fmt: str = "rgb24",
) -> np.ndarray:
    """Frames [start, end) as a (T, H, W, 3) uint8 array (T may be short at the end of a file)."""
    frames = list(iter_frames(path, start, end, size=size, fps_pick=fps_pick, fmt=fmt))
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)
