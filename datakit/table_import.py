"""Import a public dataset's metadata table (Panda-70M, WebVid, InternVid, Open-Sora, or any table
through a column mapping): its videos become `sources`, its spans `given_spans`, its captions the
`provided` caption source and its scores `given_scores`.

The table is streamed in record batches (pyarrow's CSV / Parquet / JSON readers) and each batch is
parsed by one vectorised DuckDB query: memory stays bounded by the batch size, whatever the table's
length. Spans stay in seconds here; the `scenes` stage snaps them to frames after `probe` (see
`clips_in_spans`). Bad rows become `given_spans` rows with status 'error' that name the table row
(1 = the first data row) and the reason; every good row still imports. Reruns of an unchanged table
are skipped (the `imports` table), and every id is deterministic, so a rerun adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from datakit.tables import WRITTEN_COLUMN, ClipColumns, Table
from datakit.tables import Column as C

TABLES = (
    Table(
        "given_spans",
        "span_id",
        "Spans (clips) a metadata table gives, one row per span, in seconds; bad table rows are 'error' rows. "
        "Written by `ingest TABLE --format ...`; the `scenes` stage makes the clips inside them.",
        (
            C(
                "span_id",
                "VARCHAR",
                "'<video_id>:<start_ms>-<end_ms>', '<video_id>:whole', or 'error:<import_key>:<row>[:<span>]'",
            ),
            C("status", "VARCHAR", "'ok' or 'error' (the row or span cannot be imported; `error` says why)"),
            C("error", "VARCHAR", "readable reason when status is 'error'"),
            C("video_id", "VARCHAR", "id of the source video (null when the row names none)"),
            C("start_s", "DOUBLE", "span start in seconds (0 for a whole-video row)"),
            C("end_s", "DOUBLE", "span end in seconds (exclusive; null: the whole video)"),
            C("caption", "VARCHAR", "the table's caption of the span (the `provided` caption source)"),
            C("external_id", "VARCHAR", "the table's own id of the video (videoID, YoutubeID, path...)"),
            C(
                "import_key",
                "VARCHAR",
                "hash of the table's path, format and mapping: provided captions' model key",
            ),
            C(
                "import_run",
                "VARCHAR",
                "hash of the table file's size and mtime at import (error rows of older runs are stale)",
            ),
            C(
                "table_row",
                "BIGINT",
                "data row of the table (1 = first row after any header; CSV rows with the wrong "
                "number of cells are not counted: their error rows quote them)",
            ),
            C("span_index", "INTEGER", "index of the span in its table row (0 for one-span rows)"),
        ),
    ),
    Table(
        "given_scores",
        "row_id",
        "Scores a metadata table gives per span (Panda-70M matching_score, Open-Sora aes/flow/match, InternVid "
        "scores), on the table's own scale: never mixed with datakit's computed scores.",
        (
            C("row_id", "VARCHAR", "'<span_id>:<name>'"),
            C("span_id", "VARCHAR", "the given span scored"),
            C("video_id", "VARCHAR", "id of the source video"),
            C(
                "name",
                "VARCHAR",
                "score name as the table has it, lower-cased (matching_score, aes, flow, match...)",
            ),
            C("value", "DOUBLE", "the value as given"),
            C("model_key", "VARCHAR", "'given:<import_key>' (the table that gave it)"),
            C("scale", "VARCHAR", "what the number means, as far as the table's format documents it"),
        ),
    ),
    Table(
        "imports",
        "import_key",
        "One row per imported metadata table (the last import of each).",
        (
            C("import_key", "VARCHAR", "hash of the table's absolute path, format and column mapping"),
            C(
                "import_run",
                "VARCHAR",
                "hash of the file's size and mtime: an unchanged table is not read again",
            ),
            C("table_path", "VARCHAR", "absolute path of the table"),
            C("format", "VARCHAR", "panda70m, webvid, internvid, opensora or generic"),
            C("mapping", "VARCHAR", "JSON: field -> column of the table"),
            C("rows", "BIGINT", "data rows read"),
            C("spans", "BIGINT", "ok spans written"),
            C("errors", "BIGINT", "error rows written"),
            C("videos", "BIGINT", "distinct videos (sources rows written)"),
            C("status", "VARCHAR", "'ok' when the whole table was read"),
            C("finished_at", "DOUBLE", "unix time the import finished"),
        ),
    ),
)

FORMATS = ("panda70m", "webvid", "internvid", "opensora", "auto")
FIELDS = ("url", "id", "spans", "start", "end", "caption")  # plus score.NAME
TABLE_EXTENSIONS = {".csv", ".tsv", ".parquet", ".jsonl", ".ndjson"}

# field -> column for each known format (scores: score.NAME -> column).
FORMAT_COLUMNS: dict[str, dict[str, str]] = {
    "panda70m": {
        "id": "videoID",
        "url": "url",
        "spans": "timestamp",
        "caption": "caption",
        "score.matching_score": "matching_score",
    },
    "webvid": {"id": "videoid", "url": "contentUrl", "caption": "name"},
    "internvid": {
        "id": "YoutubeID",
        "start": "Start_timestamp",
        "end": "End_timestamp",
        "caption": "Caption",
    },
    "opensora": {
        "id": "path",
        "url": "path",
        "caption": "text",
        "score.aes": "aes",
        "score.flow": "flow",
        "score.match": "match",
    },
}
REQUIRED = {
    "panda70m": ("url", "spans"),
    "webvid": ("url",),
    "internvid": ("id", "start", "end"),
    "opensora": ("url",),
    "generic": ("url",),
}
SCALES = {
    "matching_score": "Panda-70M's caption-clip matching score (its retrieval model; higher fits better)",
    "aes": "Open-Sora's aesthetic score (LAION predictor, about 1-10)",
    "flow": "Open-Sora's optical-flow score (UniMatch, mean flow magnitude)",
    "match": "Open-Sora's text-image match (CLIP similarity)",
    "aesthetic_score": "InternVid's aesthetic score (LAION predictor, about 1-10)",
    "umt_score": "InternVid's UMT video-text similarity",
}
OPENSORA_V1_HEADER = ("path", "text", "num_frames")

# A time: seconds ("5.8"), M:SS or H:MM:SS(.mmm), quoted or not.
_TIME = r"\d+(?::\d+){0,2}(?:\.\d*)?"
_TOKEN = rf"""\s*(?:'{_TIME}'|"{_TIME}"|{_TIME})\s*"""
_PAIR = rf"\s*\[{_TOKEN},{_TOKEN}\]\s*"
SPANS_RE = rf"^\s*\[(?:{_PAIR}(?:,{_PAIR})*,?)?\s*\]\s*$"
STRING_RE = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
# A URL that canonical_url leaves unchanged (so its id is a plain hash): scheme://lower-host/path[?v=ID]
_PLAIN_URL = r"^https?://[a-z0-9.-]+/[A-Za-z0-9._~/%-]*(\?v=[A-Za-z0-9_-]+)?$"
_YOUTUBE_WATCH = r"^https://www\.youtube\.com/watch\?v=[A-Za-z0-9_-]+$"


class TableImportError(ValueError):
    """The table cannot be imported as asked (format, mapping, file): raised before anything is written."""


@dataclass
class ImportStats:
    rows: int = 0
    spans: int = 0
    errors: int = 0
    videos: int = 0
    skipped: bool = False
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)

    def summary(self, path: str) -> str:
        if self.skipped:
            return f"import {path}: unchanged since its last import, nothing to do"
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (
            f"import {path}: {self.rows} rows, {self.videos} videos, {self.spans} spans, "
            f"{self.errors} error rows ({rate:,.0f} rows/s)"
        )


# ----------------------------------------------------------------------------------- reading
def is_table(path: str | os.PathLike) -> bool:
    p = Path(path)
    name = p.name.lower()
    return p.is_file() and (p.suffix.lower() in TABLE_EXTENSIONS or name.endswith((".csv.gz", ".jsonl.gz")))


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "tsv" if name.endswith(".tsv") else "csv"


def _csv_has_header(path: Path, delimiter: str) -> tuple[bool, list[str]]:
    """Whether the first line is a header, and the first row's cells (Open-Sora 1.0 tables have none)."""
    import csv
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        first = next(csv.reader(fh, delimiter=delimiter), [])
    cells = [c.strip() for c in first]
    looks_data = bool(cells) and (cells[0].startswith(("/", "./", "http")) or Path(cells[0]).suffix != "")
    return not looks_data, cells


def open_batches(
    path: Path, batch_rows: int = 65536, skipped: list | None = None
) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """(column names, record batches) of a CSV/TSV/Parquet/JSONL table, streamed. CSV rows with the wrong
    number of cells are left out and appended to `skipped` as (expected, found, text)."""
    kind = _kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        return f.schema_arrow.names, f.iter_batches(batch_size=batch_rows)
    if kind == "jsonl":
        import pyarrow.json as pj

        reader = pj.open_json(path, read_options=pj.ReadOptions(block_size=16 << 20))
        return reader.schema.names, iter(reader)
    import pyarrow.csv as pcsv

    delimiter = "\t" if kind == "tsv" else ","
    header, cells = _csv_has_header(path, delimiter)
    names = (
        None if header else [*OPENSORA_V1_HEADER, *(f"column{i}" for i in range(3, len(cells)))][: len(cells)]
    )
    read = pcsv.ReadOptions(block_size=16 << 20, column_names=names)
    # Every column as text: ids such as "0001" stay as written; scores are cast in SQL.
    convert = pcsv.ConvertOptions(strings_can_be_null=True, column_types={}, auto_dict_encode=False)

    def bad_row(row) -> str:  # called from the reader's threads; list.append is atomic
        if skipped is None:
            return "error"
        skipped.append((row.expected_columns, row.actual_columns, row.text))
        return "skip"

    parse = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=bad_row)
    reader = pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    return reader.schema.names, iter(reader)


def detect_format(columns: list[str]) -> str:
    have = set(columns)
    for fmt in ("panda70m", "webvid", "internvid"):
        if all(FORMAT_COLUMNS[fmt][f] in have for f in REQUIRED[fmt]):
            return fmt
    if {"path", "text"} <= have:
        return "opensora"
    raise TableImportError(
        f"cannot tell the table's format from its columns ({', '.join(columns)}): "
        f"give --format or map columns with --col url=COLUMN ..."
    )


def resolve_mapping(fmt: str, columns: list[str], cols: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(format, field -> column) for a table, checked against its columns. --col entries win."""
    for f in cols:
        if f not in FIELDS and not f.startswith("score."):
            raise TableImportError(f"unknown field {f!r} in --col (fields: {', '.join(FIELDS)}, score.NAME)")
    if fmt not in FORMATS:
        raise TableImportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "auto":
        fmt = "generic" if "url" in cols else detect_format(columns)
    mapping = dict(FORMAT_COLUMNS.get(fmt, {}))
    have = set(columns)
    if fmt == "internvid":  # scores: every other column of the table
        known = set(FORMAT_COLUMNS["internvid"].values()) | {"url"}
        mapping |= {f"score.{c.lower()}": c for c in columns if c not in known}
        if "url" in have:
            mapping["url"] = "url"
    mapping |= cols
    required = REQUIRED.get(fmt, ("url",))
    missing = [f"{f} ({mapping.get(f, 'unmapped')})" for f in required if mapping.get(f) not in have]
    # A format's optional columns (id, caption, scores) may be absent; a column named with --col may not.
    mapping = {f: c for f, c in mapping.items() if c in have or f in required or f in cols}
    missing += [f"{f} ({c})" for f, c in mapping.items() if c not in have and f not in required]
    if fmt == "generic" and ("start" in mapping) != ("end" in mapping):
        raise TableImportError("--col start and --col end go together")
    if missing:
        raise TableImportError(
            f"the table has no column for {', '.join(missing)} (format {fmt}); "
            f"its columns: {', '.join(columns)}"
        )
    return fmt, mapping


# ----------------------------------------------------------------------------------- parsing
def _text(col: str, typ: pa.DataType) -> str:
    """SQL for a mapped column as text (lists and structs as JSON)."""
    q = f'"{col}"'
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return q
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_struct(typ):
        return f"CAST(to_json({q}) AS VARCHAR)"
    return f"CAST({q} AS VARCHAR)"


def _seconds(expr: str) -> str:
    """SQL: a time token ('0:01:02.5', '1:02.5', '62.5'; quotes already removed) in seconds."""
    return (
        f"CASE WHEN NOT contains({expr}, ':') THEN TRY_CAST({expr} AS DOUBLE) "
        f"WHEN {expr} LIKE '%:%:%:%' THEN NULL "
        f"ELSE epoch(TRY_CAST(CASE WHEN {expr} LIKE '%:%:%' THEN {expr} ELSE '0:' || {expr} END AS INTERVAL)) END"
    )


def _strip(expr: str, chars: str) -> str:
    """SQL: `expr` without any of `chars` (a chain of replace: much faster than a regex)."""
    for ch in chars:
        expr = f"replace({expr}, '{ch * 2 if ch == chr(39) else ch}', '')"
    return expr


def _unquote(expr: str) -> str:
    """SQL: a Python/JSON string literal's text (quotes removed, backslash escapes undone)."""
    return rf"CASE WHEN contains({expr}, '\') THEN regexp_replace({expr}[2:-2], '\\(.)', '\1', 'g') ELSE {expr}[2:-2] END"


def batch_sql(fmt: str, mapping: dict[str, str], schema: pa.Schema) -> str:
    """One DuckDB query turning a batch (`b`, with `__row` and `__vid`) into span rows.

    Output columns: table_row, video_id, external_id, span_index, start_s, end_s, caption, error,
    and one DOUBLE column per score (named `score.NAME`)."""
    types = {f.name: f.type for f in schema}
    text = {f: _text(c, types[c]) for f, c in mapping.items()}
    scores = sorted(f for f in mapping if f.startswith("score."))
    ext = text.get("id", "NULL")
    if "spans" in mapping:  # a list of [start, end] pairs per row, lists of captions and scores
        ts = text["spans"]
        cap = text.get("caption")
        clean = _strip(f"coalesce({ts}, '')", "[]'\" ")
        pieces = [
            f"regexp_full_match(coalesce({ts}, ''), $re${SPANS_RE}$re$) AS ts_ok",
            f"string_split({clean}, ',') AS toks",
        ]
        if cap:  # a list literal, or one caption for every span
            pieces.append(
                f"CASE WHEN ltrim({cap}) LIKE '[%' THEN regexp_extract_all({cap}, $re${STRING_RE}$re$) "
                f"END AS caps, {cap} AS cap1"
            )
        for i, s in enumerate(scores):
            c = text[s]
            pieces.append(
                f"CASE WHEN ltrim({c}) LIKE '[%' THEN string_split({_strip(c, '[] ')}, ',') END AS sl{i}, "
                f"TRY_CAST({c} AS DOUBLE) AS s1{i}"
            )
        inner = f"SELECT __row, __vid, {ext} AS ext, __verr, {', '.join(pieces)} FROM b"
        n = "len(toks) // 2"
        checks = [
            ("__verr IS NOT NULL", "__verr"),
            ("NOT ts_ok", "'unparsable timestamps: expected a list of [start, end] pairs'"),
        ]
        if cap:
            checks.append(
                (
                    f"caps IS NOT NULL AND len(caps) <> {n}",
                    f"'caption list has ' || len(caps) || ' entries for ' || {n} || ' spans'",
                )
            )
        for i, s in enumerate(scores):
            checks.append(
                (
                    f"sl{i} IS NOT NULL AND len(sl{i}) <> {n}",
                    f"'{s[6:]} list has ' || len(sl{i}) || ' entries for ' || {n} || ' spans'",
                )
            )
        row_error = "CASE " + " ".join(f"WHEN {w} THEN {e}" for w, e in checks) + " END"
        caption = f"CASE WHEN caps IS NULL THEN cap1 ELSE {_unquote('caps[k]')} END" if cap else "NULL"
        score_cols = "".join(
            f', CASE WHEN sl{i} IS NULL THEN s1{i} ELSE TRY_CAST(sl{i}[k] AS DOUBLE) END AS "{s}"'
            for i, s in enumerate(scores)
        )
        return f"""
            WITH r AS (SELECT *, {row_error} AS row_error FROM ({inner})),
            spans AS (
                SELECT __row, __vid, ext, row_error, CASE WHEN row_error IS NULL THEN {n} ELSE 0 END AS n, *
                EXCLUDE (__row, __vid, ext, row_error) FROM r),
            expanded AS (
                SELECT __row, __vid, ext, row_error, unnest(CASE WHEN n = 0 THEN [1] ELSE range(1, n + 1) END) AS k,
                       n, toks{"".join(f", sl{i}, s1{i}" for i in range(len(scores)))}
                       {", caps, cap1" if cap else ""}
                FROM spans)
            SELECT __row AS table_row, __vid AS video_id, ext AS external_id, k - 1 AS span_index,
                   {_seconds("toks[2 * k - 1]")} AS start_s, {_seconds("toks[2 * k]")} AS end_s,
                   {caption} AS caption, coalesce(row_error, CASE WHEN n = 0 THEN 'no spans' END) AS error,
                   n = 0 AS whole_row_error{score_cols}
            FROM expanded
        """
    if "start" in mapping:  # one span per row
        start, end = (_seconds(_strip(text[f], chr(39) + '" ')) for f in ("start", "end"))
        bad = (
            f"CASE WHEN __verr IS NOT NULL THEN __verr WHEN {start} IS NULL OR {end} IS NULL THEN "
            f"'unparsable timestamp ' || coalesce({text['start']}, 'null') || ' .. ' || coalesce({text['end']}, 'null') END"
        )
        span_cols = f"{start} AS start_s, {end} AS end_s"
    else:  # the whole video
        bad = "__verr"
        span_cols = "0.0 AS start_s, CAST(NULL AS DOUBLE) AS end_s"
    score_cols = "".join(f', TRY_CAST({text[s]} AS DOUBLE) AS "{s}"' for s in scores)
    return f"""
        SELECT __row AS table_row, __vid AS video_id, {ext} AS external_id, 0 AS span_index, {span_cols},
               {text.get("caption", "NULL")} AS caption, {bad} AS error, true AS whole_row_error{score_cols}
        FROM b
    """


# ----------------------------------------------------------------------------------- ids
def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class VideoIds:
    """video id of each row's url: URLs hashed as `datakit.ids.url_video_id` does (vectorised fast path
    for URLs already canonical), local paths (relative to the table's folder) by content like ingest."""

    def __init__(self, ws, table_dir: Path):
        self.ws, self.table_dir = ws, table_dir
        ok = ws.sql(
            "SELECT path, bytes, mtime_ns, video_id FROM sources WHERE status = 'ok' AND source_kind = 'file'"
        )
        self.known_files = {r["path"]: r for r in ok}
        self.file_ids: dict[str, tuple[str | None, str | None]] = {}  # path -> (id, error)
        self.secrets: dict[str, str] = {}

    def __call__(self, urls: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array, list[dict]]:
        """(video ids, errors, URL source text (null: not a URL), new file sources rows) for a batch."""
        import pyarrow.compute as pc

        from datakit.credentials import split_credentials
        from datakit.ids import url_video_id

        urls = pc.utf8_trim_whitespace(urls.cast(pa.string()))
        remote = pc.match_substring_regex(urls, r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
        youtube = pc.match_substring_regex(urls, r"youtube\.com|youtu\.be")
        fast = pc.and_(
            pc.match_substring_regex(urls, _PLAIN_URL),
            pc.or_(pc.invert(youtube), pc.match_substring_regex(urls, _YOUTUBE_WATCH)),
        )
        fast = pc.fill_null(fast, False)
        blake = hashlib.blake2b
        slow = pc.indices_nonzero(pc.invert(fast)).to_pylist()
        if not slow:  # the common case: every URL hashed as it is
            ids = [blake(u.encode(), digest_size=8).hexdigest() for u in urls.to_pylist()]
            return pa.array(ids, pa.string()), pa.nulls(len(urls), pa.string()), urls, []
        values = urls.to_pylist()
        flags = fast.to_pylist()
        ids = [
            blake(u.encode(), digest_size=8).hexdigest() if f else None
            for u, f in zip(values, flags, strict=True)
        ]
        shown = [u if f else None for u, f in zip(values, flags, strict=True)]
        errors: list[str | None] = [None] * len(values)
        rows: list[dict] = []
        remote_list = pc.fill_null(remote, False).to_pylist()
        for i in slow:
            u = values[i]
            if not u:
                errors[i] = "missing url"
            elif remote_list[i]:
                ids[i] = url_video_id(u)
                shown[i], userinfo = split_credentials(u)
                if userinfo:
                    self.secrets[ids[i]] = userinfo
            else:
                ids[i], errors[i], row = self._file(u)
                if row is not None:
                    rows.append(row)
        return pa.array(ids, pa.string()), pa.array(errors, pa.string()), pa.array(shown, pa.string()), rows

    def _file(self, value: str) -> tuple[str | None, str | None, dict | None]:
        from datakit.ids import file_video_id
        from datakit.ingest import _classify

        path = os.path.abspath(os.path.join(self.table_dir, os.path.expanduser(value)))
        if path in self.file_ids:
            vid, err = self.file_ids[path]
            return vid, err, None
        p = Path(path)
        err = _classify(p, None)
        vid = row = None
        if err is None:
            st = p.stat()
            prev = self.known_files.get(path)
            if prev and prev["bytes"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
                vid = prev["video_id"]
            else:
                try:
                    vid = file_video_id(p)
                except OSError as exc:
                    err = f"cannot read file: {exc.strerror or exc}"
                else:
                    row = {
                        "video_id": vid,
                        "source": path,
                        "source_kind": "file",
                        "path": path,
                        "status": "ok",
                        "bytes": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                    }
        if err is not None:
            err = f"{path}: {err}"
        self.file_ids[path] = (vid, err)
        return vid, err, row


# ----------------------------------------------------------------------------------- writing
_REPEATED_COLUMNS = {
    "status",
    "error",
    "source_kind",
    "import_key",
    "import_run",
    "name",
    "model_key",
    "scale",
}


def _chunks(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Record batches regrouped into tables of about `rows` rows (several batches: DuckDB scans them in parallel)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def write_arrow(ws, table: str, data: pa.Table) -> None:
    """Append an Arrow table as one part file (the columnar twin of Workspace.write)."""
    import pyarrow.parquet as pq

    from datakit.workspace import _fsync_and_rename

    if data.num_rows == 0:
        return
    from datakit.registry import tables

    schema = tables()[table].arrow_schema()
    missing = [f.name for f in schema if f.name not in data.column_names and f.name != WRITTEN_COLUMN]
    for name in missing:
        data = data.append_column(name, pa.nulls(data.num_rows, schema.field(name).type))
    with ws.table_lock(table, exclusive=False):
        now = time.time_ns()
        data = data.append_column(WRITTEN_COLUMN, pa.array(range(now, now + data.num_rows), pa.int64()))
        data = data.select(schema.names).cast(schema)
        path = ws.table_dir(table) / f"part-{now:019d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        # Fast settings (imports write a lot): zstd level 1, dictionaries only for repetitive columns.
        repeats = [c for c in data.column_names if c in _REPEATED_COLUMNS]
        pq.write_table(data, tmp, compression="zstd", compression_level=1, use_dictionary=repeats)
        _fsync_and_rename(tmp, path)


def _unreadable_rows(skipped: list[tuple[int, int, str]], import_key: str, import_run: str) -> pa.Table:
    rows = [
        {
            "span_id": f"error:{import_key}:unreadable:{_short_hash(text)}",
            "status": "error",
            "error": f"unreadable row ({expected} columns expected, {found} found): {text[:200]}",
            "import_key": import_key,
            "import_run": import_run,
        }
        for expected, found, text in list(skipped)
    ]
    return pa.Table.from_pylist(rows)


def _write_chunk(ws, out: dict[str, pa.Table]) -> None:
    for table in ("sources", "given_spans", "given_scores"):
        if table in out:
            write_arrow(ws, table, out[table])


def _batch_tables(
    con, b: pa.Table, parse_sql: str, import_key: str, import_run: str, scores: list[str]
) -> dict[str, pa.Table]:
    """given_spans, given_scores and URL sources rows of the batch registered as `b`."""
    err = f"'error:{import_key}:' || table_row"
    checked = f"""
        SELECT *, coalesce(error, CASE
            WHEN start_s IS NULL OR (end_s IS NULL AND NOT whole_row_error) THEN 'unparsable timestamp'
            WHEN end_s IS NOT NULL AND end_s <= start_s THEN 'end ' || end_s || ' s <= start ' || start_s || ' s'
            END) AS why FROM ({parse_sql})
    """
    span_id = (
        f"CASE WHEN why IS NOT NULL THEN {err} || CASE WHEN whole_row_error THEN '' ELSE ':' || span_index END "
        "WHEN end_s IS NULL THEN video_id || ':whole' "
        "ELSE video_id || ':' || CAST(round(start_s * 1000) AS BIGINT) || '-' || CAST(round(end_s * 1000) AS BIGINT) END"
    )
    keep = "whole_row_error AND why IS NOT NULL AND span_index > 0"  # one error row per bad table row
    rows = con.sql(f"""
        SELECT {span_id} AS span_id, CASE WHEN why IS NULL THEN 'ok' ELSE 'error' END AS status,
               CASE WHEN why IS NOT NULL THEN 'row ' || table_row || CASE WHEN whole_row_error THEN ''
                    ELSE ' span ' || span_index END || ': ' || why END AS error,
               video_id, CASE WHEN why IS NULL THEN start_s END AS start_s,
               CASE WHEN why IS NULL THEN end_s END AS end_s, CASE WHEN why IS NULL THEN caption END AS caption,
               external_id, '{import_key}' AS import_key, '{import_run}' AS import_run, table_row,
               span_index::INTEGER AS span_index {"".join(f', "{s}"' for s in scores)}
        FROM ({checked}) WHERE NOT ({keep})
    """).to_arrow_table()
    con.register("g", rows)
    out = {"given_spans": rows.drop_columns(scores) if scores else rows}
    out["sources"] = _url_sources(b.select(["__vid", "__src"]), rows)
    if scores:
        scale = "CASE name " + " ".join(
            f"WHEN '{k}' THEN '{v.replace(chr(39), chr(39) * 2)}'" for k, v in SCALES.items()
        )
        union = " UNION ALL ".join(
            f"SELECT span_id || ':{s[6:].lower()}' AS row_id, span_id, video_id, '{s[6:].lower()}' AS name, "
            f'"{s}" AS value FROM g WHERE status = \'ok\' AND "{s}" IS NOT NULL AND NOT isnan("{s}")'
            for s in scores
        )
        out["given_scores"] = con.sql(f"""
            SELECT *, 'given:{import_key}' AS model_key, {scale} ELSE 'as given by the table' END AS scale
            FROM ({union})
        """).to_arrow_table()
    con.unregister("g")
    return out


def _url_sources(b: pa.Table, spans: pa.Table) -> pa.Table:
    """sources rows of the URLs of rows with a good span (repeats of the previous row's video dropped)."""
    import pyarrow.compute as pc

    ok = pc.equal(spans.column("status"), "ok")
    keep = pc.is_valid(b.column("__src"))
    if not pc.all(ok).as_py():  # some rows have no good span: their videos are no sources
        good = pc.unique(spans.filter(ok).column("video_id"))
        keep = pc.and_(keep, pc.is_in(b.column("__vid"), value_set=good))
    b = b.filter(keep)
    ids = b.column("__vid").combine_chunks()
    if len(ids) > 1:
        changed = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        b = b.filter(pa.concat_arrays([pa.array([True]), changed]))
    n = b.num_rows
    return pa.table(
        {
            "video_id": b.column("__vid"),
            "source": b.column("__src"),
            "source_kind": pa.array(["url"] * n, pa.string()),
            "status": pa.array(["ok"] * n, pa.string()),
        }
    )


def check_table(
    path: str | os.PathLike, fmt: str = "auto", cols: dict[str, str] | None = None
) -> tuple[str, dict]:
    """(format, mapping) of a table, or TableImportError: the check made before anything is written."""
    p = Path(path).absolute()
    if not p.is_file():
        raise TableImportError(f"{p}: no such table file")
    try:
        columns, _ = open_batches(p)
    except (OSError, pa.ArrowException) as exc:
        raise TableImportError(f"{p}: cannot read the table: {exc}") from None
    return resolve_mapping(fmt, columns, dict(cols or {}))


def sniff_format(path: str | os.PathLike) -> str | None:
    """The known format of a headed table (for `ingest` without --format), or None (a URL list)."""
    p = Path(path)
    try:
        if _kind(p) in ("csv", "tsv") and not _csv_has_header(p, "\t" if _kind(p) == "tsv" else ",")[0]:
            return None
        return detect_format(open_batches(p)[0])
    except (OSError, ValueError, pa.ArrowException):
        return None


def import_table(
    ws,
    path: str | os.PathLike,
    fmt: str = "auto",
    cols: dict[str, str] | None = None,
    *,
    batch_rows: int = 262144,
    max_messages: int = 20,
) -> ImportStats:
    """Import one metadata table into the workspace (see the module doc). Idempotent."""
    import duckdb
    import pyarrow.compute as pc

    from datakit.credentials import save_credentials

    p = Path(path).absolute()
    if not p.is_file():
        raise TableImportError(f"{p}: no such table file")
    skipped: list[tuple[int, int, str]] = []
    try:
        columns, batches = open_batches(p, batch_rows, skipped)
    except (OSError, pa.ArrowException) as exc:
        raise TableImportError(f"{p}: cannot read the table: {exc}") from None
    fmt, mapping = resolve_mapping(fmt, columns, dict(cols or {}))
    st = p.stat()
    import_key = _short_hash(json.dumps([str(p), fmt, mapping], sort_keys=True))
    import_run = _short_hash(f"{st.st_size} {st.st_mtime_ns}")
    stats = ImportStats()
    done = ws.sql("SELECT import_run FROM imports WHERE import_key = ? AND status = 'ok'", [import_key])
    if done and done[0]["import_run"] == import_run:
        stats.skipped = True
        return stats
    t0 = time.perf_counter()
    ids = VideoIds(ws, p.parent)
    scores = sorted(f for f in mapping if f.startswith("score."))
    parse_sql = None
    con = duckdb.connect(config={"preserve_insertion_order": False})  # row order within a chunk is not needed
    from concurrent.futures import ThreadPoolExecutor  # here: every command imports this module

    writer, writing = ThreadPoolExecutor(1, thread_name_prefix="datakit-import-write"), None
    with ws.lock("stage-ingest"):
        try:
            for batch in _chunks(batches, batch_rows):
                n = batch.num_rows
                if fmt == "internvid" and "url" not in mapping:
                    ext = pc.utf8_trim_whitespace(batch.column(mapping["id"]).cast(pa.string()))
                    urls = pc.binary_join_element_wise("https://www.youtube.com/watch?v=", ext, "")
                else:
                    urls = batch.column(mapping["url"])
                vids, verrs, shown, file_rows = ids(urls)
                b = batch
                b = b.append_column("__row", pa.array(range(stats.rows + 1, stats.rows + n + 1), pa.int64()))
                b = (
                    b.append_column("__vid", vids)
                    .append_column("__verr", verrs)
                    .append_column("__src", shown)
                )
                con.register("b", b)
                parse_sql = parse_sql or batch_sql(fmt, mapping, batch.schema)
                out = _batch_tables(con, b, parse_sql, import_key, import_run, scores)
                con.unregister("b")
                if skipped:  # CSV rows that did not parse: error rows named by their text
                    out["given_spans"] = pa.concat_tables(
                        [out["given_spans"], _unreadable_rows(skipped, import_key, import_run)],
                        promote_options="default",
                    )
                    skipped.clear()
                spans = out["given_spans"]
                ok = pc.equal(spans.column("status"), "ok")
                errors = spans.filter(pc.invert(ok))
                if file_rows:  # only files with a good span become sources (a bad row is an error row)
                    good = set(pc.unique(spans.filter(ok).column("video_id")).to_pylist())
                    file_rows = [r for r in file_rows if r["video_id"] in good]
                if ids.secrets:
                    save_credentials(ws.root, ids.secrets)  # before the rows, so a download never misses them
                    ids.secrets = {}
                if file_rows:
                    ws.write("sources", file_rows)
                if writing is not None:
                    writing.result()  # one chunk written in a thread while the next is parsed (bounded)
                writing = writer.submit(_write_chunk, ws, out)
                stats.rows += n
                stats.spans += spans.num_rows - errors.num_rows
                stats.errors += errors.num_rows
                stats.videos += out["sources"].num_rows + len(file_rows)
                room = max_messages - len(stats.error_messages)
                if room > 0 and errors.num_rows:
                    stats.error_messages += errors.column("error").slice(0, room).to_pylist()
        except pa.ArrowInvalid as exc:  # a malformed file (ragged CSV...): what was read stays imported
            raise TableImportError(f"{p}: cannot read the table after row {stats.rows}: {exc}") from None
            if writing is not None:
                writing.result()
            if skipped:  # unreadable rows after the last good one
                write_arrow(ws, "given_spans", _unreadable_rows(skipped, import_key, import_run))
                stats.errors += len(skipped)
                stats.error_messages += [
                    r[2] for r in skipped[: max(0, max_messages - len(stats.error_messages))]
                ]
        finally:
            writer.shutdown(wait=True)
            con.close()
        stats.seconds = time.perf_counter() - t0
        ws.write(
            "imports",
            [
                {
                    "import_key": import_key,
                    "import_run": import_run,
                    "table_path": str(p),
                    "format": fmt,
                    "mapping": json.dumps(mapping, sort_keys=True),
                    "rows": stats.rows,
                    "spans": stats.spans,
                    "errors": stats.errors,
                    "videos": stats.videos,
                    "status": "ok",
                    "finished_at": time.time(),
                }
            ],
        )
    return stats


def parse_cols(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['url=contentUrl', 'score.aes=aesthetic'] -> {'url': 'contentUrl', 'score.aes': 'aesthetic'}."""
    out = {}
    for item in items:
        f, sep, c = item.partition("=")
        if not sep or not f.strip() or not c.strip():
            raise TableImportError(
                f"--col {item!r}: expected FIELD=COLUMN (fields: {', '.join(FIELDS)}, score.NAME)"
            )
        out[f.strip()] = c.strip()
    return out


# ----------------------------------------------------------------------------------- scenes
SPAN_MODES = ("detect", "trust", "ignore")


def span_frames(
    spans: list[dict], video_id: str, fps: float, num_frames: int
) -> tuple[list[tuple[int, int]], list[dict]]:
    """Given spans (GIVEN_SPANS_SQL's structs; end_s None: the whole video) as sorted, distinct
    [start, end) frames, and `given_spans` error rows for spans that end past the video's last frame."""
    out, errors = set(), []
    for g in spans:
        s = max(0, round(g["start_s"] * fps))
        e = num_frames if g["end_s"] is None else round(g["end_s"] * fps)
        if e <= num_frames:
            if s < e:
                out.add((s, e))
            continue
        why = (
            f"row {g['table_row']} span {g['span_index']}: ends at {g['end_s']:.3f} s, past the video's end "
            f"({num_frames / fps:.3f} s, {num_frames} frames)"
        )
        errors.append({**g, "video_id": video_id, "status": "error", "error": why})
    return sorted(out), errors


def clips_in_spans(
    scenes: list[tuple[int, int]],
    spans: list[tuple[int, int]],
    fps: float,
    num_frames: int,
    *,
    min_clip_s: float,
    max_clip_s: float | None,
    trim_frames: int,
) -> list[tuple[int, int, int]]:
    """Clips as (scene_index, start, end) inside given spans: each span is cut at the detected scenes'
    bounds (trimmed by `trim_frames` at transitions, as the clip policy does), then the policy's
    length rules apply to each piece. No clip crosses a transition or leaves its span."""
    from datakit.shot_detection import apply_clip_policy

    trimmed = [(s + trim_frames if s > 0 else s, e - trim_frames if e < num_frames else e) for s, e in scenes]
    clips: set[tuple[int, int, int]] = set()
    for a, b in spans:
        for i, (s, e) in enumerate(trimmed):
            lo, hi = max(a, s), min(b, e)
            if lo < hi:
                for _, cs, ce in apply_clip_policy(
                    [(lo, hi)], fps, num_frames, min_clip_s=min_clip_s, max_clip_s=max_clip_s, trim_frames=0
                ):
                    clips.add((i, cs, ce))
    return sorted(clips, key=lambda c: (c[1], c[2]))


GIVEN_SPANS_SQL = """
    SELECT video_id, list({'span_id': span_id, 'start_s': start_s, 'end_s': end_s, 'caption': caption,
                           'external_id': external_id, 'import_key': import_key, 'import_run': import_run,
                           'table_row': table_row, 'span_index': span_index} ORDER BY start_s, end_s) AS given_spans,
           md5(string_agg(span_id, ',' ORDER BY span_id)) AS given_digest
    FROM _latest_given_spans WHERE status = 'ok' AND video_id IS NOT NULL GROUP BY video_id
"""


# ----------------------------------------------------------------------------------- clips view
# Caption sources in order of preference for the `clips` view's `caption`: the table's own caption
# ('provided') first, else the latest VLM caption. A recipe picks another order with
# `SELECT * REPLACE (coalesce(vlm_caption, provided_caption) AS caption) FROM clips ...`.
CAPTION_PREFERENCE = ("provided", "vlm")

CLIP_SPANS_SQL = """
    WITH cs AS (
        SELECT clip_id, video_id, start_frame, end_frame, fps FROM _latest_clip_spans
        UNION ALL
        SELECT video_id || '-0-1', video_id, 0, 1, NULL FROM _latest_probes WHERE status = 'ok' AND media_type = 'image'
    ),
    gs AS (SELECT span_id, video_id, start_s, end_s, caption, import_key FROM _latest_given_spans WHERE status = 'ok')
    SELECT cs.clip_id, gs.span_id, gs.caption, gs.import_key
    FROM cs JOIN gs ON cs.video_id = gs.video_id
     AND (cs.fps IS NULL AND gs.start_s = 0
          OR cs.start_frame >= round(gs.start_s * cs.fps) AND (gs.end_s IS NULL OR cs.end_frame <= round(gs.end_s * cs.fps)))
    QUALIFY row_number() OVER (PARTITION BY cs.clip_id ORDER BY gs.end_s IS NULL, gs.end_s - gs.start_s, gs.span_id) = 1
"""


def _captions_sql() -> str:
    pick = {
        "provided": (
            "p.caption",
            "'ok'",
            "'provided:' || p.import_key",
            "p.caption IS NOT NULL AND trim(p.caption) <> ''",
        ),
        "vlm": ("v.caption", "v.caption_status", "v.model_key", "v.caption IS NOT NULL"),
    }

    def case(i: int) -> str:  # the first source (in preference order) that has a caption
        return "CASE " + " ".join(f"WHEN {pick[s][3]} THEN {pick[s][i]}" for s in CAPTION_PREFERENCE) + " END"

    source = "CASE " + " ".join(f"WHEN {pick[s][3]} THEN '{s}'" for s in CAPTION_PREFERENCE) + " END"
    return f"""
        WITH p AS ({CLIP_SPANS_SQL}),
        v AS (SELECT clip_id, caption, caption_status, model_key FROM _latest_captions WHERE status = 'ok'
              QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY scored_at DESC, row_id DESC) = 1)
        SELECT clip_id, {case(0)} AS caption, {case(1)} AS caption_status, {source} AS caption_source,
               {case(2)} AS caption_model_key, p.caption AS provided_caption, v.caption AS vlm_caption,
               v.caption_status AS vlm_caption_status, p.span_id AS given_span_id
        FROM p FULL OUTER JOIN v USING (clip_id)
    """


GIVEN_SCORES_SQL = f"""
    WITH p AS ({CLIP_SPANS_SQL})
    SELECT p.clip_id,
           max(value) FILTER (WHERE name = 'matching_score') AS given_matching_score,
           max(value) FILTER (WHERE name = 'aes') AS given_aes,
           max(value) FILTER (WHERE name = 'flow') AS given_flow,
           max(value) FILTER (WHERE name = 'match') AS given_match,
           map_from_entries(list({{'k': name, 'v': value}})) AS given_scores
    FROM p JOIN _latest_given_scores s USING (span_id)
    GROUP BY p.clip_id
"""


def _clip_columns() -> tuple:
    caption_cols = (
        "caption",
        "caption_status",
        "caption_source",
        "caption_model_key",
        "provided_caption",
        "vlm_caption",
        "vlm_caption_status",
        "given_span_id",
    )
    score_cols = ("given_matching_score", "given_aes", "given_flow", "given_match", "given_scores")
    return (
        ClipColumns("given_spans", caption_cols, sql=_captions_sql()),
        ClipColumns("given_scores", score_cols, sql=GIVEN_SCORES_SQL),
    )


CLIP_COLUMNS = _clip_columns()
