"""`datakit repair`: make a damaged workspace readable again, keeping every readable row.

Unreadable part files (empty, truncated, overwritten, or not written by datakit) move to
`quarantine/<table>/`; nothing is deleted but the temporary files of writes that never finished.
Lost table folders come back empty, and the catalog and workspace.json are rebuilt.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from datakit import schema
from datakit.schema import SCHEMA_VERSION, WRITTEN_COLUMN
from datakit.workspace import Workspace, WorkspaceError, is_duckdb_file, part_problem


@dataclass
class RepairReport:
    root: Path
    quarantined: list[tuple[Path, Path, str]] = field(default_factory=list)  # from, to, why
    recreated_tables: list[str] = field(default_factory=list)
    removed_temp_files: int = 0
    meta_problem: str | None = None
    catalog_was_damaged: bool = False
    rows: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"quarantined {src} -> {dst}: {why}" for src, dst, why in self.quarantined]
        out += [f"recreated the missing table folder tables/{t}/ (empty)" for t in self.recreated_tables]
        if self.removed_temp_files:
            out.append(f"removed {self.removed_temp_files} temporary file(s) of unfinished writes")
        if self.meta_problem:
            out.append(f"rewrote workspace.json ({self.meta_problem})")
        out.append("rebuilt manifest.duckdb" + (" (it was damaged)" if self.catalog_was_damaged else ""))
        out.append("rows now: " + ", ".join(f"{t} {n}" for t, n in self.rows.items()))
        return out


def repair(root: str | os.PathLike) -> RepairReport:
    ws = Workspace.unchecked(root)
    if not ws.meta_path.exists() and not (ws.root / "tables").is_dir():
        raise WorkspaceError(f"no datakit workspace at {ws.root}")
    report = RepairReport(ws.root)
    tables = schema.tables()
    # Writers and compactions hold a table's lock while they write, so with every lock held any
    # temporary file is left over from a killed process.
    with ws.lock("catalog"), contextlib.ExitStack() as locks:
        for name in tables:
            locks.enter_context(ws.table_lock(name, exclusive=True))
        report.meta_problem = _meta_problem(ws)
        for sub in ("media", "clips", "runs"):
            (ws.root / sub).mkdir(exist_ok=True)
        report.recreated_tables = ws.ensure_tables()
        for name in tables:
            report.removed_temp_files += _remove_temp_files(ws.table_dir(name))
            for part in sorted(ws.table_dir(name).glob("*.parquet")):
                why = part_problem(part, deep=True) or _foreign_problem(part, tables[name].key)
                if why:
                    report.quarantined.append((part, _quarantine(ws, name, part), why))
        ws.ensure_tables()  # a new empty init part for a quarantined one
        report.catalog_was_damaged = ws.catalog_path.exists() and not is_duckdb_file(ws.catalog_path)
        ws.build_catalog()
        ws.write_meta()
    report.rows = ws.read(
        lambda con: {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    )
    return report


def _meta_problem(ws: Workspace) -> str | None:
    """Why workspace.json needs rewriting, or None; refuses a workspace of a newer datakit."""
    if not ws.meta_path.exists():
        return "it was missing"
    try:
        meta = ws.read_meta()
    except WorkspaceError as exc:
        return f"it was unreadable: {exc}"
    if meta["schema_version"] > SCHEMA_VERSION:
        raise WorkspaceError(
            f"workspace {ws.root} has schema version {meta['schema_version']}, newer than this datakit "
            f"({SCHEMA_VERSION}); repair it with that version"
        )
    if meta.get("root") != str(ws.root):
        return "the workspace was moved"
    return None


def _foreign_problem(part: Path, key: str) -> str | None:
    """Why a readable Parquet file is not a part of this table (the views need these columns)."""
    names = set(pq.read_schema(part).names)
    missing = [c for c in (key, WRITTEN_COLUMN) if c not in names]
    return f"not a datakit part: no {', '.join(missing)} column" if missing else None


def _remove_temp_files(table_dir: Path) -> int:
    temps = list(table_dir.glob(".*.tmp"))
    for tmp in temps:
        tmp.unlink(missing_ok=True)
    return len(temps)


def _quarantine(ws: Workspace, table: str, part: Path) -> Path:
    dest_dir = ws.quarantine_dir / table
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / part.name
    n = 1
    while dest.exists():  # the same name quarantined before
        dest = dest_dir / f"{part.stem}.{n}{part.suffix}"
        n += 1
    os.replace(part, dest)
    return dest
