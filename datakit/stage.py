"""The stage contract and the local executor.

A stage is a small class: it declares the table that marks an item done, the resources one
worker needs, and the SQL that selects pending items from the manifest. `setup` loads anything
heavy once per worker; `process` turns one item into rows for one or more tables, and never drops
an item: bad input becomes an error row. Executors (local here, Ray in `datakit.ray_executor`)
only decide where `process` runs; planning and writing the results are the same for all.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any, ClassVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from datakit.workspace import Workspace
from manifests.schema import TABLES

console = Console(stderr=True)

Rows = dict[str, list[dict]]


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs (used by executors to size pools)."""

    cpus: float = 1.0
    gpus: float = 0.0


class Stage:
    name: ClassVar[str]
    marker_table: ClassVar[str]  # one row per item here marks it done (status ok/error) or to retry
    extra_tables: ClassVar[tuple[str, ...]] = ()  # written before the marker, so a kill never hides rows
    resources: Resources = Resources()
    batch_size: int = 32  # items per committed part file
    io_bound: ClassVar[bool] = False  # True: the local executor runs workers as threads (downloads)

    def pending_sql(self) -> str:
        """SELECT over the workspace views returning one row per item still to do."""
        raise NotImplementedError

    def setup(self) -> None:
        """Load models or other heavy state once per worker."""

    def process(self, item: dict) -> Rows:
        raise NotImplementedError

    def config(self) -> dict:
        """Settings recorded in the run folder."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def error_rows(self, item: dict, message: str) -> Rows:
        key = TABLES[self.marker_table].key
        return {self.marker_table: [{key: item[key], "status": "error", "error": message}]}

    def safe_process(self, item: dict) -> Rows:
        try:
            return self.process(item)
        except Exception as exc:  # a bug or an unforeseen bad input must not stop the batch
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return self.error_rows(item, f"{self.name} failed: {detail}")


@dataclass
class StageStats:
    stage: str
    planned: int = 0
    processed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    plan_seconds: float = 0.0
    seconds: float = 0.0

    def add(self, rows: Rows, marker_table: str) -> None:
        self.processed += 1
        for r in rows.get(marker_table, []):
            s = r.get("status") or "ok"
            self.statuses[s] = self.statuses.get(s, 0) + 1

    def summary(self) -> str:
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items())) or "nothing to do"
        return f"{self.stage}: {self.processed}/{self.planned} items ({parts}) in {self.seconds:.1f}s"


class _Writer:
    """Buffers result rows and commits them as part files: extra tables first, marker last."""

    def __init__(self, ws: Workspace, stage: Stage, stats: StageStats, flush_seconds: float = 10.0):
        self.ws, self.stage, self.stats = ws, stage, stats
        self.buffer: dict[str, list[dict]] = {}
        self.items = 0
        self.flush_seconds = flush_seconds
        self.last_flush = time.monotonic()

    def add(self, rows: Rows) -> None:
        for table, table_rows in rows.items():
            self.buffer.setdefault(table, []).extend(table_rows)
        self.items += 1
        self.stats.add(rows, self.stage.marker_table)
        if self.items >= self.stage.batch_size or time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        order = [t for t in self.buffer if t != self.stage.marker_table] + [self.stage.marker_table]
        for table in order:
            rows = self.buffer.get(table)
            if rows:
                self.ws.write(table, rows)
                self.stats.rows_written[table] = self.stats.rows_written.get(table, 0) + len(rows)
        self.buffer, self.items, self.last_flush = {}, 0, time.monotonic()


def plan(ws: Workspace, stage: Stage, limit: int | None = None) -> list[dict]:
    sql = stage.pending_sql()
    if limit is not None:
        sql = f"SELECT * FROM ({sql}) LIMIT {int(limit)}"
    return ws.sql(sql)


_worker_stage: Stage | None = None


def _init_worker(stage: Stage) -> None:
    global _worker_stage
    _worker_stage = stage
    stage.setup()


def _run_in_worker(item: dict) -> Rows:
    assert _worker_stage is not None
    return _worker_stage.safe_process(item)


def _results_local(stage: Stage, items: list[dict], workers: int) -> Iterator[Rows]:
    if workers <= 1:
        stage.setup()
        for item in items:
            yield stage.safe_process(item)
        return
    if stage.io_bound:
        stage.setup()
        with ThreadPoolExecutor(workers) as pool:
            yield from _bounded(pool, stage.safe_process, items, workers)
        return
    # forkserver: safe with threads (torch, PyAV) in the parent; at most 2*workers items in flight.
    ctx = get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(stage,)) as pool:
        yield from _bounded(pool, _run_in_worker, items, workers)


def _bounded(pool, fn, items: list[dict], workers: int) -> Iterator[Rows]:
    """Submit at most 2*workers items at a time; yield results as they complete."""
    pending_items = iter(items)
    in_flight: set = set()
    while True:
        while len(in_flight) < 2 * workers:
            item = next(pending_items, None)
            if item is None:
                break
            in_flight.add(pool.submit(fn, item))
        if not in_flight:
            return
        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
        for fut in done:
            yield fut.result()


def run_stage(
    ws: Workspace,
    stage: Stage,
    *,
    workers: int = 1,
    limit: int | None = None,
    progress: bool = True,
    compact_above_parts: int = 16,  # newer parts allowed beside a compacted one
    executor: str = "local",
    ray_address: str | None = None,
) -> StageStats:
    """Plan pending items, process them, commit results in batches. Safe to kill and rerun."""
    stats = StageStats(stage.name)
    with ws.lock(f"stage-{stage.name}", on_wait=lambda n: console.print(f"[yellow]waiting: another {stage.name} run holds this workspace[/]")):
        t0 = time.monotonic()
        items = plan(ws, stage, limit)
        stats.planned = len(items)
        stats.plan_seconds = time.monotonic() - t0
        run_dir = _start_run_dir(ws, stage, workers)
        writer = _Writer(ws, stage, stats)
        if executor == "ray":
            from datakit.ray_executor import ray_results

            stream = ray_results(stage, items, workers=workers if workers > 1 else None, address=ray_address)
        elif executor == "local":
            stream = _results_local(stage, items, workers)
        else:
            raise ValueError(f"unknown executor {executor!r} (local or ray)")
        with Progress(
            TextColumn(f"[bold]{stage.name}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not progress or not items,
            transient=False,
        ) as bar:
            task = bar.add_task(stage.name, total=len(items))
            for rows in stream:
                writer.add(rows)
                bar.advance(task)
        writer.flush()
        for table in stats.rows_written:
            if ws.needs_compaction(table, compact_above_parts):
                ws.compact(table)
        stats.seconds = time.monotonic() - t0
        (run_dir / "stats.json").write_text(json.dumps(asdict(stats), indent=2) + "\n")
    return stats


def _start_run_dir(ws: Workspace, stage: Stage, workers: int) -> Any:
    run_dir = ws.root / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{stage.name}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"stage": stage.name, "workers": workers, "resources": asdict(stage.resources), "config": stage.config()}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return run_dir
