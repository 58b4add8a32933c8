"""`datakit` command line: ingest, download, probe, scenes, cut, status, query, run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from datakit.workspace import Workspace, WorkspaceError, default_workspace

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Build, inspect and curate video manifests.")
out = Console(width=None if sys.stdout.isatty() else 160)

WorkspaceOpt = Annotated[
    Path,
    typer.Option("--workspace", "-w", envvar="DATAKIT_WORKSPACE", help="Workspace directory (env DATAKIT_WORKSPACE)."),
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", "-j", help="Parallel workers (processes; threads for download).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Process at most this many pending items.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-o", help="Stage option KEY=VALUE (repeatable; value parsed as JSON when possible)."),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option("--executor", help="local (processes/threads on this machine) or ray (Ray Data actors); default local."),
]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: start a local Ray).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Pipeline TOML; this stage's section gives options.")]


def _open(workspace: Path, create: bool = True) -> Workspace:
    try:
        return Workspace(workspace, create=create)
    except WorkspaceError as exc:
        raise typer.BadParameter(str(exc)) from None


def _parse_sets(pairs: list[str] | None) -> dict:
    opts = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    return opts


def _run_stage_command(
    name: str,
    workspace: Path,
    workers: int | None,
    limit: int | None,
    config: Path | None,
    options: dict,
    executor: str | None = None,
    ray_address: str | None = None,
) -> None:
    """Options: command line over the config file's section over the embedded defaults."""
    from datakit.pipeline import build_stage, load_config, run_settings
    from datakit.stage import run_stage

    ws = _open(workspace)
    opts, run = run_settings(load_config(config).get(name, {}))
    workers = workers or run["workers"]
    executor = executor or run["executor"]
    opts.update({k: v for k, v in options.items() if v is not None})
    try:
        stage = build_stage(name, ws, opts)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if executor not in ("local", "ray"):
        raise typer.BadParameter(f"--executor must be local or ray, not {executor!r}")
    stats = run_stage(ws, stage, workers=workers, limit=limit, executor=executor, ray_address=ray_address)
    out.print(stats.summary())


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
def download(
    workspace: WorkspaceOpt = default_workspace(),
    workers: WorkersOpt = None,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    timeout_s: Annotated[float | None, typer.Option(help="Connect/read timeout; a stalled body fails after it.")] = None,
    max_retries: Annotated[int | None, typer.Option(help="Attempts per URL within this run (backoff, Retry-After).")] = None,
    max_bytes: Annotated[int | None, typer.Option(help="Largest file to accept, in bytes.")] = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Download URL sources (HTTP with retries and resume; yt-dlp for site URLs)."""
    opts = dict(timeout_s=timeout_s, max_retries=max_retries, max_bytes=max_bytes) | _parse_sets(set_)
    _run_stage_command("download", workspace, workers, limit, config, opts, executor, ray_address)


@app.command()
def probe(
    workspace: WorkspaceOpt = default_workspace(),
    workers: WorkersOpt = None,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Read metadata with PyAV; unreadable files become error rows."""
    _run_stage_command("probe", workspace, workers, limit, config, _parse_sets(set_), executor, ray_address)


@app.command()
def scenes(
    workspace: WorkspaceOpt = default_workspace(),
    workers: WorkersOpt = None,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    detector: Annotated[str | None, typer.Option(help="adaptive (default) or content.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Detector threshold (adaptive 3.0, content 27).")] = None,
    min_clip_s: Annotated[float | None, typer.Option(help="Drop clips shorter than this.")] = None,
    max_clip_s: Annotated[float | None, typer.Option(help="Split scenes longer than this into windows.")] = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Detect scenes with PySceneDetect and write frame-exact clip spans."""
    opts = dict(detector=detector, threshold=threshold, min_clip_s=min_clip_s, max_clip_s=max_clip_s) | _parse_sets(set_)
    _run_stage_command("scenes", workspace, workers, limit, config, opts, executor, ray_address)


@app.command()
def cut(
    workspace: WorkspaceOpt = default_workspace(),
    workers: WorkersOpt = None,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    fps: Annotated[float | None, typer.Option(help="Target frame rate (default: the source's).")] = None,
    short_side: Annotated[int | None, typer.Option(help="Resize so the short side is this (default: keep).")] = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Extract frame-exact clip files (re-encoded H.264)."""
    opts = dict(fps=fps, short_side=short_side) | _parse_sets(set_)
    _run_stage_command("cut", workspace, workers, limit, config, opts, executor, ray_address)


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
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", help="Write to a file instead of stdout.")] = None,
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 40,
) -> None:
    """Run read-only SQL over the manifest (writes are refused)."""
    from datakit.query import ReadOnlyError, run_query, write_result

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
    except Exception as exc:  # DuckDB errors: show the message, not a traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if fmt != "table":
        write_result(result, fmt, output)
        return
    print_table(result, max_rows=max_rows)


def print_table(result, max_rows: int = 40, title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for name in result.column_names:
        table.add_column(name, overflow="fold")
    for row in result.slice(0, max_rows).to_pylist():
        table.add_row(*("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
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
    """Run ingest and every enabled stage in order, from a pipeline config."""
    from datakit.pipeline import load_config, run_pipeline

    cfg = load_config(config)
    cfg["ingest"]["inputs"] = list(cfg["ingest"].get("inputs", [])) + list(inputs or [])
    run_pipeline(_open(workspace), cfg, only=only)


@app.command()
def compact(workspace: WorkspaceOpt = default_workspace()) -> None:
    """Merge each table's part files into one (faster queries after many small runs)."""
    from manifests.schema import TABLES

    ws = _open(workspace, create=False)
    for name in TABLES:
        out.print(f"{name}: {ws.compact(name)} rows")


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
def samples(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the synthetic sample videos.")] = Path("samples"),
    bad: Annotated[bool, typer.Option(help="Also write a gallery of bad inputs (empty, corrupt, ...).")] = False,
) -> None:
    """Generate synthetic sample videos with known cuts (several codecs and sizes)."""
    from datakit.samples import make_bad_inputs, make_demo_set

    for truth in make_demo_set(out_dir):
        out.print(f"{truth.path}: {truth.num_frames} frames, cuts {truth.hard_cuts}, dissolves {truth.dissolves}")
    if bad:
        for name, path in make_bad_inputs(out_dir / "bad").items():
            out.print(f"bad input {name}: {path}", highlight=False)




if __name__ == "__main__":
    app()
