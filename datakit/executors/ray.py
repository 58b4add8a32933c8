"""Run a stage on Ray Data, keeping datakit's planning and commit semantics.

Planning and commits stay in the driver (the runner), exactly as in a local run. Ray Data runs
`prepare` (when the stage has one) as a CPU `map` step, then `process_batch` in an actor pool:
each actor calls `setup(ctx)` once, is sized by the stage's `resources` (`num_cpus`, fractional
`num_gpus`), and gets batches of the stage's real `batch_size`. Results stream back to the driver.
Ray Data keeps no checkpoints of its own; resume comes from the manifest: a killed run is run
again and plans only what is missing.

    datakit probe --executor ray                      # local Ray, one actor per CPU
    datakit scenes --executor ray --ray-address auto  # an existing cluster (`ray start --head`)
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

from datakit.executors.base import ContextFactory, Executor, StageSetupError, setup_stage
from datakit.executors.work import run_batch
from datakit.stage import Rows, Stage

SETUP_FAILED = "__setup_failed__"  # a "rows" dict holding only this key: the actor's setup failed
# Items and rows travel pickled: Arrow needs one type per column, rows and frames do not have it.


class _StageActor:
    def __init__(self, stage: Stage, make_ctx: ContextFactory, world_size: int):
        import ray

        self.stage = stage
        device = _device(ray.get_gpu_ids())
        # Ray does not number actors: a stable hash of the actor id stands in for the rank.
        rank = int(ray.get_runtime_context().get_actor_id()[-8:], 16) % max(1, world_size)
        self.setup_error: str | None = None
        try:  # a raising constructor would only restart actors: keep the line, answer every batch with it
            setup_stage(stage, make_ctx(rank=rank, world_size=world_size, device=device))
        except StageSetupError as exc:
            self.setup_error = str(exc)

    def __call__(self, batch: dict) -> dict:
        if (
            self.setup_error is not None
        ):  # the driver stops the run on this marker (a raise here ends as ActorDiedError)
            return {"rows": [pickle.dumps({SETUP_FAILED: self.setup_error})] * len(batch["item"])}
        out: list[bytes] = []
        ready = []
        for blob in batch["item"]:
            item, failure = pickle.loads(blob)
            if failure is not None:
                out.append(pickle.dumps(failure))
            else:
                ready.append(item)
        if ready:
            out.extend(pickle.dumps(rows) for rows in run_batch(self.stage, ready))
        return {"rows": out}


def _device(gpu_ids: list) -> str:
    """cuda:0 (the GPU Ray gave this actor) on a node with NVIDIA devices; a GPU that is only a
    logical Ray resource (`--num-gpus` on a node without one, as in a test cluster) runs on the CPU."""
    return "cuda:0" if gpu_ids and any(Path("/dev").glob("nvidia[0-9]*")) else "cpu"


def _prepare_fn(stage: Stage):
    def prepare(row: dict) -> dict:
        item, _ = pickle.loads(row["item"])
        try:
            return {"item": pickle.dumps((stage.prepare(item), None))}
        except Exception as exc:
            return {"item": pickle.dumps((None, stage.failure_rows(item, exc)))}

    return prepare


class RayExecutor(Executor):
    """Ray Data actors; `address` joins an existing cluster (default: a local Ray)."""

    name = "ray"

    def results(self, stage: Stage, items: list[dict], make_ctx: ContextFactory) -> Iterator[Rows]:
        workers = self.workers if self.workers > 1 else None
        return ray_results(stage, items, make_ctx, workers=workers, address=self.options.get("address"))


def ray_results(
    stage: Stage,
    items: list[dict],
    make_ctx: ContextFactory,
    *,
    workers: int | None = None,
    address: str | None = None,
) -> Iterator[Rows]:
    """Yield each item's rows (in completion order) from a pool of Ray actors."""
    import ray

    if not items:
        return
    if not ray.is_initialized():
        # Workers of a local Ray must import datakit like the driver does (an existing cluster
        # needs this project installed on its nodes).
        root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}} if address is None else None
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # datakit shows its own
    res = stage.resources
    gpus_here = ray.cluster_resources().get("GPU", 0)
    num_gpus = res.gpus if res.gpus > 0 and gpus_here else None  # no GPU in the cluster: run on CPUs
    if num_gpus:
        actors = workers or max(1, int(gpus_here // num_gpus))
    else:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = workers or max(1, int(cpus // max(res.cpus, 0.001)))
    records = [{"item": pickle.dumps((item, None))} for item in items]
    ds = ray.data.from_items(records, override_num_blocks=max(1, min(len(items), actors * 4)))
    if stage.has_prepare:
        ds = ds.map(_prepare_fn(stage), num_cpus=1)
    results = ds.map_batches(
        _StageActor,
        fn_constructor_args=(stage, make_ctx, actors),
        batch_size=stage.batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=res.cpus,
        num_gpus=num_gpus,
    )
    for batch in results.iter_batches(batch_size=1, batch_format="numpy"):
        for blob in batch["rows"]:
            rows = pickle.loads(blob)
            if SETUP_FAILED in rows:
                raise StageSetupError(rows[SETUP_FAILED])
            yield rows
