"""The rows of the `clips` view without its score joins: what planning and `datakit status` read.

`clips` joins every span with its cut, its source and every declared score table (the newest row
per clip): right for recipes, but a stage's plan or its pending count needs only the spans' keys
and frames. These SELECTs give exactly the rows of `clips` (one per clip_id, the same values in
the columns they share; tests/test_clip_keys.py checks) at a fraction of the cost: at 1M clips the
full view is most of the time of a status or a plan.
"""

from __future__ import annotations

# clip_id, video_id, media_type of every clip: the spans of each video's latest scene run, and one
# [0, 1) clip per image (the same union as the `spans` of datakit.schema.CLIPS_BASE).
CLIP_IDS_SQL = """
    SELECT c.clip_id, c.video_id, 'video' AS media_type, c.start_frame, c.end_frame, c.fps, c.width, c.height
    FROM _latest_clip_spans c
    JOIN (SELECT video_id, run_key FROM _latest_scene_runs) r USING (video_id, run_key)
    UNION ALL
    SELECT video_id || '-0-1', video_id, 'image', 0, 1, NULL, width, height
    FROM _latest_probes WHERE status = 'ok' AND media_type = 'image'
"""

# What a clip stage reads a clip from: its frames and the source file (as `clips.source_path`).
CLIP_SPANS_SQL = f"""
    SELECT c.clip_id, c.video_id, c.media_type, c.start_frame, c.end_frame, c.fps, c.width, c.height,
           coalesce(d.path, s.path) AS source_path
    FROM ({CLIP_IDS_SQL}) c
    LEFT JOIN (SELECT video_id, path FROM _latest_sources) s USING (video_id)
    LEFT JOIN (SELECT video_id, path FROM _latest_downloads) d USING (video_id)
"""
