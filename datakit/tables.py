"""Table declarations: the columns a stage writes, declared next to the stage's code.

A stage declares its tables as a class attribute (`tables = (Table(...), ...)`) and the columns it
adds to the `clips` view (`clip_columns = (ClipColumns(...),)`); `datakit.schema` gathers both from
the registry, the workspace creates the tables' folders and views, and every write is checked
against them (an unknown column is an error, never a silently dropped value).

Marker tables (one row per finished item) share the bookkeeping columns that the stage runner
fills: `status`, `error`, `attempts` and `retry_at`. `Table.marker` adds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# Hidden column appended to every part file: nanosecond write time, used to pick the latest row.
WRITTEN_COLUMN = "_written_ns"

ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "BOOLEAN": pa.bool_(),
    "BLOB": pa.binary(),
    "FLOAT[]": pa.list_(pa.float32()),
    "VARCHAR[]": pa.list_(pa.string()),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type name (a key of ARROW_TYPES)
    doc: str

    def __post_init__(self) -> None:
        if self.type not in ARROW_TYPES:
            raise ValueError(
                f"column {self.name}: unknown type {self.type!r} (one of {', '.join(ARROW_TYPES)})"
            )


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    doc: str
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        names = self.column_names
        if self.key not in names:
            raise ValueError(f"table {self.name}: key {self.key!r} is not a column")
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: duplicate column names")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @classmethod
    def marker(cls, name: str, key: Column, doc: str, columns: tuple[Column, ...] = ()) -> Table:
        """A table with one row per finished item: key, status, error, the stage's columns, attempts, retry_at."""
        return cls(
            name,
            key.name,
            doc,
            (
                key,
                Column(
                    "status",
                    "VARCHAR",
                    "'ok', 'error' (permanent) or 'retry' (transient: a rerun tries again)",
                ),
                Column("error", "VARCHAR", "readable reason when status is not 'ok'"),
                *columns,
                Column("attempts", "INTEGER", "attempts made so far, over all runs"),
                Column(
                    "retry_at",
                    "DOUBLE",
                    "unix time before which a rerun skips a 'retry' row (null: next run)",
                ),
            ),
        )

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(c.name, ARROW_TYPES[c.type]) for c in self.columns]
        return pa.schema([*fields, pa.field(WRITTEN_COLUMN, pa.int64())])


@dataclass(frozen=True)
class ClipColumns:
    """Columns a stage adds to the `clips` view, joined on `clip_id` (null until the stage has run).

    By default the newest 'ok' row per clip of `table` (by `scored_at`, then `row_id`): the shape of
    the versioned score tables. `sql` replaces that: a SELECT of `clip_id` and the columns, one row
    per clip, over the `_latest_<table>` views."""

    table: str
    columns: tuple[str, ...]
    sql: str | None = None

    def select_sql(self) -> str:
        if self.sql:
            return self.sql
        cols = ", ".join(self.columns)
        return (
            f"SELECT clip_id, {cols} FROM _latest_{self.table} WHERE status = 'ok' "
            "QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY scored_at DESC, row_id DESC) = 1"
        )
