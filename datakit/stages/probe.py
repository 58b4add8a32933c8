"""Probe: container and stream metadata with PyAV. Unreadable inputs become error rows."""

from __future__ import annotations

import os
from dataclasses import dataclass

from datakit.stage import Stage, option
from datakit.tables import Column as C
from datakit.tables import Table

TABLES = (
    Table.marker(
        "probes",
        C("video_id", "VARCHAR", "id of the video"),
        "Container and stream metadata from PyAV. Written by `probe`.",
        (
            C("width", "INTEGER", "displayed frame width in pixels (rotation applied)"),
            C("height", "INTEGER", "displayed frame height in pixels (rotation applied)"),
            C("fps", "DOUBLE", "average frame rate"),
            C("num_frames", "BIGINT", "video frames in the file (counted packets, not the header's guess)"),
            C("duration_s", "DOUBLE", "num_frames / fps"),
            C("codec", "VARCHAR", "video codec name (h264, mpeg4, vp9...)"),
            C("pix_fmt", "VARCHAR", "pixel format of the video stream"),
            C("container", "VARCHAR", "container format name"),
            C("bit_rate", "BIGINT", "container bit rate, bits/s"),
            C("has_audio", "BOOLEAN", "whether an audio stream exists"),
            C("bytes", "BIGINT", "file size"),
            C(
                "rotation",
                "INTEGER",
                "degrees clockwise that turn the coded frames upright (0, 90, 180, 270)",
            ),
            C("coded_width", "INTEGER", "width of the coded frames (before rotation)"),
            C("coded_height", "INTEGER", "height of the coded frames (before rotation)"),
            C(
                "media_type",
                "VARCHAR",
                "'video' or 'image' (one frame: num_frames 1, fps and duration_s null)",
            ),
            C(
                "video_stream",
                "INTEGER",
                "index of the video stream used (the largest, when there are several)",
            ),
        ),
    ),
)

PENDING_PATHS = """
    SELECT s.video_id, coalesce(d.path, s.path) AS path
    FROM _latest_sources s LEFT JOIN _latest_downloads d USING (video_id)
    WHERE s.status = 'ok' AND (s.source_kind = 'file' OR d.status = 'ok')
"""


@dataclass(kw_only=True)
class ProbeStage(Stage):
    """Reads width, height, fps, codec and the true frame count (by counting packets)."""

    name = "probe"
    marker_table = "probes"
    tables = TABLES
    after = ("download",)

    count_frames: bool = option(
        True, "Count packets for the true frame count (false: trust the header; faster)."
    )
    max_pixels: int = option(
        8192 * 4352,
        "Refuse frames larger than this (the largest any H.264/HEVC/AV1 level allows; 0: no limit).",
        min=0,
    )
    commit_every: int = option(64, "Items per committed part file.", min=1)

    def items_sql(self) -> str:
        return PENDING_PATHS

    def process(self, item: dict) -> dict[str, list[dict]]:
        return {
            "probes": [
                probe_file(
                    item["video_id"], item["path"], count_frames=self.count_frames, max_pixels=self.max_pixels
                )
            ]
        }


def probe_file(video_id: str, path: str, *, count_frames: bool = True, max_pixels: int | None = None) -> dict:
    """A `probes` row for one file. `max_pixels`: refuse larger frames (None: mediaio's default,
    the largest frame an H.264/HEVC/AV1 level allows; 0: no limit)."""
    import av  # imported here: listing stages (`datakit status`) must stay cheap

    from mediaio import (
        MAX_PIXELS,
        FrameTooLargeError,
        av_open,
        check_frame_size,
        display_rotation,
        displayed_size,
        image_format,
        media_type,
        pick_video_stream,
    )

    row: dict = {"video_id": video_id}
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels

    def fail(message: str) -> dict:
        return {**row, "status": "error", "error": message}

    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return fail("file not found")
    except OSError as exc:
        return fail(f"cannot stat file: {exc.strerror or exc}")
    row["bytes"] = size
    if os.path.isdir(path):
        return fail("is a directory, not a video file")
    if size == 0:
        return fail("empty file (0 bytes)")
    try:
        container = av_open(path, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        return fail(f"not a readable video container: {exc.strerror or exc}")
    except Exception as exc:  # PyAV may raise plain errors on odd input
        return fail(f"not a readable video container: {exc}")
    with container:
        row["container"] = container.format.name
        row["bit_rate"] = container.bit_rate or None
        row["has_audio"] = bool(container.streams.audio)
        stream = pick_video_stream(container)
        if stream is None:
            if container.streams.video:
                return fail("no video stream: only cover art")
            return fail("audio only: no video stream" if container.streams.audio else "no video stream")
        ctx = stream.codec_context
        row.update(video_stream=stream.index, media_type=media_type(container))
        row.update(codec=ctx.name, pix_fmt=ctx.pix_fmt)
        row.update(coded_width=ctx.width or None, coded_height=ctx.height or None)
        row.update(width=row["coded_width"], height=row["coded_height"])
        try:  # before any decoding: a huge frame costs memory as soon as it is decoded
            check_frame_size(ctx.width, ctx.height, max_pixels)
        except FrameTooLargeError as exc:
            return fail(str(exc))
        if row["media_type"] == "video":
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                return fail("unknown frame rate")
            row["fps"] = float(rate)
            try:
                num_frames = _count_packets(container, stream) if count_frames else stream.frames
            except av.error.FFmpegError as exc:
                return fail(f"corrupt stream while reading packets: {exc.strerror or exc}")
            if not num_frames:
                return fail("no video frames")
            row["media_type"] = media_type(container, num_frames)  # a one-frame GIF is an image
            if row["media_type"] == "video":
                row["num_frames"] = int(num_frames)
                row["duration_s"] = num_frames / row["fps"]
        try:
            container.seek(0, stream=stream)
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            return fail(f"cannot decode video: {exc.strerror or exc}")
        if first is None:
            return fail("cannot decode video: no frame decoded")
        row["rotation"] = display_rotation(first)
        row["coded_width"], row["coded_height"] = first.width, first.height
        row["width"], row["height"] = displayed_size(first.width, first.height, row["rotation"])
        try:
            check_frame_size(first.width, first.height, max_pixels)
        except FrameTooLargeError as exc:
            return fail(str(exc))
        if row["media_type"] == "image":  # one-frame media: one frame, no frame rate or duration
            row.update(fps=None, num_frames=1, duration_s=None, codec=image_format(container))
    return {**row, "status": "ok", "error": None}


def _count_packets(container, stream) -> int:
    """Frames actually present: packets that carry data (the header count can be wrong)."""
    n = 0
    for packet in container.demux(stream):
        if packet.size:
            n += 1
    return n
