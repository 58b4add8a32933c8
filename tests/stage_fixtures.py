"""Stages used by the contract tests (a module of their own so that worker processes and Ray actors can import them)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

from datakit.stage import Resources, Stage, TransientError, WorkerContext, option
from datakit.stages.probe import TABLES as PROBE_TABLES


@dataclass(kw_only=True)
class BatchStage(Stage):
    """Records how it was called: batch sizes, prepare order, the worker context."""

    name = "batchtest"
    tables = PROBE_TABLES  # writes `probes` rows (a declared table)
    marker_table = "probes"
    fail_ids: list[str] = option([], "ids whose processing raises a plain error")
    transient_ids: list[str] = option([], "ids whose processing raises TransientError")
    fail_setup: bool = option(False, "setup raises (a model that does not load)")

    def items_sql(self) -> str:
        return "SELECT video_id, path FROM _latest_sources"

    def setup(self, ctx: WorkerContext) -> None:
        if self.fail_setup:
            raise OSError("model weights not found: /nowhere/model.pt")
        self.ctx = ctx
        self.calls: list[int] = []

    def prepare(self, item: dict) -> dict:
        return {**item, "prepared_by": threading.current_thread().name}

    def process_batch(self, items: list[dict]) -> list[dict]:
        self.calls.append(len(items))
        for item in items:
            if item["video_id"] in self.fail_ids:
                raise ValueError(f"bad input {item['video_id']}")
            if item["video_id"] in self.transient_ids:
                raise TransientError("device busy")
        info = {
            "batch": len(items),
            "device": self.ctx.device,
            "rank": self.ctx.rank,
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "thread": items[0]["prepared_by"],
        }
        return [
            {"probes": [{"video_id": i["video_id"], "status": "ok", "codec": json.dumps(info)}]}
            for i in items
        ]


@dataclass(kw_only=True)
class GpuStage(BatchStage):
    name = "gputest"
    resources = Resources(cpus=1, gpus=1)

    def process_batch(self, items: list[dict]) -> list[dict]:
        time.sleep(0.3)  # keep the first worker busy so that the pool starts the second
        return super().process_batch(items)
