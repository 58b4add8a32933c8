"""Media I/O with PyAV: open files safely, inspect their streams, read frame-exact spans upright,
write H.264 clips. A leaf package: no torch, no datakit, no models.

    from mediaio import read_frames
    clip = read_frames("video.mp4", 120, 240, size=256)  # (T, H, W, 3) uint8, upright
"""

from mediaio.avio import av_open
from mediaio.errors import FrameTooLargeError, VideoReadError
from mediaio.limits import MAX_PIXELS, check_frame_size, decoder_threads
from mediaio.reader import (
    even_size,
    frame_to_array,
    iter_frames,
    iter_frames_at,
    iter_video_frames,
    open_video,
    output_size,
    plan_frames,
    read_frames,
    read_frames_at,
    resize,
    upright,
)
from mediaio.streams import (
    display_rotation,
    displayed_size,
    image_format,
    media_type,
    pick_video_stream,
    stream_fps,
)
from mediaio.timing import (
    CfrTiming,
    PtsTable,
    SpanPlan,
    cfr_timing,
    exact_timing,
    frame_index_from_pts,
    index_timing,
    pick_indices,
    plan_span,
    pts_table,
    read_pts_table,
)
from mediaio.writer import ClipWriter, x264_options

__all__ = [
    "MAX_PIXELS",
    "CfrTiming",
    "ClipWriter",
    "FrameTooLargeError",
    "PtsTable",
    "SpanPlan",
    "VideoReadError",
    "av_open",
    "cfr_timing",
    "check_frame_size",
    "decoder_threads",
    "display_rotation",
    "displayed_size",
    "even_size",
    "exact_timing",
    "frame_index_from_pts",
    "frame_to_array",
    "image_format",
    "index_timing",
    "iter_frames",
    "iter_frames_at",
    "iter_video_frames",
    "media_type",
    "open_video",
    "output_size",
    "pick_indices",
    "pick_video_stream",
    "plan_frames",
    "plan_span",
    "pts_table",
    "read_frames",
    "read_frames_at",
    "read_pts_table",
    "resize",
    "stream_fps",
    "upright",
    "x264_options",
]
