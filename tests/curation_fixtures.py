"""Helpers for the curation tests: manifests written row by row, and score rows written directly.

Writing rows directly (instead of running models) lets a test choose exact scores; the rows are
the same ones the stages write, checked against the same declared tables.
"""

from __future__ import annotations

import time
from pathlib import Path

from datakit.workspace import Workspace
from demo.sample_videos import SampleSpec, make_sample

GOOD = {
    "aesthetic": 7.0,
    "motion": 0.3,
    "static": False,
    "caption": "a long and descriptive caption of a scene",
    "caption_status": "ok",
    "text_match": 0.3,
    "dup_group": None,
    "dup_of": None,
}

# clip id -> (seconds, scores that differ from GOOD): each fails one condition of @video or @hq
CASES = {
    "good": (4.0, {}),
    "fair": (4.0, {"aesthetic": 5.0}),  # @video yes, @hq no (aesthetic < 6)
    "ugly": (4.0, {"aesthetic": 4.0}),  # below 4.5: out of @video too
    "short": (1.5, {}),  # under 2 s
    "long": (20.0, {}),  # over 15 s
    "still": (4.0, {"static": True, "motion": 0.001}),
    "unscored": (4.0, {"aesthetic": None}),
    "refused": (4.0, {"caption_status": "refusal"}),
    "terse": (4.0, {"caption": "a cat"}),  # @hq wants >= 40 characters
    "offtopic": (4.0, {"text_match": 0.1}),  # @hq wants >= 0.25
    "shaky": (4.0, {"motion": 3.0}),  # @hq wants motion <= 1
    "copy": (4.0, {"dup_of": "good"}),
    "undeduped": (4.0, {"dup_group": "none"}),
}


def curated_manifest(ws: Workspace) -> None:
    """One clip per CASES entry, with GOOD scores but for its changes."""
    fps = 24.0
    write_clips(
        ws,
        [
            {
                "clip_id": cid,
                "video_id": f"v-{cid}",
                "start_frame": 0,
                "end_frame": int(sec * fps),
                "fps": fps,
                "width": 320,
                "height": 240,
            }
            for cid, (sec, _) in CASES.items()
        ],
    )
    scores = {}
    for cid, (_, changes) in CASES.items():
        s = {**GOOD, "dup_group": cid, **changes}
        if s["dup_group"] == "none":
            s.pop("dup_group")
        scores[cid] = {k: v for k, v in s.items() if v is not None or k == "dup_of"}
    write_scores(ws, scores)


def write_clips(ws: Workspace, clips: list[dict]) -> None:
    """Sources, probes, scene runs and spans for clips given as dicts with clip_id, video_id,
    start_frame, end_frame, fps, width, height and optionally path (the source file)."""
    videos = {}
    for c in clips:
        videos.setdefault(c["video_id"], c)
    ws.write(
        "sources",
        [
            {
                "video_id": v,
                "source": c.get("path") or f"/nonexistent/{v}.mp4",
                "source_kind": "file",
                "path": c.get("path") or f"/nonexistent/{v}.mp4",
                "status": "ok",
            }
            for v, c in videos.items()
        ],
    )
    ws.write(
        "probes",
        [
            {
                "video_id": v,
                "status": "ok",
                "width": c["width"],
                "height": c["height"],
                "fps": c["fps"],
                "num_frames": 10_000,
                "media_type": "video",
            }
            for v, c in videos.items()
        ],
    )
    ws.write("scene_runs", [{"video_id": v, "status": "ok", "run_key": "run-" + v} for v in videos])
    ws.write(
        "clip_spans",
        [
            {
                "clip_id": c["clip_id"],
                "video_id": c["video_id"],
                "scene_index": i,
                "start_frame": c["start_frame"],
                "end_frame": c["end_frame"],
                "start_s": c["start_frame"] / c["fps"],
                "end_s": c["end_frame"] / c["fps"],
                "num_frames": c["end_frame"] - c["start_frame"],
                "fps": c["fps"],
                "width": c["width"],
                "height": c["height"],
                "run_key": "run-" + c["video_id"],
            }
            for i, c in enumerate(clips)
        ],
    )


def write_scores(ws: Workspace, scores: dict[str, dict], key: str = "test") -> None:
    """Score rows per clip id: any of aesthetic, motion, static, caption, caption_status, text_match,
    dup_group, dup_of (a dedup run row is written when dup_group is given)."""
    now = time.time()

    def rows(field_names: tuple[str, ...]) -> list[dict]:
        return [
            {
                "row_id": f"{cid}:{key}",
                "clip_id": cid,
                "model_key": key,
                "model": "written by a test",
                "status": "ok",
                "scored_at": now,
                **{f: s[f] for f in field_names if f in s},
            }
            for cid, s in scores.items()
            if any(f in s for f in field_names)
        ]

    ws.write("aesthetic_scores", rows(("aesthetic",)))
    ws.write("motion_scores", rows(("motion", "static")))
    ws.write("captions", rows(("caption", "caption_status")))
    ws.write("text_match_scores", rows(("text_match",)))
    groups = [
        {"clip_id": cid, "run_key": f"run-{key}", "dup_group": s["dup_group"], "dup_of": s.get("dup_of")}
        for cid, s in scores.items()
        if "dup_group" in s
    ]
    if groups:
        ws.write("dup_groups", groups)
        ws.write("dedup_runs", [{"run_key": f"run-{key}", "status": "ok", "finished_at": now}])


def small_videos(folder: Path, n: int = 2, fps: int = 12) -> list[Path]:
    """n tiny H.264 videos of two 30-frame scenes each (two clips each after `scenes`)."""
    return [
        Path(
            make_sample(
                SampleSpec(f"v{i}", 96, 64, fps, "libx264", "mp4", [30, 30], seed=200 + i), folder
            ).path
        )
        for i in range(n)
    ]
