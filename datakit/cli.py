"""`datakit` command line: ingest, status, query, run, ...; stage commands are generated (datakit.cli_stages)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from datakit.workspace import Workspace, WorkspaceError, default_workspace


class _Commands(TyperGroup):
    """Every command prints a WorkspaceError (a damaged part, an unreadable workspace.json, a lost
    table folder, ...) as `error: <message>`, exit status 1, instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WorkspaceError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Commands, no_args_is_help=True, add_completion=False, help="Build, inspect and curate video manifests."
)
out = Console(width=None if sys.stdout.isatty() else 160)

WorkspaceOpt = Annotated[
    Path,
    typer.Option("--workspace", "-w", envvar="DATAKIT_WORKSPACE", help="Workspace directory (env DATAKIT_WORKSPACE)."),
]
def _open(workspace: Path, create: bool = True) -> Workspace:
    return Workspace(workspace, create=create)  # a WorkspaceError becomes `error: ...` (see _Commands)


@app.command()
def ingest(
    inputs: Annotated[list[str], typer.Argument(help="Files, directories, URL lists (.txt/.csv/.parquet) or URLs.")],
    workspace: WorkspaceOpt = default_workspace(),
) -> None:
    """Add videos to the manifest (idempotent: a rerun adds only what is new)."""
    from datakit.ingest import ingest as do_ingest

    stats = do_ingest(_open(workspace), inputs)
    out.print(stats.summary())
    for msg in stats.error_messages[:20]:
        out.print(f"  [red]error[/] {msg}", highlight=False)


@app.command()
def status(
    workspace: WorkspaceOpt = default_workspace(),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per-stage counts of done / pending / error / retry."""
    from datakit.pipeline import status as get_status

    rows = get_status(_open(workspace, create=False))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"datakit status: {Path(workspace).absolute()}")
    for col in ("stage", "table", "ok", "pending", "retry", "error"):
        table.add_column(col, justify="left" if col in ("stage", "table") else "right")
    for r in rows:
        table.add_row(r["stage"], r["table"], *(str(r[k]) for k in ("ok", "pending", "retry", "error")))
    out.print(table)


RECIPES = Path(__file__).resolve().parents[1] / "manifests" / "recipes"


@app.command()
def query(
    sql: Annotated[
        str, typer.Argument(help="One read-only SELECT over the views (videos, clips, ...), or @RECIPE (manifests/recipes).")
    ],
    workspace: WorkspaceOpt = default_workspace(),
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="table, csv, json or parquet (default: from --output's suffix, else table).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write to this file (its folder is created).")] = None,
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 40,
) -> None:
    """Run read-only SQL over the manifest (writes, extensions and other files are refused)."""
    import duckdb

    from datakit.query import OutputError, ReadOnlyError, format_for, run_query, write_result

    try:
        fmt = format_for(output, fmt)
    except OutputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ws = _open(workspace, create=False)
    if sql.startswith("@"):
        recipe = RECIPES / f"{sql[1:]}.sql"
        if not recipe.exists():
            names = ", ".join(sorted("@" + p.stem for p in RECIPES.glob("*.sql")))
            typer.echo(f"error: no recipe {sql} (recipes: {names})", err=True)
            raise typer.Exit(2)
        sql = recipe.read_text()
    try:
        result = run_query(ws, sql)
    except ReadOnlyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (WorkspaceError, duckdb.Error) as exc:  # a damaged part, a typo, a refused file: the message only
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if fmt == "table":
        print_table(result, max_rows=max_rows)
        return
    try:
        write_result(result, fmt, output)
    except OutputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def print_table(result, max_rows: int = 40, title: str | None = None) -> None:
    """Values are shown as they are (Text: `[red]` in a value is not rich markup)."""
    from rich.text import Text

    table = Table(title=title, show_lines=False)
    for name in result.column_names:
        table.add_column(Text(name), overflow="fold")
    shown = result.slice(0, max_rows)
    columns = [shown.column(i).to_pylist() for i in range(shown.num_columns)]  # names may repeat
    for row in zip(*columns, strict=True):
        table.add_row(*(Text("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row))
    out.print(table)
    if result.num_rows > max_rows:
        out.print(f"... {result.num_rows - max_rows} more rows (use --format csv/json/parquet for all)")


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Pipeline TOML (default: the embedded defaults).")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    only: Annotated[list[str] | None, typer.Option(help="Run only these stages (repeatable).")] = None,
    inputs: Annotated[list[str] | None, typer.Argument(help="Extra inputs to ingest before the stages.")] = None,
) -> None:
    """Run ingest and every enabled stage in order, from a pipeline config (`datakit config` prints one)."""
    from datakit.pipeline import load_config, run_pipeline
    from datakit.stage import OptionError

    try:
        cfg = load_config(config)
        cfg["ingest"]["inputs"] = list(cfg["ingest"].get("inputs", [])) + list(inputs or [])
        run_pipeline(_open(workspace), cfg, only=only)
    except OptionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("config")
def show_config() -> None:
    """Print the default pipeline config: every stage's options, with their help, as TOML."""
    from datakit.pipeline import render_default_config

    typer.echo(render_default_config(), nl=False)


@app.command()
def compact(workspace: WorkspaceOpt = default_workspace()) -> None:
    """Merge each table's part files into one (faster queries after many small runs)."""
    from manifests.schema import TABLES

    ws = _open(workspace, create=False)
    for name in TABLES:
        out.print(f"{name}: {ws.compact(name)} rows")


@app.command()
def repair(workspace: WorkspaceOpt = default_workspace()) -> None:
    """Move unreadable part files to quarantine/, recreate lost table folders, rebuild the catalog
    and workspace.json. Every readable row is kept."""
    from datakit.repair import repair as do_repair

    for line in do_repair(workspace).lines():
        typer.echo(line)


@app.command()
def preview(
    out_png: Annotated[Path, typer.Argument(help="PNG to write.")] = Path("contact_sheet.png"),
    workspace: WorkspaceOpt = default_workspace(),
    sql: Annotated[str | None, typer.Option(help="SELECT over clips choosing what to show.")] = None,
    max_clips: Annotated[int, typer.Option(help="Clips on the sheet.")] = 24,
) -> None:
    """Write a contact sheet (first, middle, last frame of each clip) as a PNG."""
    from datakit.preview import contact_sheet
    from datakit.query import ReadOnlyError, check_read_only

    if sql:
        try:
            check_read_only(sql)
        except ReadOnlyError as exc:
            raise typer.BadParameter(str(exc)) from None
    out.print(f"wrote {contact_sheet(_open(workspace, create=False), out_png, sql, max_clips)}")


@app.command()
def select(
    name: Annotated[str, typer.Argument(help="Set name; each select writes its next version (NAME@v1, @v2, ...).")],
    recipe: Annotated[str | None, typer.Option(help="A recipe of manifests/recipes: @image, @video, @hq, ...")] = None,
    where: Annotated[str | None, typer.Option(help="A condition over the clips view, e.g. \"aesthetic >= 5\".")] = None,
    sql: Annotated[str | None, typer.Option(help="One SELECT returning clip_id (other columns are kept).")] = None,
    workspace: WorkspaceOpt = default_workspace(),
) -> None:
    """Write an immutable, versioned curated set: <workspace>/sets/NAME/vN/{rows.parquet,card.json}."""
    from datakit.query import ReadOnlyError
    from datakit.sets import select as do_select
    from datakit.sets import selection_sql

    ws = _open(workspace, create=False)
    try:
        text, kind, recipe_name = selection_sql(recipe, where, sql)
        version = do_select(ws, name, text, recipe=recipe_name, kind=kind)
    except ReadOnlyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    out.print(f"{name}@v{version.version}: {version.card['row_count']} rows -> {version.path}", highlight=False)


@app.command("sets")
def sets_command(
    workspace: WorkspaceOpt = default_workspace(),
    as_json: Annotated[bool, typer.Option("--json", help="Print the cards as JSON.")] = False,
) -> None:
    """List the curated sets: name, versions, rows, recipe, creation time."""
    from datakit.sets import list_sets

    found = list_sets(_open(workspace, create=False))
    if as_json:
        cards = [v.card for vs in found.values() for v in vs]
        typer.echo(json.dumps([{k: c[k] for k in c if k != "manifest"} for c in cards], indent=2))
        return
    table = Table(title="curated sets")
    for col in ("set", "version", "rows", "recipe", "created"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for name, versions in found.items():
        for v in versions:
            card = v.card
            recipe = card["recipe"]["name"] or f"--{card['recipe']['kind']}"
            table.add_row(name, f"v{v.version}", str(card["row_count"]), recipe, card["created"])
    out.print(table)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Set to export: NAME (latest version) or NAME@vN.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="opensora (CSV/Parquet table) or webdataset (tar shards).")] = "opensora",
    output: Annotated[Path | None, typer.Option(help="opensora: a .csv or .parquet file; webdataset: a folder.")] = None,
    cut: Annotated[bool, typer.Option(help="Cut the set's clips that have no clip file yet (both formats need files).")] = True,
    short_side: Annotated[int | None, typer.Option(help="Short side of newly cut clips (default: the source's).")] = None,
    fps: Annotated[float | None, typer.Option(help="Frame rate of newly cut clips (frame picking; default: the source's).")] = None,
    shard_mb: Annotated[float, typer.Option(help="webdataset: shard size in MB (a shard closes once it reaches it).")] = 1024,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Cut workers.")] = 1,
    workspace: WorkspaceOpt = default_workspace(),
) -> None:
    """Export a curated set for training: Open-Sora's table or WebDataset shards (cutting clips first)."""
    from datakit.export import export_set

    ws = _open(workspace, create=False)
    cut_options = {k: v for k, v in (("short_side", short_side), ("fps", fps)) if v is not None}
    result = export_set(ws, name, fmt, output, cut=cut, cut_options=cut_options, workers=workers,
                        shard_bytes=int(shard_mb * 1e6))  # fmt: skip
    out.print(result.summary(), highlight=False)


@app.command()
def report(
    output: Annotated[Path | None, typer.Argument(help="HTML file to write (default: <workspace>/report.html).")] = None,
    set_name: Annotated[str | None, typer.Option("--set", help="Report on this set (NAME or NAME@vN) instead of all clips.")] = None,
    workspace: WorkspaceOpt = default_workspace(),
) -> None:
    """Write one HTML page: histograms, a contact sheet at score quantiles, captions, and each recipe's keep/drop counts."""
    from datakit.report import write_report

    ws = _open(workspace, create=False)
    path = write_report(ws, output or ws.root / "report.html", set_spec=set_name)
    out.print(f"wrote {path}", highlight=False)


def main_group():
    """The `datakit` click group: the commands above plus one generated command per stage."""
    from datakit.cli_stages import add_stage_commands

    add_stage_commands(app)
    return typer.main.get_command(app)


if __name__ == "__main__":
    main_group()()
