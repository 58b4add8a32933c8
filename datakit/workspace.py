"""The workspace: Parquet part files per stage table, a DuckDB catalog of views, and locks.

Layout of a workspace directory:

    workspace.json          schema version, the root it was created or rebuilt at, its tables
    manifest.duckdb         DuckDB catalog: views over the Parquet parts, globs relative to the
                            workspace, so a moved or copied workspace reads its own files (no data inside)
    tables/<table>/*.parquet immutable part files; the newest row per key wins
    media/                  downloaded videos;  clips/  extracted clip files
    locks/                  fcntl locks: one per stage run, per table, and one for readers
    runs/                   one folder per stage run: config and stats
    cache/                  results of remembered reads (`read(remember=...)`), keyed by the parts they read
    quarantine/<table>/     unreadable parts moved aside by `datakit repair`

Parts are written to a temporary name and renamed, so a reader never sees half a file and a
SIGKILL loses at most the batch in flight. Rows are deduplicated by key in the views, so a rerun
that rewrites a row never duplicates it.

Compaction merges a table's parts into one part named after the newest part it replaces, so the
parts that are current ("live") are the newest compacted part and every part after it. Replaced
parts stay on disk until no reader holds a snapshot: a reader holds a shared lock on
`locks/readers.lock` while its connection lives, and compaction deletes replaced parts only if it
gets that lock exclusively at once (else a later compaction does). A reader's file list therefore
stays valid for as long as it reads, and readers never wait for compaction.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from datakit import schema
from datakit.schema import SCHEMA_VERSION, WRITTEN_COLUMN, arrow_schema

DEFAULT_WORKSPACE = "workspace"
INIT_PART = "part-0000000000000000000-init.parquet"
COMPACT_TAG = "-compact-"
COMPACT_MEMORY = "1GB"  # DuckDB's limit while compacting (it spills to <workspace>/tmp beyond it)
COMPACT_BATCH_ROWS = 100_000
_READERS_LOCK = "readers"
CATALOG_PATHS = "relative"  # manifest.duckdb's globs are relative to the workspace (build_catalog)
# User SQL (`datakit query`) gets a connection that can install or load no extension; the views'
# part files become the only files it may open, and the settings are locked (see _lock_down).
_SANDBOX_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}

T = TypeVar("T")
_REMEMBER_MAX_ROWS = 1000  # a bigger result (a plan with work to do) is not kept: the run changes its parts


def default_workspace() -> Path:
    return Path(os.environ.get("DATAKIT_WORKSPACE", DEFAULT_WORKSPACE))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class WorkspaceError(RuntimeError):
    """A problem with the workspace that a user can act on (the `datakit` commands print its message)."""


class DamagedPartsError(WorkspaceError):
    def __init__(self, root: Path, problems: Mapping[Path, str]):
        self.problems = dict(problems)
        listed = "; ".join(f"{path} ({why})" for path, why in self.problems.items())
        super().__init__(
            f"unreadable part file(s): {listed}. Run `datakit repair -w {root}` to move them to "
            f"{root / 'quarantine'} and keep every intact row."
        )


class RowError(ValueError):
    """A row that does not fit its table's declared columns (never written, nothing dropped)."""


class Workspace:
    def __init__(self, root: str | os.PathLike | None = None, *, create: bool = True):
        self.root = Path(root if root is not None else default_workspace()).absolute()
        if not self.meta_path.exists():
            if not create and not (self.root / "tables").is_dir():
                raise WorkspaceError(f"no datakit workspace at {self.root} (run `datakit ingest` first)")
            self._init()
        self._check()

    @classmethod
    def unchecked(cls, root: str | os.PathLike) -> Workspace:
        """A handle on a workspace that may be damaged, without the checks of opening it (for repair)."""
        ws = cls.__new__(cls)
        ws.root = Path(root).absolute()
        return ws

    # ----------------------------------------------------------------------------- layout
    @property
    def meta_path(self) -> Path:
        return self.root / "workspace.json"

    @property
    def catalog_path(self) -> Path:
        return self.root / "manifest.duckdb"

    @property
    def media_dir(self) -> Path:
        return self.root / "media"

    @property
    def clips_dir(self) -> Path:
        return self.root / "clips"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def repair_hint(self) -> str:
        return f"run `datakit repair -w {self.root}`"

    def table_dir(self, table: str) -> Path:
        return self.root / "tables" / table

    def _init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock("catalog"):
            if self.meta_path.exists():  # another process won the race
                return
            if (self.root / "tables").is_dir():  # _init writes workspace.json last: it was lost
                raise WorkspaceError(f"{self.meta_path} is missing; {self.repair_hint} to rewrite it")
            for sub in ("media", "clips", "locks", "runs"):
                (self.root / sub).mkdir(exist_ok=True)
            self.ensure_tables()
            self.build_catalog()
            self.write_meta()

    def write_meta(self) -> None:
        """Record the schema version, the root, and the tables whose folders exist (a missing one was lost)."""
        tables = sorted(t for t in schema.tables() if self.table_dir(t).is_dir())
        meta = {
            "schema_version": SCHEMA_VERSION,
            "schema": schema.fingerprint(),
            "root": str(self.root),
            "catalog": CATALOG_PATHS,
            "tables": tables,
        }
        atomic_write_bytes(self.meta_path, (json.dumps(meta, indent=2) + "\n").encode())

    def read_meta(self) -> dict:
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkspaceError(
                f"{self.meta_path} is unreadable ({exc}); {self.repair_hint} to rewrite it"
            ) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("schema_version"), int):
            raise WorkspaceError(f"{self.meta_path} has no schema_version; {self.repair_hint} to rewrite it")
        return meta

    def _check(self) -> None:
        """Refuse a newer schema or lost tables; rebuild what is derived (catalog, empty init parts)."""
        meta = self.read_meta()
        version = meta["schema_version"]
        if version > SCHEMA_VERSION:
            raise WorkspaceError(
                f"workspace {self.root} has schema version {version}, newer than this datakit "
                f"({SCHEMA_VERSION}); upgrade datakit"
            )
        known = set(meta.get("tables", []))  # older workspace.json files lack the list: all look new
        missing = [t for t in schema.tables() if not self.table_dir(t).is_dir()]
        lost = [str(self.table_dir(t)) for t in missing if t in known]
        if lost:
            raise WorkspaceError(
                f"table folder(s) missing: {', '.join(lost)} (deleted? their rows are lost); "
                f"{self.repair_hint} to recreate them empty"
            )
        no_init_part = any(not (self.table_dir(t) / INIT_PART).exists() for t in schema.tables())
        if (
            version < SCHEMA_VERSION
            or meta.get("schema") != schema.fingerprint()  # tables or views changed
            or no_init_part  # also a table new to this workspace
            or meta.get("catalog") != CATALOG_PATHS  # absolute globs (older datakit): rebuild once
            or "tables" not in meta
            or not is_duckdb_file(self.catalog_path)
        ):
            with self.lock("catalog"):  # new tables or views, a moved workspace, or a damaged catalog
                self.ensure_tables()
                self.build_catalog()
                self.write_meta()

    def ensure_tables(self) -> list[str]:
        """Create missing table folders and init parts; returns the tables whose folder was missing."""
        created = []
        for name in schema.tables():
            d = self.table_dir(name)
            if not d.is_dir():
                d.mkdir(parents=True)
                created.append(name)
            if not (d / INIT_PART).exists():  # an empty part keeps the catalog's glob non-empty
                atomic_write_parquet(d / INIT_PART, arrow_schema(name).empty_table())
        return created

    # ----------------------------------------------------------------------------- parts
    def data_parts(self, table: str) -> list[Path]:
        """Part files holding rows, oldest first (names start with the write time), replaced ones included."""
        return sorted(p for p in self.table_dir(table).glob("part-*.parquet") if p.name != INIT_PART)

    def live_parts(self, table: str) -> list[Path]:
        """The parts that hold the table: the newest compacted part and every part after it."""
        parts = self.data_parts(table)
        compacted = [i for i, p in enumerate(parts) if COMPACT_TAG in p.name]
        return parts[compacted[-1] :] if compacted else parts

    def _snapshot_parts(self, table: str) -> list[Path]:
        return self.live_parts(table) or [self.table_dir(table) / INIT_PART]

    # ----------------------------------------------------------------------------- views
    def _latest_sql(self, name: str, parts: list[Path] | None) -> str:
        """SELECT of the newest row per key of a table.

        The catalog file (parts=None) globs every part and deduplicates. A reader's snapshot lists
        the live parts and skips most of that work: a lone part needs no dedupe, and after
        `compact` only the few newer parts are deduplicated and their keys removed from the
        compacted part (every row in them is newer than any row in it).
        """
        table = schema.tables()[name]
        key = table.key
        dedupe = _newest_per_key(key)
        if parts is not None and [p.name for p in parts] == [INIT_PART]:  # no rows: read no file
            columns = ", ".join(f'NULL::{c.type} AS "{c.name}"' for c in table.columns)
            return f"SELECT {columns} LIMIT 0"
        if parts is None:  # the catalog file: relative to the workspace (see build_catalog)
            glob = _sql_str(f"tables/{name}/*.parquet")
            return f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM read_parquet({glob}, union_by_name = true) {dedupe}"
        if len(parts) == 1:
            return f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM {_read_parts(parts)}"
        base, delta = parts[0], parts[1:]
        if COMPACT_TAG in base.name:
            return (
                f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM (SELECT * FROM {_read_parts([base])} "
                f"ANTI JOIN (SELECT {key} FROM {_read_parts(delta)}) USING ({key}) "
                f"UNION ALL BY NAME SELECT * FROM {_read_parts(delta)} {dedupe})"
            )
        return f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM {_read_parts(parts)} {dedupe}"

    def view_sql(self, parts: dict[str, list[Path]] | None = None) -> dict[str, str]:
        """Name -> SELECT of every view: over the given parts per table, or over each table's glob."""
        views: dict[str, str] = {}
        for name in schema.tables():
            views[f"_latest_{name}"] = self._latest_sql(name, None if parts is None else parts[name])
            views[name] = f"SELECT * FROM _latest_{name}"
        for name, (_, sql) in schema.views().items():
            views[name] = sql
        return views

    def build_catalog(self) -> None:
        """Write manifest.duckdb: views whose globs are relative to the workspace (`tables/<t>/*.parquet`).

        A copied or moved workspace (another mount point, another node) therefore never reads the
        original's files: DuckDB resolves the globs against its `file_search_path` (default: the
        working directory), so `cd WS && duckdb manifest.duckdb` works as is, and from anywhere else
        the lines of `attach_sql()` (`datakit attach-sql`) set it. Nothing to rebind on open.
        """
        tmp = self.catalog_path.with_name(f".manifest-{uuid.uuid4().hex}.duckdb")
        con = duckdb.connect(str(tmp))
        try:
            con.execute(f"SET file_search_path = {_sql_str(str(self.root))}")  # views bind here
            for name, sql in self.view_sql().items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
        except duckdb.Error as exc:
            self._raise_if_damaged([p for t in schema.tables() for p in self.data_parts(t)], exc)
            raise
        finally:
            con.close()
        os.replace(tmp, self.catalog_path)

    def attach_sql(self) -> str:
        """SQL for a plain DuckDB client, from any working directory, to read this workspace's views."""
        root = _sql_str(str(self.root))
        return (
            f"SET file_search_path = {root};\n"
            f"ATTACH {_sql_str(str(self.catalog_path))} AS datakit (READ_ONLY);\nUSE datakit;"
        )

    # ----------------------------------------------------------------------------- reads
    def connect(self, *, sandbox: bool = False) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with every view over a snapshot of the live parts.

        Never waits for writers or compaction. The snapshot's files stay on disk until the
        connection is garbage-collected; prefer `read(fn)`, which releases them at once.
        sandbox=True: for untrusted SQL (see `_lock_down`).
        """
        con, release, _, _ = self._snapshot(sandbox)
        weakref.finalize(con, release)
        return con

    def read(
        self,
        fn: Callable[[duckdb.DuckDBPyConnection], T],
        *,
        sandbox: bool = False,
        for_sql: str | None = None,
        inline: bool = False,
        remember: tuple[str, str | None] | None = None,
    ) -> T:
        """Run `fn(connection)` on a snapshot of the views; damaged parts raise DamagedPartsError.

        for_sql: the one query `fn` runs (not sandboxed): only the views it names, directly or
        through other views, are created (binding a view reads its parts' footers: start-up cost).
        inline (with for_sql): none is created; `fn(connection, views)` gets them (name -> SELECT,
        in dependency order) to inline (see `fetch`).
        remember (with for_sql): `(name, until_sql)`: `fn`'s result, if JSON and at most
        _REMEMBER_MAX_ROWS rows, is kept in `cache/<name>.json` under a key of `for_sql`, the views
        and every part file they read (name, size, mtime). While no part changes, a later call
        returns it without opening DuckDB: a repeated `status`, a resumed stage with nothing to do.
        `until_sql` (a query of one number, run on the same snapshot after `fn`) is the epoch second
        the result expires even so (NULL: never), for results that move with the clock (a 'retry'
        row's `retry_at`). `name` must change when `fn` does.
        """
        if remember is not None and for_sql is not None and not sandbox and not _READS_FILES.search(for_sql):
            return self._remembered(fn, for_sql, inline, *remember)
        return self._run(
            fn, self._snapshot(sandbox, None if sandbox else for_sql, inline and not sandbox), inline
        )

    def _run(self, fn: Callable, snapshot: tuple, inline: bool):
        con, release, files, views = snapshot
        try:
            return fn(con, views) if inline else fn(con)
        except duckdb.Error as exc:
            self._raise_if_damaged([f for f in files if str(f) in str(exc)], exc)
            raise
        finally:
            con.close()
            release()

    def _remembered(self, fn: Callable, for_sql: str, inline: bool, name: str, until_sql: str | None):
        reader = self._reader_lock()  # the parts listed stay on disk until the read below is done
        try:
            parts = {table: self._snapshot_parts(table) for table in schema.tables()}
            every_view = self.view_sql(parts)
            views = _views_named_by(every_view, for_sql + "\n" + (until_sql or ""))
            read = sorted(
                {p for ps in parts.values() for p in ps if any(str(p) in v for v in views.values())}
            )
            stats = [
                (str(p.relative_to(self.root)), st.st_size, st.st_mtime_ns)
                for p, st in ((p, p.stat()) for p in read)
            ]
            path = self.root / "cache" / f"{name}.json"
            key = hashlib.sha256(
                json.dumps([duckdb.__version__, for_sql, until_sql, views, stats]).encode()
            ).hexdigest()
            if all(part_problem(p) is None for p in read):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    kept = json.loads(path.read_text())
                    if kept["key"] == key and (kept["until"] is None or time.time() < kept["until"]):
                        return kept["value"]
            snapshot = self._snapshot(False, for_sql, inline, (reader, parts))  # it releases the lock
            reader = None
        finally:
            if reader:
                reader.close()

        def run(con: duckdb.DuckDBPyConnection, *args) -> tuple:
            value = fn(con, *args)
            if not until_sql:
                return value, None
            ctes = ", ".join(f"{v} AS ({q})" for v, q in _views_named_by(every_view, until_sql).items())
            return value, con.execute(f"WITH {ctes}\n{until_sql}" if ctes else until_sql).fetchone()[0]

        value, until = self._run(run, snapshot, inline)
        if not (isinstance(value, list) and len(value) > _REMEMBER_MAX_ROWS):
            with contextlib.suppress(OSError, TypeError, ValueError):  # a read-only workspace; not JSON
                data = json.dumps(
                    {"key": key, "until": None if until is None else float(until), "value": value}
                )
                path.parent.mkdir(exist_ok=True)
                atomic_write_bytes(path, data.encode())
        return value

    def fetch(self, query: str, *, remember: tuple[str, str | None] | None = None) -> list[dict]:
        """Rows of one SELECT (no parameters) over a snapshot, the views it names inlined as its CTEs.

        No view is created: binding a view reads its parts' footers, and the query binds it again
        (about 60 ms of a small workspace's `datakit status`). A query with its own WITH gets views.
        remember: as in `read`.
        """
        if re.match(r"\s*WITH\b", query, re.IGNORECASE):
            return self.read(lambda con: _records(con.execute(query)), for_sql=query, remember=remember)

        def run(con: duckdb.DuckDBPyConnection, views: dict[str, str]) -> list[dict]:
            ctes = ", ".join(f"{name} AS ({sql})" for name, sql in views.items())
            return _records(con.execute(f"WITH {ctes}\n{query}" if ctes else query))

        return self.read(run, for_sql=query, inline=True, remember=remember)

    def sql(self, query: str, params: list | None = None, *, sandbox: bool = False) -> list[dict]:
        """Run a query and return rows as dicts (for small results)."""

        return self.read(
            lambda con: _records(con.execute(query, params or [])), sandbox=sandbox, for_sql=query
        )

    def arrow(self, query: str, params: list | None = None, *, sandbox: bool = False) -> pa.Table:
        return self.read(
            lambda con: con.sql(query, params=params).to_arrow_table(), sandbox=sandbox, for_sql=query
        )

    def _snapshot(
        self,
        sandbox: bool,
        for_sql: str | None = None,
        inline: bool = False,
        listed: tuple[IO | None, dict[str, list[Path]]] | None = None,
    ) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None], list[Path], dict[str, str]]:
        """A connection over the live parts as listed now (or as `listed`, the reader lock held and
        the parts listed under it; inline: without the views), a release function, the files it
        reads and the views (name -> SELECT)."""
        reader, parts = listed or (self._reader_lock(), None)
        release = reader.close if reader else lambda: None
        try:
            if parts is None:
                parts = {name: self._snapshot_parts(name) for name in schema.tables()}
            files = [p for ps in parts.values() for p in ps]
            damaged = {p: why for p in files if (why := part_problem(p))}
            if damaged:
                raise DamagedPartsError(self.root, damaged)
            con = duckdb.connect(":memory:", config=_SANDBOX_CONFIG if sandbox else {})
            try:
                if sandbox:
                    _lock_down(con, files)
                views = self.view_sql(parts)
                if for_sql is not None:
                    views = _views_named_by(views, for_sql)
                for name, sql in ({} if inline else views).items():
                    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")
            except duckdb.Error as exc:
                con.close()
                self._raise_if_damaged(files, exc)
                raise
        except BaseException:
            release()
            raise
        return con, release, files, views

    def _reader_lock(self) -> IO | None:
        """Shared lock that keeps compaction from deleting parts a snapshot may read."""
        path = self.root / "locks" / f"{_READERS_LOCK}.lock"
        try:
            path.parent.mkdir(exist_ok=True)
            fh = open(path, "a+")
        except OSError:  # a read-only workspace: nothing can compact it from here either
            return None
        fcntl.flock(fh, fcntl.LOCK_SH)  # waits only while a compaction unlinks replaced parts
        return fh

    def _raise_if_damaged(self, files: Iterable[Path], cause: BaseException) -> None:
        damaged = {p: why for p in files if (why := part_problem(p, deep=True))}
        if damaged:
            raise DamagedPartsError(self.root, damaged) from cause

    # ----------------------------------------------------------------------------- writes
    def write(self, table: str, rows: Iterable[Mapping]) -> Path | None:
        """Append rows to a table as one new part file (atomic). Later rows win per key.

        Every row is checked against the table's columns first: an unknown column or a value of
        the wrong type raises RowError and nothing is written.
        """
        rows = list(rows)
        if not rows:
            return None
        schema_ = arrow_schema(table)
        columns = _checked_columns(table, schema_, rows)
        with self.table_lock(table, exclusive=False):  # never between a compaction's read and delete
            now = time.time_ns()
            # Rows in one part get increasing stamps, so the last row for a key in a batch wins.
            columns[WRITTEN_COLUMN] = pa.array(range(now, now + len(rows)), pa.int64())
            path = self.table_dir(table) / f"part-{now:019d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            atomic_write_parquet(path, pa.table(columns, schema=schema_))
        return path

    def compact(self, table: str) -> int:
        """Rewrite a table's live parts as one part of its latest rows. Returns the row count."""
        with self.table_lock(table, exclusive=True):
            parts = self.live_parts(table)
            damaged = {p: why for p in parts if (why := part_problem(p))}
            if damaged:
                raise DamagedPartsError(self.root, damaged)
            if len(parts) <= 1:
                self._delete_replaced(table)
                return sum(pq.read_metadata(p).num_rows for p in parts)
            # Named after the newest part it replaces, so it sorts after every part it replaces and
            # before every later one (names sort by write time; digits sort before "compact").
            newest = parts[-1].name.split("-")[1]
            out = self.table_dir(table) / f"part-{newest}{COMPACT_TAG}{uuid.uuid4().hex[:8]}.parquet"
            rows = self._write_latest(table, parts, out)
            self._delete_replaced(table)
            return rows

    def _write_latest(self, table: str, parts: list[Path], out: Path) -> int:
        """Stream the newest row per key of `parts` into `out` (atomic) in bounded memory: DuckDB
        spills its sort to <workspace>/tmp beyond COMPACT_MEMORY, and batches go to the writer one
        at a time (a 10M-row table never sits in memory whole)."""
        spill = self.root / "tmp"
        spill.mkdir(exist_ok=True)
        con = duckdb.connect(
            ":memory:", config={"memory_limit": COMPACT_MEMORY, "temp_directory": str(spill)}
        )
        target = arrow_schema(table)
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
        rows = 0
        try:
            reader = con.sql(
                f"SELECT * FROM {_read_parts(parts)} {_newest_per_key(schema.tables()[table].key)} "
                f"ORDER BY {WRITTEN_COLUMN}"
            ).to_arrow_reader(COMPACT_BATCH_ROWS)
            with pq.ParquetWriter(tmp, target, compression="zstd") as writer:
                for batch in reader:
                    chunk = pa.Table.from_batches([batch]).select(target.names).cast(target)
                    writer.write_table(chunk)
                    rows += chunk.num_rows
            _fsync_and_rename(tmp, out)
        except duckdb.Error as exc:
            self._raise_if_damaged(parts, exc)
            raise
        finally:
            con.close()
            tmp.unlink(missing_ok=True)
        return rows

    def _delete_replaced(self, table: str) -> int:
        """Delete parts merged into a compacted part, unless a reader may still read them."""
        live = set(self.live_parts(table))
        replaced = [p for p in self.data_parts(table) if p not in live]
        if not replaced:
            return 0
        with open(self.root / "locks" / f"{_READERS_LOCK}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a snapshot is open: the next compaction deletes them
            for p in replaced:
                p.unlink(missing_ok=True)
        return len(replaced)

    def needs_compaction(self, table: str, max_newer_parts: int = 16) -> bool:
        """Readers are fast on one part, or a compacted part plus a few newer ones (see _latest_sql)."""
        live = self.live_parts(table)
        if len(live) < len(self.data_parts(table)):
            return True  # replaced parts wait for deletion
        if len(live) <= 1:
            return False
        return COMPACT_TAG not in live[0].name or len(live) - 1 > max_newer_parts

    def table_lock(self, table: str, *, exclusive: bool):
        return self.lock(f"table-{table}", shared=not exclusive)

    # ----------------------------------------------------------------------------- locks
    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = True, shared: bool = False, on_wait=None) -> Iterator[None]:
        """Inter-process lock on `locks/<name>.lock` (released if the process dies)."""
        # Our own flock, not the `filelock` package: its FileLock is exclusive only and its
        # ReadWriteLock is an SQLite transaction; we need shared and exclusive holds of one file.
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        with open(lock_dir / f"{name}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise WorkspaceError(f"another process holds the '{name}' lock on {self.root}") from None
                if on_wait:
                    on_wait(name)
                fcntl.flock(fh, mode)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------- helpers
def _lock_down(con: duckdb.DuckDBPyConnection, files: list[Path]) -> None:
    """Make `files` the only files or URLs the connection may open, then lock its settings.

    With the extension settings of _SANDBOX_CONFIG, a query can then not install or load
    extensions, attach databases, or read or write any other file; it could still overwrite one
    of `files` (DuckDB does not tell reading from writing here), which the statement check of
    `datakit.query` prevents.
    """
    con.execute(f"SET allowed_paths = [{', '.join(_sql_str(str(f)) for f in files)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _checked_columns(table: str, schema_: pa.Schema, rows: list[Mapping]) -> dict[str, pa.Array]:
    """Columns of `rows` as Arrow arrays of the table's types; RowError names the first misfit."""
    names = [f.name for f in schema_ if f.name != WRITTEN_COLUMN]
    known = set(names)
    key = schema.tables()[table].key
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise RowError(
                f"table {table!r}: row {i} is a {type(row).__name__}, not a mapping of column -> value"
            )
        unknown = [c for c in row if c not in known]
        if unknown:
            hints = []
            for c in unknown:
                close = difflib.get_close_matches(str(c), names, n=1)
                hints.append(f"{c!r} (did you mean {close[0]!r}?)" if close else repr(c))
            raise RowError(
                f"table {table!r} has no column {', '.join(hints)} (row {i}); its columns: {', '.join(names)}"
            )
        if row.get(key) is None:
            raise RowError(f"table {table!r}: row {i} has no value for the key column {key!r}")
    return {
        f.name: _column_array(table, f, [r.get(f.name) for r in rows])
        for f in schema_
        if f.name != WRITTEN_COLUMN
    }


def _column_array(table: str, field: pa.Field, values: list) -> pa.Array:
    """`values` as an Arrow array of the field's type; RowError for a value that does not fit it."""
    integer, listed = pa.types.is_integer(field.type), pa.types.is_list(field.type)
    try:
        array = pa.array(values, type=field.type)
        if not (integer or listed):
            return array
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = None
    for i, v in enumerate(values):
        if v is None:
            continue
        # Arrow would silently truncate 2.5 to 2, or split "ab" into ["a", "b"].
        if integer and isinstance(v, float) and not v.is_integer():
            why = "not a whole number"
        elif listed and isinstance(v, str | bytes):
            why = "a list is expected"
        elif array is None:
            try:
                pa.array([v], type=field.type)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                why = str(exc)
        else:
            continue
        raise RowError(
            f"table {table!r}, column {field.name!r} ({field.type}): row {i} has {v!r} of type {type(v).__name__} ({why})"
        )
    if array is None:
        raise RowError(
            f"table {table!r}, column {field.name!r}: the values do not make one {field.type} column"
        )
    return array


def part_problem(path: Path, *, deep: bool = False) -> str | None:
    """Why a part file cannot be read, or None.

    The quick check reads the size and the Parquet magic bytes at both ends (an empty, truncated
    or overwritten file fails it); deep=True also decodes every row.
    """
    try:
        size = path.stat().st_size
        if size < 12:
            return "empty file (0 bytes)" if size == 0 else f"truncated ({size} bytes)"
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(-8, os.SEEK_END)
            tail = fh.read(8)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if head != b"PAR1" or tail[4:] != b"PAR1":
        return "not a complete Parquet file (truncated or overwritten)"
    if int.from_bytes(tail[:4], "little") > size - 12:
        return "corrupt Parquet footer"
    if deep:
        try:
            pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            return "corrupt: " + " ".join(str(exc).split())
    return None


def is_duckdb_file(path: Path) -> bool:
    """Whether `path` starts like a DuckDB database file (its magic bytes "DUCK" at offset 8)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(12)[8:12] == b"DUCK"
    except OSError:
        return False


def _records(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    """A query's rows as dicts keyed by column name."""
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _views_named_by(views: dict[str, str], sql: str) -> dict[str, str]:
    """The views `sql` names, with every view they name in turn, in the order of `views`."""
    needed: set[str] = set()
    frontier = [w for w in _WORD.findall(sql) if w in views]
    while frontier:
        name = frontier.pop()
        if name not in needed:
            needed.add(name)
            frontier += [w for w in _WORD.findall(views[name]) if w in views and w not in needed]
    return {name: sql for name, sql in views.items() if name in needed}


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_READS_FILES = re.compile(r"\b(read_\w+|glob|parquet_scan|\w+_scan)\s*\(", re.IGNORECASE)


def _newest_per_key(key: str) -> str:
    return f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {WRITTEN_COLUMN} DESC) = 1"


def _read_parts(files: list[Path]) -> str:
    return f"read_parquet([{', '.join(_sql_str(str(p)) for p in files)}], union_by_name = true)"


def atomic_write_parquet(path: Path, data: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(data, tmp, compression="zstd")
    _fsync_and_rename(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        _fsync_and_rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_and_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
