"""The manifest schema: one Parquet table per stage, keyed by id, and the SQL views that join them.

Every stage writes rows to its own table as immutable Parquet part files; a later row for the same
key supersedes an earlier one (a rerun after an error, say). The views below are what users query.
Tables and the score columns of `clips` are declared by the stages themselves (`Stage.tables`,
`Stage.clip_columns`); this module composes them. `manifests/SCHEMA.md` and `datakit/defaults.toml`
are generated (`python -m datakit.generated`), and tests keep them current.

`SCHEMA_VERSION` is the workspace layout's version (bumped by hand only when old workspaces need
`datakit repair`); `fingerprint()` follows from the declared tables and views, and a workspace
whose recorded fingerprint differs rebuilds its catalog (new tables, columns and views).
"""

from __future__ import annotations

import functools
import hashlib
import json
import textwrap

import pyarrow as pa

from datakit.tables import WRITTEN_COLUMN, Column, Table

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "WRITTEN_COLUMN",
    "Column",
    "Table",
    "arrow_schema",
    "fingerprint",
    "tables",
    "views",
]

# 2: tables declared by their stages; every marker table has attempts and retry_at.
# 3: score tables, captions, dedup; `clips` gained media_type, the latest scores and caption.
# Since 3, table and view changes need no bump: `fingerprint()` tracks them.
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


VIDEOS = (
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
)

CLIPS_DOC = (
    "One row per clip span (an image is a one-frame clip: frames [0, 1), start_s = end_s = 0, no fps), with the extracted "
    "file when `cut` made one and the columns the score stages declare (the latest score of each kind, null until "
    "its stage has run)."
)
# The spans and their files; every stage's `clip_columns` are joined onto this.
CLIPS_BASE = """
    WITH spans AS (
        SELECT c.clip_id, c.video_id, c.scene_index, c.start_frame, c.end_frame, c.start_s, c.end_s,
               c.num_frames, c.fps, c.width, c.height, 'video' AS media_type
        FROM _latest_clip_spans c
        JOIN (SELECT video_id, run_key FROM _latest_scene_runs) r USING (video_id, run_key)
        UNION ALL
        SELECT video_id || '-0-1', video_id, 0, 0, 1, 0.0, 0.0, 1, NULL, width, height, 'image'
        FROM _latest_probes WHERE status = 'ok' AND media_type = 'image'
    )
    SELECT c.clip_id, c.video_id, c.scene_index, c.start_frame, c.end_frame, c.start_s, c.end_s,
           c.num_frames, c.fps, c.width, c.height,
           CASE WHEN k.status = 'ok' THEN k.path END AS path,
           k.status AS cut_status, k.error AS cut_error,
           coalesce(d.path, s.path) AS source_path,
           c.media_type{columns}
    FROM spans c
    LEFT JOIN _latest_cuts k USING (clip_id)
    LEFT JOIN _latest_sources s USING (video_id)
    LEFT JOIN _latest_downloads d USING (video_id){joins}
"""


def clips_sql() -> str:
    """The `clips` view: the spans, then each declared `ClipColumns` as a LEFT JOIN on clip_id."""
    from datakit.registry import clip_columns

    columns, joins = [], []
    for i, decl in enumerate(clip_columns()):
        columns += [f"j{i}.{c}" for c in decl.columns]
        sub = textwrap.indent(textwrap.dedent(decl.select_sql()).strip(), " " * 8)
        joins.append(f"\n    LEFT JOIN (\n{sub}\n    ) j{i} USING (clip_id)")
    cols = "".join(f",\n           {c}" for c in columns)
    return CLIPS_BASE.format(columns=cols, joins="".join(joins))


def views() -> dict[str, tuple[str, str]]:
    """name -> (doc, SQL) of the joined views (each table is also a view of its latest rows)."""
    return {"videos": VIDEOS, "clips": (CLIPS_DOC, clips_sql())}


@functools.cache
def fingerprint() -> str:
    """Short hash of every declared table (names, keys, column names and types) and view."""
    shape = {
        "version": SCHEMA_VERSION,
        "tables": {t.name: [t.key, [(c.name, c.type) for c in t.columns]] for t in tables().values()},
        "views": {name: " ".join(sql.split()) for name, (_, sql) in views().items()},
    }
    return hashlib.blake2b(json.dumps(shape, sort_keys=True).encode(), digest_size=6).hexdigest()


# Each table is also exposed as a plain view of its latest rows, under its own name.


def arrow_schema(table: str) -> pa.Schema:
    return tables()[table].arrow_schema()


def render_markdown() -> str:
    out = [
        f"# Manifest schema, version {SCHEMA_VERSION} (fingerprint {fingerprint()})",
        "",
        "Generated by `python -m datakit.generated` from the tables and `clips` columns that each",
        "stage declares (`tables` and `clip_columns` of the stage classes; `TABLES` in `datakit/ingest.py`).",
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
        out += [
            f"## Table `{t.name}` (key `{t.key}`)",
            "",
            t.doc,
            "",
            "| column | type | meaning |",
            "|---|---|---|",
        ]
        out += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in t.columns]
        out.append("")
    for name, (doc, sql) in views().items():
        out += [f"## View `{name}`", "", doc, "", "```sql", textwrap.dedent(sql).strip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":  # python -m datakit.schema: print SCHEMA.md (datakit.generated rewrites the files)
    print(render_markdown(), end="")
