"""The project's frame-exact video reader (`mediaio` when present, else `datakit.video_io`)."""

from __future__ import annotations

try:  # the reader is moving to a leaf package with the same function names
    from mediaio import VideoReadError, iter_video_frames, read_frames
except ImportError:
    from datakit.video_io import VideoReadError, iter_video_frames, read_frames

__all__ = ["VideoReadError", "iter_video_frames", "read_frames"]
