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
            C("rotation", "INTEGER", "degrees clockwise that turn the coded frames upright (0, 90, 180, 270)"),
            C("coded_width", "INTEGER", "width of the coded frames (before rotation)"),
            C("coded_height", "INTEGER", "height of the coded frames (before rotation)"),
            C("media_type", "VARCHAR", "'video' or 'image'"),
            C("video_stream", "INTEGER", "index of the video stream used (the largest, when there are several)"),
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
    order = 20

    count_frames: bool = option(True, "Count packets for the true frame count (false: trust the header; faster).")
    commit_every: int = option(64, "Items per committed part file.", min=1)

    def items_sql(self) -> str:
        return PENDING_PATHS

    def process(self, item: dict) -> dict[str, list[dict]]:
        return {"probes": [probe_file(item["video_id"], item["path"], count_frames=self.count_frames)]}


STAGE = ProbeStage


def probe_file(video_id: str, path: str, *, count_frames: bool = True) -> dict:
    import av  # imported here: listing stages (`datakit status`) must stay cheap

    from datakit.avio import av_open

    row: dict = {"video_id": video_id}

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
        if not container.streams.video:
            return fail("audio only: no video stream" if container.streams.audio else "no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        row.update(codec=ctx.name, width=ctx.width or None, height=ctx.height or None, pix_fmt=ctx.pix_fmt)
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
        row["num_frames"] = int(num_frames)
        row["duration_s"] = num_frames / row["fps"]
        try:
            container.seek(0, stream=stream)
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            return fail(f"cannot decode video: {exc.strerror or exc}")
        if first is None:
            return fail("cannot decode video: no frame decoded")
        row["width"], row["height"] = first.width, first.height
    return {**row, "status": "ok", "error": None}


def _count_packets(container, stream) -> int:
    """Frames actually present: packets that carry data (the header count can be wrong)."""
    n = 0
    for packet in container.demux(stream):
        if packet.size:
            n += 1
    return n
