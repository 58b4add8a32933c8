"""Errors raised by mediaio readers and writers."""

from __future__ import annotations


class VideoReadError(RuntimeError):
    """A video cannot be read as asked (no video stream, inconsistent timestamps, ...)."""


class FrameTooLargeError(VideoReadError):
    """The frames are larger than the pixel-count policy allows (see `mediaio.limits`)."""
