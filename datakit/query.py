"""Read-only SQL over the manifest views: one SELECT, judged by DuckDB's parser, run in a sandbox."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from datakit.workspace import Workspace, atomic_write_bytes

FORMATS = ("table", "csv", "json", "parquet")
_SELECT = duckdb.StatementType.SELECT
_EXPLAIN = duckdb.StatementType.EXPLAIN
_MULTI = duckdb.StatementType.MULTI


class ReadOnlyError(ValueError):
    pass


class OutputError(ValueError):
    pass


def check_read_only(sql: str) -> None:
    """Accept exactly one SELECT, or EXPLAIN [ANALYZE] of one SELECT; refuse anything else.

    DuckDB's parser decides: the statement's type, and for EXPLAIN the type of the statement it
    wraps (EXPLAIN ANALYZE runs it: `EXPLAIN ANALYZE COPY ... TO` would write a file). A PIVOT
    without an IN list parses as MULTI (DuckDB first creates an ENUM of the pivoted values, in
    the sandbox's own memory): see `_is_read_only`.
    """
    statements = _parse(sql)
    if not statements:
        raise ReadOnlyError("empty query")
    if len(statements) > 1:
        raise ReadOnlyError(f"one statement at a time, please (got {len(statements)})")
    statement = statements[0]
    explain = statement.type == _EXPLAIN or _leading_keyword(statement.query) == "EXPLAIN"
    explained = _explained_statement(statement.query) if explain else None
    if not _is_read_only(explained or statement):
        kind = _kind((explained or statement).query)
        what = f"EXPLAIN of {kind}" if explained else kind
        raise ReadOnlyError(_refusal(what))


def _refusal(what: str) -> str:
    return (
        f"datakit query is read-only: {what} statements are refused (only SELECT, or EXPLAIN [ANALYZE] "
        f"SELECT). To export, use --format csv|json|parquet --output FILE."
    )


# A MULTI statement (a PIVOT without IN) is read-only when it starts like a query and names no
# statement that changes or reaches anything: `COPY (PIVOT ...) TO`, `CREATE TABLE x AS PIVOT ...`,
# `WITH p AS (PIVOT ...) INSERT ...` all contain their statement's keyword.
_QUERY_STARTS = {
    "SELECT",
    "FROM",
    "WITH",
    "VALUES",
    "TABLE",
    "PIVOT",
    "PIVOT_WIDER",
    "UNPIVOT",
    "(",
    "DESCRIBE",
    "SUMMARIZE",
    "SHOW",
}
_STATEMENT_KEYWORDS = {
    "ABORT",
    "ALTER",
    "ANALYZE",
    "ATTACH",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DELETE",
    "DETACH",
    "DROP",
    "EXECUTE",
    "EXPLAIN",
    "EXPORT",
    "IMPORT",
    "INSERT",
    "INSTALL",
    "LOAD",
    "MERGE",
    "PRAGMA",
    "PREPARE",
    "RESET",
    "ROLLBACK",
    "SET",
    "START",
    "TRUNCATE",
    "UPDATE",
    "USE",
    "VACUUM",
}


def _is_read_only(statement: duckdb.Statement) -> bool:
    if statement.type == _SELECT:
        return True
    if statement.type != _MULTI:
        return False
    words = [w.upper() for _, w, _ in _words(statement.query)]
    return bool(words) and words[0] in _QUERY_STARTS and not _STATEMENT_KEYWORDS & set(words)


def _parse(sql: str) -> list[duckdb.Statement]:
    con = duckdb.connect(":memory:")
    try:
        statements = con.extract_statements(sql)
        for statement in statements:
            _ = statement.type  # raises ValueError for a type the Python API does not know
        return statements
    except duckdb.Error as exc:
        raise ReadOnlyError(f"SQL does not parse: {exc}") from None
    except ValueError:  # a statement type the Python API does not know (e.g. UPDATE EXTENSIONS)
        raise ReadOnlyError(_refusal(_kind(sql))) from None
    finally:
        con.close()


def _words(text: str) -> list[tuple[int, str, object]]:
    """(position, text, kind) of each token of `text` but comments."""
    tokens = duckdb.tokenize(text)
    ends = [pos for pos, _ in tokens[1:]] + [len(text)]
    return [
        (pos, text[pos:end].strip(), kind)
        for (pos, kind), end in zip(tokens, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]


def _leading_keyword(text: str) -> str | None:
    words = _words(text)
    return words[0][1].upper() if words and words[0][2] == duckdb.token_type.keyword else None


def _explained_statement(text: str) -> duckdb.Statement:
    """The statement an EXPLAIN wraps: what follows `EXPLAIN`, `ANALYZE` and an `( options )` list."""
    words = _words(text)
    i = 1  # words[0] is EXPLAIN
    if (
        i < len(words)
        and words[i][2] == duckdb.token_type.keyword
        and words[i][1].upper() in ("ANALYZE", "ANALYSE")
    ):
        i += 1
    elif i < len(words) and words[i][1] == "(":
        depth = 0
        while i < len(words):
            depth += words[i][1].count("(") - words[i][1].count(")")
            i += 1
            if depth <= 0:
                break
    if i >= len(words):
        raise ReadOnlyError("EXPLAIN of nothing")
    inner = _parse(text[words[i][0] :])
    if len(inner) != 1:
        raise ReadOnlyError("EXPLAIN must wrap exactly one statement")
    return inner[0]


def _kind(text: str) -> str:
    """The statement's own keyword as written (INSTALL, CHECKPOINT, USE), not DuckDB's type for it
    (LOAD, CALL, SET); FORCE keeps the keyword it forces (FORCE CHECKPOINT)."""
    words = [w.upper() for _, w, kind in _words(text) if kind == duckdb.token_type.keyword]
    if not words:
        return "non-SELECT"
    if words[0] in _QUERY_STARTS:  # a PIVOT wrapped in another statement: WITH p AS (PIVOT ...) INSERT
        return next((w for w in words if w in _STATEMENT_KEYWORDS), words[0])
    return " ".join(words) if words[0] == "FORCE" and len(words) > 1 else words[0]


def run_query(ws: Workspace, sql: str) -> pa.Table:
    """The result of one read-only statement, run on a sandboxed snapshot (see Workspace.connect)."""
    check_read_only(sql)
    try:
        return ws.arrow(sql, sandbox=True)
    except duckdb.PermissionException as exc:
        raise ReadOnlyError(
            f"{exc} (datakit query reads only the manifest views: other files, URLs and extensions are off)"
        ) from None


def encode(table: pa.Table, fmt: str) -> bytes:
    """A result as csv (nested values as JSON text), json (one object per line) or parquet."""
    if fmt == "csv":
        buf = io.BytesIO()
        try:
            pacsv.write_csv(_csv_ready(table), buf)
        except pa.ArrowException as exc:
            raise OutputError(
                f"cannot write this result as csv ({exc}); use --format json or parquet"
            ) from None
        return buf.getvalue()
    if fmt == "json":
        return "".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist()).encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    raise OutputError(f"unknown format {fmt!r} ({', '.join(FORMATS)})")


def _csv_ready(table: pa.Table) -> pa.Table:
    """Lists, structs and maps become JSON text (csv has no nested values); DuckDB writes the JSON."""
    nested = {i for i, f in enumerate(table.schema) if pa.types.is_nested(f.type)}
    if not nested:
        return table
    names = table.column_names
    columns = ", ".join(
        f"to_json(c{i})::VARCHAR AS c{i}" if i in nested else f"c{i}" for i in range(len(names))
    )
    con = duckdb.connect(":memory:")
    try:  # positional names: a result may repeat a column name
        relation = con.from_arrow(table.rename_columns([f"c{i}" for i in range(len(names))]))
        return relation.select(columns).to_arrow_table().rename_columns(names)
    finally:
        con.close()


def format_for(output: Path | None, fmt: str | None) -> str:
    """The format asked for, else the one the output file's suffix names, else a printed table."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise OutputError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
        if fmt == "table" and output is not None:
            raise OutputError("--output needs --format csv, json or parquet")
        return fmt
    if output is None:
        return "table"
    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix in ("csv", "json", "parquet"):
        return suffix
    raise OutputError(f"cannot tell the format of --output {output}: add --format csv, json or parquet")


def write_result(table: pa.Table, fmt: str, output: Path | None) -> None:
    """Write a result to stdout or to a file (its folder is created; a failed write keeps the old file)."""
    data = encode(table, fmt)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    output = Path(output)
    if output.is_dir():
        raise OutputError(f"--output {output} is a folder; give a file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(output, data)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
