"""Remembered reads: a repeated `status` or a resumed no-op stage answers without DuckDB, and never
from counts that a write, a damaged part or the clock has made wrong."""

from __future__ import annotations

import shutil
import time

import duckdb
import pytest

from datakit.executors import run_stage
from datakit.executors.runner import plan
from datakit.stages.probe import ProbeStage
from datakit.status import status_rows
from datakit.workspace import DamagedPartsError, Workspace


def _source(vid: str) -> dict:
    return {"video_id": vid, "source": f"/videos/{vid}.mp4", "source_kind": "file", "status": "ok"}


def _probed(vid: str, status: str = "ok", **extra) -> dict:
    return {"video_id": vid, "status": status, "width": 640, "height": 360, **extra}


def _fresh(ws: Workspace) -> list[dict]:
    """Status computed from the tables, with nothing remembered."""
    shutil.rmtree(ws.root / "cache", ignore_errors=True)
    return status_rows(ws)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.write("sources", [_source(v) for v in "abc"])
    ws.write("probes", [_probed("a"), _probed("b", "error", error="probe failed: not a video")])
    return ws


def _refuse(*args, **kwargs):
    raise AssertionError("DuckDB was opened: the answer should have been remembered")


def by_stage(rows: list[dict]) -> dict[str, dict]:
    return {r["stage"]: r for r in rows}


def test_a_repeated_status_reads_no_table_and_a_write_is_seen(ws, monkeypatch):
    first = status_rows(ws)
    probe = by_stage(first)["probe"]
    assert (probe["ok"], probe["error"], probe["pending"]) == (1, 1, 1)
    with monkeypatch.context() as m:
        m.setattr(duckdb, "connect", _refuse)
        assert status_rows(ws) == first  # unchanged parts: the remembered counts, no DuckDB
    ws.write("probes", [_probed("c")])
    after = status_rows(ws)
    assert (by_stage(after)["probe"]["ok"], by_stage(after)["probe"]["pending"]) == (2, 0)
    assert after == _fresh(ws)


def test_a_resumed_stage_with_nothing_to_do_opens_no_duckdb(ws, monkeypatch):
    ws.write("probes", [_probed("c")])
    assert plan(ws, ProbeStage()) == []
    monkeypatch.setattr(duckdb, "connect", _refuse)
    stats = run_stage(ws, ProbeStage(), progress=False)
    assert stats.planned == 0


def test_other_options_or_a_new_source_are_planned_again(ws):
    ws.write("probes", [_probed("c")])
    assert plan(ws, ProbeStage()) == []
    assert [i["video_id"] for i in plan(ws, ProbeStage(), retry_errors=True)] == ["b"]  # another query
    ws.write("sources", [_source("d")])
    assert [i["video_id"] for i in plan(ws, ProbeStage())] == ["d"]


def test_a_retry_falls_due_when_its_time_comes(ws, monkeypatch):
    due_at = time.time() + 3600
    ws.write("probes", [_probed("c", "retry", error="probe failed: busy", retry_at=due_at)])
    assert plan(ws, ProbeStage()) == []  # waiting for its retry_at
    assert by_stage(status_rows(ws))["probe"]["retry"] == 1
    opened = []
    real_connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: opened.append(1) or real_connect(*a, **k))
    assert plan(ws, ProbeStage()) == [] and not opened  # remembered while the clock is before it
    monkeypatch.setattr(time, "time", lambda: due_at + 1)
    plan(ws, ProbeStage())
    assert opened  # past retry_at, the plan is made again from the tables


def test_a_damaged_part_is_reported_even_when_counts_are_remembered(ws):
    status_rows(ws)
    part = ws.live_parts("probes")[-1]
    part.write_bytes(part.read_bytes()[:-20])  # truncated in place
    with pytest.raises(DamagedPartsError):
        status_rows(ws)


def test_a_read_only_workspace_still_answers(ws):
    expected = _fresh(ws)
    cache = ws.root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.write_text("not a folder")  # nothing can be kept there
    assert status_rows(ws) == expected
