"""What a run trains on: a curated set or a SQL selection, frozen into the run folder.

A curated set lives at `<workspace>/sets/<NAME>/v<N>/rows.parquet` with a `card.json` (name,
version, recipe, row_count, created). `--select SQL` runs a read-only query over the workspace
views (typically `clips`). Either way the rows are copied to `<run>/data/rows.parquet` with a
card, so a run (and its resume) never depends on the manifest changing later.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datakit import sets
from datakit.sets import media_path  # one home: which file (source or cut) a clip is read from

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = [
    "SelectionError",
    "check_files",
    "freeze",
    "load_frozen",
    "media_path",
    "normalise",
    "read_set",
    "split_validation",
]

REQUIRED = ("start_frame", "end_frame", "fps", "width", "height")
ROWS_FILE, CARD_FILE = "rows.parquet", "card.json"


class SelectionError(ValueError):
    pass


# ------------------------------------------------------------------------------------ sources
def parse_set_spec(spec: str) -> tuple[str, int | None]:
    """ "name" -> (name, None: latest); "name@v3" or "name@3" -> (name, 3) (datakit.sets' rule)."""
    try:
        return sets.parse_spec(spec)
    except sets.SetError as err:
        raise SelectionError(f"--set: {err}") from None


def read_set(workspace: str | os.PathLike, spec: str) -> tuple[pa.Table, dict[str, Any]]:
    """Rows and card of a curated set version (the latest when no version is given)."""
    try:
        found = sets.resolve(Path(workspace), spec)
        card = {"name": found.name, "version": found.version, **found.card, "source": str(found.path)}
        return found.read(), card
    except (sets.SetError, OSError, ValueError, pa.ArrowException) as err:
        raise SelectionError(str(err)) from None


def run_select(workspace: str | os.PathLike, sql: str) -> tuple[pa.Table, dict[str, Any]]:
    """A read-only query over the workspace views (the `clips` view has one row per clip)."""
    from datakit.query import ReadOnlyError, check_read_only
    from datakit.workspace import Workspace, WorkspaceError

    try:
        check_read_only(sql)
        ws = Workspace(workspace, create=False)
    except (ReadOnlyError, WorkspaceError) as err:
        raise SelectionError(str(err)) from None
    try:
        table = ws.arrow(sql)
    except Exception as err:  # duckdb's parser / binder errors: show the message, not a traceback
        raise SelectionError(f"--select failed: {err}") from None
    card = {"name": "select", "version": None, "recipe": sql, "source": str(ws.root)}
    return table, card


# ------------------------------------------------------------------------------------ normalising
def normalise(table: pa.Table) -> pa.Table:
    """Check the columns a trainer needs; add `clip_id` and `caption` ("" = the null caption) if absent."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if "source_path" not in table.column_names and "path" not in table.column_names:
        missing.append("source_path or path")
    if missing:
        raise SelectionError(
            f"the selection lacks column(s) {', '.join(missing)}; select them from the `clips` view "
            f"(clip_id, source_path, path, start_frame, end_frame, fps, width, height[, caption])"
        )
    for name in ("source_path", "path"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    if "caption" not in table.column_names:
        table = table.append_column("caption", pa.array([""] * table.num_rows, pa.string()))
    else:
        table = table.set_column(
            table.column_names.index("caption"),
            "caption",
            pc.fill_null(table["caption"].cast(pa.string()), ""),
        )
    if "clip_id" not in table.column_names:
        ids = [
            f"{hashlib.blake2b((src or path or '').encode(), digest_size=8).hexdigest()}-{s}-{e}"
            for src, path, s, e in zip(
                table["source_path"].to_pylist(),
                table["path"].to_pylist(),
                table["start_frame"].to_pylist(),
                table["end_frame"].to_pylist(),
                strict=True,
            )
        ]
        table = table.append_column("clip_id", pa.array(ids, pa.string()))
    if table.num_rows == 0:
        raise SelectionError("the selection is empty")
    first = [
        "clip_id",
        "source_path",
        "path",
        "start_frame",
        "end_frame",
        "fps",
        "width",
        "height",
        "caption",
    ]
    rest = [c for c in table.column_names if c not in first]
    return table.select(first + rest)


def check_files(rows: Sequence[dict[str, Any]], examples: int = 5) -> None:
    """Fail fast, before any model is built, when files of the selection moved or vanished."""
    exists: dict[str, bool] = {}  # clips share their source files: one stat per file

    def readable(path: str | None) -> bool:
        if path and path not in exists:
            exists[path] = os.path.isfile(path)
        return bool(path) and exists[path]

    lost = [r for r in rows if not (readable(r.get("source_path")) or readable(r.get("path")))]
    if lost:
        shown = "\n".join(
            f"  {r['clip_id']}: {r.get('source_path') or r.get('path')}" for r in lost[:examples]
        )
        more = f"\n  ... and {len(lost) - examples} more" if len(lost) > examples else ""
        raise SelectionError(
            f"{len(lost)} of {len(rows)} clips have no readable file (moved or deleted?):\n{shown}{more}"
        )


# ------------------------------------------------------------------------------------ freezing
def freeze(run_dir: Path, table: pa.Table, card: dict[str, Any]) -> dict[str, Any]:
    """Write `<run>/data/rows.parquet` and `card.json` (each to a temp name, then renamed)."""
    data_dir = Path(run_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    card = {
        **card,
        "row_count": table.num_rows,
        "frozen": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    tmp = data_dir / f".{ROWS_FILE}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, data_dir / ROWS_FILE)
    tmp = data_dir / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2, default=str) + "\n")
    os.replace(tmp, data_dir / CARD_FILE)
    return card


def load_frozen(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data_dir = Path(run_dir) / "data"
    if not (data_dir / ROWS_FILE).is_file():
        raise SelectionError(f"{run_dir} holds no frozen selection ({data_dir / ROWS_FILE})")
    rows = pq.read_table(data_dir / ROWS_FILE).to_pylist()
    return rows, json.loads((data_dir / CARD_FILE).read_text())


# ------------------------------------------------------------------------------------ held-out slice
def split_validation(rows: list[dict[str, Any]], cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): the held-out slice is the rows whose clip-id hash is
    smallest, so it is the same in every run of a set."""
    n = len(rows)
    n_val = min(cfg.val_max, max(1, round(cfg.val_fraction * n))) if n >= cfg.val_min_rows else 0
    if cfg.val_fraction == 0:
        n_val = 0
    ranked = sorted(rows, key=lambda r: hashlib.blake2b(str(r["clip_id"]).encode(), digest_size=8).digest())
    val_ids = {r["clip_id"] for r in ranked[:n_val]}
    return [r for r in rows if r["clip_id"] not in val_ids], [r for r in rows if r["clip_id"] in val_ids]
