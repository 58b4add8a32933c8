"""The frames a captioner sees: fixed positions in the clip span (frame-exact, upright), shrunk,
JPEG-encoded. An image is a one-frame clip."""

from __future__ import annotations

from datakit.captioning.base import encode_jpeg


def frame_fractions(n: int) -> list[float]:
    """Centres of `n` equal parts of a span: 1 -> [0.5], 4 -> [0.125, 0.375, 0.625, 0.875]."""
    return [(i + 0.5) / n for i in range(n)]


def clip_frames(item: dict, n: int, short_side: int) -> list[bytes]:
    """JPEG bytes of `n` frames (fewer when the span is shorter), in order, of a clip row of
    `datakit.scoring.CLIP_ITEMS_SQL` (its source span, or its cut file when the source is gone)."""
    from datakit.scoring import clip_file, frame_positions, read_frames_at
    from mediaio import even_size, resize

    path, start, end, _fps, _kind = clip_file(item)
    indices = sorted(set(frame_positions(start, end, frame_fractions(n))))
    out = []
    for frame in read_frames_at(path, indices):
        h, w = frame.shape[:2]
        if min(h, w) > short_side:
            frame = resize(frame, even_size(w, h, short_side))
        out.append(encode_jpeg(frame))
    return out
