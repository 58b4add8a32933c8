"""The manifest schema: one Parquet table per stage, keyed by id, and the SQL views that join them.

Every stage writes rows to its own table as immutable Parquet part files; a later row for the same
key supersedes an earlier one (a rerun after an error, say). The views below are what users query.
`SCHEMA.md` in this folder is generated from this module (`python -m manifests.schema`), and a test
keeps the two in sync. Bump SCHEMA_VERSION whenever a table or view changes.
"""

from __future__ import annotations

import textwrap

import pyarrow as pa

from datakit.tables import WRITTEN_COLUMN, Column, Table

# TABLES is served by the module's __getattr__ (gathered lazily from the stage registry).
__all__ = ["SCHEMA_VERSION", "STATUSES", "TABLES", "VIEWS", "WRITTEN_COLUMN", "Column", "Table", "arrow_schema"]  # noqa: F822

# 2: tables declared by their stages; every marker table has attempts and retry_at; probes gained
#    rotation, coded size, media type and the stream used.
# 3: score tables (aesthetic_scores, clip_embeddings, motion_scores, text_match_scores), captions,
#    dedup_runs and dup_groups; `clips` gained media_type (images are one-frame clips), the latest
#    scores and the latest caption.
SCHEMA_VERSION = 3

# Row status values, shared by every stage table.
STATUSES = {
    "ok": "the stage finished for this row",
    "error": "permanent failure (bad input); `error` says why; a rerun does not retry it (`--retry-errors` does)",
    "retry": "transient failure (network, timeout, out of memory, lost worker); a rerun retries it",
    "pending": "(views only) no stage has produced a row yet",
}


def tables() -> dict[str, Table]:
    """Every table, gathered from the stage registry (each stage declares its own)."""
    from datakit.registry import tables as registry_tables

    return registry_tables()


def __getattr__(name: str):  # `TABLES` is gathered lazily: stage modules import this package too
    if name == "TABLES":
        return tables()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Views over the latest row per key of each table (the `_latest_<table>` views, made by the workspace).
VIEWS: dict[str, tuple[str, str]] = {
    "videos": (
        "One row per source: where it is, how far it got, and its metadata.",
        """
        SELECT s.video_id, s.source, s.source_kind,
               coalesce(d.path, s.path) AS path,
               CASE WHEN s.status = 'error' THEN 'error'
                    WHEN p.status IS NOT NULL THEN p.status
                    WHEN d.status IS NOT NULL AND d.status <> 'ok' THEN d.status
                    ELSE 'pending' END AS status,
               coalesce(s.error, p.error, d.error) AS error,
               p.width, p.height, p.fps, p.num_frames, p.duration_s, p.codec,
               coalesce(p.bytes, d.bytes, s.bytes) AS bytes,
               d.status AS download_status, p.status AS probe_status, r.status AS scenes_status,
               r.num_clips
        FROM _latest_sources s
        LEFT JOIN _latest_downloads d USING (video_id)
        LEFT JOIN _latest_probes p USING (video_id)
        LEFT JOIN _latest_scene_runs r USING (video_id)
        """,
    ),
    "clips": (
        "One row per clip span (an image is a one-frame clip: frames [0, 1), start_s = end_s = 0, no fps), with the extracted "
        "file when `cut` made one and the latest score of each kind (null until its stage has run).",
        """
        WITH spans AS (
            SELECT c.clip_id, c.video_id, c.scene_index, c.start_frame, c.end_frame, c.start_s, c.end_s,
                   c.num_frames, c.fps, c.width, c.height, 'video' AS media_type
            FROM _latest_clip_spans c
            JOIN (SELECT video_id, run_key FROM _latest_scene_runs) r USING (video_id, run_key)
            UNION ALL
            SELECT video_id || '-0-1', video_id, 0, 0, 1, 0.0, 0.0, 1, NULL, width, height, 'image'
            FROM _latest_probes WHERE status = 'ok' AND media_type = 'image'
        ),
        latest_dedup AS (
            SELECT run_key FROM _latest_dedup_runs WHERE status = 'ok' ORDER BY finished_at DESC LIMIT 1
        )
        SELECT c.clip_id, c.video_id, c.scene_index, c.start_frame, c.end_frame, c.start_s, c.end_s,
               c.num_frames, c.fps, c.width, c.height,
               CASE WHEN k.status = 'ok' THEN k.path END AS path,
               k.status AS cut_status, k.error AS cut_error,
               coalesce(d.path, s.path) AS source_path,
               c.media_type, a.aesthetic, m.motion, m.static,
               cap.caption, cap.caption_status,
               t.text_match, g.dup_group, g.dup_of
        FROM spans c
        LEFT JOIN _latest_cuts k USING (clip_id)
        LEFT JOIN _latest_sources s USING (video_id)
        LEFT JOIN _latest_downloads d USING (video_id)
        LEFT JOIN (SELECT clip_id, aesthetic FROM _latest_aesthetic_scores WHERE status = 'ok'
                   QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY scored_at DESC, row_id DESC) = 1
                  ) a USING (clip_id)
        LEFT JOIN (SELECT clip_id, motion, static FROM _latest_motion_scores WHERE status = 'ok'
                   QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY scored_at DESC, row_id DESC) = 1
                  ) m USING (clip_id)
        LEFT JOIN (SELECT clip_id, caption, caption_status FROM _latest_captions WHERE status = 'ok'
                   QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY scored_at DESC, row_id DESC) = 1
                  ) cap USING (clip_id)
        LEFT JOIN (SELECT clip_id, text_match FROM _latest_text_match_scores WHERE status = 'ok'
                   QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY scored_at DESC, row_id DESC) = 1
                  ) t USING (clip_id)
        LEFT JOIN (SELECT clip_id, dup_group, dup_of FROM _latest_dup_groups
                   WHERE run_key = (SELECT run_key FROM latest_dedup)) g USING (clip_id)
        """,
    ),
}
# Each table is also exposed as a plain view of its latest rows, under its own name.


def arrow_schema(table: str) -> pa.Schema:
    return tables()[table].arrow_schema()


def render_markdown() -> str:
    out = [
        f"# Manifest schema, version {SCHEMA_VERSION}",
        "",
        "Generated by `python -m manifests.schema > manifests/SCHEMA.md` from the tables that each stage",
        "module declares (`TABLES` in `datakit/stages/*.py` and `datakit/ingest.py`).",
        "Each table is a folder of Parquet part files under `<workspace>/tables/<name>/`; the DuckDB",
        "catalog `<workspace>/manifest.duckdb` has one view per table (its latest row per key) and",
        "the joined views `videos` and `clips`.",
        "",
        "## Status values",
        "",
        *[f"- `{k}`: {v}" for k, v in STATUSES.items()],
        "",
    ]
    for t in tables().values():
        out += [f"## Table `{t.name}` (key `{t.key}`)", "", t.doc, "", "| column | type | meaning |", "|---|---|---|"]
        out += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in t.columns]
        out.append("")
    for name, (doc, sql) in VIEWS.items():
        out += [f"## View `{name}`", "", doc, "", "```sql", textwrap.dedent(sql).strip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render_markdown(), end="")
