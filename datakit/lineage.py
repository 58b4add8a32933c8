"""`datakit lineage RUN`: where a training run's data came from.

run → set@version (the run's frozen card) → the recipe's SQL and parameters → the model keys of
the scores and captions its clips carry → the source videos. Reads the run folder's files only
(`data/card.json`, `data/rows.parquet`), so datakit needs nothing from the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

from datakit.workspace import Workspace


class LineageError(ValueError):
    pass


def lineage(run_dir: Path, ws: Workspace | None = None, max_sources: int = 10) -> list[str]:
    run_dir = Path(run_dir)
    card_file, rows_file = run_dir / "data" / "card.json", run_dir / "data" / "rows.parquet"
    if not card_file.is_file() or not rows_file.is_file():
        raise LineageError(
            f"{run_dir} is not a training run folder (no data/card.json and data/rows.parquet)"
        )
    card = json.loads(card_file.read_text())
    if ws is None:
        if not card.get("workspace"):
            raise LineageError(f"{card_file} names no workspace: pass --workspace")
        ws = Workspace(Path(card["workspace"]))
    recipe = card.get("recipe") or {}
    if isinstance(recipe, str):  # a --select run: the SQL itself
        recipe = {"kind": "sql", "text": recipe}
    lines = [
        f"run {run_dir.resolve()}",
        f"  set {card.get('name')}@v{card.get('version')}: {card.get('row_count')} rows ({card.get('source', '')})",
        f"    recipe {recipe.get('name') or recipe.get('kind', '?')}"
        + (f" with parameters {recipe['params']}" if recipe.get("params") else "")
        + ":",
    ]
    lines += [f"      {line}" for line in (recipe.get("text") or "").strip().splitlines()]

    def run(con) -> list[str]:
        con.execute(f"CREATE TEMP VIEW __run AS SELECT clip_id FROM read_parquet('{rows_file.resolve()}')")
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_columns() WHERE column_name IN ('clip_id', 'model_key') "
                "AND NOT starts_with(table_name, '_') GROUP BY table_name HAVING count(DISTINCT column_name) = 2 "
                "ORDER BY table_name"
            ).fetchall()
        ]
        out = ["    model keys of its scores and captions:"]
        for table in tables:
            for key, n in con.execute(
                f'SELECT model_key, count(DISTINCT clip_id) FROM "{table}" '
                "WHERE clip_id IN (SELECT clip_id FROM __run) GROUP BY ALL ORDER BY 1"
            ).fetchall():
                out.append(f"      {table}: {key} ({n} clips)")
        if "caption_source" in [r[0] for r in con.execute("DESCRIBE clips").fetchall()]:
            used = con.execute(
                "SELECT caption_source, count(*) FROM clips WHERE clip_id IN (SELECT clip_id FROM __run) "
                "GROUP BY ALL ORDER BY 1"
            ).fetchall()
            out.append("    captions by source: " + ", ".join(f"{src} ({n} clips)" for src, n in used))
        sources = con.execute(
            "SELECT v.source, count(*) FROM clips c JOIN videos v USING (video_id) "
            "WHERE c.clip_id IN (SELECT clip_id FROM __run) GROUP BY ALL ORDER BY 1"
        ).fetchall()
        out.append(f"    sources ({len(sources)} videos):")
        out += [f"      {src} ({n} clips)" for src, n in sources[:max_sources]]
        if len(sources) > max_sources:
            out.append(f"      ... {len(sources) - max_sources} more")
        return out

    return lines + ws.read(run)
