"""Frame numbering and span plans.

Frames are numbered in presentation order from 0 (the counting of a sequential decode and of the
probe's `num_frames`). Two pts <-> index mappings:

- `CfrTiming`: index = round((pts - start_pts) * time_base * fps). Needs only the stream header;
  exact for constant-frame-rate streams only, which `index_timing` proves from an MP4/MOV/AVI
  sample index without reading the file (readers also check each decoded frame is on the grid).
- `PtsTable`: the sorted pts of every frame's packet (one demux pass, no decoding). Exact for
  variable frame rate (VFR) too; `pts_table(path)` caches it per file.
`exact_timing(path)` gives the first when proven, else the second.

A `SpanPlan` says which source frames make the output frames of a span [start, end) and when each
is shown: a span whose frames are evenly spaced at the video's rate keeps a constant rate; a VFR
span keeps its own timestamps; resampling to a lower rate picks, for output frame k, the source
frame on screen at k / fps after the span start.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from mediaio.avio import av_open
from mediaio.errors import VideoReadError
from mediaio.streams import pick_video_stream, stream_fps


@dataclass(frozen=True)
class CfrTiming:
    """pts <-> frame index for a constant-frame-rate stream."""

    time_base: Fraction
    fps: Fraction
    start_pts: int = 0
    num_frames: int | None = None  # unknown without a demux pass

    def index_of(self, pts: int) -> int:
        return round((pts - self.start_pts) * self.time_base * self.fps)

    def pts_of(self, index: int) -> int:
        return self.start_pts + math.floor(index / (self.fps * self.time_base))

    def time_of(self, index: int) -> Fraction:
        """Seconds from frame 0 to frame `index`."""
        return index / self.fps

    def on_grid(self, pts: int, index: int) -> bool:
        """Whether `pts` lies within a tick of frame `index`'s place on the frame-rate grid (a
        VFR frame does not; muxers round each timestamp to a tick)."""
        return abs(pts - self.start_pts - index * self._ticks_per_frame) <= 1 + 1e-9

    @functools.cached_property
    def _ticks_per_frame(self) -> float:
        return float(1 / (self.fps * self.time_base))

    def is_uniform(self, start: int, end: int) -> bool:
        return True


class PtsTable:
    """pts <-> frame index from the sorted packet timestamps of the whole stream (VFR-safe)."""

    def __init__(self, pts: np.ndarray, time_base: Fraction, fps: Fraction, end_pts: int):
        self.pts = np.asarray(pts, dtype=np.int64)  # sorted; one per frame
        self.time_base, self.fps = time_base, fps
        self.end_pts = end_pts  # when the last frame stops being shown
        gaps = np.diff(np.append(self.pts, end_pts))
        # Muxers round each pts to a tick: allow one tick, or half a frame for very coarse time bases.
        self.tolerance = min(Fraction(1), Fraction(int(gaps.min()) if len(gaps) else 1, 2))

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def index_of(self, pts: int) -> int:
        i = int(np.searchsorted(self.pts, pts))
        if i < len(self.pts) and self.pts[i] == pts:
            return i
        return -1  # a timestamp the demuxer never showed: the caller treats it as inconsistent

    def pts_of(self, index: int) -> int:
        """pts of frame `index`; `num_frames` gives the end of the last frame."""
        if index >= len(self.pts):
            return self.end_pts
        return int(self.pts[max(index, 0)])

    def time_of(self, index: int) -> Fraction:
        """Seconds from frame 0 to frame `index` (`num_frames`: the end of the last frame)."""
        return (self.pts_of(index) - self.pts_of(0)) * self.time_base

    def is_uniform(self, start: int, end: int) -> bool:
        """Whether frames start..end (end: the next frame, or the end of the video) are 1/fps apart."""
        if end <= start:
            return True
        gaps = np.diff(np.append(self.pts[start:end], self.pts_of(end)))
        nominal = 1 / (self.fps * self.time_base)
        return bool(np.all(np.abs(gaps - float(nominal)) <= 1 + 1e-9))

    def pick(self, start: int, end: int, rate: Fraction) -> list[int]:
        """For each output time k / rate from frame `start`'s pts, the frame shown at that time."""
        t0, t_end = self.pts_of(start), self.pts_of(end)
        step = 1 / (rate * self.time_base)  # ticks per output frame
        n = max(0, math.ceil((t_end - t0 - self.tolerance) / step))
        limits = [math.floor(t0 + k * step + self.tolerance) for k in range(n)]
        shown = np.searchsorted(self.pts, limits, side="right") - 1
        return np.clip(shown, start, end - 1).tolist()


Timing = CfrTiming | PtsTable


def cfr_timing(stream) -> CfrTiming:
    start = stream.start_time if stream.start_time is not None else 0
    return CfrTiming(Fraction(stream.time_base), stream_fps(stream), int(start))


def frame_index_from_pts(pts: int, stream) -> int:
    """Frame index of a decoded frame's pts in a CFR stream (see `CfrTiming`)."""
    return cfr_timing(stream).index_of(pts)


def read_pts_table(container, stream) -> PtsTable | None:
    """Demux the stream once (no decoding). None when a packet has no pts: frames can then only be
    numbered by decoding from the start."""
    pts: list[int] = []
    last_end = None
    for packet in container.demux(stream):
        if not packet.size:
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        end = packet.pts + (packet.duration or 0)
        last_end = end if last_end is None else max(last_end, end)
    if not pts:
        return PtsTable(np.zeros(0, np.int64), Fraction(stream.time_base), stream_fps(stream), 0)
    table = np.sort(np.asarray(pts, dtype=np.int64))
    fps, tb = stream_fps(stream), Fraction(stream.time_base)
    if last_end is None or last_end <= table[-1]:  # no packet durations: repeat the last gap
        last_end = int(table[-1]) + (
            int(table[-1] - table[-2]) if len(table) > 1 else math.ceil(1 / (fps * tb))
        )
    return PtsTable(table, tb, fps, int(last_end))


def index_timing(stream) -> CfrTiming | None:
    """CFR timing proven from the container's sample index, without reading the file: MP4/MOV
    and AVI list every frame (size, decode timestamp) in their header. None when the index is
    incomplete (MKV/WebM list keyframes only), has empty samples (dropped frames), or the
    timestamps are not evenly spaced at the stream's rate. (The index holds decode timestamps:
    evenly spaced ones are a constant rate with B-frames too, and readers still check every
    decoded frame's pts against the grid.)"""
    n = stream.frames
    entries = stream.index_entries
    if not n or len(entries) != n:
        return None
    dts = np.sort(np.fromiter((e.timestamp for e in entries if e.size > 0), np.int64))
    if len(dts) != n:
        return None
    timing = cfr_timing(stream)
    nominal = 1 / (timing.fps * timing.time_base)
    if not np.all(np.abs(np.diff(dts) - float(nominal)) <= 1 + 1e-9):
        return None
    return CfrTiming(timing.time_base, timing.fps, timing.start_pts, n)


@functools.lru_cache(maxsize=64)
def _index_timing_cached(path: str, _size: int, _mtime_ns: int) -> CfrTiming | None:
    with av_open(path) as container:
        stream = pick_video_stream(container)
        if stream is None:
            raise VideoReadError(f"no video stream in {path}")
        return index_timing(stream)


def exact_timing(path: str | os.PathLike) -> Timing | None:
    """The cheapest exact frame numbering of a file (cached per path, size and mtime): CFR
    arithmetic when the container's index proves a constant rate (`index_timing`), else the pts
    table (`pts_table`, a demux pass). None when the stream has packets without pts."""
    st = os.stat(path)
    return _index_timing_cached(str(path), st.st_size, st.st_mtime_ns) or pts_table(path)


@functools.lru_cache(maxsize=16)
def _pts_table_cached(path: str, _size: int, _mtime_ns: int) -> PtsTable | None:
    with av_open(path) as container:
        stream = pick_video_stream(container)
        if stream is None:
            raise VideoReadError(f"no video stream in {path}")
        return read_pts_table(container, stream)


def pts_table(path: str | os.PathLike) -> PtsTable | None:
    """Exact pts table of a file's video stream (cached per path, size and mtime); None when the
    stream has packets without pts."""
    st = os.stat(path)
    return _pts_table_cached(str(path), st.st_size, st.st_mtime_ns)


# ------------------------------------------------------------------------------------ plans
def pick_indices(start: int, end: int, src_fps: float, dst_fps: float | None) -> list[int]:
    """Source frame indices in [start, end) that resample a constant-rate span to `dst_fps`.

    Output frame k shows the source frame on screen at time k / dst_fps (floor). Never upsamples:
    a target at or above the source rate keeps every frame.
    """
    if not dst_fps or dst_fps >= src_fps:
        return list(range(start, end))
    step = src_fps / dst_fps
    n = math.ceil((end - start) / step - 1e-9)
    return [start + math.floor(k * step + 1e-9) for k in range(n)]


def output_rate(fps: float) -> Fraction:
    """A float frame rate as the exact rate it stands for (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


@dataclass(frozen=True)
class SpanPlan:
    """The output frames of a span: the source frame each shows, and when (pts in `time_base`)."""

    indices: Sequence[int]  # source frame of output frame k (non-decreasing; repeats only when picking VFR)
    pts: Sequence[int]  # output frame k's pts from the span start; range(n) at a constant rate
    end_pts: int  # where the span ends (the last frame's pts + its duration)
    time_base: Fraction
    fps: Fraction  # the constant output rate, or the average rate of a VFR span
    constant_rate: bool
    num_frames: int | None  # frames of the whole video, when known (the span may ask for more)

    def __len__(self) -> int:
        return len(self.indices)


def plan_span(timing: Timing, start: int, end: int, target_fps: float | None = None) -> SpanPlan:
    """Plan the output frames of source frames [start, end).

    `target_fps` below the video's rate resamples by picking frames (never upsamples). Otherwise
    every frame is kept: at the video's constant rate when the span's frames are evenly spaced
    (within a tick of the time base), else with the source timestamps (a VFR span stays VFR).
    """
    n = timing.num_frames
    end = max(start, end if n is None else min(end, n))
    fps = timing.fps
    if target_fps and target_fps < fps:
        rate = output_rate(target_fps)
        if timing.is_uniform(start, end):
            indices = pick_indices(start, end, fps, rate)
        else:
            indices = timing.pick(start, end, rate)
        return SpanPlan(indices, range(len(indices)), len(indices), 1 / rate, rate, True, n)
    indices = range(start, end)
    if timing.is_uniform(start, end):
        return SpanPlan(indices, range(end - start), end - start, 1 / fps, fps, True, n)
    t0 = timing.pts_of(start)
    pts = [timing.pts_of(i) - t0 for i in indices]
    end_pts = timing.pts_of(end) - t0
    return SpanPlan(
        indices, pts, end_pts, timing.time_base, len(pts) / (end_pts * timing.time_base), False, n
    )
