"""The stage contract: batches, prepare ahead of the model step, worker context, retries, placement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datakit.executors import plan, run_stage
from datakit.executors.local import plan_workers
from datakit.stage import OptionError, Resources
from datakit.workspace import Workspace
from tests.conftest import PYTHON, ROOT, cli_env
from tests.stage_fixtures import BatchStage, GpuStage


def _workspace(tmp_path: Path, n: int) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.write(
        "sources",
        [
            {
                "video_id": f"v{i:03d}",
                "source": f"/x/{i}.mp4",
                "source_kind": "file",
                "path": f"/x/{i}.mp4",
                "status": "ok",
            }
            for i in range(n)
        ],
    )
    return ws


def _rows(ws: Workspace) -> dict[str, dict]:
    return {r["video_id"]: r for r in ws.sql("SELECT * FROM probes")}


def test_process_batch_gets_batches_and_prepare_runs_in_threads(tmp_path):
    ws = _workspace(tmp_path, 10)
    stats = run_stage(ws, BatchStage(batch_size=4, commit_every=3), progress=False)
    assert stats.statuses == {"ok": 10}
    infos = [json.loads(r["codec"]) for r in _rows(ws).values()]
    assert sorted(i["batch"] for i in infos) == [2, 2] + [4] * 8, "batches of 4, 4 and the rest"
    assert all(i["thread"].startswith("batchtest-prepare") for i in infos), (
        "prepare ran in the prepare threads"
    )
    assert all(r["attempts"] == 1 for r in _rows(ws).values())
    assert stats.rows_written["probes"] == 10 and stats.commits == 4, "committed every 3 items"


def test_a_bad_item_only_costs_its_own_row(tmp_path):
    ws = _workspace(tmp_path, 6)
    run_stage(ws, BatchStage(batch_size=3, fail_ids=["v001"]), progress=False)
    rows = _rows(ws)
    assert rows["v001"]["status"] == "error" and "bad input v001" in rows["v001"]["error"]
    assert all(rows[f"v{i:03d}"]["status"] == "ok" for i in (0, 2, 3, 4, 5)), "batch mates were processed"


def test_transient_failures_retry_then_give_up(tmp_path):
    ws = _workspace(tmp_path, 3)
    stage = BatchStage(transient_ids=["v002"], max_attempts=2)
    run_stage(ws, stage, progress=False)
    row = _rows(ws)["v002"]
    assert (row["status"], row["attempts"]) == ("retry", 1) and "device busy" in row["error"]
    assert [i["video_id"] for i in plan(ws, stage)] == ["v002"], "a rerun plans only the retry"
    run_stage(ws, stage, progress=False)
    row = _rows(ws)["v002"]
    assert (row["status"], row["attempts"]) == ("error", 2) and "gave up after 2 attempts" in row["error"]
    assert plan(ws, stage) == [], "an error is permanent"


def test_retry_errors_requeues_error_rows(tmp_path):
    ws = _workspace(tmp_path, 3)
    run_stage(ws, BatchStage(fail_ids=["v000"]), progress=False)
    assert plan(ws, BatchStage()) == []
    assert [i["video_id"] for i in plan(ws, BatchStage(), retry_errors=True)] == ["v000"]
    run_stage(ws, BatchStage(), progress=False, retry_errors=True)
    row = _rows(ws)["v000"]
    assert (row["status"], row["attempts"]) == ("ok", 2)


def test_a_failing_setup_stops_the_run_before_any_row(tmp_path):
    from datakit.executors.local import StageSetupError

    ws = _workspace(tmp_path, 3)
    with pytest.raises(StageSetupError, match="batchtest: setup failed: model weights not found"):
        run_stage(ws, BatchStage(fail_setup=True), progress=False)
    assert _rows(ws) == {}, "no item was marked: a fixed setup processes them all"


@pytest.mark.parametrize("executor,workers", [("local", 2), ("ray", 1)])
def test_a_failing_setup_stops_every_executor_with_one_line(tmp_path, executor, workers):
    """Before: with -j 2 each item became a 'worker died' retry row and the pool restarted per item."""
    from datakit.executors import StageSetupError

    ws = _workspace(tmp_path, 4)
    with pytest.raises(
        StageSetupError, match="^batchtest: setup failed: model weights not found: /nowhere/model.pt$"
    ):
        run_stage(
            ws, BatchStage(fail_setup=True, batch_size=1), workers=workers, executor=executor, progress=False
        )
    assert _rows(ws) == {}, "no item was marked: a fixed setup processes them all"


def test_the_cli_prints_a_failing_setup_as_one_line(tmp_path, demo_samples):
    ws = tmp_path / "ws"
    env = cli_env() | {"DATAKIT_STAGES": "tests.stage_fixtures:BatchStage"}
    subprocess.run(
        [PYTHON, "-m", "datakit.cli", "ingest", "-w", str(ws), *[str(s.path) for s in demo_samples]],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    out = subprocess.run(
        [PYTHON, "-m", "datakit.cli", "batchtest", "-w", str(ws), "-j", "2", "--fail-setup"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: batchtest: setup failed: model weights not found: /nowhere/model.pt"
    ]


def test_a_stage_module_that_fails_to_import_is_named_and_the_rest_works(tmp_path):
    (tmp_path / "broken_stage.py").write_text("import not_a_module_anywhere\n")
    env = cli_env() | {"DATAKIT_STAGES": "broken_stage", "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    for args in (["--help"], ["probe", "--help"]):
        out = subprocess.run(
            [PYTHON, "-m", "datakit.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "stage module broken_stage failed to import and is skipped: ModuleNotFoundError" in out.stderr
    assert "probe" in out.stdout or "--count-frames" in out.stdout
    Workspace(tmp_path / "ws")
    bad = subprocess.run(
        [PYTHON, "-m", "datakit.cli", "status", "-w", str(tmp_path / "ws")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 0 and "probe" in bad.stdout, bad.stderr


def test_cuda_out_of_memory_is_transient():
    class OutOfMemoryError(RuntimeError):  # what torch.cuda raises, by name
        pass

    stage = BatchStage()
    rows = stage.failure_rows(
        {"video_id": "v"}, OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    )
    assert rows["probes"][0]["status"] == "retry"
    assert stage.failure_rows({"video_id": "v"}, ValueError("x"))["probes"][0]["status"] == "error"


def test_gpu_stages_get_one_worker_per_visible_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert plan_workers(GpuStage(), workers=7) == (2, ["3", "5"]), "-j does not oversubscribe GPUs"
    half = GpuStage()
    half.resources = Resources(gpus=0.5)
    assert plan_workers(half, 1) == (4, ["3", "3", "5", "5"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plan_workers(GpuStage(), 4) == (4, []), "no GPU: -j CPU workers"
    # Two real worker processes, each seeing only its GPU (the stage never touches CUDA itself).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    ws = _workspace(tmp_path, 8)
    run_stage(ws, GpuStage(batch_size=2), progress=False)
    infos = [json.loads(r["codec"]) for r in _rows(ws).values()]
    assert {i["device"] for i in infos} == {"cuda:0"}
    assert {(i["rank"], i["cuda"]) for i in infos} == {(0, "3"), (1, "5")}


def test_options_are_validated_before_anything_runs(tmp_path):
    from datakit.pipeline import build_stage

    with pytest.raises(OptionError, match="unknown detector 'adaptiv'"):
        build_stage("scenes", {"detector": "adaptiv"})
    with pytest.raises(OptionError, match="min_clip_s must be a number"):
        build_stage("scenes", {"min_clip_s": "two"})
    with pytest.raises(OptionError, match="crf must be <= 51"):
        build_stage("cut", {"crf": 99})
    with pytest.raises(OptionError, match=r"treshold \(did you mean threshold\?\)"):
        build_stage("scenes", {"treshold": 3})
    with pytest.raises(OptionError, match="batch_size must be >= 1"):
        build_stage("probe", {"batch_size": 0})


def test_a_typo_on_the_command_line_writes_nothing(tmp_path, demo_samples):
    ws = tmp_path / "ws"

    def datakit(*args):
        return subprocess.run(
            [PYTHON, "-m", "datakit.cli", *args, "-w", str(ws)],
            cwd=ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert datakit("ingest", str(demo_samples[0].path)).returncode == 0
    assert datakit("probe").returncode == 0
    bad = datakit("scenes", "--detector", "adaptiv")
    assert bad.returncode == 2 and "unknown detector 'adaptiv'" in bad.stderr
    bad = datakit("scenes", "--set", "min_clip=3")
    assert bad.returncode == 2 and "did you mean min_clip_s" in bad.stderr
    assert Workspace(ws).sql("SELECT count(*) AS n FROM scene_runs")[0]["n"] == 0, "nothing was written"
    good = datakit("scenes")
    assert good.returncode == 0 and "1/1 items (1 ok)" in good.stdout


def test_every_option_is_a_cli_flag_and_a_config_key():
    from datakit.pipeline import render_default_config
    from datakit.registry import stages

    rendered = render_default_config()
    for name, cls in stages().items():
        out = subprocess.run(
            [PYTHON, "-m", "datakit.cli", *(cls.cli_path or (name,)), "--help"],
            cwd=ROOT,
            env=cli_env() | {"COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        for f in cls.options():
            assert f"# {f.name} " in rendered or f"# {f.name} =" in rendered
            if f.type in ("int", "float", "str", "bool", "float | None", "int | None", "str | None"):
                assert "--" + f.name.replace("_", "-") in out.stdout, f"{name} --{f.name}"
    shipped = (ROOT / "datakit" / "defaults.toml").read_text()
    assert shipped == rendered, "datakit/defaults.toml is stale: python -m datakit.generated"


def test_workers_exit_when_the_run_is_killed(tmp_path, demo_samples):
    """SIGKILL of a `-j 2` run must not leave worker processes behind."""
    ws = tmp_path / "ws"
    env = cli_env()
    subprocess.run(
        [PYTHON, "-m", "datakit.cli", "ingest", *[str(s.path) for s in demo_samples], "-w", str(ws)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [PYTHON, "-m", "datakit.cli", "probe", "-w", str(ws)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    proc = subprocess.Popen(
        [PYTHON, "-m", "datakit.cli", "scenes", "-j", "2", "-w", str(ws)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    children: set[int] = set()
    while time.monotonic() < deadline and len(children) < 2:
        children = _descendants(proc.pid)
        time.sleep(0.1)
    assert len(children) >= 2, "the pool started its workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    left = [p for p in children if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"worker processes outlived the killed run: {left}"


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    parent = {int(c): int(p) for c, p in zip(out[::2], out[1::2], strict=True)}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_ray_actors_get_real_batches_and_match_a_local_run(tmp_path):
    local, remote = _workspace(tmp_path / "a", 9), _workspace(tmp_path / "b", 9)
    stage = BatchStage(batch_size=3, fail_ids=["v004"])
    run_stage(local, stage, progress=False)
    run_stage(remote, stage, progress=False, executor="ray", workers=2)
    strip = ("codec", "_written_ns")
    want = {k: {c: v for c, v in r.items() if c not in strip} for k, r in _rows(local).items()}
    got = {k: {c: v for c, v in r.items() if c not in strip} for k, r in _rows(remote).items()}
    assert got == want
    batches = [json.loads(r["codec"])["batch"] for r in _rows(remote).values() if r["status"] == "ok"]
    assert max(batches) == 3, "map_batches handed the actors the stage's batch size"


def test_pixel_limit_option_defaults_to_mediaio():
    import mediaio
    from datakit.stages.cut import CutStage
    from datakit.stages.probe import ProbeStage

    assert CutStage().max_pixels == ProbeStage().max_pixels == mediaio.MAX_PIXELS


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_images_are_one_clip_each_and_skip_scenes_and_cut(tmp_path, demo_samples):
    from PIL import Image

    from datakit.ingest import ingest
    from datakit.stages.cut import CutStage
    from datakit.stages.probe import ProbeStage
    from datakit.stages.scenes import SceneStage

    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "still.png")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, [str(tmp_path / "still.png"), str(demo_samples[0].path)])
    run_stage(ws, ProbeStage(), progress=False)
    scenes = run_stage(ws, SceneStage(), progress=False)
    cut = run_stage(ws, CutStage(), progress=False)
    assert scenes.statuses == {"ok": 1} and set(cut.statuses) == {"ok"}, "no error row for the image"
    images = ws.sql("SELECT * FROM clips WHERE media_type = 'image'")
    assert len(images) == 1 and images[0]["clip_id"].endswith("-0-1") and images[0]["cut_status"] is None


def test_the_clip_stages_share_one_declaration_of_their_clip_model():
    """Aesthetic and text match take model/pretrained/cache_dir from one place (same names and defaults)."""
    import dataclasses

    from datakit.scoring import ClipOptions
    from datakit.stages.aesthetic import AestheticStage
    from datakit.stages.match import TextMatchStage

    shared = {f.name: f.default for f in dataclasses.fields(ClipOptions)}
    assert set(shared) == {"model", "pretrained", "cache_dir"}
    for cls in (AestheticStage, TextMatchStage):
        assert issubclass(cls, ClipOptions)
        assert {f.name: f.default for f in dataclasses.fields(cls) if f.name in shared} == shared
    assert AestheticStage().clip_identity() == TextMatchStage().clip_identity()


def test_a_score_stage_error_row_carries_the_identity_columns():
    from datakit.scoring import ScoreStage
    from datakit.stages.motion import MotionStage

    stage = MotionStage()
    assert isinstance(stage, ScoreStage)
    (row,) = stage.failure_rows({"clip_id": "c1", "row_id": "c1:k"}, ValueError("unreadable"))[
        "motion_scores"
    ]
    assert (row["row_id"], row["clip_id"], row["model_key"], row["status"]) == (
        "c1:k",
        "c1",
        stage.settings_key,
        "error",
    )
    assert row["model"].startswith("farneback") and row["scored_at"] > 0
