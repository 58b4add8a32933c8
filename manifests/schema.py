"""The manifest schema: one Parquet table per stage, keyed by id, and the SQL views that join them.

Every stage writes rows to its own table as immutable Parquet part files; a later row for the same
key supersedes an earlier one (a rerun after an error, say). The views below are what users query.
`SCHEMA.md` in this folder is generated from this module (`python -m manifests.schema`), and a test
keeps the two in sync. Bump SCHEMA_VERSION whenever a table or view changes.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1

# Row status values, shared by every stage table.
STATUSES = {
    "ok": "the stage finished for this row",
    "error": "permanent failure (bad input); `error` says why; a rerun does not retry it",
    "retry": "transient failure (network, rate limit); a rerun retries it",
    "pending": "(views only) no stage has produced a row yet",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type name
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


_ARROW = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
}

# Hidden column appended to every part file: nanosecond write time, used to pick the latest row.
WRITTEN_COLUMN = "_written_ns"

C = Column
TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table(
            "sources",
            "video_id",
            "One row per ingested input (local file or URL). Written by `ingest`.",
            (
                C("video_id", "VARCHAR", "16 hex chars: blake2b of the file content, or of the canonical URL"),
                C("source", "VARCHAR", "what the user gave: absolute file path or the URL as written"),
                C("source_kind", "VARCHAR", "'file' or 'url'"),
                C("path", "VARCHAR", "absolute local path (null for URLs until downloaded)"),
                C("bytes", "BIGINT", "file size at ingest (null for URLs)"),
                C("mtime_ns", "BIGINT", "file modification time at ingest; lets a re-ingest skip re-hashing"),
                C("status", "VARCHAR", "'ok' or 'error' (unreadable path, broken symlink, directory...)"),
                C("error", "VARCHAR", "readable reason when status is 'error'"),
            ),
        ),
        Table(
            "downloads",
            "video_id",
            "One row per URL source after `download` tried it.",
            (
                C("video_id", "VARCHAR", "id of the URL source"),
                C("url", "VARCHAR", "the URL that was fetched"),
                C("status", "VARCHAR", "'ok', 'retry' (transient, tried again by the next run) or 'error'"),
                C("error", "VARCHAR", "readable reason of the last failure"),
                C("attempts", "INTEGER", "attempts made so far, over all runs"),
                C("method", "VARCHAR", "'http' or 'yt-dlp'"),
                C("path", "VARCHAR", "absolute path of the downloaded file (sanitised name under media/)"),
                C("bytes", "BIGINT", "size of the downloaded file"),
                C("http_status", "INTEGER", "last HTTP status code seen, if any"),
                C("retry_after_s", "DOUBLE", "server-requested wait (Retry-After) of the last failure, if any"),
                C("retry_at", "DOUBLE", "unix time before which a rerun skips this row (a long Retry-After)"),
            ),
        ),
        Table(
            "probes",
            "video_id",
            "Container and stream metadata from PyAV. Written by `probe`.",
            (
                C("video_id", "VARCHAR", "id of the video"),
                C("status", "VARCHAR", "'ok' or 'error'"),
                C("error", "VARCHAR", "why the file is not a usable video"),
                C("width", "INTEGER", "frame width in pixels"),
                C("height", "INTEGER", "frame height in pixels"),
                C("fps", "DOUBLE", "average frame rate"),
                C("num_frames", "BIGINT", "video frames in the file (counted packets, not the header's guess)"),
                C("duration_s", "DOUBLE", "num_frames / fps"),
                C("codec", "VARCHAR", "video codec name (h264, mpeg4, vp9...)"),
                C("pix_fmt", "VARCHAR", "pixel format of the video stream"),
                C("container", "VARCHAR", "container format name"),
                C("bit_rate", "BIGINT", "container bit rate, bits/s"),
                C("has_audio", "BOOLEAN", "whether an audio stream exists"),
                C("bytes", "BIGINT", "file size"),
            ),
        ),
        Table(
            "scene_runs",
            "video_id",
            "One row per video after scene detection; marks the video done (its spans are in clip_spans).",
            (
                C("video_id", "VARCHAR", "id of the video"),
                C("status", "VARCHAR", "'ok' or 'error'"),
                C("error", "VARCHAR", "why detection failed"),
                C("detector", "VARCHAR", "'adaptive' or 'content'"),
                C("params", "VARCHAR", "JSON of the detector and clip-length settings used"),
                C("num_scenes", "INTEGER", "scenes found before the clip-length policy"),
                C("num_clips", "INTEGER", "clips kept after the policy (rows in clip_spans)"),
                C("analysed_frames", "BIGINT", "frames decoded and analysed"),
                C("run_key", "VARCHAR", "hash of video_id and params; the clips of this run carry it"),
            ),
        ),
        Table(
            "clip_spans",
            "clip_id",
            "Frame-exact clip spans from scene detection and the clip-length policy.",
            (
                C("clip_id", "VARCHAR", "'<video_id>-<start_frame>-<end_frame>'"),
                C("video_id", "VARCHAR", "id of the source video"),
                C("scene_index", "INTEGER", "index of the scene this clip came from"),
                C("start_frame", "BIGINT", "first frame (inclusive)"),
                C("end_frame", "BIGINT", "end frame (exclusive)"),
                C("start_s", "DOUBLE", "start_frame / fps"),
                C("end_s", "DOUBLE", "end_frame / fps"),
                C("num_frames", "BIGINT", "end_frame - start_frame"),
                C("fps", "DOUBLE", "frame rate of the source"),
                C("width", "INTEGER", "source width"),
                C("height", "INTEGER", "source height"),
                C("run_key", "VARCHAR", "the scene run that made this span (spans of older runs are hidden in `clips`)"),
            ),
        ),
        Table(
            "cuts",
            "clip_id",
            "Extracted clip files. Written by `cut`.",
            (
                C("clip_id", "VARCHAR", "id of the clip"),
                C("status", "VARCHAR", "'ok' or 'error'"),
                C("error", "VARCHAR", "why extraction failed"),
                C("path", "VARCHAR", "absolute path of the extracted clip file"),
                C("width", "INTEGER", "width of the extracted file"),
                C("height", "INTEGER", "height of the extracted file"),
                C("fps", "DOUBLE", "frame rate of the extracted file"),
                C("num_frames", "BIGINT", "frames written"),
                C("bytes", "BIGINT", "file size"),
                C("params", "VARCHAR", "JSON of the cut settings (fps, short_side, crf, preset)"),
            ),
        ),
    ]
}

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
        "One row per clip span, with the extracted file when `cut` made one.",
        """
        SELECT c.clip_id, c.video_id, c.scene_index, c.start_frame, c.end_frame, c.start_s, c.end_s,
               c.num_frames, c.fps, c.width, c.height,
               CASE WHEN k.status = 'ok' THEN k.path END AS path,
               k.status AS cut_status, k.error AS cut_error,
               coalesce(d.path, s.path) AS source_path
        FROM _latest_clip_spans c
        JOIN (SELECT video_id, run_key FROM _latest_scene_runs) r USING (video_id, run_key)
        LEFT JOIN _latest_cuts k USING (clip_id)
        LEFT JOIN _latest_sources s USING (video_id)
        LEFT JOIN _latest_downloads d USING (video_id)
        """,
    ),
}
# Each table is also exposed as a plain view of its latest rows, under its own name.


def arrow_schema(table: str) -> pa.Schema:
    t = TABLES[table]
    fields = [pa.field(c.name, _ARROW[c.type]) for c in t.columns]
    return pa.schema([*fields, pa.field(WRITTEN_COLUMN, pa.int64())])


def render_markdown() -> str:
    out = [
        f"# Manifest schema, version {SCHEMA_VERSION}",
        "",
        "Generated from `manifests/schema.py` by `python -m manifests.schema > manifests/SCHEMA.md`.",
        "Each table is a folder of Parquet part files under `<workspace>/tables/<name>/`; the DuckDB",
        "catalog `<workspace>/manifest.duckdb` has one view per table (its latest row per key) and",
        "the joined views `videos` and `clips`.",
        "",
        "## Status values",
        "",
        *[f"- `{k}`: {v}" for k, v in STATUSES.items()],
        "",
    ]
    for t in TABLES.values():
        out += [f"## Table `{t.name}` (key `{t.key}`)", "", t.doc, "", "| column | type | meaning |", "|---|---|---|"]
        out += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in t.columns]
        out.append("")
    for name, (doc, sql) in VIEWS.items():
        out += [f"## View `{name}`", "", doc, "", "```sql", textwrap.dedent(sql).strip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render_markdown(), end="")
