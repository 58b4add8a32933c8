"""Aesthetic stage throughput: the whole stage against the model alone on the same preprocessed frames.

Both sides use one stage instance, its model loaded once (the load is timed apart):
- model alone: every clip is prepared first (decode + CLIP preprocessing), then only
  `process_batch` (one CLIP call per batch + the head) is timed;
- whole stage: `run_stage` on a fresh workspace with the same clips: planning, prepare threads
  decoding ahead of the model (bounded queue), batches, commits; minus the model load.
The ratio says how much of the pipeline's work hides behind inference (target >= 0.9). On a CPU
the decoder threads and the model share the same cores, which a GPU run does not.

    python bench/bench_aesthetic.py                    # ViT-B-32 architecture, random weights, CPU
    python bench/bench_aesthetic.py --model tiny       # the tests' tiny CLIP
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_workspace(root: Path, videos: int) -> Path:
    from datakit.executors import run_stage
    from datakit.ingest import ingest
    from datakit.samples import SampleSpec, make_sample
    from datakit.stages.probe import ProbeStage
    from datakit.stages.scenes import SceneStage
    from datakit.workspace import Workspace

    for i in range(videos):
        make_sample(SampleSpec(f"b{i}", 320, 240, 24, "libx264", "mp4", [60, 60, 60, 60], seed=300 + i), root / "media")
    ws = Workspace(root / "ws")
    ingest(ws, [str(root / "media")])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    return ws.root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights) or 'tiny'")
    ap.add_argument("--videos", type=int, default=6, help="videos of 4 clips each")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prepare-threads", type=int, default=2)
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
        head = save_tiny_aesthetic_head(tmp / "head.pth")
        opts = {**models, "head": str(head), "batch_size": args.batch_size, "prepare_threads": args.prepare_threads}
        root = make_workspace(tmp / "a", args.videos)
        shutil.copytree(root, tmp / "b" / "ws")

        stage = AestheticStage(**opts)
        ws = Workspace(root)
        t0 = time.monotonic()
        stage.setup(WorkerContext.for_workspace(ws.root, stage.name))
        load_s = time.monotonic() - t0
        items = [stage.prepare(i) for i in plan(ws, stage)]
        n = len(items)
        stage.process_batch(items[: args.batch_size])  # warm-up
        t0 = time.monotonic()
        for k in range(0, n, args.batch_size):
            stage.process_batch(items[k : k + args.batch_size])
        model_s = time.monotonic() - t0

        t0 = time.monotonic()
        stats = run_stage(Workspace(tmp / "b" / "ws"), AestheticStage(**opts), progress=False)
        stage_s = time.monotonic() - t0 - load_s
        assert stats.statuses == {"ok": n}, stats.statuses
        frames = sum(len(i["pixels"]) for i in items)
        print(f"aesthetic on {n} clips ({frames} frames, 320x240 H.264), model {args.model} (random weights), "
              f"batch {args.batch_size}, {args.prepare_threads} prepare threads, torch threads "
              f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"  model alone (prepared frames): {n / model_s:.2f} clips/s ({frames / model_s:.1f} frames/s)")
        print(f"  whole stage (decode, preprocess, model, commits): {n / stage_s:.2f} clips/s "
              f"(model load {load_s:.1f} s excluded)")  # fmt: skip
        print(f"  ratio stage / model: {model_s / stage_s:.2f} (target >= 0.9)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
