"""What an opened container holds: which video stream to use, image or video, display rotation."""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import av
from av.stream import Disposition

from mediaio.errors import VideoReadError

MediaType = Literal["video", "image"]
_ANIMATED_IMAGE_FORMATS = {"gif", "apng"}  # image formats that may hold several frames


def pick_video_stream(container) -> av.video.stream.VideoStream | None:
    """The video stream to read: the largest (width x height), as ffmpeg picks by default.

    Cover art (an `attached_pic` stream, one still image) is never picked; ties go to the stream
    marked default, then to the lowest index. None when there is no such stream."""
    candidates = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not candidates:
        return None

    def rank(s) -> tuple:
        ctx = s.codec_context
        return ((ctx.width or 0) * (ctx.height or 0), bool(s.disposition & Disposition.default), -s.index)

    return max(candidates, key=rank)


def media_type(container, num_frames: int | None = None) -> MediaType:
    """'image' for a still-image file (whatever its name says), else 'video'.

    FFmpeg opens a PNG, JPEG, WebP, BMP, TIFF... as a one-frame "video" at a made-up 25 fps
    through an image demuxer (`png_pipe`, `jpeg_pipe`, ..., `image2`); GIF and APNG count as images
    when they hold a single frame (`num_frames`, when known)."""
    name = container.format.name
    if name in _ANIMATED_IMAGE_FORMATS:
        return "image" if num_frames == 1 else "video"
    if name.endswith("_pipe") or name.split(",")[0] in ("image2", "image2pipe"):
        return "image"
    return "video"


def image_format(container) -> str:
    """Short name of an image file's format ('png', 'jpeg', ...)."""
    name = container.format.name.split(",")[0]
    if name.endswith("_pipe"):
        return name[: -len("_pipe")]
    stream = pick_video_stream(container)
    return stream.codec_context.name if stream is not None else name


def display_rotation(frame: av.VideoFrame) -> int:
    """Degrees clockwise (0, 90, 180 or 270) that turn a decoded frame upright for display.

    From the frame's display matrix (container side data such as MP4's `tkhd` matrix, or an H.264
    display-orientation SEI; FFmpeg attaches both to decoded frames). Angles that are not a
    quarter turn are ignored, as ffmpeg's autorotate does; mirror flags are not applied."""
    clockwise = -frame.rotation % 360  # PyAV reports the matrix's counter-clockwise angle
    quarter = round(clockwise / 90) % 4 * 90
    off = abs((clockwise - quarter + 180) % 360 - 180)
    return quarter if off < 1 else 0


def displayed_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """(width, height) of coded frames once turned upright."""
    return (height, width) if rotation % 180 == 90 else (width, height)


def stream_fps(stream) -> Fraction:
    """The stream's average frame rate (falling back to FFmpeg's guesses)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoReadError("video stream has no frame rate")
    return Fraction(rate)
