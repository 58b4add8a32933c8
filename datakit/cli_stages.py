"""Stage commands generated from the stage registry: one command per stage, one option per field.

`datakit <stage> --help` lists the stage's options with the help text of their `option(...)`
declaration. Options come, highest first, from the command line (`--min-clip-s 3` or
`--set min_clip_s=3`), the `--config` file's section for the stage, and the stage's defaults.
Every option is validated before anything is planned or written: a typo exits with status 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Annotated

import typer

from datakit.registry import stages
from datakit.stage import OptionError, Stage


def _option_type(annotation):
    """The CLI type of a field (None-able so that 'not given' is distinguishable); None: --set only."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    return annotation if annotation in (bool, int, float, str) else None


def _field_parameter(f: dataclasses.Field, annotation) -> inspect.Parameter | None:
    ptype = _option_type(annotation)
    if ptype is None or not f.metadata.get("cli", True):
        return None  # lists and dicts: --set KEY=JSON
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
    if f.default is not dataclasses.MISSING:
        help_text += f" [default: {json.dumps(f.default)}]"
    decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if ptype is bool else [flag]
    option = typer.Option(*decls, help=help_text, show_default=False)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[ptype | None, option])  # fmt: skip


def _parse_sets(pairs: list[str]) -> dict:
    opts = {}
    for pair in pairs:
        if "=" not in pair:
            raise OptionError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    return opts


def _common_parameters() -> list[inspect.Parameter]:
    from datakit.workspace import DEFAULT_WORKSPACE

    def p(name, annotation, default=None):
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    return [
        p("workspace", Annotated[Path, typer.Option("--workspace", "-w", envvar="DATAKIT_WORKSPACE",
                                                    help="Workspace directory (env DATAKIT_WORKSPACE).")],  # fmt: skip
          Path(DEFAULT_WORKSPACE)),
        p("workers", Annotated[int | None, typer.Option("--workers", "-j", min=1,
                                                        help="Parallel workers (processes; threads for I/O stages).")]),  # fmt: skip
        p("limit", Annotated[int | None, typer.Option("--limit", min=0, help="Process at most this many pending items.")]),
        p("config", Annotated[Path | None, typer.Option("--config", "-c", help="Pipeline TOML; this stage's section gives options.")]),
        p("sets", Annotated[list[str] | None, typer.Option("--set", "-o", help="Stage option KEY=VALUE (repeatable; JSON values).")]),
        p("executor", Annotated[str | None, typer.Option("--executor", help="local (default) or ray.")]),
        p("ray_address", Annotated[str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS",
                                                            help="Ray cluster to join (default: a local Ray).")]),  # fmt: skip
        p("retry_errors", Annotated[bool, typer.Option("--retry-errors", help="Also re-run items whose last row is an error.")], False),
    ]


def run_stage_command(name: str, *, workspace: Path, workers: int | None, limit: int | None, config: Path | None,
                      sets: list[str] | None, executor: str | None, ray_address: str | None, retry_errors: bool,
                      **fields) -> None:  # fmt: skip
    from datakit.executors import run_stage
    from datakit.pipeline import apply_resources, build_stage, load_config, run_settings
    from datakit.workspace import Workspace, WorkspaceError

    try:
        section = load_config(config).get(name, {}) if config else {}
        opts, run = run_settings(name, section)
        opts.update(_parse_sets(sets or []))
        opts.update({k: v for k, v in fields.items() if v is not None})
        stage = apply_resources(build_stage(name, opts), run)
    except OptionError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        ws = Workspace(workspace)
    except WorkspaceError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    from datakit.executors.local import StageSetupError

    try:
        stats = run_stage(ws, stage, workers=workers or run["workers"], limit=limit,
                          executor=executor or run["executor"], ray_address=ray_address,
                          retry_errors=retry_errors)  # fmt: skip
    except StageSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    typer.echo(stats.summary())
    if failure := stats.failure():
        typer.echo(f"error: {failure}", err=True)
        sys.exit(1)


def _command_function(cls: type[Stage]):
    hints = typing.get_type_hints(cls)
    params = _common_parameters()
    for f in cls.options():
        param = _field_parameter(f, hints[f.name])
        if param is not None:
            params.append(param)

    def command(**kwargs) -> None:
        run_stage_command(cls.name, **kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = cls.name
    return command


def _help(cls: type[Stage]) -> str:
    doc = (cls.__doc__ or cls.name).strip().splitlines()[0]
    if not cls.run_by_default:
        doc += " (off in `datakit run` unless its config enables it)"
    if cls.resources.gpus:
        doc += f" Uses {cls.resources.gpus:g} GPU per worker when one is visible."
    return doc


def add_stage_commands(app: typer.Typer) -> None:
    """Register one command per registered stage (nested for cli_path like ("score", "aesthetic"))."""
    groups: dict[tuple[str, ...], typer.Typer] = {(): app}
    for cls in stages().values():
        path = cls.cli_path or (cls.name,)
        for depth in range(1, len(path)):
            if path[:depth] not in groups:
                sub = typer.Typer(no_args_is_help=True, add_completion=False)
                groups[path[:depth - 1]].add_typer(sub, name=path[depth - 1], help=f"{path[depth - 1]} stages.")
                groups[path[:depth]] = sub
        groups[path[:-1]].command(path[-1], help=_help(cls))(_command_function(cls))
