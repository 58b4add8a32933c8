"""Run a stage's `process` on a Ray cluster with Ray Data, keeping datakit's commit semantics.

Planning stays in the driver (the same SQL as the local executor), each worker is an actor that
calls `setup()` once and then `process()` per item, and results stream back to the driver, which
commits them as part files exactly like a local run. Ray Data keeps no checkpoints of its own;
resume comes from the manifest: a killed run is simply run again and plans only what is missing.

    datakit probe --executor ray                      # local Ray, one actor per CPU
    datakit scenes --executor ray --ray-address auto  # an existing cluster (`ray start --head`)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from datakit.stage import Rows, Stage


class _StageActor:
    def __init__(self, stage: Stage):
        self.stage = stage
        stage.setup()

    def __call__(self, batch: dict) -> dict:
        # Items and rows travel as JSON text: Arrow needs one type per column, rows do not have it.
        return {"rows": [json.dumps(self.stage.safe_process(json.loads(s))) for s in batch["item"]]}


def ray_results(stage: Stage, items: list[dict], *, workers: int | None = None, address: str | None = None) -> Iterator[Rows]:
    """Yield each item's rows (in completion order) from a pool of Ray actors."""
    import ray

    if not items:
        return
    if not ray.is_initialized():
        # Workers of a local Ray must import datakit like the driver does (an existing cluster
        # needs this project installed on its nodes).
        root = str(Path(__file__).resolve().parents[1])
        pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}} if address is None else None
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # datakit shows its own
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = workers or max(1, int(cpus // max(stage.resources.cpus, 0.001)))
    records = [{"item": json.dumps(item, default=str)} for item in items]
    ds = ray.data.from_items(records, override_num_blocks=min(len(items), actors * 4))
    results = ds.map_batches(
        _StageActor,
        fn_constructor_args=(stage,),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=stage.resources.cpus,
        num_gpus=stage.resources.gpus or None,
    )
    for batch in results.iter_batches(batch_size=1, batch_format="numpy"):
        for text in batch["rows"]:
            yield json.loads(str(text))
