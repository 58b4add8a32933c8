"""`datakit` command line: ingest, status, query, run, ...; stage commands are generated (datakit.cli_stages).

Plain click (typer's pydantic path cost about 0.25 s of start-up; bench/bench_startup.py). Heavy
imports (rich, the stage modules, torch, PyAV) happen inside the commands that need them, so
`datakit status` costs little more than `import duckdb, pyarrow.parquet`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from datakit.lazy import pyarrow_skips_pandas
from datakit.workspace import DEFAULT_WORKSPACE, Workspace, WorkspaceError

RECIPES = Path(__file__).resolve().parents[1] / "manifests" / "recipes"


class DatakitGroup(click.Group):
    """Prints every WorkspaceError (a damaged part, an unreadable workspace.json, a lost table
    folder, ...) as `error: <message>`, exit status 1, instead of a traceback. Stage commands are
    built from the registry only when asked for (or listed by --help); `lazy` holds commands that
    a caller above datakit adds (name -> (loader, help)), loaded only when run."""

    lazy: dict[str, tuple] = {}

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WorkspaceError as exc:
            fail(str(exc), 1)

    def _stages(self) -> dict[str, click.Command]:
        if not hasattr(self, "_stage_commands"):
            from datakit.cli_stages import stage_commands

            self._stage_commands = stage_commands()
        return self._stage_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy) | set(self._stages()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            self.commands[name] = self.lazy[name][0]()
        return self.commands.get(name) or self._stages().get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [
            (
                n,
                self.lazy[n][1]
                if n in self.lazy and n not in self.commands
                else self.get_command(ctx, n).get_short_help_str(limit),
            )
            for n in names
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def fail(message: str, code: int = 1):
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def workspace_option(f):
    return click.option(
        "--workspace",
        "-w",
        "workspace",
        envvar="DATAKIT_WORKSPACE",
        show_envvar=False,
        type=click.Path(path_type=Path),
        default=DEFAULT_WORKSPACE,
        show_default=True,
        help="Workspace directory (env DATAKIT_WORKSPACE).",
    )(f)


def json_option(help_text: str = "Print the summary as JSON."):
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def _open(workspace: Path, create: bool = True) -> Workspace:
    return Workspace(workspace, create=create)  # a WorkspaceError becomes `error: ...` (see DatakitGroup)


def echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group(
    "datakit",
    cls=DatakitGroup,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def app() -> None:
    """Build, inspect and curate video manifests."""


@app.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["panda70m", "webvid", "internvid", "opensora", "auto"]),
    default=None,
    help="Import table inputs (CSV/TSV/Parquet/JSONL) as this dataset's metadata: spans, "
    "captions, scores. auto: tell by the header (also done without --format for known headers).",
)
@click.option(
    "--col",
    "cols",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Map a table column: url, id, spans, start, end, caption or score.NAME (repeatable).",
)
@workspace_option
def ingest(inputs: tuple[str, ...], fmt: str | None, cols: tuple[str, ...], workspace: Path) -> None:
    """Add videos to the manifest (idempotent: a rerun adds only what is new).

    INPUTS: files, directories, URL lists (.txt/.csv/.parquet), URLs, or dataset metadata tables
    (Panda-70M, WebVid, InternVid, Open-Sora, or any table with --col url=COLUMN ...).
    """
    from datakit.ingest import ingest as do_ingest
    from datakit.table_import import TableImportError, parse_cols

    pyarrow_skips_pandas()

    try:
        stats = do_ingest(_open(workspace), list(inputs), fmt, parse_cols(cols))
    except TableImportError as exc:
        fail(str(exc), 2)
    click.echo(stats.summary())
    for msg in stats.error_messages[:20]:
        click.echo(f"  error {msg}")


@app.command()
@workspace_option
@json_option("Print JSON instead of a table.")
@click.option(
    "--defaults",
    is_flag=True,
    help="Also count the work left for the default model of each model-keyed stage (aesthetic, caption, ...).",
)
def status(workspace: Path, as_json: bool, defaults: bool) -> None:
    """Per-stage counts of ok / pending / retry / error (pending per model key actually run)."""
    from datakit.status import format_status, status_rows

    rows = status_rows(_open(workspace, create=False), defaults=defaults)
    if as_json:
        echo_json(rows)
        return
    click.echo(f"datakit status: {Path(workspace).absolute()}")
    click.echo(format_status(rows))


@app.command()
@click.argument("sql")
@workspace_option
@click.option(
    "--format", "-f", "fmt", help="table, csv, json or parquet (default: from --output's suffix, else table)."
)
@click.option("--output", type=click.Path(path_type=Path), help="Write to this file (its folder is created).")
@click.option("--max-rows", type=int, default=40, show_default=True, help="Rows shown in table format.")
def query(sql: str, workspace: Path, fmt: str | None, output: Path | None, max_rows: int) -> None:
    """Run read-only SQL over the manifest (writes, extensions and other files are refused).

    SQL: one read-only SELECT over the views (videos, clips, ...), or @RECIPE (manifests/recipes).
    """
    import duckdb

    from datakit.query import OutputError, ReadOnlyError, format_for, run_query, write_result

    try:
        fmt = format_for(output, fmt)
    except OutputError as exc:
        fail(str(exc), 2)
    ws = _open(workspace, create=False)
    if sql.startswith("@"):
        recipe = RECIPES / f"{sql[1:]}.sql"
        if not recipe.exists():
            names = ", ".join(sorted("@" + p.stem for p in RECIPES.glob("*.sql")))
            fail(f"no recipe {sql} (recipes: {names})", 2)
        sql = recipe.read_text()
    try:
        result = run_query(ws, sql)
    except ReadOnlyError as exc:
        fail(str(exc), 2)
    except (WorkspaceError, duckdb.Error) as exc:  # a damaged part, a typo, a refused file: the message only
        fail(str(exc), 1)
    if fmt == "table":
        print_table(result, max_rows=max_rows)
        return
    try:
        write_result(result, fmt, output)
    except OutputError as exc:
        fail(str(exc), 1)


def print_table(result, max_rows: int = 40, title: str | None = None) -> None:
    """An Arrow table as a rich table; values are shown as they are (`[red]` is not markup)."""
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False)
    for name in result.column_names:
        table.add_column(Text(name), overflow="fold")
    shown = result.slice(0, max_rows)
    columns = [shown.column(i).to_pylist() for i in range(shown.num_columns)]  # names may repeat
    for row in zip(*columns, strict=True):
        table.add_row(
            *(Text("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row)
        )
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(table)
    if result.num_rows > max_rows:
        out.print(f"... {result.num_rows - max_rows} more rows (use --format csv/json/parquet for all)")


@app.command()
@click.argument("inputs", nargs=-1)
@click.option(
    "--config", "-c", type=click.Path(path_type=Path), help="Pipeline TOML (default: the embedded defaults)."
)
@workspace_option
@click.option("--only", multiple=True, help="Run only these stages (repeatable).")
def run(inputs: tuple[str, ...], config: Path | None, workspace: Path, only: tuple[str, ...]) -> None:
    """Run ingest and every enabled stage in order, from a pipeline config (`datakit config` prints one).

    INPUTS: extra inputs to ingest before the stages.
    """
    from datakit.pipeline import load_config, run_pipeline
    from datakit.stage import OptionError

    try:
        cfg = load_config(config)
        cfg["ingest"]["inputs"] = list(cfg["ingest"].get("inputs", [])) + list(inputs)
        results = run_pipeline(_open(workspace), cfg, only=list(only) or None)
    except OptionError as exc:
        fail(str(exc), 2)
    failures = [f for stats in results or [] if (f := stats.failure())]
    for failure in failures:
        click.echo(f"error: {failure}", err=True)
    if failures:
        raise SystemExit(1)


@app.command("config")
def show_config() -> None:
    """Print the default pipeline config: every stage's options, with their help, as TOML."""
    from datakit.pipeline import render_default_config

    click.echo(render_default_config(), nl=False)


@app.command()
@workspace_option
def compact(workspace: Path) -> None:
    """Merge each table's part files into one (faster queries after many small runs)."""
    from datakit.registry import tables

    ws = _open(workspace, create=False)
    for name in tables():
        click.echo(f"{name}: {ws.compact(name)} rows")


@app.command()
@workspace_option
def repair(workspace: Path) -> None:
    """Move unreadable part files to quarantine/, recreate lost table folders, rebuild the catalog
    and workspace.json. Every readable row is kept."""
    from datakit.repair import repair as do_repair

    for line in do_repair(workspace).lines():
        click.echo(line)


@app.command()
@click.argument("out_png", type=click.Path(path_type=Path), default="contact_sheet.png")
@workspace_option
@click.option("--sql", help="SELECT over clips choosing what to show.")
@click.option("--max-clips", type=int, default=24, show_default=True, help="Clips on the sheet.")
def preview(out_png: Path, workspace: Path, sql: str | None, max_clips: int) -> None:
    """Write a contact sheet (first, middle, last frame of each clip) as a PNG."""
    from datakit.preview import contact_sheet
    from datakit.query import ReadOnlyError, check_read_only

    if sql:
        try:
            check_read_only(sql)
        except ReadOnlyError as exc:
            raise click.BadParameter(str(exc), param_hint="--sql") from None
    click.echo(f"wrote {contact_sheet(_open(workspace, create=False), out_png, sql, max_clips)}")


@app.command()
@click.argument("name")
@click.option("--recipe", help="A recipe of manifests/recipes (@image, @video, @hq, ...) or a .sql file.")
@click.option("--where", help='A condition over the clips view, e.g. "aesthetic >= 5".')
@click.option("--sql", help="One SELECT returning clip_id (other columns are kept).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A recipe parameter (read with getvariable), e.g. hq_min_aesthetic=5.5; repeatable.",
)
@workspace_option
@json_option("Print the new version's card (and path) as JSON.")
def select(
    name: str,
    recipe: str | None,
    where: str | None,
    sql: str | None,
    params: tuple[str, ...],
    workspace: Path,
    as_json: bool,
) -> None:
    """Write an immutable, versioned curated set: <workspace>/sets/NAME/vN/{rows.parquet,card.json}.

    NAME: set name; each select writes its next version (NAME@v1, @v2, ...).
    """
    from datakit.query import ReadOnlyError
    from datakit.sets import select as do_select
    from datakit.sets import selection_sql

    ws = _open(workspace, create=False)
    try:
        text, kind, recipe_name = selection_sql(recipe, where, sql)
        version = do_select(ws, name, text, recipe=recipe_name, kind=kind, params=_recipe_params(params))
    except ReadOnlyError as exc:
        fail(str(exc), 2)
    if as_json:
        card = version.card
        echo_json(
            {
                "set": f"{name}@v{version.version}",
                "path": str(version.path),
                **{k: v for k, v in card.items() if k != "manifest"},
            }
        )
        return
    click.echo(f"{name}@v{version.version}: {version.card['row_count']} rows -> {version.path}")


def _recipe_params(pairs: tuple[str, ...]) -> dict[str, float | str]:
    """`NAME=VALUE` pairs: a number where VALUE reads as one, else the text."""
    out: dict[str, float | str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--param")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            out[key.strip()] = value
    return out


@app.command("sets")
@workspace_option
@json_option("Print the cards as JSON.")
def sets_command(workspace: Path, as_json: bool) -> None:
    """List the curated sets: name, versions, rows, recipe, creation time."""
    from datakit.sets import list_sets

    found = list_sets(_open(workspace, create=False))
    if as_json:
        cards = [v.card for vs in found.values() for v in vs]
        echo_json([{k: c[k] for k in c if k != "manifest"} for c in cards])
        return
    rows = [("set", "version", "rows", "recipe", "created")]
    for set_name, versions in found.items():
        for v in versions:
            card = v.card
            recipe = card["recipe"]["name"] or f"--{card['recipe']['kind']}"
            rows.append((set_name, f"v{v.version}", str(card["row_count"]), recipe, card["created"]))
    from datakit.status import format_rows

    click.echo(format_rows(rows, right={2}))


@app.command()
@click.argument("name")
@click.option(
    "--format",
    "-f",
    "fmt",
    default="opensora",
    show_default=True,
    type=click.Choice(["opensora", "opensora-v1.0", "webdataset"]),
    help="opensora: Open-Sora 1.1+ table (CSV/Parquet); opensora-v1.0: header-less path,text,num_frames CSV; "
    "webdataset: tar shards.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="opensora: a .csv or .parquet file; opensora-v1.0: a .csv; webdataset: a folder.",
)
@click.option(
    "--root", type=click.Path(path_type=Path), help="Write paths relative to this folder (Open-Sora's root)."
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Write an empty export instead of failing when no row has a file and a caption.",
)
@click.option(
    "--image-format",
    type=click.Choice(["jpg", "png"]),
    default="jpg",
    show_default=True,
    help="Image files made for image sets (a video row's chosen frame) and resized images.",
)
@click.option(
    "--tokenizer",
    help="T5 tokenizer (name or folder) for text_len (default: DeepFloyd/t5-v1_1-xxl if cached).",
)
@click.option(
    "--cut/--no-cut",
    default=True,
    show_default=True,
    help="Cut the set's clips that have no clip file yet (both formats need files).",
)
@click.option("--short-side", type=int, help="Short side of newly cut clips (default: the source's).")
@click.option(
    "--fps", type=float, help="Frame rate of newly cut clips (frame picking; default: the source's)."
)
@click.option(
    "--shard-mb",
    type=float,
    default=1024,
    show_default=True,
    help="webdataset: shard size in MB (a shard closes once it reaches it).",
)
@click.option(
    "--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="Cut workers."
)
@workspace_option
@json_option()
def export(
    name: str,
    fmt: str,
    output: Path | None,
    root: Path | None,
    allow_empty: bool,
    image_format: str,
    tokenizer: str | None,
    cut: bool,
    short_side: int | None,
    fps: float | None,
    shard_mb: float,
    workers: int,
    workspace: Path,
    as_json: bool,
) -> None:
    """Export a curated set for training: Open-Sora's table or WebDataset shards (cutting clips first).

    NAME: set to export: NAME (latest version) or NAME@vN.
    """
    from datakit.export import export_set

    ws = _open(workspace, create=False)
    cut_options = {k: v for k, v in (("short_side", short_side), ("fps", fps)) if v is not None}
    result = export_set(
        ws,
        name,
        fmt,
        output,
        cut=cut,
        cut_options=cut_options,
        workers=workers,
        shard_bytes=int(shard_mb * 1e6),
        root=root,
        allow_empty=allow_empty,
        image_format=image_format,
        tokenizer=tokenizer,
    )
    if as_json:
        echo_json(result.as_dict())
        return
    click.echo(result.summary())


@app.command("attach-sql")
@workspace_option
def attach_sql(workspace: Path) -> None:
    """Print the SQL a plain DuckDB client runs first to read this workspace's views from any folder.

    The views in manifest.duckdb use paths relative to the workspace, so a moved or copied workspace
    reads its own files: `cd WS && duckdb manifest.duckdb` needs nothing, elsewhere paste these lines.
    """
    click.echo(_open(workspace, create=False).attach_sql())


@app.command()
@click.argument("output", type=click.Path(path_type=Path), required=False)
@click.option("--set", "set_name", help="Report on this set (NAME or NAME@vN) instead of all clips.")
@workspace_option
def report(output: Path | None, set_name: str | None, workspace: Path) -> None:
    """Write one HTML page: histograms, a contact sheet at score quantiles, captions, and each recipe's keep/drop counts.

    OUTPUT: HTML file to write (default: <workspace>/report.html).
    """
    from datakit.report import write_report

    ws = _open(workspace, create=False)
    path = write_report(ws, output or ws.root / "report.html", set_spec=set_name)
    click.echo(f"wrote {path}")


@app.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--workspace",
    "-w",
    type=click.Path(path_type=Path),
    help="Workspace (default: the one the run's set names).",
)
def lineage(run_dir: Path, workspace: Path | None) -> None:
    """Where a training run's data came from: run → set@version → recipe SQL → model keys of its scores and captions → sources."""
    from datakit.lineage import LineageError
    from datakit.lineage import lineage as lines

    try:
        click.echo("\n".join(lines(run_dir, _open(workspace, create=False) if workspace else None)))
    except LineageError as err:
        fail(str(err))


def main_group() -> click.Group:
    """The `datakit` click group: the commands above plus one command per stage (built on demand)."""
    return app


if __name__ == "__main__":
    app(prog_name="datakit")
