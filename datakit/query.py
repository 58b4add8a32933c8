"""Read-only SQL over the manifest views."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from datakit.workspace import Workspace

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class ReadOnlyError(ValueError):
    pass


def check_read_only(sql: str) -> None:
    """Refuse anything but SELECT/EXPLAIN (COPY, INSERT, ATTACH, PRAGMA, ... would write)."""
    con = duckdb.connect(":memory:")
    try:
        statements = con.extract_statements(sql)
    except duckdb.ParserException as exc:
        raise ReadOnlyError(f"SQL does not parse: {exc}") from None
    finally:
        con.close()
    if not statements:
        raise ReadOnlyError("empty query")
    for st in statements:
        if st.type not in ALLOWED:
            kind = str(st.type).split(".")[-1]
            raise ReadOnlyError(
                f"datakit query is read-only: {kind} statements are refused "
                f"(only SELECT/EXPLAIN). To export, use --format csv|json|parquet --output FILE."
            )
    if len(statements) > 1:
        raise ReadOnlyError("one statement at a time, please")


def run_query(ws: Workspace, sql: str) -> pa.Table:
    check_read_only(sql)
    return ws.arrow(sql)


def write_result(table: pa.Table, fmt: str, output: Path | None) -> None:
    """Write a result as csv, json (one object per line) or parquet, to a file or stdout."""
    if fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        data = buf.getvalue()
    elif fmt == "json":
        data = "".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist()).encode()
    elif fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
    else:
        raise ValueError(f"unknown format {fmt!r} (table, csv, json, parquet)")
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(output).write_bytes(data)
