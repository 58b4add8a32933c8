"""The executor interface and the registry of executors by name.

An executor decides where a stage's work runs; the runner plans and commits the same way for
all of them. `results(stage, items, make_ctx)` yields one `Rows` per item (any order). A `setup`
that fails raises `StageSetupError` from `results`, whatever the executor and worker count: the
run stops with one line and writes no row for it (the input is not at fault).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import ClassVar

from datakit.stage import Rows, Stage, WorkerContext, describe

ContextFactory = Callable[..., WorkerContext]

# name -> "module:Class", imported only when chosen (Ray is heavy).
EXECUTORS: dict[str, str] = {
    "local": "datakit.executors.local:LocalExecutor",
    "ray": "datakit.executors.ray:RayExecutor",
}


class StageSetupError(RuntimeError):
    """`setup` failed (a model that does not load, a server that does not start): nothing ran."""


def setup_stage(stage: Stage, ctx: WorkerContext) -> None:
    """`stage.setup(ctx)`, with a failure as one StageSetupError line."""
    try:
        stage.setup(ctx)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [describe(exc)])[0]
        raise StageSetupError(f"{stage.name}: setup failed: {reason}") from exc


class Executor:
    """Runs a stage's items somewhere; `workers` is the `-j` the user asked for."""

    name: ClassVar[str]

    def __init__(self, workers: int = 1, **options) -> None:
        self.workers = workers
        self.options = options

    def results(self, stage: Stage, items: list[dict], make_ctx: ContextFactory) -> Iterator[Rows]:
        raise NotImplementedError


def executor_class(name: str) -> type[Executor]:
    try:
        module, _, cls = EXECUTORS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown executor {name!r} ({', '.join(EXECUTORS)})") from None
    return getattr(importlib.import_module(module), cls)
