"""Crash safety and concurrency: SIGKILL at any point, reruns, two commands at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from datakit.ingest import ingest
from datakit.samples import SampleSpec, make_sample
from datakit.stage import run_stage
from datakit.stages.probe import ProbeStage
from datakit.workspace import Workspace
from tests.conftest import PYTHON, ROOT, cli_env

N_VIDEOS = 60


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("many")
    for i in range(N_VIDEOS):
        make_sample(SampleSpec(f"v{i:03d}", 96, 64, 12, "libx264", "mp4", [6, 6], seed=100 + i), d)
    return d


def _manifest(ws_root: Path) -> dict[str, list[dict]]:
    ws = Workspace(ws_root)
    return {t: ws.sql(f"select * from {t} order by 1") for t in ("sources", "probes", "videos")}


def _probe_cmd(ws: Path, *extra: str) -> list[str]:
    return [PYTHON, str(ROOT / "cli.py"), "datakit", "probe", "-w", str(ws), "--set", "batch_size=1", *extra]


def _parts(ws: Path, table: str) -> int:
    return len([p for p in (ws / "tables" / table).glob("part-*.parquet") if "init" not in p.name])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kill_after_parts", [0, 3, 17])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, many_videos, kill_after_parts):
    reference = tmp_path / "reference"
    ingest(Workspace(reference), [str(many_videos)])
    run_stage(Workspace(reference), ProbeStage(), progress=False)

    ws = tmp_path / "killed"
    ingest(Workspace(ws), [str(many_videos)])
    proc = subprocess.Popen(_probe_cmd(ws), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _parts(ws, "probes") < kill_after_parts and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _parts(ws, "probes") < N_VIDEOS, "the run finished before the kill: the test proves nothing"
    # no half-written part is visible to readers: every visible part is a complete Parquet file
    Workspace(ws).sql("select count(*) from probes")
    subprocess.run(_probe_cmd(ws), env=cli_env(), check=True, capture_output=True)
    assert _manifest(ws) == _manifest(reference)


@pytest.mark.timeout(300)
def test_two_commands_at_once_do_not_corrupt(tmp_path, many_videos):
    ws = tmp_path / "ws"
    ingest_cmd = [PYTHON, str(ROOT / "cli.py"), "datakit", "ingest", "-w", str(ws), str(many_videos)]
    procs = [subprocess.Popen(ingest_cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert all(p.wait() == 0 for p in procs), [p.stderr.read() for p in procs]
    procs = [subprocess.Popen(_probe_cmd(ws), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    m = _manifest(ws)
    assert len(m["sources"]) == N_VIDEOS and len(m["probes"]) == N_VIDEOS
    assert all(r["status"] == "ok" for r in m["videos"])
    # the probe work was done once: the second run waited on the lock and found nothing pending
    summaries = b"".join(o for o, _ in outs).decode()
    assert f"{N_VIDEOS}/{N_VIDEOS} items" in summaries and "0/0 items" in summaries, summaries
