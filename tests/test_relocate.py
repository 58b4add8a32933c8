"""A moved or copied workspace reads its own files: in datakit, and in a plain DuckDB client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import duckdb
import pytest

from datakit.workspace import Workspace


def sources(ws: Workspace, n: int, start: int = 0) -> None:
    ws.write(
        "sources",
        [
            {"video_id": f"v{i}", "source": f"/x/{i}.mp4", "source_kind": "file", "status": "ok"}
            for i in range(start, start + n)
        ],
    )


def count(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT count(*) FROM sources").fetchall()[0][0]


def test_a_moved_workspace_reads_its_own_files_in_plain_duckdb_and_datakit(tmp_path, monkeypatch):
    orig = Workspace(tmp_path / "orig")
    sources(orig, 3)
    copy = tmp_path / "copy"
    shutil.copytree(orig.root, copy)
    sources(orig, 2, start=3)  # the original moves on: 5 rows there, 3 in the copy

    # plain DuckDB on the copied catalog, never opened by datakit: from the workspace folder ...
    monkeypatch.chdir(copy)
    with duckdb.connect(str(copy / "manifest.duckdb"), read_only=True) as con:
        assert count(con) == 3
    # ... and from anywhere else, with the lines `datakit attach-sql` prints
    monkeypatch.chdir(tmp_path)
    with duckdb.connect() as con:
        con.execute(Workspace(copy, create=False).attach_sql())
        assert count(con) == 3
    with duckdb.connect(str(copy / "manifest.duckdb"), read_only=True) as con:
        with pytest.raises(duckdb.IOException, match="No files found"):  # never the original's rows
            count(con)

    # move the original (a new mount point): datakit status and the catalog read its own files
    moved = tmp_path / "elsewhere" / "ws"
    moved.parent.mkdir()
    os.rename(orig.root, moved)
    ws = Workspace(moved, create=False)
    assert ws.sql("SELECT count(*) AS n FROM sources")[0]["n"] == 5
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from datakit.pipeline import status; from datakit.workspace import "
            f"Workspace; print(status(Workspace({str(moved)!r}, create=False)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert "ingest" in out.stdout or "probe" in out.stdout
    monkeypatch.chdir(moved)
    with duckdb.connect(str(moved / "manifest.duckdb"), read_only=True) as con:
        assert count(con) == 5


def test_an_old_absolute_catalog_is_rebuilt_once(tmp_path):
    ws = Workspace(tmp_path / "ws")
    meta = ws.read_meta()
    meta.pop("catalog")
    ws.meta_path.write_text(__import__("json").dumps(meta))
    Workspace(tmp_path / "ws", create=False)
    assert ws.read_meta()["catalog"] == "relative"


def test_datakit_attach_sql_prints_lines_a_plain_client_runs(tmp_path, monkeypatch):
    from tests.conftest import PYTHON, ROOT, cli_env

    ws = Workspace(tmp_path / "ws")
    sources(ws, 2)
    out = subprocess.run(
        [PYTHON, str(ROOT / "cli.py"), "datakit", "attach-sql", "-w", str(ws.root)],
        env=cli_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    monkeypatch.chdir(tmp_path)
    with duckdb.connect() as con:
        con.execute(out)
        assert count(con) == 2
