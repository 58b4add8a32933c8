"""Frame-exact video reading with PyAV: decode a span [start, end) of a video, upright, at a target size.

To read a span we seek the container to the keyframe at or before the start, decode forward and
identify every decoded frame by its timestamp (pts -> frame index, see `mediaio.timing`), so
B-frames, reordering, variable frame rates and containers with coarse time bases (mkv, webm: 1 ms)
stay exact. Index modes:
- 'pts' : the exact packet table of the file (a cached demux pass), exact for VFR too;
- 'cfr' : timestamp arithmetic from the stream header (no demux pass); a frame off the frame-rate
  grid (a VFR stream) raises `VideoReadError` rather than being misnumbered;
- 'sequential' : decode from the first frame and count (for streams without timestamps);
- 'auto' (default): 'cfr' when the container's sample index proves a constant rate (MP4/MOV,
  AVI: no demux pass), else 'pts'; then 'pts' and 'sequential' if timestamps turn out inconsistent
  before anything was yielded.

`iter_video_frames` yields decoded `av.VideoFrame`s as coded; `iter_frames`/`read_frames` return
RGB arrays turned upright by the display rotation (see `mediaio.streams.display_rotation`).
Frames over `max_pixels` are refused before anything is decoded (see `mediaio.limits`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import av
import cv2
import numpy as np

from mediaio.avio import av_open
from mediaio.errors import VideoReadError
from mediaio.limits import MAX_PIXELS, check_frame_size, decoder_threads
from mediaio.streams import display_rotation, displayed_size, pick_video_stream
from mediaio.timing import CfrTiming, SpanPlan, Timing, cfr_timing, exact_timing, plan_span, pts_table

_MODES = {
    "auto": ("auto", "pts", "sequential"),
    "pts": ("pts",),
    "cfr": ("cfr",),
    "sequential": ("sequential",),
}
_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


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


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Turn an HxW[xC] frame `rotation` degrees clockwise (0, 90, 180, 270)."""
    return cv2.rotate(frame, _ROTATE[rotation]) if rotation else frame


def frame_to_array(
    frame: av.VideoFrame, size: tuple[int, int] | None = None, fmt: str = "rgb24", rotation: int = 0
) -> np.ndarray:
    """A decoded frame as an array in a packed format (rgb24, bgr24, gray...), resized to `size`
    (width, height of the result) and turned `rotation` degrees clockwise."""
    arr = frame.to_ndarray(format=fmt)
    if size:
        arr = resize(arr, displayed_size(*size, rotation))  # resize before turning: same pixels, less work
    return upright(arr, rotation)


def output_size(
    width: int, height: int, rotation: int, size: int | tuple[int, int] | None
) -> tuple[int, int]:
    """Upright (width, height) for coded frames: `size` an int short side (even sizes, aspect
    kept), a (width, height), or None for the displayed size."""
    shown = displayed_size(width, height, rotation)
    if isinstance(size, int):
        return even_size(*shown, size)
    return tuple(size) if size else shown


# ------------------------------------------------------------------------------------ decoding
def open_video(path: str | os.PathLike, *, threads: bool = True, max_pixels: int | None = MAX_PIXELS):
    """Open a file for decoding its video stream (the largest, see `pick_video_stream`).

    Raises `FrameTooLargeError` for frames over `max_pixels`. Frame threads: FFmpeg's default,
    fewer for large frames (see `mediaio.limits.decoder_threads`)."""
    container = av_open(str(path))
    try:
        stream = pick_video_stream(container)
        if stream is None:
            raise VideoReadError(f"no video stream in {path}")
        ctx = stream.codec_context
        check_frame_size(ctx.width, ctx.height, max_pixels)
        if threads:
            stream.thread_type = "AUTO"
            if n := decoder_threads(ctx.width, ctx.height, ctx.pix_fmt):
                ctx.thread_count = n
    except BaseException:
        container.close()
        raise
    return container, stream


class _Overshoot(Exception):
    pass


class _Inconsistent(Exception):
    pass


def _decode_span(
    container, stream, mapping: Timing | None, start: int, end: int, seeked: bool, max_pixels: int | None
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (index, frame) for start <= index < end from the current position.

    `mapping` None counts decoded frames from 0 (no seek allowed). Raises _Overshoot when the first
    decoded frame is already past `start` (seek landed late) and _Inconsistent when timestamps do
    not map to consecutive indices."""
    expected: int | None = None
    counter = -1
    for frame in container.decode(stream):
        counter += 1
        if mapping is None:
            idx = counter
        elif frame.pts is None:
            if seeked:
                raise _Inconsistent("frame without pts after a seek")
            idx = counter
        else:
            idx = mapping.index_of(frame.pts)
            if isinstance(mapping, CfrTiming) and not mapping.on_grid(frame.pts, idx):
                fps = float(mapping.fps)
                raise _Inconsistent(f"pts {frame.pts} is off the {fps:g} fps grid (variable frame rate)")
        if expected is None:
            check_frame_size(frame.width, frame.height, max_pixels)  # headers may not say
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


def _timing(path: str | os.PathLike, mode: str) -> Timing:
    if mode in ("pts", "auto"):
        timing = pts_table(path) if mode == "pts" else exact_timing(path)
        if timing is None:
            raise _Inconsistent("some packets have no timestamp")
        return timing
    with av_open(str(path)) as container:
        stream = pick_video_stream(container)
        if stream is None:
            raise VideoReadError(f"no video stream in {path}")
        return cfr_timing(stream)


def _read_span(
    path, mapping: Timing | None, start: int, end: int, threads: bool, max_pixels: int | None
) -> Iterator[tuple[int, av.VideoFrame]]:
    # Seek targets: the start itself, then earlier ones, then the file start (no seek).
    targets = [0]
    if mapping is not None:
        fps = int(mapping.fps)
        targets = [t for t in (start, start - fps, start - 10 * fps) if t > 0] + [0]
    for target in dict.fromkeys(targets):
        container, stream = open_video(path, threads=threads, max_pixels=max_pixels)
        try:
            if target > 0:
                container.seek(mapping.pts_of(target), stream=stream, backward=True)
            yield from _decode_span(container, stream, mapping, start, end, target > 0, max_pixels)
            return
        except _Overshoot:
            if target == 0:
                raise _Inconsistent("first frame is past the start") from None
        finally:
            container.close()


def iter_video_frames(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    *,
    index: str = "auto",
    threads: bool = True,
    max_pixels: int | None = MAX_PIXELS,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (frame_index, av.VideoFrame) for frames start <= index < end, frame-exact, as coded
    (not turned upright: see `display_rotation`, `frame_to_array`).

    Ends early, without error, when the video has fewer frames than `end`.
    """
    end = end if end is not None else 2**62
    if end <= start:
        return
    modes = _MODES[index]
    tried: list[Timing] = []
    for mode in modes:
        yielded = 0
        try:
            mapping = None if mode == "sequential" else _timing(path, mode)
            if mapping is not None and any(mapping is t for t in tried):
                continue  # 'auto' already chose this table
            tried.append(mapping)
            for item in _read_span(path, mapping, start, end, threads, max_pixels):
                yielded += 1
                yield item
            return
        except _Inconsistent as exc:
            if yielded or mode == modes[-1]:
                raise VideoReadError(
                    f"frame timestamps of {path} do not map to frame indices: {exc}"
                ) from None


def plan_frames(
    path: str | os.PathLike, start: int, end: int, *, fps: float | None = None, index: str = "auto"
) -> SpanPlan:
    """Which source frames make the output of [start, end) at `fps` (see `mediaio.timing.plan_span`)."""
    mode = index if index in ("cfr", "pts") else "auto"
    try:
        timing = _timing(path, mode)
    except _Inconsistent:
        if index == "pts":
            raise VideoReadError(f"no exact frame table for {path}: some packets have no timestamp") from None
        timing = _timing(path, "cfr")
    return plan_span(timing, start, end, fps)


def iter_frames_at(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    size: int | tuple[int, int] | None = None,
    fmt: str = "rgb24",
    index: str = "auto",
    max_pixels: int | None = MAX_PIXELS,
    autorotate: bool = True,
) -> Iterator[np.ndarray]:
    """Frames at `indices` (non-decreasing; a repeated index repeats its frame), decoded from the
    span they cover only. Upright unless `autorotate` is false; `size` as in `output_size`.
    Ends early when the video is shorter."""
    if not len(indices):
        return
    k, n = 0, len(indices)
    out_size = rotation = None
    for idx, frame in iter_video_frames(
        path, indices[0], indices[-1] + 1, index=index, max_pixels=max_pixels
    ):
        if indices[k] != idx:
            continue
        if out_size is None:
            rotation = display_rotation(frame) if autorotate else 0
            out_size = output_size(frame.width, frame.height, rotation, size)
        arr = frame_to_array(frame, out_size, fmt, rotation)
        while k < n and indices[k] == idx:
            yield arr
            k += 1
        if k == n:
            return


def iter_frames(
    path: str | os.PathLike,
    start: int,
    end: int,
    *,
    size: int | tuple[int, int] | None = None,
    fps: float | None = None,
    fmt: str = "rgb24",
    index: str = "auto",
    max_pixels: int | None = MAX_PIXELS,
    autorotate: bool = True,
) -> Iterator[np.ndarray]:
    """Yield upright HxWx3 uint8 frames for source frames [start, end).

    size: None (displayed size), an int short side (even sizes, aspect kept) or (width, height).
    fps: resample to this lower rate by frame picking (see `mediaio.timing.plan_span`).
    """
    plan = plan_frames(path, start, end, fps=fps, index=index)
    kwargs = {"size": size, "fmt": fmt, "index": index, "max_pixels": max_pixels, "autorotate": autorotate}
    yield from iter_frames_at(path, plan.indices, **kwargs)


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def read_frames(
    path: str | os.PathLike,
    start: int,
    end: int,
    *,
    size: int | tuple[int, int] | None = None,
    fps: float | None = None,
    fmt: str = "rgb24",
    index: str = "auto",
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Frames [start, end) as a (T, H, W, 3) uint8 array, upright (T may be short at the end of a file)."""
    return _stack(
        list(iter_frames(path, start, end, size=size, fps=fps, fmt=fmt, index=index, max_pixels=max_pixels))
    )


def read_frames_at(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    size: int | tuple[int, int] | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Frames at ascending `indices` as a (T, H, W, 3) uint8 array, upright."""
    return _stack(list(iter_frames_at(path, indices, size=size, max_pixels=max_pixels)))
