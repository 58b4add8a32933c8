"""The workspace: Parquet part files per stage table, a DuckDB catalog of views, and locks.

Layout of a workspace directory:

    workspace.json          schema version and the absolute root the catalog was built for
    manifest.duckdb         DuckDB catalog: views over the Parquet parts (no data inside)
    tables/<table>/*.parquet immutable part files; the newest row per key wins
    media/                  downloaded videos;  clips/  extracted clip files
    locks/                  one lock file per stage (fcntl), so two runs of a stage never overlap
    runs/                   one folder per stage run: config and stats

Parts are written to a temporary name and renamed, so a reader never sees half a file and a
SIGKILL loses at most the batch in flight. Rows are deduplicated by key in the views, so a rerun
that rewrites a row never duplicates it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from manifests import schema
from manifests.schema import SCHEMA_VERSION, VIEWS, WRITTEN_COLUMN, arrow_schema

DEFAULT_WORKSPACE = "workspace"
_INIT_PART = "part-0000000000000000000-init.parquet"
_COMPACT_TAG = "-compact-"


def default_workspace() -> Path:
    return Path(os.environ.get("DATAKIT_WORKSPACE", DEFAULT_WORKSPACE))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class WorkspaceError(RuntimeError):
    pass


class Workspace:
    def __init__(self, root: str | os.PathLike | None = None, *, create: bool = True):
        self.root = Path(root if root is not None else default_workspace()).absolute()
        if not (self.root / "workspace.json").exists():
            if not create:
                raise WorkspaceError(f"no datakit workspace at {self.root} (run `datakit ingest` first)")
            self._init()
        self._check_version()

    # ----------------------------------------------------------------------------- layout
    @property
    def catalog_path(self) -> Path:
        return self.root / "manifest.duckdb"

    @property
    def media_dir(self) -> Path:
        return self.root / "media"

    @property
    def clips_dir(self) -> Path:
        return self.root / "clips"

    def table_dir(self, table: str) -> Path:
        return self.root / "tables" / table

    def _init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock("catalog"):
            if (self.root / "workspace.json").exists():  # another process won the race
                return
            for sub in ("media", "clips", "locks", "runs"):
                (self.root / sub).mkdir(exist_ok=True)
            self._ensure_tables()
            self._build_catalog()
            self._write_meta()

    def _write_meta(self) -> None:
        meta = {"schema_version": SCHEMA_VERSION, "root": str(self.root)}
        _atomic_write_text(self.root / "workspace.json", json.dumps(meta, indent=2) + "\n")

    def _check_version(self) -> None:
        meta = json.loads((self.root / "workspace.json").read_text())
        version = meta.get("schema_version", 0)
        if version > SCHEMA_VERSION:
            raise WorkspaceError(
                f"workspace {self.root} has schema version {version}, newer than this datakit "
                f"({SCHEMA_VERSION}); upgrade datakit"
            )
        if version < SCHEMA_VERSION or meta.get("root") != str(self.root) or not self.catalog_path.exists():
            with self.lock("catalog"):  # new tables/views, or the workspace was moved
                self._ensure_tables()
                self._build_catalog()
                self._write_meta()

    def _ensure_tables(self) -> None:
        for name in schema.tables():
            d = self.table_dir(name)
            d.mkdir(parents=True, exist_ok=True)
            if not (d / _INIT_PART).exists():  # an empty part keeps the glob non-empty
                _atomic_write_parquet(d / _INIT_PART, arrow_schema(name).empty_table())

    # ----------------------------------------------------------------------------- views
    def data_parts(self, table: str) -> list[Path]:
        """Part files holding rows, oldest first (names start with the write time)."""
        return sorted(p for p in self.table_dir(table).glob("part-*.parquet") if p.name != _INIT_PART)

    def _latest_sql(self, name: str, snapshot: bool) -> str:
        """SELECT of the newest row per key of a table.

        The catalog file (snapshot=False) globs every part and deduplicates. A reader's in-memory
        connection (snapshot=True) lists the parts now and skips most of that work: a lone part
        needs no dedupe, and after `compact` only the few newer parts are deduplicated and their
        keys removed from the compacted part (every row in them is newer than any row in it).
        """
        key = schema.tables()[name].key
        dedupe = _newest_per_key(key)
        if not snapshot:
            glob = _sql_str(str(self.table_dir(name) / "*.parquet"))
            return f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM read_parquet({glob}, union_by_name = true) {dedupe}"
        parts = self.data_parts(name) or [self.table_dir(name) / _INIT_PART]
        if len(parts) == 1:
            return f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM {_read_parts(parts)}"
        base, delta = parts[0], parts[1:]
        if _COMPACT_TAG in base.name and not any(_COMPACT_TAG in p.name for p in delta):
            return (
                f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM (SELECT * FROM {_read_parts([base])} "
                f"ANTI JOIN (SELECT {key} FROM {_read_parts(delta)}) USING ({key}) "
                f"UNION ALL BY NAME SELECT * FROM {_read_parts(delta)} {dedupe})"
            )
        return f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM {_read_parts(parts)} {dedupe}"

    def view_sql(self, snapshot: bool = False) -> dict[str, str]:
        """Name -> SELECT of every view, with absolute paths to this workspace's parts."""
        views: dict[str, str] = {}
        for name in schema.tables():
            views[f"_latest_{name}"] = self._latest_sql(name, snapshot)
            views[name] = f"SELECT * FROM _latest_{name}"
        for name, (_, sql) in VIEWS.items():
            views[name] = sql
        return views

    def _create_views(self, con: duckdb.DuckDBPyConnection, temp: bool) -> None:
        kind = "TEMP VIEW" if temp else "VIEW"
        for name, sql in self.view_sql(snapshot=temp).items():
            con.execute(f"CREATE OR REPLACE {kind} {name} AS {sql}")

    def _build_catalog(self) -> None:
        tmp = self.catalog_path.with_name(f".manifest-{uuid.uuid4().hex}.duckdb")
        con = duckdb.connect(str(tmp))
        try:
            self._create_views(con, temp=False)
        finally:
            con.close()
        os.replace(tmp, self.catalog_path)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with every view: never blocks on other processes."""
        con = duckdb.connect(":memory:")
        self._create_views(con, temp=True)
        return con

    def sql(self, query: str, params: list | None = None) -> list[dict]:
        """Run a query and return rows as dicts (for small results)."""

        def run(con: duckdb.DuckDBPyConnection) -> list[dict]:
            cur = con.execute(query, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

        return self._with_retry(run)

    def arrow(self, query: str, params: list | None = None) -> pa.Table:
        return self._with_retry(lambda con: con.sql(query, params=params).to_arrow_table())

    def read(self, fn):
        """Run `fn(connection)` on a fresh snapshot of the views (retried if a compaction intervenes)."""
        return self._with_retry(fn)

    def _with_retry(self, fn):
        """A compaction may delete parts a snapshot listed: list again and retry."""
        for attempt in range(3):
            con = self.connect()
            try:
                return fn(con)
            except duckdb.IOException:
                if attempt == 2:
                    raise
            finally:
                con.close()

    # ----------------------------------------------------------------------------- writes
    def write(self, table: str, rows: Iterable[dict]) -> Path | None:
        """Append rows to a table as one new part file (atomic). Later rows win per key."""
        rows = list(rows)
        if not rows:
            return None
        schema = arrow_schema(table)
        columns = {f.name: [r.get(f.name) for r in rows] for f in schema if f.name != WRITTEN_COLUMN}
        with self._table_lock(table, exclusive=False):  # never between a compaction's read and delete
            now = time.time_ns()
            # Rows in one part get increasing stamps, so the last row for a key in a batch wins.
            columns[WRITTEN_COLUMN] = [now + i for i in range(len(rows))]
            path = self.table_dir(table) / f"part-{now:019d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            _atomic_write_parquet(path, pa.table(columns, schema=schema))
        return path

    def compact(self, table: str) -> int:
        """Rewrite a table's parts as one part of its latest rows. Returns the row count."""
        with self._table_lock(table, exclusive=True):
            parts = self.data_parts(table)
            if len(parts) <= 1:
                return sum(pq.read_metadata(p).num_rows for p in parts)
            con = duckdb.connect(":memory:")
            try:
                data = con.sql(
                    f"SELECT * FROM {_read_parts(parts)} {_newest_per_key(schema.tables()[table].key)} ORDER BY {WRITTEN_COLUMN}"
                ).to_arrow_table()
            finally:
                con.close()
            # Named after the newest part it replaces, so it sorts before every later part.
            newest = parts[-1].name.split("-")[1]
            out = self.table_dir(table) / f"part-{newest}{_COMPACT_TAG}{uuid.uuid4().hex[:8]}.parquet"
            _atomic_write_parquet(out, data.select(arrow_schema(table).names).cast(arrow_schema(table)))
            for p in parts:
                p.unlink()
            return data.num_rows

    def needs_compaction(self, table: str, max_newer_parts: int = 16) -> bool:
        """Readers are fast on one part, or a compacted part plus a few newer ones (see _latest_sql)."""
        parts = self.data_parts(table)
        if len(parts) <= 1:
            return False
        return _COMPACT_TAG not in parts[0].name or len(parts) - 1 > max_newer_parts

    def _table_lock(self, table: str, *, exclusive: bool):
        return self.lock(f"table-{table}", shared=not exclusive)

    # ----------------------------------------------------------------------------- locks
    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = True, shared: bool = False, on_wait=None) -> Iterator[None]:
        """Inter-process lock on `locks/<name>.lock` (released if the process dies)."""
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


def _newest_per_key(key: str) -> str:
    return f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {WRITTEN_COLUMN} DESC) = 1"


def _read_parts(files: list[Path]) -> str:
    return f"read_parquet([{', '.join(_sql_str(str(p)) for p in files)}], union_by_name = true)"


def _atomic_write_parquet(path: Path, data: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(data, tmp, compression="zstd")
    _fsync_and_rename(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    _fsync_and_rename(tmp, path)


def _fsync_and_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
