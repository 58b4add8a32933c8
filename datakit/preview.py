"""Contact sheets: see clips instead of reading their rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datakit.workspace import Workspace
from mediaio import read_frames

THUMB_H = 96


def clip_strip(path: str, start: int, end: int, n: int = 3) -> np.ndarray:
    """n frames spread over [start, end), side by side, THUMB_H tall."""
    picks = np.linspace(start, end - 1, n).round().astype(int)
    thumbs = []
    for f in picks:
        frames = read_frames(path, int(f), int(f) + 1, size=THUMB_H)
        if len(frames):
            thumbs.append(frames[0])
    if not thumbs:
        return np.zeros((THUMB_H, THUMB_H * n, 3), np.uint8)
    h = min(t.shape[0] for t in thumbs)
    return np.concatenate([t[:h] for t in thumbs], axis=1)


def contact_sheet(
    ws: Workspace, out: Path, sql: str | None = None, max_clips: int = 24, frames_per_clip: int = 3
) -> Path:
    """One row per clip (first, middle, last frame) with its id and span, written as a PNG."""
    sql = sql or "SELECT * FROM clips ORDER BY video_id, start_frame"
    clips = ws.sql(
        f"SELECT clip_id, coalesce(path, source_path) AS file, path IS NOT NULL AS is_cut, start_frame, end_frame, start_s, end_s FROM ({sql}) LIMIT {int(max_clips)}",
        sandbox=True,
    )
    rows = []
    for c in clips:
        # an extracted clip file starts at its own frame 0
        start, end = (
            (0, c["end_frame"] - c["start_frame"]) if c["is_cut"] else (c["start_frame"], c["end_frame"])
        )
        strip = clip_strip(c["file"], start, end, frames_per_clip)
        label = f"{c['clip_id']}  {c['start_s']:.2f}-{c['end_s']:.2f}s"
        rows.append((label, strip))
    width = max([s.shape[1] for _, s in rows] + [400]) + 8
    height = sum(s.shape[0] + 22 for _, s in rows) + 8 if rows else 40
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    y = 4
    for label, strip in rows:
        draw.text((6, y + 4), label, fill=(230, 230, 230))
        sheet.paste(Image.fromarray(strip), (4, y + 20))
        y += strip.shape[0] + 22
    if not rows:
        draw.text((6, 12), "no clips", fill=(230, 230, 230))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
