"""Plan, run, commit: the part of a stage run that is the same for every executor.

1. Options are validated before anything else (a typo never writes a row).
2. The stage's lock is taken (a second run of the same stage waits, then finds nothing to do).
3. Pending items are planned with SQL (`Stage.pending_sql`), each with the attempts made so far.
4. An executor runs the items; the rows it yields are checked (only the stage's own tables),
   completed (attempt counts; a `retry` past `max_attempts` becomes an `error`) and committed as
   part files every `commit_every` items: extra tables first, the marker table last, so a kill
   loses at most the items in flight and a rerun redoes exactly those.
4. One folder per run under `runs/` holds config.json and stats.json.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datakit.executors.base import EXECUTORS, executor_class
from datakit.lazy import pyarrow_skips_pandas
from datakit.stage import Rows, Stage, WorkerContext, expiry_sql
from datakit.workspace import Workspace


@dataclass
class StageStats:
    stage: str
    planned: int = 0
    processed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    commits: int = 0  # batches committed (each: one part file per table written)
    lock_wait_seconds: float = 0.0
    plan_seconds: float = 0.0
    seconds: float = 0.0
    first_error: str | None = None  # the error message of the first item that ended in error

    def summary(self) -> str:
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items())) or "nothing to do"
        return f"{self.stage}: {self.processed}/{self.planned} items ({parts}) in {self.seconds:.1f}s"

    def failure(self) -> str | None:
        """A one-line error when the run did work and every item ended in error (the command exits 1), else None."""
        errors = self.statuses.get("error", 0)
        if not errors or errors < self.processed:
            return None
        return f"every item of {self.stage} ended in error ({errors}); first: {self.first_error}"


class _Committer:
    """Completes marker rows, buffers rows and commits them as part files (marker table last)."""

    def __init__(
        self, ws: Workspace, stage: Stage, items: list[dict], stats: StageStats, flush_seconds: float = 10.0
    ):
        self.ws, self.stage, self.stats = ws, stage, stats
        self.allowed = {stage.marker_table, *stage.extra_tables}
        self.attempts = {item[stage.key]: int(item.get("attempts") or 0) for item in items}
        self.buffer: dict[str, list[dict]] = {}
        self.items = 0
        self.flush_seconds = flush_seconds
        self.last_flush = time.monotonic()

    def add(self, rows: Rows) -> None:
        unknown = set(rows) - self.allowed
        if unknown:
            raise RuntimeError(
                f"stage {self.stage.name} wrote to {sorted(unknown)}, not its tables {sorted(self.allowed)}"
            )
        for row in rows.get(self.stage.marker_table, []):
            self._complete(row)
        for table, table_rows in rows.items():
            self.buffer.setdefault(table, []).extend(table_rows)
        self.items += 1
        self.stats.processed += 1
        if self.items >= self.stage.commit_every or time.monotonic() - self.last_flush > self.flush_seconds:
            self.flush()

    def _complete(self, row: dict) -> None:
        status = row.setdefault("status", "ok")
        if row.get("attempts") is None:
            row["attempts"] = self.attempts.get(row.get(self.stage.key), 0) + 1
        if status == "retry" and row["attempts"] >= self.stage.max_attempts:
            row["status"] = "error"
            row["error"] = (
                f"{row.get('error') or 'transient failure'}; gave up after {row['attempts']} attempts"
            )
            row["retry_at"] = None
        self.stats.statuses[row["status"]] = self.stats.statuses.get(row["status"], 0) + 1
        if row["status"] == "error" and self.stats.first_error is None:
            self.stats.first_error = str(row.get("error"))

    def flush(self) -> None:
        order = [t for t in self.buffer if t != self.stage.marker_table] + [self.stage.marker_table]
        self.stats.commits += any(self.buffer.values())
        for table in order:
            rows = self.buffer.get(table)
            if rows:
                self.ws.write(table, rows)
                self.stats.rows_written[table] = self.stats.rows_written.get(table, 0) + len(rows)
        self.buffer, self.items, self.last_flush = {}, 0, time.monotonic()


def plan(ws: Workspace, stage: Stage, limit: int | None = None, *, retry_errors: bool = False) -> list[dict]:
    """The items a run would do now; "nothing" is remembered until a part or the clock changes it, so
    a resumed command whose stage is done opens no DuckDB connection (`Workspace.read`)."""
    sql = stage.pending_sql(retry_errors=retry_errors)
    if limit is not None:
        sql = f"SELECT * FROM ({sql}) LIMIT {int(limit)}"
    return ws.fetch(sql, remember=(f"plan-{stage.name}", expiry_sql([stage.marker_table])))


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
    retry_errors: bool = False,
) -> StageStats:
    """Plan pending items, process them, commit results in batches. Safe to kill and rerun."""
    stage.validate()
    if executor not in EXECUTORS:
        executor_class(executor)  # unknown name: ValueError (the class is imported only if items exist)
    from datakit.progress import Progress

    stats = StageStats(stage.name)
    t_lock = time.monotonic()

    def on_wait(_name: str) -> None:
        print(f"waiting: another {stage.name} run holds this workspace", file=sys.stderr, flush=True)

    with ws.lock(f"stage-{stage.name}", on_wait=on_wait):
        t0 = time.monotonic()
        stats.lock_wait_seconds = t0 - t_lock
        items = plan(ws, stage, limit, retry_errors=retry_errors)
        stats.planned = len(items)
        stats.plan_seconds = time.monotonic() - t0
        run_dir = _start_run_dir(ws, stage, workers, executor)
        make_ctx = functools.partial(WorkerContext.for_workspace, ws.root, stage.name)
        stage.begin_run(make_ctx())
        committer = _Committer(ws, stage, items, stats)
        if items:  # the commits convert rows to Arrow: spare the process pandas' import
            pyarrow_skips_pandas()
        # a no-op run imports no executor (process pools, Ray: start-up of every resumed command)
        runner = executor_class(executor)(workers=workers, address=ray_address) if items else None
        stream = runner.results(stage, items, make_ctx) if runner else iter(())
        with Progress(
            stage.name, len(items), enabled=progress and bool(items)
        ) as bar:  # plain lines off a TTY
            for rows in stream:
                committer.add(rows)
                bar.advance()
        committer.flush()
        for table in stats.rows_written:
            if ws.needs_compaction(table, compact_above_parts):
                ws.compact(table)
        stats.seconds = time.monotonic() - t0
        (run_dir / "stats.json").write_text(json.dumps(asdict(stats), indent=2) + "\n")
    return stats


def _start_run_dir(ws: Workspace, stage: Stage, workers: int, executor: str) -> Path:
    run_dir = ws.root / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{stage.name}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "stage": stage.name,
        "workers": workers,
        "executor": executor,
        "resources": asdict(stage.resources),
        "config": stage.config(),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return run_dir
