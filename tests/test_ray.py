"""The Ray Data executor on a multi-node cluster (three Ray nodes on this machine) gives the same
manifest as the local executor, and losing a worker node mid-run loses nothing."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from datakit.executors import run_stage
from datakit.ingest import ingest
from datakit.pipeline import apply_resources
from datakit.stages.cut import CutStage
from datakit.stages.motion import MotionStage
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace
from tests.curation_fixtures import small_videos

N_VIDEOS = 4  # two clips each


@dataclass(kw_only=True)
class GatedScenes(SceneStage):
    """SceneStage that holds the work of one node: an item there marks itself started and waits for
    a gate (opened after that node is killed); items elsewhere wait until that one has started."""

    def process(self, item: dict):
        here = ray.get_runtime_context().get_node_id()
        started = Path(self._gate).with_name("started")
        if here == self._doomed:
            started.touch()
            while not Path(self._gate).exists():
                time.sleep(0.02)
        while not started.exists():
            time.sleep(0.02)
        return super().process(item)


@pytest.fixture(scope="module")
def cluster():
    """A head (the driver's node, no CPU for work) and two worker nodes: 1 CPU; 2 CPUs and a logical GPU."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this file
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cpu_node = c.add_node(num_cpus=1)
    c.add_node(num_cpus=2, num_gpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, cpu_node
    ray.shutdown()
    c.shutdown()


def _manifest(ws: Workspace) -> dict[str, list[dict]]:
    """The videos and clips views, paths inside the workspace written relative to it."""
    root = str(ws.root)

    def rel(v):
        return v.replace(root, "WS") if isinstance(v, str) else v

    return {
        t: [{k: rel(v) for k, v in row.items()} for row in ws.sql(f"select * from {t} order by 1")]
        for t in ("videos", "clips")
    }


def _gpu_motion() -> MotionStage:
    """A stage asking for a GPU per worker (fractional here: two actors share the one GPU)."""
    return apply_resources(MotionStage(), {"gpus": 0.5})


def _committed(ws: Workspace, table: str) -> int:
    return len([p for p in ws.table_dir(table).glob("part-*.parquet") if "init" not in p.name])


@pytest.mark.timeout(180)
def test_multi_node_ray_matches_local_and_survives_a_lost_node(tmp_path, cluster):
    c, cpu_node = cluster
    videos = tmp_path / "videos"
    small_videos(videos, N_VIDEOS)
    local = Workspace(tmp_path / "local")
    ingest(local, [str(videos)])
    for stage in (ProbeStage(), SceneStage(), CutStage(), _gpu_motion()):
        assert set(run_stage(local, stage, progress=False).statuses) == {"ok"}

    ws = Workspace(tmp_path / "ray")
    ingest(ws, [str(videos)])
    run_stage(ws, ProbeStage(), progress=False)
    assert ray.cluster_resources().get("GPU") == 1 and len(ray.nodes()) == 3

    # scenes: an item on the 1-CPU node starts and waits; that node is killed while it does
    gate = tmp_path / "gate"
    gated = GatedScenes(commit_every=1, batch_size=1)
    gated._gate, gated._doomed = str(gate), cpu_node.node_id
    context = ray.data.DataContext.get_current()
    in_flight, context.max_tasks_in_flight_per_actor = context.max_tasks_in_flight_per_actor, 1
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(run_stage(ws, gated, executor="ray", progress=False))
        except Exception as exc:  # noqa: BLE001 (a run may fail when its node goes; the rerun finishes)
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not (gate.with_name("started").exists() and _committed(ws, "scene_runs") >= 1):
        assert thread.is_alive() and time.monotonic() < deadline, f"no item started on the node: {outcome}"
        time.sleep(0.02)
    c.remove_node(cpu_node, allow_graceful=False)  # a worker node dies with its actor and its item
    gate.touch()
    thread.join(timeout=120)
    context.max_tasks_in_flight_per_actor = in_flight
    assert not thread.is_alive(), "the run hangs after losing a node"
    rerun = run_stage(ws, SceneStage(), executor="ray", progress=False)  # does what the lost node had not
    if not isinstance(outcome[0], Exception):  # Ray Data restarts the lost actor and retries its batch
        assert outcome[0].processed == outcome[0].planned == N_VIDEOS and rerun.planned == 0
    rows = ws.sql("select video_id, status from scene_runs")
    assert sorted(r["video_id"] for r in rows) == sorted({r["video_id"] for r in rows}), "no video done twice"
    assert len(rows) == N_VIDEOS and {r["status"] for r in rows} == {"ok"}

    # cut and a GPU stage on the two nodes left (the GPU one runs the motion actors)
    for stage in (CutStage(), _gpu_motion()):
        stats = run_stage(ws, stage, executor="ray", progress=False)
        assert stats.processed == stats.planned > 0 and set(stats.statuses) == {"ok"}, stats
    on_ray, reference = _manifest(ws), _manifest(local)
    assert [c["motion"] is not None for c in on_ray["clips"]] == [True] * 2 * N_VIDEOS
    for table in reference:
        for got, want in zip(on_ray[table], reference[table], strict=True):
            assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}
