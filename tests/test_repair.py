"""A damaged workspace gives a message naming the damage and the fix, and `datakit repair` fixes it
keeping every readable row."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.repair import repair
from datakit.workspace import DamagedPartsError, Workspace, WorkspaceError
from tests.conftest import PYTHON, ROOT, cli_env

N_SOURCES = 6


def datakit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(ROOT / "cli.py"), "datakit", *args], env=cli_env(), capture_output=True
    )


def _workspace(root: Path) -> tuple[Workspace, Path]:
    """Sources in two parts, probes in one; returns the workspace and the probes part (to damage)."""
    ws = Workspace(root)
    rows = [
        {"video_id": f"v{i}", "source": f"/v/{i}.mp4", "source_kind": "file", "status": "ok"}
        for i in range(N_SOURCES)
    ]
    ws.write("sources", rows[:3])
    ws.write("sources", rows[3:])
    ws.write(
        "probes",
        [{"video_id": "v0", "status": "ok", "width": 64}, {"video_id": "v1", "status": "ok", "width": 32}],
    )
    ws.write("probes", [{"video_id": "v2", "status": "error", "error": "empty file (0 bytes)"}])
    return ws, ws.data_parts("probes")[1]


def _damage(part: Path, how: str) -> None:
    data = part.read_bytes()
    if how == "empty":
        part.write_bytes(b"")
    elif how == "truncated":
        part.write_bytes(data[: len(data) // 2])
    elif how == "overwritten":
        part.write_bytes(b"\x00" * len(data))
    elif how == "scrambled pages":  # magic bytes intact, content not
        part.write_bytes(data[:4] + bytes(b ^ 0x5A for b in data[4:-200]) + data[-200:])
    elif how == "not a datakit part":
        pq.write_table(pa.table({"x": [1]}), part)


@pytest.mark.parametrize("how", ["empty", "truncated", "overwritten", "scrambled pages"])
def test_a_damaged_part_is_named_and_repair_keeps_every_intact_row(tmp_path, how):
    ws, part = _workspace(tmp_path / "ws")
    _damage(part, how)
    for attempt in (lambda: ws.sql("select count(*) from videos"), lambda: ws.compact("probes")):
        with pytest.raises(DamagedPartsError) as exc:
            attempt()
        assert str(part) in str(exc.value) and f"datakit repair -w {ws.root}" in str(exc.value)
    report = repair(ws.root)
    moved = ws.quarantine_dir / "probes" / part.name
    assert [(src, dst) for src, dst, _ in report.quarantined] == [(part, moved)]
    assert not part.exists() and moved.exists(), "the damaged part is kept aside, not deleted"
    assert report.rows["sources"] == N_SOURCES
    reopened = Workspace(ws.root, create=False)
    assert reopened.sql("select video_id, width from probes order by video_id") == [
        {"video_id": "v0", "width": 64},
        {"video_id": "v1", "width": 32},
    ]
    assert reopened.sql("select count(*) n from videos")[0]["n"] == N_SOURCES
    assert reopened.compact("probes") == 2


def test_damage_gives_every_command_a_message_not_a_traceback(tmp_path):
    ws, part = _workspace(tmp_path / "ws")
    _damage(part, "empty")
    for args in (["status"], ["compact"], ["query", "select count(*) from sources"], ["probe"]):
        proc = datakit(*args, "-w", str(ws.root))
        err = proc.stderr.decode()
        assert proc.returncode != 0 and "Traceback" not in err, (args, err)
        assert part.name in err and "datakit repair" in err, (args, err)
    proc = datakit("repair", "-w", str(ws.root))
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"quarantined {part}" in proc.stdout.decode()
    status = {r["stage"]: r for r in json.loads(datakit("status", "-w", str(ws.root), "--json").stdout)}
    assert status["ingest"]["ok"] == N_SOURCES and status["probe"]["ok"] == 2


def test_repair_quarantines_a_parquet_file_that_is_not_a_datakit_part(tmp_path):
    ws, part = _workspace(tmp_path / "ws")
    _damage(part, "not a datakit part")
    report = repair(ws.root)
    assert [why for *_, why in report.quarantined] == ["not a datakit part: no video_id, _written_ns column"]
    assert Workspace(ws.root).sql("select count(*) n from probes")[0]["n"] == 2


@pytest.mark.parametrize("content", ["{garbage", "", "[1, 2]", '{"root": "/x"}', None])
def test_unreadable_workspace_json_is_named_and_rewritten(tmp_path, content):
    ws, _ = _workspace(tmp_path / "ws")
    if content is None:
        ws.meta_path.unlink()
    else:
        ws.meta_path.write_text(content)
    with pytest.raises(WorkspaceError, match=f"{ws.meta_path}.*datakit repair"):
        Workspace(ws.root)
    proc = datakit("status", "-w", str(ws.root))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr.decode()
    assert "workspace.json" in proc.stderr.decode() and "repair" in proc.stderr.decode()
    report = repair(ws.root)
    assert report.meta_problem and report.quarantined == []
    assert Workspace(ws.root, create=False).sql("select count(*) n from sources")[0]["n"] == N_SOURCES


def test_a_deleted_table_folder_is_named_and_recreated(tmp_path):
    ws, _ = _workspace(tmp_path / "ws")
    shutil.rmtree(ws.table_dir("probes"))
    with pytest.raises(WorkspaceError, match=f"{ws.table_dir('probes')}.*datakit repair"):
        Workspace(ws.root)
    assert not ws.table_dir("probes").exists(), "opening does not hide the loss"
    report = repair(ws.root)
    assert report.recreated_tables == ["probes"]
    ws = Workspace(ws.root)
    assert ws.sql("select count(*) n from probes")[0]["n"] == 0
    assert ws.sql("select count(*) n from videos where status = 'pending'")[0]["n"] == N_SOURCES
    ws.write("probes", [{"video_id": "v0", "status": "ok"}])
    assert ws.sql("select count(*) n from probes")[0]["n"] == 1


def test_a_table_new_to_the_workspace_is_created_not_reported_lost(tmp_path):
    """A datakit with a new stage opens an older workspace: the new table's folder is made."""
    ws, _ = _workspace(tmp_path / "ws")
    meta = json.loads(ws.meta_path.read_text())
    meta["tables"].remove("cuts")
    ws.meta_path.write_text(json.dumps(meta))
    shutil.rmtree(ws.table_dir("cuts"))
    ws = Workspace(ws.root, create=False)
    assert ws.sql("select count(*) n from cuts")[0]["n"] == 0
    assert "cuts" in json.loads(ws.meta_path.read_text())["tables"]


@pytest.mark.parametrize("damage", [b"", b"not a database" * 100])
def test_a_damaged_catalog_is_rebuilt(tmp_path, damage):
    ws, _ = _workspace(tmp_path / "ws")
    ws.catalog_path.write_bytes(damage)
    Workspace(ws.root, create=False)  # opening rebuilds it: it holds no data, only views
    con = duckdb.connect(str(ws.catalog_path), read_only=True)
    con.execute(ws.attach_sql().splitlines()[0])  # the views' globs are relative to the workspace
    assert con.execute("select count(*) from videos").fetchone()[0] == N_SOURCES
    con.close()
    ws.catalog_path.write_bytes(damage)
    report = repair(ws.root)
    assert report.catalog_was_damaged and "rebuilt manifest.duckdb (it was damaged)" in report.lines()


def test_repair_of_a_healthy_workspace_changes_no_row(tmp_path):
    ws, _ = _workspace(tmp_path / "ws")
    before = {t: ws.sql(f"select * from {t} order by 1") for t in ("sources", "probes", "videos")}
    leftover = ws.table_dir("probes") / ".part-123-1-abc.parquet.0123abcd.tmp"  # a killed writer's temp file
    leftover.write_bytes(b"half a part")
    report = repair(ws.root)
    assert report.quarantined == [] and report.recreated_tables == [] and report.meta_problem is None
    assert report.removed_temp_files == 1 and not leftover.exists()
    assert {t: ws.sql(f"select * from {t} order by 1") for t in before} == before


def test_repair_refuses_what_is_not_a_workspace(tmp_path):
    with pytest.raises(WorkspaceError, match="no datakit workspace"):
        repair(tmp_path / "nothing")
