"""Aesthetic stage throughput: the whole stage against the model alone on the same preprocessed frames.

Both sides use the same options; model loads are not counted:
- model alone: every clip is prepared first (decode + CLIP preprocessing), then only
  `process_batch` (one CLIP call per batch + the head) is timed;
- whole stage: `run_stage` on a fresh copy of the workspace: planning, prepare threads decoding
  ahead of the model (bounded queue), batches, commits; minus the run's model load.
The two alternate `--repeats` times and the medians are compared (a shared machine's load drifts).
The ratio says how much of the pipeline's work hides behind inference (target >= 0.9). On a CPU
the decoder threads and the model share the same cores, which a GPU run does not.

    python bench/bench_aesthetic.py                    # ViT-B-32 architecture, random weights, CPU
    python bench/bench_aesthetic.py --model tiny       # the tests' tiny CLIP
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_workspace(root: Path, videos: int) -> Path:
    from datakit.executors import run_stage
    from datakit.ingest import ingest
    from datakit.stages.probe import ProbeStage
    from datakit.stages.scenes import SceneStage
    from datakit.workspace import Workspace
    from demo.sample_videos import SampleSpec, make_sample

    for i in range(videos):
        make_sample(
            SampleSpec(f"b{i}", 320, 240, 24, "libx264", "mp4", [60, 60, 60, 60], seed=300 + i),
            root / "media",
        )
    ws = Workspace(root / "ws")
    ingest(ws, [str(root / "media")])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    return ws.root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights) or 'tiny'")
    ap.add_argument("--videos", type=int, default=4, help="videos of 4 clips each")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prepare-threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each measure (median)")
    args = ap.parse_args()

    import torch

    from datakit.clip_models import save_tiny_aesthetic_head, save_tiny_clip
    from datakit.executors import plan, run_stage
    from datakit.stage import WorkerContext
    from datakit.stages.aesthetic import AestheticStage
    from datakit.workspace import Workspace

    tmp = Path(tempfile.mkdtemp(prefix="bench-aesthetic-"))
    try:
        models = {"model": args.model, "pretrained": None}
        if args.model == "tiny":
            config, weights = save_tiny_clip(tmp / "tiny")
            models = {"model": str(config), "pretrained": str(weights)}
        import open_clip

        dim = open_clip.get_model_config(Path(models["model"]).stem if args.model == "tiny" else args.model)[
            "embed_dim"
        ]
        head = save_tiny_aesthetic_head(
            tmp / "head.pth", in_features=dim
        )  # the LAION layout on this CLIP's size
        opts = {
            **models,
            "head": str(head),
            "batch_size": args.batch_size,
            "prepare_threads": args.prepare_threads,
        }
        root = make_workspace(tmp / "a", args.videos)
        stage = AestheticStage(**opts)
        torch.manual_seed(0)  # random weights: the same ones on both sides
        stage.setup(WorkerContext.for_workspace(root, stage.name))
        items = [stage.prepare(i) for i in plan(Workspace(root), stage)]
        n, frames = len(items), sum(len(i["pixels"]) for i in items)
        stage.process_batch(items[: args.batch_size])  # warm-up

        def model_alone() -> float:
            t0 = time.monotonic()
            for k in range(0, n, args.batch_size):
                stage.process_batch(items[k : k + args.batch_size])
            return time.monotonic() - t0

        def whole_stage(run: int) -> tuple[float, float]:
            """(seconds without the model load, the load) of run_stage on a fresh copy of the workspace."""
            ws = Workspace(shutil.copytree(root, tmp / f"run{run}" / "ws"))
            whole, loads = AestheticStage(**opts), []
            setup = whole.setup

            def timed_setup(ctx) -> None:
                t = time.monotonic()
                torch.manual_seed(0)
                setup(ctx)
                loads.append(time.monotonic() - t)

            whole.setup = timed_setup  # without a GPU the stage runs in this process
            t0 = time.monotonic()
            stats = run_stage(ws, whole, progress=False)
            assert stats.statuses == {"ok": n}, stats.statuses
            return time.monotonic() - t0 - sum(loads), sum(loads)

        # Alternate the two measures, so that a shared machine's load changes hit both alike.
        model_runs, stage_runs = [], []
        for run in range(args.repeats):
            model_runs.append(model_alone())
            stage_runs.append(whole_stage(run)[0])
        model_s, stage_s = statistics.median(model_runs), statistics.median(stage_runs)
        print(
            f"aesthetic on {n} clips ({frames} frames, 320x240 H.264), model {args.model} (random weights), "
            f"batch {args.batch_size}, {args.prepare_threads} prepare threads, torch threads "
            f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, median of {args.repeats}"
        )
        print(f"  model alone (prepared frames): {n / model_s:.2f} clips/s ({frames / model_s:.1f} frames/s)")
        print(f"  whole stage (decode, preprocess, model, commits; no model load): {n / stage_s:.2f} clips/s")
        print(
            f"  ratio stage / model: {model_s / stage_s:.2f} (target >= 0.9); "
            f"per run: {', '.join(f'{m / s:.2f}' for m, s in zip(model_runs, stage_runs, strict=True))}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
