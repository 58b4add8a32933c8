"""`datakit status` in one query over the marker tables.

Per stage: rows by status in its marker table, and the items pending (what a run would do).
A model-keyed stage (its marker table has `model_key` and `clip_id`: aesthetic, captions, ...)
gets one row per model key actually run, with the clips that key has not scored yet; the work
left for the stage's default model is counted only when asked (`defaults=True`), since a user who
scored with other weights never chose it.

Every count is one branch of a single UNION ALL, so DuckDB plans and scans the snapshot once
per table instead of once per stage and query.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from datakit.clip_keys import CLIP_IDS_SQL
from datakit.stage import expiry_sql
from datakit.workspace import Workspace

COLUMNS = ("stage", "table", "model_key", "ok", "pending", "retry", "error")
_DONE = "(m.status IN ('ok', 'error') OR (m.status = 'retry' AND m.retry_at > epoch(now())))"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _keyed(table) -> bool:
    names = {c.name for c in table.columns}
    return {"model_key", "clip_id"} <= names


def status_sql(
    defaults: bool = False, has_rows: Callable[[str], bool] = lambda table: True
) -> tuple[str, list[tuple[str, str, bool]]]:
    """The one query (rows: stage, model_key, kind, n) and the stages it covers: (name, table, keyed).

    A model-keyed stage whose marker table `has_rows` not (never run) costs nothing unless
    `defaults`: its items are counted only for a key that was run.
    """
    from datakit.registry import stages, tables

    declared = tables()
    parts = [
        "SELECT 'ingest' AS stage, NULL::VARCHAR AS model_key, status AS kind, count(*) AS n FROM sources GROUP BY ALL"
    ]
    covered = [("ingest", "sources", False)]
    for name, cls in stages().items():
        stage = cls()
        marker, n = stage.marker_table, _lit(name)
        keyed = _keyed(declared[marker])
        covered.append((name, marker, keyed))
        if not keyed:
            parts.append(f"SELECT {n}, NULL, status, count(*) FROM _latest_{marker} GROUP BY ALL")
            parts.append(f"SELECT {n}, NULL, '#pending', count(*) FROM ({stage.pending_sql()})")
            continue
        if not (defaults or has_rows(marker)):
            continue
        items = stage.items_sql()
        parts.append(f"SELECT {n}, model_key, status, count(*) FROM _latest_{marker} GROUP BY ALL")
        parts.append(f"SELECT {n}, NULL, '#items', count(DISTINCT clip_id) FROM ({items})")
        parts.append(
            f"SELECT {n}, m.model_key, '#done', count(DISTINCT m.clip_id) FROM _latest_{marker} m "
            f"WHERE {_DONE} AND m.clip_id IN (SELECT clip_id FROM ({items})) GROUP BY ALL"
        )
        if defaults:
            parts.append(
                f"SELECT {n}, regexp_extract(any_value({stage.key}), ':([^:]*)$', 1), '#default', count(*) "
                f"FROM ({stage.pending_sql()})"
            )
    parts.append(
        f"SELECT 'clips', NULL, 'ok', count(*) FROM ({CLIP_IDS_SQL})"
    )  # the rows of `clips`, no joins
    return "\nUNION ALL ".join(parts), covered


def status_rows(ws: Workspace, *, defaults: bool = False) -> list[dict]:
    """Rows of COLUMNS, in run order: ingest, each stage (one row per model key run), clips.

    The counts are remembered (`Workspace.read`): a repeated status on unchanged parts reads one
    small file instead of the tables.
    """
    sql, covered = status_sql(defaults, lambda table: bool(ws.live_parts(table)))  # no part: no row
    remember = ("status", expiry_sql([table for _, table, _ in covered[1:]]))

    def query(con) -> list[tuple]:
        # Planning SQL reads the spans without the score joins (datakit.clip_keys); a branch that
        # still reads `clips` (text match: the caption) shares one evaluation of it, restricted to
        # the columns the branches name.
        names = [d[0] for d in con.execute("SELECT * FROM clips LIMIT 0").description]
        used = [c for c in names if re.search(rf"\b{re.escape(c)}\b", sql)] or names[:1]
        shared = f"WITH clips AS MATERIALIZED (SELECT {', '.join(used)} FROM temp.main.clips) "
        return con.execute(shared + sql).fetchall()

    counts: dict[tuple[str, str | None], dict[str, int]] = {}
    if re.search(r"(?<!')\bclips\b(?!')", sql):  # the view, not the 'clips' row's name
        found = ws.read(lambda con: [list(r) for r in query(con)], for_sql=sql, remember=remember)
    else:
        found = [list(r.values()) for r in ws.fetch(sql, remember=remember)]
    for stage, key, kind, n in found:
        counts.setdefault((stage, key), {})[kind] = n
    out = []

    def row(stage: str, table: str, key: str | None, c: dict, pending: int) -> dict:
        return {
            "stage": stage,
            "table": table,
            "model_key": key,
            "ok": c.get("ok", 0),
            "pending": pending,
            "retry": c.get("retry", 0),
            "error": c.get("error", 0),
        }

    for name, table, keyed in covered:
        if not keyed:
            c = counts.get((name, None), {})
            out.append(row(name, table, None, c, c.get("#pending", 0)))
            continue
        n_items = counts.get((name, None), {}).get("#items", 0)
        mine = {k: c for (s, k), c in counts.items() if s == name}
        keys = sorted(k for k, c in mine.items() if k is not None and set(c) - {"#default"})
        found = [row(name, table, k, mine[k], max(0, n_items - mine[k].get("#done", 0))) for k in keys]
        if defaults:  # the default model's work; its key is read from a pending item (none: nothing left)
            found += [
                row(name, table, k, {}, c["#default"])
                for k, c in mine.items()
                if "#default" in c and k is not None and k not in keys
            ]
        out += found or [row(name, table, None, {}, 0)]  # never run: no model chosen, nothing counted
    c = counts.get(("clips", None), {})
    out.append(row("clips", "clips", None, c, 0))
    return out


def format_rows(rows: list[tuple], right: set[int] = frozenset()) -> str:
    """Plain aligned columns (the first row is the header); no rich import on the status path."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            str(v).rjust(w) if i in right else str(v).ljust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_status(rows: list[dict]) -> str:
    table = [("stage", "table", "model", "ok", "pending", "retry", "error")]
    for r in rows:
        key = r["model_key"] or ""
        table.append((r["stage"], r["table"], key, *(str(r[k]) for k in ("ok", "pending", "retry", "error"))))
    text = format_rows(table, right={3, 4, 5, 6})
    if not any(r["model_key"] for r in rows[1:-1] if r["model_key"]):
        return text
    return (
        text
        + "\n(model-keyed stages: pending counts the clips each model key run has not scored; --defaults adds the default models)"
    )
