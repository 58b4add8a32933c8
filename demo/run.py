"""The end-to-end demo: generated sample videos and a Panda-70M-style table of captioned shots
through every datakit stage, the curated sets, then a VAE and three STDiT stages that learn."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)
SUMMARY = "demo_summary.json"


class Timer:
    """Seconds per demo part, printed at the end (and written to demo_summary.json)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start


def demo(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Demo workspace directory.")] = Path(
        "demo-workspace"
    ),
    workers: Annotated[int, typer.Option("--workers", "-j", help="Parallel workers per stage.")] = 2,
    train: Annotated[
        bool,
        typer.Option(
            help="Also train the VAE and image → video → hq STDiT on the curated sets, then sample."
        ),
    ] = True,
    curate: Annotated[
        bool, typer.Option(help="Also score, dedup, caption, select the curated sets and write the report.")
    ] = True,
    scale: Annotated[
        float, typer.Option(help="Multiply every training stage's steps (0.5: a quicker, weaker run).")
    ] = 1.0,
) -> None:
    """Generate sample videos (and bad inputs) and captioned shots with a Panda-70M-style table; ingest
    both, probe, detect scenes, cut; curate (tiny RANDOM CLIP and VLM: labelled); train a VAE and
    image → video → hq STDiT on the three curated sets; sample the hq run from its captions."""
    from datakit.cli import print_table
    from datakit.ingest import ingest
    from datakit.pipeline import load_config, run_pipeline, status
    from datakit.workspace import Workspace
    from demo.sample_videos import make_bad_inputs, make_demo_set, make_learnable_set

    timer, workspace = Timer(), workspace.resolve()
    _threads()
    samples = workspace / "samples"
    with timer.part("samples"):
        console.rule("[bold]1. sample videos (synthetic, with known cuts) and captioned shots")
        for truth in make_demo_set(samples):
            console.print(
                f"  {Path(truth.path).name}: {truth.num_frames} frames {truth.width}x{truth.height} {truth.codec}"
            )
        make_bad_inputs(samples / "bad")
        console.print(
            f"  + bad inputs (empty, truncated, corrupt, not-a-video, audio-only, ...) in {samples / 'bad'}"
        )
        table = make_learnable_set(workspace / "shots")
        console.print(
            f"  + {table}: shots with true captions, Panda-70M columns (videoID,url,timestamp,caption)",
            highlight=False,
        )

    with timer.part("ingest → probe → scenes → cut"):
        console.rule(
            "[bold]2. pipeline: ingest (files + the shots table as --format panda70m) → probe → scenes → cut"
        )
        ws = Workspace(workspace / "manifest")
        console.print(ingest(ws, [str(table)], "panda70m").summary())
        config = load_config(None)
        config["ingest"]["inputs"] = [str(samples)]
        for name in ("probe", "scenes", "cut"):
            config.setdefault(name, {})["workers"] = workers
        config["cut"].update(enabled=True, short_side=144)
        config["download"]["enabled"] = False  # the demo has no URLs (no network needed)
        run_pipeline(ws, config)

    console.rule("[bold]3. status")
    for row in status(ws):
        console.print(
            f"  {row['stage']:<9} ok={row['ok']:<5} pending={row['pending']:<5} retry={row['retry']:<4} error={row['error']}"
        )

    console.rule("[bold]4. SQL over the manifest")
    sql = """
        SELECT v.source_kind, regexp_extract(v.path, '[^/]+$') AS file, v.status, v.width, v.height,
               v.num_frames, count(c.clip_id) AS clips, round(sum(c.end_s - c.start_s), 2) AS clip_seconds
        FROM videos v LEFT JOIN clips c USING (video_id)
        GROUP BY ALL ORDER BY v.status DESC, file
    """
    print_table(ws.arrow(sql), title="videos and their clips")
    errors = ws.arrow(
        "SELECT regexp_extract(source, '[^/]+$') AS file, error FROM videos WHERE status = 'error' ORDER BY file"
    )
    print_table(errors, title="inputs that became error rows")
    from datakit.preview import contact_sheet

    sheet = contact_sheet(ws, workspace / "clips_contact_sheet.png", max_clips=16)
    console.print(f"\nContact sheet of the clips (first, middle, last frame): {sheet}", highlight=False)
    console.print(
        f"Query it yourself (the views' paths are relative to the workspace): cd {ws.root} && python -c "
        "\"import duckdb; print(duckdb.connect('manifest.duckdb', read_only=True).sql('select * from clips limit 5'))\"",
        highlight=False,
    )
    console.print(
        f'or: python cli.py datakit query -w {ws.root} "select * from clips limit 5"', highlight=False
    )

    summary: dict = {}
    if curate:
        with timer.part("curation"):
            summary["sets"] = _curation(ws, workspace, workers)
    if train and curate:
        from demo.learn import train_and_check

        summary.update(train_and_check(ws, workspace, timer, console, scale=scale))
    summary["seconds"] = {k: round(v, 1) for k, v in timer.parts.items()}
    summary["load_average"] = os.getloadavg()
    (workspace / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    console.rule("[bold]where the time went")
    for name, seconds in timer.parts.items():
        console.print(f"  {name:<32} {seconds:7.1f} s", highlight=False)
    console.print(
        f"  {'total':<32} {sum(timer.parts.values()):7.1f} s  (load average {os.getloadavg()[0]:.1f})",
        highlight=False,
    )


def _threads() -> None:
    """One torch thread per free core: on a busy machine, more threads than free cores spin and
    run many times slower than one."""
    import torch

    cores = len(os.sched_getaffinity(0))
    free = max(1, int(cores - os.getloadavg()[0] + 0.5))
    torch.set_num_threads(min(cores, free))


def _curation(ws, workspace: Path, workers: int) -> dict[str, int]:
    """Scores, dedup, captions, text match, the three curated sets and the report (tiny RANDOM models)."""
    from datakit.captioning.tiny import build_tiny_qwen2vl
    from datakit.executors import run_stage
    from datakit.stages.caption import CaptionStage
    from demo.curation import curation_demo

    console.rule(
        "[bold]5. curation: aesthetic, motion, dedup, captions, text match, sets, report (tiny RANDOM models)"
    )
    folder = workspace / "curation"

    def caption() -> None:
        model = folder / "tiny-random-vlm"
        if not (model / "config.json").exists():
            build_tiny_qwen2vl(model)
        stage = CaptionStage(engine="transformers", model=str(model), frames=2, frame_size=56, max_tokens=24)
        console.print(run_stage(ws, stage, workers=1, progress=False).summary())
        console.print(
            "  (random VLM: its captions are noise; the shots' provided captions come first)", highlight=False
        )

    report = curation_demo(ws, folder, console=console, caption=caption)
    console.print(
        f"  open {report} in a browser (random models: the scores and VLM captions are noise)",
        highlight=False,
    )
    from datakit.sets import list_sets

    return {name: versions[-1].card["row_count"] for name, versions in list_sets(ws).items() if versions}
