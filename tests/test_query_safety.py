"""`datakit query` cannot change anything: DuckDB's parser judges the statement, and the query runs on
a connection that can open no file but the workspace's parts and load no extension."""

from __future__ import annotations

import duckdb
import pytest

from datakit.query import ReadOnlyError, check_read_only, run_query
from datakit.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.write(
        "sources",
        [{"video_id": v, "source": f"/v/{v}.mp4", "source_kind": "file", "status": "ok"} for v in "abc"],
    )
    return ws


def _snapshot_of_parts(ws: Workspace) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in (ws.root / "tables").rglob("*.parquet")}


@pytest.mark.parametrize(
    "sql",
    [
        # EXPLAIN ANALYZE runs what it wraps: this once replaced the sources part with no rows
        "EXPLAIN ANALYZE COPY (SELECT * FROM sources WHERE false) TO '{part}' (FORMAT parquet)",
        "explain /* c */ analyse -- note\n copy (select 1) to '{out}'",
        "EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1) TO '{out}'",
        "EXPLAIN ANALYZE INSTALL httpfs",
        "EXPLAIN ANALYZE ATTACH '{out}' AS x",
        "EXPLAIN COPY (SELECT 1) TO '{out}'",
        "COPY (SELECT 1) TO '{out}'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "PRAGMA version",
        "CALL pragma_version()",
        "SELECT 1; COPY (SELECT 1) TO '{out}'",
        "",
        # a PIVOT without IN parses as MULTI: the statement around it still decides
        "COPY (PIVOT sources ON status USING count(*)) TO '{out}'",
        "EXPLAIN ANALYZE COPY (PIVOT sources ON status USING count(*)) TO '{part}' (FORMAT parquet)",
        "CREATE TABLE x AS PIVOT sources ON status USING count(*)",
        "WITH p AS (PIVOT sources ON status USING count(*)) SELECT * FROM p; SELECT 1",
        "UPDATE EXTENSIONS",
    ],
)
def test_statements_that_are_not_one_select_are_refused(ws, tmp_path, sql):
    part = ws.data_parts("sources")[0]
    before = _snapshot_of_parts(ws)
    sql = sql.format(part=part, out=tmp_path / "out.csv")
    with pytest.raises(ReadOnlyError):
        run_query(ws, sql)
    assert not (tmp_path / "out.csv").exists()
    assert _snapshot_of_parts(ws) == before
    assert ws.sql("SELECT count(*) AS n FROM sources")[0]["n"] == 3


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM videos",
        "WITH s AS (SELECT * FROM sources) FROM s SELECT count(*) AS n",
        "EXPLAIN SELECT * FROM clips",
        "EXPLAIN ANALYZE SELECT * FROM videos",
        "explain analyze -- note\n /* c */ select 1",
        "explain (format json) select 1",
        "DESCRIBE videos",
        "SUMMARIZE sources",
        "PIVOT sources ON status USING count(*)",
        "WITH s AS (SELECT * FROM sources) PIVOT s ON status USING count(*) GROUP BY source_kind",
        "SELECT * FROM (PIVOT sources ON status USING count(*))",
        "EXPLAIN ANALYZE PIVOT sources ON status USING count(*)",
        "PIVOT sources ON status IN ('ok') USING count(*)",
    ],
)
def test_selects_and_explained_selects_run(ws, sql):
    check_read_only(sql)
    assert run_query(ws, sql).num_rows > 0


def test_a_pivot_gives_one_column_per_value(ws):
    sql = "PIVOT (SELECT source_kind, status FROM sources) ON status USING count(*)"
    assert run_query(ws, sql).to_pylist() == [{"source_kind": "file", "ok": 3}]


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("INSTALL httpfs", "INSTALL statements"),
        ("LOAD httpfs", "LOAD statements"),
        ("CHECKPOINT", "CHECKPOINT statements"),
        ("FORCE CHECKPOINT", "FORCE CHECKPOINT statements"),
        ("USE memory", "USE statements"),
        ("SET threads = 1", "SET statements"),
        ("RESET threads", "RESET statements"),
        ("CALL pragma_version()", "CALL statements"),
        ("EXPLAIN ANALYZE INSTALL httpfs", "EXPLAIN of INSTALL statements"),
        ("UPDATE EXTENSIONS", "UPDATE statements"),
        (
            "WITH p AS (PIVOT sources ON status USING count(*)) INSERT INTO t SELECT * FROM p",
            "INSERT statements",
        ),
    ],
)
def test_a_refusal_names_the_statement_as_written(ws, sql, named):
    with pytest.raises(ReadOnlyError, match=f"read-only: {named} are refused"):
        run_query(ws, sql)


def test_sandboxed_connection_refuses_files_extensions_and_settings(ws, tmp_path):
    """Defence in depth: even a statement that slipped past the check could not write or fetch."""
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    con = ws.connect(sandbox=True)
    try:
        assert con.execute("SELECT count(*) FROM videos").fetchone()[0] == 3
        for sql in (
            f"COPY (SELECT 1) TO '{tmp_path / 'new.csv'}'",
            f"SELECT * FROM read_csv('{outside}')",
            f"ATTACH '{tmp_path / 'db.duckdb'}' AS other",
            "INSTALL httpfs",
            "LOAD httpfs",
            "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        ):
            with pytest.raises(duckdb.Error, match="(?i)permission|disabled"):
                con.execute(sql)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()
    assert not (tmp_path / "new.csv").exists() and not (tmp_path / "db.duckdb").exists()
    # the stages' own connections are not sandboxed
    assert ws.sql(f"SELECT count(*) AS n FROM read_csv('{outside}')")[0]["n"] == 1


def test_a_refused_file_read_says_why(ws, tmp_path):
    (tmp_path / "other.csv").write_text("a\n1\n")
    with pytest.raises(ReadOnlyError, match="reads only the manifest views"):
        run_query(ws, f"SELECT * FROM read_csv('{tmp_path / 'other.csv'}')")
