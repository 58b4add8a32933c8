"""Planning and `datakit status` read the spans without the `clips` view's score joins: same rows."""

from __future__ import annotations

from datakit.clip_keys import CLIP_IDS_SQL, CLIP_SPANS_SQL
from datakit.executors import plan
from datakit.registry import stage_class
from datakit.status import status_rows
from datakit.workspace import Workspace
from tests.curation_fixtures import curated_manifest, write_clips


def workspace(tmp_path) -> Workspace:
    """Scored clips, an image, a download, and a video re-detected (its old run's spans hidden)."""
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)
    write_clips(
        ws,
        [
            {
                "clip_id": "old-0-24",
                "video_id": "redone",
                "start_frame": 0,
                "end_frame": 24,
                "fps": 24.0,
                "width": 640,
                "height": 360,
            }
        ],
    )
    ws.write("scene_runs", [{"video_id": "redone", "status": "ok", "run_key": "newer-run"}])
    ws.write(
        "clip_spans",
        [
            {
                "clip_id": "redone-0-48",
                "video_id": "redone",
                "scene_index": 0,
                "start_frame": 0,
                "end_frame": 48,
                "start_s": 0.0,
                "end_s": 2.0,
                "num_frames": 48,
                "fps": 24.0,
                "width": 640,
                "height": 360,
                "run_key": "newer-run",
            }
        ],
    )
    ws.write(
        "sources",
        [
            {
                "video_id": "img",
                "source": "/x/img.jpg",
                "source_kind": "file",
                "path": "/x/img.jpg",
                "status": "ok",
            }
        ],
    )
    ws.write(
        "probes", [{"video_id": "img", "status": "ok", "width": 50, "height": 40, "media_type": "image"}]
    )
    ws.write("downloads", [{"video_id": "redone", "status": "ok", "path": "/downloaded/redone.mp4"}])
    ws.write("cuts", [{"clip_id": "good", "status": "ok", "path": "/clips/good.mp4"}])
    return ws


COLS = "clip_id, video_id, media_type, start_frame, end_frame, fps, width, height, source_path"


def test_the_lean_spans_are_exactly_the_rows_of_clips(tmp_path):
    ws = workspace(tmp_path)
    full = ws.sql(f"SELECT {COLS} FROM clips ORDER BY clip_id")
    assert ws.sql(f"SELECT {COLS} FROM ({CLIP_SPANS_SQL}) ORDER BY clip_id") == full
    ids = ws.sql(f"SELECT clip_id, video_id, media_type FROM ({CLIP_IDS_SQL}) ORDER BY clip_id")
    assert ids == [{k: r[k] for k in ("clip_id", "video_id", "media_type")} for r in full]
    names = [r["clip_id"] for r in full]
    assert "img-0-1" in names and "redone-0-48" in names and "old-0-24" not in names
    assert {r["clip_id"]: r["source_path"] for r in full}["redone-0-48"] == "/downloaded/redone.mp4"


def test_plans_and_status_count_the_clips_of_the_view(tmp_path):
    ws = workspace(tmp_path)
    videos = ws.sql("SELECT clip_id FROM clips WHERE media_type = 'video' ORDER BY clip_id")
    cut = plan(ws, stage_class("cut")())
    assert sorted(i["clip_id"] for i in cut) == [r["clip_id"] for r in videos if r["clip_id"] != "good"]
    assert next(i for i in cut if i["clip_id"] == "redone-0-48")["path"] == "/downloaded/redone.mp4"
    rows = {r["stage"]: r for r in status_rows(ws)}
    assert rows["clips"]["ok"] == len(ws.sql("SELECT clip_id FROM clips"))
    assert rows["cut"]["ok"] == 1 and rows["cut"]["pending"] == len(videos) - 1
    scored = ws.sql("SELECT count(*) AS n FROM clips WHERE aesthetic IS NOT NULL")[0]["n"]
    aesthetic = [r for r in status_rows(ws) if r["stage"] == "aesthetic"]
    assert scored and sum(r["ok"] for r in aesthetic) == scored


def test_fetch_inlines_the_views_and_gives_the_rows_of_sql(tmp_path):
    ws = workspace(tmp_path)
    query = f"SELECT {COLS}, aesthetic, caption FROM clips ORDER BY clip_id"
    assert ws.fetch(query) == ws.sql(query) and len(ws.fetch(query)) > 3
    own_with = "WITH v AS (SELECT clip_id FROM clips WHERE media_type = 'video') SELECT count(*) AS n FROM v"
    assert ws.fetch(own_with) == ws.sql(own_with)
    assert ws.fetch("SELECT 1 AS one") == [{"one": 1}]  # names no view
