"""Building stages from options, per-stage status, and `run`: the stages in order from a TOML config."""

from __future__ import annotations

import tomllib
from pathlib import Path

from datakit.executors import EXECUTORS, StageStats, run_stage
from datakit.registry import stage_class, stages
from datakit.stage import OptionError, Resources, Stage
from datakit.workspace import Workspace

DEFAULT_CONFIG = Path(__file__).with_name("defaults.toml")
RUN_KEYS = ("enabled", "workers", "executor", "cpus", "gpus")  # how to run a stage, not its options


def build_stage(name: str, options: dict | None = None) -> Stage:
    """A validated stage from config options; raises OptionError naming the bad option."""
    cls = stage_class(name)
    opts = dict(options or {})
    known = {f.name for f in cls.options()}
    unknown = set(opts) - known
    if unknown:
        import difflib

        hints = [
            f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, known, 1)) else u
            for u in sorted(unknown)
        ]
        raise OptionError(
            f"unknown option(s) for stage {name}: {', '.join(hints)}; known: {', '.join(sorted(known))}"
        )
    try:
        stage = cls(**opts)
    except TypeError as exc:
        raise OptionError(f"{name}: {exc}") from None
    stage.validate()
    return stage


def run_settings(name: str, section: dict) -> tuple[dict, dict]:
    """Split a config section into the stage's own options and how to run it."""
    cls = stage_class(name)
    opts = dict(section)
    run = {
        "enabled": opts.pop("enabled", cls.run_by_default),
        "workers": opts.pop("workers", cls.default_workers),
        "executor": opts.pop("executor", "local"),
        "cpus": opts.pop("cpus", None),
        "gpus": opts.pop("gpus", None),
    }
    if not isinstance(run["workers"], int) or isinstance(run["workers"], bool) or run["workers"] < 1:
        raise OptionError(f"{name}: workers must be a positive integer, got {run['workers']!r}")
    if run["executor"] not in EXECUTORS:
        raise OptionError(f"{name}: executor must be one of {', '.join(EXECUTORS)}, not {run['executor']!r}")
    if not isinstance(run["enabled"], bool):
        raise OptionError(f"{name}: enabled must be true or false, got {run['enabled']!r}")
    for key in ("cpus", "gpus"):
        value = run[key]
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
            raise OptionError(f"{name}: {key} must be a number >= 0, got {value!r}")
    return opts, run


def apply_resources(stage: Stage, run: dict) -> Stage:
    """Config `cpus`/`gpus` override the stage's declared resources (e.g. fractional GPUs)."""
    if run.get("cpus") is not None or run.get("gpus") is not None:
        base = type(stage).resources
        stage.resources = Resources(
            cpus=float(run["cpus"] if run.get("cpus") is not None else base.cpus),
            gpus=float(run["gpus"] if run.get("gpus") is not None else base.gpus),
        )
    return stage


def status(ws: Workspace, *, defaults: bool = False) -> list[dict]:
    """Per stage: rows by status in its marker table, plus items pending (one query: datakit.status)."""
    from datakit.status import status_rows

    return status_rows(ws, defaults=defaults)


def load_config(path: Path | None) -> dict:
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except FileNotFoundError:
        raise OptionError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(config) - {"ingest", *stages()}
    if unknown:
        raise OptionError(
            f"config {path}: unknown section(s) {sorted(unknown)}; sections: ingest, {', '.join(stages())}"
        )
    base = path.parent
    ingest = config.get("ingest", {})
    # Relative inputs in a config file are relative to the file.
    ingest["inputs"] = [
        i if "://" in i or Path(i).is_absolute() else str(base / i) for i in ingest.get("inputs", [])
    ]
    config["ingest"] = ingest
    return config


def plan_pipeline(config: dict, only: list[str] | None = None) -> list[tuple[Stage, dict]]:
    """Every enabled stage with its run settings, built and validated before anything runs."""
    planned = []
    for name in stages():
        if only and name not in only:
            continue
        opts, run = run_settings(name, config.get(name, {}))
        if not run["enabled"]:
            continue
        planned.append((apply_resources(build_stage(name, opts), run), run))
    return planned


def run_pipeline(
    ws: Workspace, config: dict, *, only: list[str] | None = None, progress: bool = True
) -> list[StageStats]:
    """Ingest the configured inputs, then run every enabled stage in registry order."""
    from rich.console import Console

    from datakit.ingest import ingest

    console = Console(stderr=True)
    planned = plan_pipeline(config, only)  # every option is checked before the first stage runs
    results = []
    section = config.get("ingest", {})
    inputs = section.get("inputs", [])
    if inputs and (not only or "ingest" in only):
        from datakit.table_import import TableImportError

        try:  # format / columns: metadata tables (datakit.table_import), checked before anything is written
            console.print(ingest(ws, inputs, section.get("format"), section.get("columns")).summary())
        except TableImportError as exc:
            raise OptionError(f"[ingest]: {exc}") from None
    for stage, run in planned:
        stats = run_stage(ws, stage, workers=run["workers"], progress=progress, executor=run["executor"])
        console.print(stats.summary())
        results.append(stats)
    return results


def render_default_config() -> str:
    """The default pipeline config as TOML: run settings set, every option shown (commented) with its help."""
    import dataclasses
    import json

    lines = [
        "# datakit pipeline config (generated by `datakit config`; every stage's options with their defaults).",
        "# Uncomment and edit a key to change it; `datakit run --config FILE` reads it, and",
        "# `datakit <stage> --config FILE` reads that stage's section. Relative inputs are relative to this file.",
        "",
        "[ingest]",
        "inputs = []  # files, directories, URL lists (.txt/.csv/.parquet), URLs or dataset metadata tables",
        '# format = "panda70m"  # tables are metadata of: panda70m, webvid, internvid, opensora or auto',
        '# columns = { url = "contentUrl", caption = "name" }  # field -> column (url, id, spans, start, end, caption, score.NAME)',
    ]
    for name, cls in stages().items():
        lines += ["", f"[{name}]", f"# {(cls.__doc__ or '').strip().splitlines()[0]}"]
        lines.append(f"enabled = {'true' if cls.run_by_default else 'false'}")
        lines.append(f"workers = {cls.default_workers}")
        lines.append('# executor = "local"  # or "ray"')
        for f in cls.options():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if default is None:
                lines.append(f"# {f.name} =  # {f.metadata.get('help', '')} (default: unset)")
            else:
                lines.append(f"# {f.name} = {json.dumps(default)}  # {f.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_default_config(), end="")
