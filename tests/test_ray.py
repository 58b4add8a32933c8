"""The Ray Data executor gives the same manifest as the local one (same planning and commits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from datakit.executors import run_stage
from datakit.ingest import ingest
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(300)
def test_ray_executor_matches_local(tmp_path, demo_samples, bad_inputs, ray_local):
    inputs = [str(Path(demo_samples[0].path).parent), str(bad_inputs["empty"].parent)]
    manifests = []
    for executor in ("local", "ray"):
        ws = Workspace(tmp_path / executor)
        ingest(ws, inputs)
        probe = run_stage(ws, ProbeStage(), executor=executor, progress=False)
        scenes = run_stage(ws, SceneStage(), executor=executor, progress=False)
        assert probe.processed == probe.planned > 0 and scenes.processed == scenes.planned > 0
        manifests.append({t: ws.sql(f"select * from {t} order by 1") for t in ("videos", "clips")})
        assert run_stage(ws, ProbeStage(), executor=executor, progress=False).planned == 0
    local, on_ray = manifests
    assert on_ray == local
    assert any(v["status"] == "error" for v in on_ray["videos"]) and len(on_ray["clips"]) >= 10
