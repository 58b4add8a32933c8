"""Memory policy: how large a frame may be, and how many frames a decoder or encoder keeps in flight.

Memory of a decode or an encode is (pixels per frame) x (frames in flight). Both factors are bounded:

- `MAX_PIXELS`: frames over 35,651,584 pixels (8192x4352) are refused. That is the largest frame
  any level of H.264 (level 6.2: 139,264 macroblocks), HEVC (6.2: MaxLumaPs) or AV1 (6.3:
  MaxPicSize) allows, so no conforming stream of those codecs exceeds it; bigger frames come
  from synthetic or hostile files (a 1 MB H.264 file can hold 8192x8192 frames: 200 MB each as RGB).
- decoder threads: a frame-threaded decoder holds about one frame per thread, so large frames get
  only as many threads as fit `DECODE_BUDGET_BYTES` (small frames: FFmpeg's default, one per core).
- encoder: libx264 keeps lookahead, B-frame and reference frames plus half-pel planes (measured
  4.5 GB at 8192x8192 with preset veryfast); outputs over `LOW_MEMORY_ENCODE_PIXELS` (4K UHD)
  are encoded without lookahead and B-frames (see `mediaio.writer`).
"""

from __future__ import annotations

import os

import av

from mediaio.errors import FrameTooLargeError

MAX_PIXELS = 139_264 * 256  # 35,651,584 = 8192x4352: the largest H.264/HEVC/AV1 level-6.2 frame
DECODE_BUDGET_BYTES = 512 * 2**20  # decoded frames one decoder may keep in its threads
LOW_MEMORY_ENCODE_PIXELS = 3840 * 2160


def check_frame_size(width: int, height: int, max_pixels: int | None = MAX_PIXELS) -> None:
    """Raise `FrameTooLargeError` when width x height exceeds `max_pixels` (None or 0: no limit)."""
    if max_pixels and width * height > max_pixels:
        raise FrameTooLargeError(
            f"frame too large: {width}x{height} = {width * height / 1e6:.1f} Mpx"
            f" > max_pixels {max_pixels} ({max_pixels / 1e6:.1f} Mpx)"
        )


def frame_bytes(width: int, height: int, pix_fmt: str | None) -> int:
    """Bytes of one decoded frame in `pix_fmt` (12 bits per pixel, 8-bit 4:2:0, when unknown)."""
    bits = 12
    if pix_fmt:
        try:
            bits = av.video.format.VideoFormat(pix_fmt).padded_bits_per_pixel or bits
        except ValueError:
            pass
    return width * height * bits // 8


def decoder_threads(width: int, height: int, pix_fmt: str | None = None) -> int:
    """Decoder thread count: 0 (FFmpeg's default) when a thread per core fits the budget, else
    as many frame threads as fit it (at least 1)."""
    fits = DECODE_BUDGET_BYTES // max(1, frame_bytes(width, height, pix_fmt))
    default = min((os.cpu_count() or 1) + 1, 16)  # FFmpeg's automatic frame-thread count
    return 0 if fits >= default else max(1, fits)
