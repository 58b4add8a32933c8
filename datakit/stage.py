"""The stage contract.

A stage is a small dataclass in one module under `datakit/stages/` (or a module named in the
`datakit.stages` entry-point group); defining the subclass registers it. It declares

- `name`, its `tables` (columns and types) and which one is the `marker_table` (one row per
  finished item; `extra_tables` are written before it), and the columns it adds to the `clips`
  view (`clip_columns`),
- `after`: the stages it runs after in `datakit run` (names; stages not installed are ignored),
- `resources` one worker needs (cpus, gpus) and whether `datakit run` enables it by default,
- its options as dataclass fields made with `option(...)`: the CLI command, the `datakit run`
  config section, validation and the run folder's config all come from them,
- `items_sql()`: every item the stage applies to, as SQL over the workspace views; the runner
  turns it into the pending items (not done yet, due for a retry, or stale),

and implements

- `setup(ctx)`: load models once per worker (`ctx` has rank, device, workspace paths),
- `prepare(item)` (optional): CPU work (decode frames, tokenise) run in threads ahead of the model,
- `process(item) -> {table: [rows]}` or `process_batch(items) -> [rows per item]` (one model call
  for `batch_size` items), and `teardown()`.

Bad input never raises out of a stage: the runner turns an exception into an `error` row for
that item, or a `retry` row when the failure is transient (timeouts, CUDA out of memory, a lost
worker, `TransientError`); a retried item becomes an `error` after `max_attempts` attempts.
This module imports nothing heavy and no executor: executors live in `datakit.executors`.
"""

from __future__ import annotations

import dataclasses
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from datakit.tables import ClipColumns, Table

Rows = dict[str, list[dict]]


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs (executors size pools and place workers by it)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class WorkerContext:
    """Handed to `Stage.setup`: who this worker is, where it runs, where the stage writes."""

    rank: int
    world_size: int
    device: str  # "cpu" or "cuda:N" (N counts the GPUs this worker sees)
    workspace: Path
    media_dir: Path  # downloaded media
    clips_dir: Path  # extracted clip files
    stage_dir: Path  # <workspace>/data/<stage>: files a stage writes besides rows

    @classmethod
    def for_workspace(
        cls, root: Path, stage_name: str, *, rank: int = 0, world_size: int = 1, device: str = "cpu"
    ) -> WorkerContext:
        root = Path(root).absolute()
        return cls(rank, world_size, device, root, root / "media", root / "clips", root / "data" / stage_name)


class TransientError(RuntimeError):
    """A failure worth retrying later (the input is fine, the moment was not)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OptionError(ValueError):
    """A stage option is invalid: raised before anything is planned or written."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    cli: bool = True,
) -> Any:  # noqa: A002
    """A stage option: a dataclass field whose metadata drives help text and validation."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "cli": cli}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def is_transient(exc: BaseException) -> bool:
    """Worth a retry: timeouts, dropped connections, CUDA out of memory, lost workers."""
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "BrokenProcessPool", "RayActorError", "WorkerCrashedError"):
        return True
    return "CUDA out of memory" in str(exc)


def describe(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


@dataclass(kw_only=True)
class Stage:
    name: ClassVar[str]
    tables: ClassVar[tuple[Table, ...]] = ()
    marker_table: ClassVar[str]
    clip_columns: ClassVar[tuple[ClipColumns, ...]] = ()  # what the stage adds to the `clips` view
    after: ClassVar[tuple[str, ...]] = ()  # run after these stages in `datakit run`
    extra_tables: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    io_bound: ClassVar[bool] = False  # True: the local executor runs workers as threads (downloads)
    run_by_default: ClassVar[bool] = True  # enabled in `datakit run` unless its config says otherwise
    default_workers: ClassVar[int] = 1
    order_by: ClassVar[str] = ""  # ORDER BY of pending items (default: the marker key)
    cli_path: ClassVar[tuple[str, ...]] = ()  # e.g. ("score", "aesthetic"); default (name,)

    commit_every: int = option(32, "Items per committed part file (a kill loses at most this many).", min=1)
    batch_size: int = option(1, "Items per process_batch call (one model call).", min=1)
    max_attempts: int = option(
        3, "Attempts over all runs before a transient failure becomes an error.", min=1
    )
    prepare_threads: int = option(2, "Threads running prepare() ahead of the model step.", min=1)
    prefetch: int = option(4, "Prepared batches queued ahead of the model step (bounded).", min=1)

    # ------------------------------------------------------------------ to implement
    def items_sql(self) -> str:
        """SELECT over the workspace views: one row per item this stage applies to (with the key)."""
        raise NotImplementedError

    def stale_sql(self, marker: str) -> str | None:
        """Optional SQL condition on the marker row `marker` meaning: done, but under other settings."""
        return None

    def begin_run(self, ctx: WorkerContext) -> None:
        """Once per run, in the driver under the stage's lock, before workers start (clean up
        what a killed run left behind)."""

    def setup(self, ctx: WorkerContext) -> None:
        """Load models or other heavy state once per worker."""

    def teardown(self) -> None:
        """Release what setup loaded."""

    def prepare(self, item: dict) -> dict:
        """CPU work ahead of `process_batch` (decode, resize); runs in threads. Default: nothing."""
        return item

    def process(self, item: dict) -> Rows:
        raise NotImplementedError(f"stage {self.name} implements neither process nor process_batch")

    def process_batch(self, items: list[dict]) -> list[Rows]:
        """One call for many items (model stages override this); returns rows per item, in order."""
        return [self.process(item) for item in items]

    def check(self) -> None:
        """Stage-specific option checks beyond types, choices and ranges (raise OptionError)."""

    # ------------------------------------------------------------------ provided
    @classmethod
    def table(cls, name: str) -> Table:
        for t in cls.tables:
            if t.name == name:
                return t
        raise KeyError(f"stage {cls.name} declares no table {name!r}")

    @property
    def key(self) -> str:
        return self.table(self.marker_table).key

    @property
    def has_prepare(self) -> bool:
        return type(self).prepare is not Stage.prepare

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The stage's own options first, then the contract's (commit_every, batch_size, ...)."""
        common = {f.name for f in dataclasses.fields(Stage)}
        fields = [f for f in dataclasses.fields(cls) if f.init]
        return [f for f in fields if f.name not in common] + [f for f in fields if f.name in common]

    def config(self) -> dict:
        """Options as recorded in the run folder."""
        return {f.name: getattr(self, f.name) for f in self.options()}

    def validate(self) -> None:
        """Check every option's type, choices and range, then `check()`; raise OptionError."""
        hints = typing.get_type_hints(type(self))
        for f in self.options():
            value = getattr(self, f.name)
            expected = hints.get(f.name, Any)
            if not _type_ok(value, expected):
                raise OptionError(
                    f"{self.name}: option {f.name} must be {_type_name(expected)}, got {value!r}"
                )
            meta = f.metadata
            if meta.get("choices") and value is not None and value not in meta["choices"]:
                choices = ", ".join(map(repr, meta["choices"]))
                raise OptionError(f"{self.name}: unknown {f.name} {value!r} (choose from {choices})")
            if isinstance(value, int | float) and not isinstance(value, bool):
                if meta.get("min") is not None and value < meta["min"]:
                    raise OptionError(f"{self.name}: option {f.name} must be >= {meta['min']}, got {value}")
                if meta.get("max") is not None and value > meta["max"]:
                    raise OptionError(f"{self.name}: option {f.name} must be <= {meta['max']}, got {value}")
        self.check()

    def pending_sql(self, *, retry_errors: bool = False) -> str:
        """Items not done yet: no marker row, a due 'retry', a stale run, or (on demand) an 'error'."""
        key, marker = self.key, self.marker_table
        due = [
            f"m.{key} IS NULL",
            "m.status NOT IN ('ok', 'error', 'retry')",
            "(m.status = 'retry' AND (m.retry_at IS NULL OR m.retry_at <= epoch(now())))",
        ]
        if retry_errors:
            due.append("m.status = 'error'")
        stale = self.stale_sql("m")
        if stale:
            due.append(f"(m.status IN ('ok', 'error') AND ({stale}))")
        order = self.order_by or f"i.{key}"
        return f"""
            SELECT i.*, coalesce(m.attempts, 0) AS attempts
            FROM ({self.items_sql()}) i
            LEFT JOIN (SELECT * FROM _latest_{marker}) m ON i.{key} = m.{key}
            WHERE {" OR ".join(due)}
            ORDER BY {order}
        """

    def failure_rows(self, item: dict, exc: BaseException) -> Rows:
        """The marker row for an item whose processing raised (retry when transient)."""
        status = "retry" if is_transient(exc) else "error"
        row = {self.key: item[self.key], "status": status, "error": f"{self.name} failed: {describe(exc)}"}
        if isinstance(exc, TransientError) and exc.retry_after_s is not None:
            import time

            row["retry_at"] = time.time() + exc.retry_after_s
        return {self.marker_table: [row]}

    def error_rows(self, item: dict, message: str) -> Rows:
        return {self.marker_table: [{self.key: item[self.key], "status": "error", "error": message}]}


def expiry_sql(markers: list[str]) -> str:
    """When counts over these marker tables change with no write: the next 'retry' row falling due."""
    due = " UNION ALL ".join(
        f"SELECT min(retry_at) AS t FROM _latest_{m} WHERE status = 'retry' AND retry_at > epoch(now())"
        for m in dict.fromkeys(markers)
    )
    return f"SELECT min(t) FROM ({due})"


def _type_ok(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(expected) or (Any,)
        return isinstance(value, list | tuple) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(expected))
    if expected is type(None):
        return "null"
    if origin in (list, tuple):
        return f"a list of {_type_name((typing.get_args(expected) or (Any,))[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        expected, getattr(expected, "__name__", str(expected))
    )
