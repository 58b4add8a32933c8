"""The stage registry, per-stage status, and `run`: the stages in order from a TOML config."""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import fields
from pathlib import Path

from datakit.stage import Stage, StageStats, console, run_stage
from datakit.workspace import Workspace
from manifests.schema import TABLES

# name -> "module:Class"; imported lazily so that `datakit status` stays fast.
STAGES: dict[str, str] = {
    "download": "datakit.stages.download:DownloadStage",
    "probe": "datakit.stages.probe:ProbeStage",
    "scenes": "datakit.stages.scenes:SceneStage",
    "cut": "datakit.stages.cut:CutStage",
}

DEFAULT_CONFIG = Path(__file__).with_name("defaults.toml")


def stage_class(name: str) -> type[Stage]:
    try:
        module, cls = STAGES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
    return getattr(importlib.import_module(module), cls)


def build_stage(name: str, ws: Workspace, options: dict | None = None) -> Stage:
    """Construct a stage from config options, filling workspace paths it needs."""
    cls = stage_class(name)
    opts = dict(options or {})
    known = {f.name for f in fields(cls)}
    unknown = set(opts) - known
    if unknown:
        raise ValueError(f"unknown option(s) for stage {name}: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    if "media_dir" in known and not opts.get("media_dir"):
        opts["media_dir"] = str(ws.media_dir)
    if "out_dir" in known and not opts.get("out_dir"):
        opts["out_dir"] = str(ws.clips_dir)
    return cls(**opts)


def status(ws: Workspace) -> list[dict]:
    """Per stage: rows by status in its marker table, plus items pending (what a run would do)."""
    con = ws.connect()
    try:
        out = []
        ingest_counts = dict(con.execute("SELECT status, count(*) FROM sources GROUP BY ALL").fetchall())
        out.append({"stage": "ingest", "table": "sources", "ok": ingest_counts.get("ok", 0), "error": ingest_counts.get("error", 0), "retry": 0, "pending": 0})
        for name in STAGES:
            try:
                stage = build_stage(name, ws)
            except ImportError:
                continue  # stage not installed in this build
            table = stage.marker_table
            counts = dict(con.execute(f"SELECT status, count(*) FROM {table} GROUP BY ALL").fetchall())
            pending = con.execute(f"SELECT count(*) FROM ({stage.pending_sql()})").fetchone()[0]
            row = {"stage": name, "table": table, "ok": counts.get("ok", 0), "error": counts.get("error", 0),
                   "retry": counts.get("retry", 0), "pending": pending}  # fmt: skip
            out.append(row)
        clips = con.execute("SELECT count(*) FROM clip_spans").fetchone()[0] if "clip_spans" in TABLES else 0
        out.append({"stage": "clips", "table": "clip_spans", "ok": clips, "error": 0, "retry": 0, "pending": 0})
        return out
    finally:
        con.close()


def run_settings(section: dict) -> tuple[dict, dict]:
    """Split a config section into the stage's own options and how to run it."""
    opts = dict(section)
    run = {"enabled": opts.pop("enabled", True), "workers": int(opts.pop("workers", 1)),
           "executor": opts.pop("executor", "local")}  # fmt: skip
    return opts, run


def load_config(path: Path | None) -> dict:
    path = Path(path) if path else DEFAULT_CONFIG
    with open(path, "rb") as fh:
        config = tomllib.load(fh)
    base = path.parent
    ingest = config.get("ingest", {})
    # Relative inputs in a config file are relative to the file.
    ingest["inputs"] = [i if "://" in i or Path(i).is_absolute() else str(base / i) for i in ingest.get("inputs", [])]
    config["ingest"] = ingest
    return config


def run_pipeline(ws: Workspace, config: dict, *, only: list[str] | None = None, progress: bool = True) -> list[StageStats]:
    """Ingest the configured inputs, then run every enabled stage in registry order."""
    from datakit.ingest import ingest

    results = []
    inputs = config.get("ingest", {}).get("inputs", [])
    if inputs and (not only or "ingest" in only):
        console.print(ingest(ws, inputs).summary())
    for name in STAGES:
        if only and name not in only:
            continue
        opts, run = run_settings(config.get(name, {}))
        if not run["enabled"]:
            continue
        stage = build_stage(name, ws, opts)
        stats = run_stage(ws, stage, workers=run["workers"], progress=progress, executor=run["executor"])
        console.print(stats.summary())
        results.append(stats)
    return results
