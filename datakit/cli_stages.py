"""Stage commands generated from the stage registry: one click command per stage, one option per field.

`datakit <stage> --help` lists the stage's options with the help text of their `option(...)`
declaration. Options come, highest first, from the command line (`--min-clip-s 3` or
`-o min_clip_s=3`), the `--config` file's section for the stage, and the stage's defaults.
Every option is validated before anything is planned or written: a typo exits with status 2.
`--set KEY=VALUE` is the old spelling of `-o` (kept for one release; `--set` now always names a
curated set elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

import click

from datakit.stage import OptionError, Stage

_CLICK_TYPES = {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}


def _option_type(annotation):
    """The CLI type of a field; None: only through -o KEY=JSON (lists, dicts)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    return annotation if annotation in _CLICK_TYPES else None


def _field_option(f: dataclasses.Field, annotation) -> click.Option | None:
    ptype = _option_type(annotation)
    if ptype is None or not f.metadata.get("cli", True):
        return None
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
    if f.default is not dataclasses.MISSING:
        help_text += f" [default: {json.dumps(f.default)}]"
    decl = f"{flag}/--no-{f.name.replace('_', '-')}" if ptype is bool else flag
    return click.Option([decl, f.name], type=_CLICK_TYPES[ptype], default=None, help=help_text)


def parse_options(pairs: typing.Iterable[str], flag: str = "-o") -> dict:
    """KEY=VALUE pairs; values are JSON when they parse as JSON, else strings."""
    opts = {}
    for pair in pairs:
        if "=" not in pair:
            raise OptionError(f"{flag} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    return opts


def _common_options() -> list[click.Option]:
    from datakit.workspace import DEFAULT_WORKSPACE

    return [
        click.Option(
            ["--workspace", "-w", "workspace"],
            envvar="DATAKIT_WORKSPACE",
            type=click.Path(path_type=Path),
            default=DEFAULT_WORKSPACE,
            show_default=True,
            help="Workspace directory (env DATAKIT_WORKSPACE).",
        ),
        click.Option(
            ["--workers", "-j", "workers"],
            type=click.IntRange(min=1),
            help="Parallel workers (processes; threads for I/O stages).",
        ),
        click.Option(
            ["--limit", "limit"], type=click.IntRange(min=0), help="Process at most this many pending items."
        ),
        click.Option(
            ["--config", "-c", "config"],
            type=click.Path(path_type=Path),
            help="Pipeline TOML; this stage's section gives options.",
        ),
        click.Option(
            ["--option", "-o", "options"],
            multiple=True,
            metavar="KEY=VALUE",
            help="Stage option KEY=VALUE (repeatable; JSON values).",
        ),
        click.Option(
            ["--set", "old_options"],
            multiple=True,
            hidden=True,
            help="Deprecated spelling of -o/--option KEY=VALUE.",
        ),
        click.Option(["--executor", "executor"], help="local (default) or ray."),
        click.Option(
            ["--ray-address", "ray_address"],
            envvar="RAY_ADDRESS",
            help="Ray cluster to join (default: a local Ray).",
        ),
        click.Option(
            ["--retry-errors", "retry_errors"],
            is_flag=True,
            help="Also re-run items whose last row is an error.",
        ),
    ]


def run_stage_command(
    name: str,
    *,
    workspace: Path,
    workers: int | None,
    limit: int | None,
    config: Path | None,
    options: tuple[str, ...] = (),
    old_options: tuple[str, ...] = (),
    executor: str | None = None,
    ray_address: str | None = None,
    retry_errors: bool = False,
    **fields,
) -> None:
    from datakit.executors import run_stage
    from datakit.pipeline import apply_resources, build_stage, load_config, run_settings
    from datakit.workspace import Workspace, WorkspaceError

    if old_options:
        click.echo(
            "warning: --set KEY=VALUE for stage options is deprecated; use -o/--option KEY=VALUE "
            "(--set will name a curated set only)",
            err=True,
        )
    try:
        section = load_config(config).get(name, {}) if config else {}
        opts, run = run_settings(name, section)
        opts.update(parse_options(old_options, "--set"))
        opts.update(parse_options(options))
        opts.update({k: v for k, v in fields.items() if v is not None})
        stage = apply_resources(build_stage(name, opts), run)
    except OptionError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        ws = Workspace(workspace)
    except WorkspaceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    from datakit.executors import StageSetupError

    try:
        stats = run_stage(
            ws,
            stage,
            workers=workers or run["workers"],
            limit=limit,
            executor=executor or run["executor"],
            ray_address=ray_address,
            retry_errors=retry_errors,
        )
    except StageSetupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(stats.summary())
    if failure := stats.failure():
        click.echo(f"error: {failure}", err=True)
        sys.exit(1)


def stage_command(cls: type[Stage], command_name: str) -> click.Command:
    hints = typing.get_type_hints(cls)
    params: list[click.Parameter] = _common_options()
    for f in cls.options():
        option = _field_option(f, hints[f.name])
        if option is not None:
            params.append(option)

    def callback(**kwargs) -> None:
        run_stage_command(cls.name, **kwargs)

    return click.Command(command_name, callback=callback, params=params, help=_help(cls))


def _help(cls: type[Stage]) -> str:
    doc = (cls.__doc__ or cls.name).strip().splitlines()[0]
    if not cls.run_by_default:
        doc += " (off in `datakit run` unless its config enables it)"
    if cls.resources.gpus:
        doc += f" Uses {cls.resources.gpus:g} GPU per worker when one is visible."
    return doc


def stage_commands() -> dict[str, click.Command]:
    """Top-level name -> command, one per registered stage (nested groups for cli_path like ("score", "aesthetic"))."""
    from datakit.registry import broken_lines, stages

    for line in broken_lines():  # the other stages and commands still work
        click.echo(f"warning: {line}", err=True)
    top: dict[str, click.Command] = {}
    for cls in stages().values():
        path = cls.cli_path or (cls.name,)
        siblings = top
        for depth, part in enumerate(path[:-1]):
            group = siblings.get(part)
            if group is None:
                group = click.Group(part, no_args_is_help=True, help=f"{' '.join(path[: depth + 1])} stages.")
                siblings[part] = group
            siblings = group.commands
        siblings[path[-1]] = stage_command(cls, path[-1])
    return top
