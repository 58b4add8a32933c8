"""Crash safety and concurrency: SIGKILL during a run, reruns, two commands at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from datakit.executors import run_stage
from datakit.ingest import ingest
from datakit.stages.probe import ProbeStage
from datakit.workspace import Workspace
from demo.sample_videos import SampleSpec, make_sample
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


def _probe_cmd(ws: Path, *options: str) -> list[str]:
    return [PYTHON, str(ROOT / "cli.py"), "datakit", "probe", "-w", str(ws), *options]


def _parts(ws: Path, table: str) -> int:
    return len([p for p in (ws / "tables" / table).glob("part-*.parquet") if "init" not in p.name])


def _run_dirs(ws: Path) -> set[Path]:
    return set((ws / "runs").glob("*"))


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the command exited (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("commit_every", "kill_after_parts"),
    [(1000, 0), (1, 3), (1, 17)],
    ids=["before-first-commit", "after-3-parts", "after-17-parts"],
)
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, many_videos, commit_every, kill_after_parts):
    reference = tmp_path / "reference"
    ingest(Workspace(reference), [str(many_videos)])
    run_stage(Workspace(reference), ProbeStage(), progress=False)

    ws = tmp_path / "killed"
    ingest(Workspace(ws), [str(many_videos)])
    before = _run_dirs(ws)
    cmd = _probe_cmd(ws, "--set", f"commit_every={commit_every}")
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the run folder appears once the stage holds its lock and has planned: work has started
    _wait_for(lambda: _run_dirs(ws) - before, "the probe run started", proc)
    _wait_for(lambda: _parts(ws, "probes") >= kill_after_parts, f"{kill_after_parts} committed parts", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = _parts(ws, "probes")
    if kill_after_parts == 0:
        assert committed == 0, "the first commit landed before the kill: the test proves nothing"
    assert committed < N_VIDEOS, "the run finished before the kill: the test proves nothing"
    # no half-written part is visible to readers: every visible part is a complete Parquet file
    Workspace(ws).sql("select count(*) from probes")
    subprocess.run(_probe_cmd(ws), env=cli_env(), check=True, capture_output=True)
    assert _manifest(ws) == _manifest(reference)


@pytest.mark.timeout(300)
def test_two_commands_at_once_do_not_corrupt(tmp_path, many_videos):
    ws = tmp_path / "ws"
    ingest_cmd = [PYTHON, str(ROOT / "cli.py"), "datakit", "ingest", "-w", str(ws), str(many_videos)]
    procs = [
        subprocess.Popen(ingest_cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    assert all(p.wait() == 0 for p in procs), [p.stderr.read() for p in procs]

    # The first probe run is paused (SIGSTOP) while it holds the workspace, so the second one
    # certainly arrives during its run; it must wait for the first, then find nothing pending.
    logs = [(tmp_path / f"probe{i}.out", tmp_path / f"probe{i}.err") for i in range(2)]

    def start(i: int) -> subprocess.Popen:
        out, err = logs[i]
        with out.open("w") as stdout, err.open("w") as stderr:
            return subprocess.Popen(_probe_cmd(ws), env=cli_env(), stdout=stdout, stderr=stderr)

    before = _run_dirs(ws)
    first = start(0)
    _wait_for(lambda: _run_dirs(ws) - before, "the first probe run started", first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = start(1)
        waiting = "waiting: another probe run holds this workspace"
        _wait_for(lambda: waiting in logs[1][1].read_text(), "the second run to wait on the lock", second)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait() == 0 and second.wait() == 0, [err.read_text() for _, err in logs]
    assert waiting not in logs[0][1].read_text()

    m = _manifest(ws)
    assert len(m["sources"]) == N_VIDEOS and len(m["probes"]) == N_VIDEOS
    assert all(r["status"] == "ok" for r in m["videos"])
    # the probe work was done once: the second run found nothing pending once it got the lock
    assert f"{N_VIDEOS}/{N_VIDEOS} items" in logs[0][0].read_text()
    assert "0/0 items" in logs[1][0].read_text()
    stats = [json.loads(f.read_text()) for f in (ws / "runs").glob("*/stats.json")]
    waits = sorted(s["lock_wait_seconds"] for s in stats if s["stage"] == "probe")
    assert len(waits) == 2 and waits[0] < waits[1] and waits[1] > 0


# ------------------------------------------------------------------------------- dedup on its own
def _embedded_clips(ws: Workspace, blobs: list[bytes], dim: int) -> None:
    from tests.curation_fixtures import write_clips

    ids = [f"vid{k:04d}-0-48" for k in range(len(blobs))]
    write_clips(
        ws,
        [
            {
                "clip_id": cid,
                "video_id": cid[:7],
                "start_frame": 0,
                "end_frame": 48,
                "fps": 24.0,
                "width": 64,
                "height": 48,
            }
            for cid in ids
        ],
    )
    ws.write(
        "clip_embeddings",
        [
            {
                "row_id": f"{cid}:e",
                "clip_id": cid,
                "model_key": "e",
                "dim": dim,
                "embedding": blob,
                "scored_at": 1.0,
            }
            for cid, blob in zip(ids, blobs, strict=True)
        ],
    )


def _datakit(*args: str) -> subprocess.CompletedProcess:
    """A datakit command in a fresh process, as a user runs it (no module imported beforehand)."""
    cmd = [PYTHON, str(ROOT / "cli.py"), "datakit", *args]
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)


def test_standalone_dedup_in_a_fresh_process_groups_the_clips(tmp_path):
    import numpy as np

    x = np.eye(8, dtype="<f2")[[0, 1, 2, 0]]  # unit rows; clip 3 is a copy of clip 0
    ws = tmp_path / "ws"
    _embedded_clips(Workspace(ws), [row.tobytes() for row in x], 8)
    done = _datakit("dedup", "-w", str(ws))
    assert done.returncode == 0, done.stderr
    assert "(1 ok)" in done.stdout
    dups = Workspace(ws).sql("SELECT clip_id, dup_of FROM clips WHERE dup_of IS NOT NULL")
    assert dups == [{"clip_id": "vid0003-0-48", "dup_of": "vid0000-0-48"}]


def test_a_stage_run_whose_items_all_end_in_error_exits_non_zero(tmp_path):
    ws = tmp_path / "ws"
    _embedded_clips(Workspace(ws), [b"\0" * 6, b"\0" * 6], 8)  # 3 values where 8 are declared
    done = _datakit("dedup", "-w", str(ws))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "(1 error)" in done.stdout
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert "every item of dedup ended in error (1)" in line and "another size than 8" in line


# ------------------------------------------------------------------------------- batch-independent scores
def test_aesthetic_scores_are_bit_identical_whichever_clips_share_a_batch(tmp_path):
    """A rerun after a kill batches the remaining clips differently: each clip's bits must not change."""
    import random

    import numpy as np
    from PIL import Image

    from datakit.clip_models import save_tiny_aesthetic_head, save_tiny_clip
    from datakit.executors import plan
    from datakit.stage import WorkerContext
    from datakit.stages.aesthetic import AestheticStage
    from datakit.stages.scenes import SceneStage
    from tests.curation_fixtures import small_videos

    media = tmp_path / "media"
    small_videos(media, 2)  # 4 clips of 3 frames
    rng = np.random.default_rng(3)
    for i in range(9):  # 9 images of 1 frame
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(media / f"img{i}.png")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, [str(media)])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    config, weights = save_tiny_clip(tmp_path / "tiny")
    stage = AestheticStage(
        model=str(config),
        pretrained=str(weights),
        batch_size=4,
        head=str(save_tiny_aesthetic_head(tmp_path / "tiny" / "head.pth")),
    )
    stage.setup(WorkerContext.for_workspace(ws.root, stage.name))
    items = [stage.prepare(i) for i in plan(ws, stage)]
    assert len(items) == 13

    def scored(batches: list[list[dict]]) -> dict[str, tuple]:
        out = {}
        for batch in batches:
            for rows in stage.process_batch(batch):
                (score,), (emb,) = rows["aesthetic_scores"], rows["clip_embeddings"]
                out[score["clip_id"]] = (score["aesthetic"], score["frame_scores"], emb["embedding"])
        return out

    in_order = scored([items[i : i + 4] for i in range(0, 13, 4)])
    shuffled = random.Random(0).sample(items, len(items))
    regrouped = scored([shuffled[:1], shuffled[1:4], shuffled[4:6], shuffled[6:10], shuffled[10:]])
    assert regrouped == in_order  # exact: every float of every clip

    # the text match: the same, for the caption and the middle frame
    from datakit.stages.match import TextMatchStage
    from tests.curation_fixtures import write_scores

    words = ["a dog on a beach", "a city street at night", "two cats", "rain on a window", "a red car"]
    write_scores(
        ws,
        {
            item["clip_id"]: {"caption": words[k % 5] + f" {k}", "caption_status": "ok"}
            for k, item in enumerate(items)
        },
    )
    match = TextMatchStage(model=str(config), pretrained=str(weights), batch_size=4)
    match.setup(WorkerContext.for_workspace(ws.root, match.name))
    pairs = [match.prepare(i) for i in plan(ws, match)]
    assert len(pairs) == 13

    def matched(batches: list[list[dict]]) -> dict[str, float]:
        return {
            r["text_match_scores"][0]["clip_id"]: r["text_match_scores"][0]["text_match"]
            for batch in batches
            for r in match.process_batch(batch)
        }

    shuffled = random.Random(1).sample(pairs, len(pairs))
    assert matched([shuffled[:3], shuffled[3:4], shuffled[4:8], shuffled[8:]]) == matched(
        [pairs[i : i + 4] for i in range(0, 13, 4)]
    )
