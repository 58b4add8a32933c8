"""The end-to-end demo: generated sample videos through every datakit stage, then SQL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)


def demo(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Demo workspace directory.")] = Path("demo-workspace"),
    workers: Annotated[int, typer.Option("--workers", "-j", help="Parallel workers per stage.")] = 2,
    models: Annotated[bool, typer.Option(help="Also run text→video with tiny random models (smoke run).")] = True,
    train: Annotated[bool, typer.Option(help="Also train image → video → hq with tiny random models, then sample.")] = True,
    curate: Annotated[bool, typer.Option(help="Also score, dedup, caption, select the curated sets and write the report.")] = True,
) -> None:
    """Generate sample videos (and some bad inputs), then ingest, probe, detect scenes, cut clips,
    show the per-stage status and a SQL query over the manifest; then sample a video with tiny
    random models to show the model stack runs (its output is noise: no weights ship)."""
    from datakit.cli import print_table
    from datakit.pipeline import load_config, run_pipeline, status
    from datakit.workspace import Workspace
    from demo.samples import make_bad_inputs, make_demo_set

    samples = workspace / "samples"
    console.rule("[bold]1. sample videos (synthetic, with known cuts)")
    for truth in make_demo_set(samples):
        console.print(f"  {Path(truth.path).name}: {truth.num_frames} frames {truth.width}x{truth.height} {truth.codec}")
    make_bad_inputs(samples / "bad")
    console.print(f"  + bad inputs (empty, truncated, corrupt, not-a-video, audio-only, ...) in {samples / 'bad'}")

    console.rule("[bold]2. pipeline: ingest → probe → scenes → cut")
    ws = Workspace(workspace / "manifest")
    config = load_config(None)
    config["ingest"]["inputs"] = [str(samples)]
    for name in ("probe", "scenes", "cut"):
        config.setdefault(name, {})["workers"] = workers
    config["cut"].update(enabled=True, short_side=144)
    config["download"]["enabled"] = False  # the demo has no URLs (no network needed)
    run_pipeline(ws, config)

    console.rule("[bold]3. status")
    for row in status(ws):
        console.print(f"  {row['stage']:<9} ok={row['ok']:<5} pending={row['pending']:<5} retry={row['retry']:<4} error={row['error']}")

    console.rule("[bold]4. SQL over the manifest")
    sql = """
        SELECT v.source_kind, regexp_extract(v.path, '[^/]+$') AS file, v.status, v.width, v.height,
               v.num_frames, count(c.clip_id) AS clips, round(sum(c.end_s - c.start_s), 2) AS clip_seconds
        FROM videos v LEFT JOIN clips c USING (video_id)
        GROUP BY ALL ORDER BY v.status DESC, file
    """
    print_table(ws.arrow(sql), title="videos and their clips")
    errors = ws.arrow("SELECT regexp_extract(source, '[^/]+$') AS file, error FROM videos WHERE status = 'error' ORDER BY file")
    print_table(errors, title="inputs that became error rows")
    from datakit.preview import contact_sheet

    sheet = contact_sheet(ws, workspace / "clips_contact_sheet.png", max_clips=16)
    console.print(f"\nContact sheet of the clips (first, middle, last frame): {sheet}", highlight=False)
    console.print(
        f"Query it yourself (the views' paths are relative to the workspace): cd {ws.root} && python -c "
        "\"import duckdb; print(duckdb.connect('manifest.duckdb', read_only=True).sql('select * from clips limit 5'))\"",
        highlight=False,
    )
    console.print(f"or: python cli.py datakit query -w {ws.root} \"select * from clips limit 5\"", highlight=False)

    sets: dict[str, int] = {}
    if curate:
        sets = _curation(ws, workspace, workers)
    if models:
        _models_smoke_run(workspace)
    if train:
        _training_smoke_run(ws.root, workspace, sets)


def _curation(ws, workspace: Path, workers: int) -> dict[str, int]:
    """Scores, dedup, captions, text match, the three curated sets and the report (tiny RANDOM models)."""
    from datakit.captioning.tiny import build_tiny_qwen2vl
    from datakit.executors import run_stage
    from datakit.stages.caption import CaptionStage
    from demo.curation import curation_demo

    console.rule("[bold]5. curation: aesthetic, motion, dedup, captions, text match, sets, report (tiny RANDOM models)")
    folder = workspace / "curation"

    def caption() -> None:
        model = folder / "tiny-random-vlm"
        if not (model / "config.json").exists():
            build_tiny_qwen2vl(model)
        stage = CaptionStage(engine="transformers", model=str(model), frames=2, frame_size=56, max_tokens=24)
        console.print(run_stage(ws, stage, workers=1, progress=False).summary())

    report = curation_demo(ws, folder, console=console, caption=caption)
    console.print(f"  open {report} in a browser (random models: the scores and captions are noise)", highlight=False)
    from datakit.sets import list_sets

    return {name: versions[-1].card["row_count"] for name, versions in list_sets(ws).items() if versions}


def _models_smoke_run(workspace: Path) -> None:
    """Text -> video through STDiT + IDDPM + VAE + T5 with tiny RANDOM models (no weights ship)."""
    from models.sample_cli import sample
    from models.tiny import save_tiny_stdit, save_tiny_t5, save_tiny_vae_x8

    console.rule("[bold]6. models: text → video with tiny RANDOM models (a smoke run; the video is noise)")
    tiny = workspace / "tiny-random-models"
    tiny.mkdir(parents=True, exist_ok=True)
    vae, t5 = save_tiny_vae_x8(tiny / "vae"), save_tiny_t5(tiny / "t5")
    ckpt, config = save_tiny_stdit(tiny / "stdit.safetensors", tiny / "stdit.json")
    out = workspace / "samples-random-weights"
    sample(
        prompt=["a red ball bouncing on a beach"], ckpt=str(ckpt), out=out, vae=str(vae), text_encoder=str(t5),
        model=str(config), num_frames=8, height=64, width=64, steps=20, seed=0, fps=4, device="cpu",
        local_files_only=True,
    )  # fmt: skip
    console.print(
        f"  wrote {out}/ (mp4, GIF, contact sheet). These weights are random, so the video is noise: "
        "this checks that STDiT, IDDPM, the VAE and T5 run end to end. For real samples pass released "
        "weights: python cli.py sample --ckpt OpenSora-v1-HQ-16x256x256.pth ... (README, Models).",
        highlight=False,
    )


def _training_smoke_run(manifest: Path, workspace: Path, sets: dict[str, int]) -> None:
    """The three training stages on the demo's clips (tiny RANDOM models, one process), then a sample."""
    import json

    from models.sample_cli import sample
    from training.config import resolve_config
    from training.dist import shutdown
    from training.run import Source, launch

    console.rule("[bold]7. training: image → video → hq on the curated sets (tiny RANDOM models, one process)")
    runs, previous = workspace / "runs", None
    for stage, steps in (("image", 6), ("video", 4), ("hq", 4)):
        overrides = [f"model.tiny_dir={runs / 'tiny-random-models'}", "train.progress=false"]
        overrides += [f"train.max_steps={steps}"] + ([f"model.init_from={previous}"] if previous else [])
        run_dir = runs / stage
        # Each stage trains on its curated set; a set the random scores left empty falls back to all clips.
        source = Source(manifest, set_spec=stage) if sets.get(stage) else Source(manifest, select="select * from clips")
        console.print(f"  {stage:<5} from {'set ' + stage if source.set_spec else 'all clips (its set is empty)'}",
                      highlight=False)  # fmt: skip
        try:  # resume=True: a second demo run finds the finished runs and does nothing
            launch(resolve_config(stage, tiny=True, overrides=overrides), run_dir=run_dir, source=source,
                   resume=True)  # fmt: skip
        finally:
            shutdown()
        losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = f"{len(losses)} steps, loss {losses[0]:.3f} → {losses[-1]:.3f}"
        console.print(f"  {stage:<5} {summary}  ({run_dir})", highlight=False)
        previous = run_dir
    out = workspace / "samples-trained-tiny"
    tiny = runs / "tiny-random-models"
    sample(prompt=["shapes moving"], ckpt=str(previous), out=out, vae=str(tiny / "vae"), text_encoder=str(tiny / "t5"),
           steps=10, seed=0, fps=4, device="cpu", local_files_only=True, progress=False)  # fmt: skip
    console.print(
        f"  sampled {out}/ from the hq run's EMA weights (python cli.py sample --ckpt {previous}). A few CPU steps "
        "on tiny random models: noise again; README, Training, shows the real stages.",
        highlight=False,
    )
