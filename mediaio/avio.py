"""Open media with PyAV in a way that is safe next to torch/torchvision."""

from __future__ import annotations

import os

import av


def av_open(path: str | os.PathLike, *args, **kwargs):
    """`av.open` with FFmpeg's log callback off.

    Importing torchvision turns PyAV's Python log callback on; with frame-threaded decoding, closing
    a decoder before the end of a stream then deadlocks (the callback waits for the GIL that the
    closing thread holds; PyAV issues 909 and 1849). We keep the callback off before every open.
    """
    av.logging.set_level(None)
    return av.open(str(path), *args, **kwargs)
