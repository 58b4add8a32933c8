"""Trainer benchmarks on CPU: the data loader's span decoding against whole-file decoding, and
whole training steps (tiny and a mid-size preset) through the real trainer.

1. Loader: clips/s for 16 frames at interval 3 resized to 256×256, read as the trainer reads them
   (`training.data.ClipDataset`: seek, decode the 46-frame span only) and as Open-Sora 1.0 did
   (decode the whole file to RGB, then take the window), from 20-60 s H.264 sources. One process;
   the per-worker rate also gives the loader workers a GPU step needs.
2. Steps: `training.run.launch` in this process (one rank, gloo) on a generated workspace; median
   step time (samples/s from it) and data-wait fraction over the steps after the first two.
   Parts `steps` (tiny) and `mid`.
3. Feature cache (`features`): `datakit features` over the tiny run's frozen rows (clips/s
   encoded), then the same tiny run with `data.source=features` (no decoding, VAE or T5 in the step).
4. `encode`: an SD-sized VAE encoding 256×256 frames against reading their cached posterior.

    .venv/bin/python bench/bench_train.py [--clips 24] [--steps 12] [--parts loader,steps,mid,features,encode]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = [  # (name, width, height, fps, seconds)
    ("src20s_640x360", 640, 360, 24, 20),
    ("src40s_640x360", 640, 360, 24, 40),
    ("src60s_640x360", 640, 360, 24, 60),
]


def make_sources(out: Path) -> list[dict]:
    from demo.sample_videos import SampleSpec, make_sample

    rows = []
    for name, w, h, fps, seconds in SOURCES:
        scenes = [fps * 10] * (seconds // 10)
        truth = make_sample(SampleSpec(name, w, h, fps, "libx264", "mp4", scenes, seed=len(rows)), out)
        rows.append(dict(path=truth.path, frames=truth.num_frames, width=w, height=h, fps=fps))
    return rows


def whole_file_clip(path: str, indices: list[int], size: int) -> np.ndarray:
    """Open-Sora 1.0's way: decode every frame of the file to RGB, then take the window."""
    import av

    from training.data import resize_crop

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack([resize_crop(frames[i], size, size) for i in indices])


def bench_loader(sources: list[dict], n_clips: int) -> dict:
    from training.config import DataConfig
    from training.data import ClipDataset, SampleKey, window_frames

    cfg = DataConfig(num_frames=[16], frame_interval=3, resolution=[256], aspect_ratios=["1:1"])
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_clips):
        src = sources[i % len(sources)]
        start = int(rng.integers(0, src["frames"] - 100))
        rows.append(
            dict(
                clip_id=f"c{i}",
                source_path=src["path"],
                path=None,
                start_frame=start,
                end_frame=start + 100,
                width=src["width"],
                height=src["height"],
                caption="",
            )
        )
    ds = ClipDataset(rows, cfg, multiple=16, seed=0)
    t0 = time.perf_counter()
    for i in range(n_clips):
        assert ds[SampleKey(i, 0)]["video"].shape == (3, 16, 256, 256)
    span = n_clips / (time.perf_counter() - t0)
    n_whole = max(3, n_clips // 4)  # whole-file decoding is slow: fewer clips measure it well enough
    t0 = time.perf_counter()
    for i in range(n_whole):
        r = rows[i]
        idx = window_frames(r["start_frame"], r["end_frame"], 16, 3, np.random.default_rng([0, 0, i]))
        whole_file_clip(r["source_path"], idx, 256)
    whole = n_whole / (time.perf_counter() - t0)
    return {"span_clips_per_s": span, "whole_file_clips_per_s": whole, "speedup": span / whole}


def make_workspace(root: Path) -> Path:
    """Three short videos of three shapes, scanned into a datakit workspace with the CLI."""
    from demo.sample_videos import SampleSpec, make_sample

    specs = [
        SampleSpec(f"v{i}", w, h, 24, "libx264", "mp4", [72, 72], seed=40 + i)
        for i, (w, h) in enumerate([(320, 180), (320, 240), (240, 320)])
    ]
    for spec in specs:
        make_sample(spec, root / "videos")
    ws = root / "ws"
    for args in (["ingest", str(root / "videos")], ["probe"], ["scenes"]):
        subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "datakit", args[0], "-w", str(ws), *args[1:]],
            check=True,
            capture_output=True,
        )
    return ws


def bench_steps(ws: Path, root: Path, name: str, stage: str, steps: int, overrides: list[str]) -> dict:
    from training.config import resolve_config
    from training.dist import shutdown
    from training.run import Source, launch

    run = root / name
    base = [
        f"model.tiny_dir={root / 'tiny'}",
        "train.progress=false",
        f"train.max_steps={steps}",
        f"train.ckpt_every={steps}",
        "train.val_every=100000",
        "data.val_fraction=0",
    ]
    cfg = resolve_config(stage, tiny=True, overrides=base + overrides)
    try:
        launch(cfg, run_dir=run, source=Source(ws, select="select * from clips"), resume=False)
    finally:
        shutdown()
    m = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][2:]
    step_s = statistics.median(r["step_time"] for r in m)  # the median: robust to a busy shared machine
    return {
        "step_s": step_s,
        "samples_per_s": m[0]["samples_per_s"] * m[0]["step_time"] / step_s,  # samples per step / step_s
        "data_wait": sum(r["data_wait"] * r["step_time"] for r in m) / sum(r["step_time"] for r in m),
    }


def bench_features(ws: Path, root: Path, steps: int) -> tuple[dict, dict]:
    """Cache the tiny run's rows (`run0`), then train the same stage from the cache."""
    from datakit.executors import run_stage
    from datakit.workspace import Workspace
    from training.features_stage import FeaturesStage

    stage = FeaturesStage(
        selection=str(root / "run0"),
        train_stage="video",
        preset="tiny",
        overrides=[f"model.tiny_dir={root / 'tiny'}"],
    )
    t0 = time.perf_counter()
    stats = run_stage(Workspace(ws, create=False), stage, progress=False)
    cache = {"clips": stats.processed, "clips_per_s": stats.processed / (time.perf_counter() - t0)}
    return cache, bench_steps(ws, root, "run-features", "video", steps, ["data.source=features"])


def bench_encode_vs_cache(root: Path, frames: int = 4) -> dict:
    """What the cache takes out of a real-size step: an SD-sized VAE (random weights: the cost is the
    architecture's) encoding `frames` 256×256 frames, against reading a cached entry (posterior and
    a 60-token T5-XXL-wide caption) from a shard and drawing the latents. Per frame; T5-XXL itself
    is left out (too large for this machine)."""
    import torch
    from diffusers.models import AutoencoderKL

    from models.vae import VideoAutoencoderKL
    from training.features import read_entry, sample_latents, write_shard

    torch.manual_seed(0)
    sd = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=256,
    )
    sd.save_pretrained(root / "sd-vae")
    vae = VideoAutoencoderKL(str(root / "sd-vae"))
    video = torch.rand(1, 3, frames, 256, 256) * 2 - 1
    t0 = time.perf_counter()
    mean, std = vae.posterior(video)
    encode = (time.perf_counter() - t0) / frames
    mask = torch.zeros(120, dtype=torch.uint8)
    mask[:60] = 1
    entry = {"mean": mean[0].clone(), "std": std[0].clone(), "text": torch.randn(60, 4096), "mask": mask}
    write_shard(root / "shard.safetensors", [entry], {})
    t0 = time.perf_counter()
    for _ in range(20):
        cached = read_entry(root / "shard.safetensors", 0)
        sample_latents(cached["mean"][None], cached["std"][None], torch.Generator().manual_seed(0))
    return {"encode_s_per_frame": encode, "cache_s_per_frame": (time.perf_counter() - t0) / 20 / frames}


PARTS = ("loader", "steps", "mid", "features", "encode")


def print_loader(n_clips: int, root: Path) -> None:
    print(f"sources: {', '.join(f'{s[0]} ({s[4]} s)' for s in SOURCES)}")
    t0 = time.perf_counter()
    sources = make_sources(root / "sources")
    print(f"  generated in {time.perf_counter() - t0:.0f} s")
    loader = bench_loader(sources, n_clips)
    print("loader, 16 frames at interval 3 → 256×256, one process:")
    print(f"  span decoding (trainer):      {loader['span_clips_per_s']:.2f} clips/s")
    print(f"  whole-file decoding (1.0):    {loader['whole_file_clips_per_s']:.2f} clips/s")
    print(f"  speedup:                      {loader['speedup']:.1f}x")
    for gpu_rate in (8.4, 10.5):
        workers = math.ceil(gpu_rate / loader["span_clips_per_s"])
        print(
            f"  loader workers to feed {gpu_rate} samples/s (XL/2 16×256 per GPU): {workers} "
            "(at this CPU's per-core rate)"
        )


def print_steps(label: str, r: dict) -> None:
    print(
        f"{label}: {r['step_s']:.3f} s/step, {r['samples_per_s']:.2f} samples/s, "
        f"data wait {100 * r['data_wait']:.1f}% of the step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (features needs steps)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS) or ("features" in parts and "steps" not in parts):
        parser.error(f"--parts: a subset of {','.join(PARTS)}; features needs steps")
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        if "loader" in parts:
            print_loader(args.clips, root)
        if parts & {"steps", "mid"}:
            ws = make_workspace(root)
        online = None
        if "steps" in parts:
            online = bench_steps(ws, root, "run0", "video", args.steps, [])
            print_steps("tiny video (hidden 32, depth 2; 4×64 px, batch 2), online", online)
        if "features" in parts:
            cache, cached = bench_features(ws, root, args.steps)
            print(
                f"feature cache for it: {cache['clips']} clips at {cache['clips_per_s']:.2f} clips/s "
                "(decode + VAE + T5, one process)"
            )
            print_steps("tiny video from the feature cache", cached)
            print(f"  step time from the cache: {cached['step_s'] / online['step_s']:.2f}x the online step")
        if "encode" in parts:
            r = bench_encode_vs_cache(root)
            print(
                f"SD-sized VAE encode at 256×256, online: {r['encode_s_per_frame']:.2f} s/frame "
                f"({16 * r['encode_s_per_frame']:.1f} s per 16-frame clip); from the cache: "
                f"{1000 * r['cache_s_per_frame']:.2f} ms/frame"
            )
        if "mid" in parts:
            overrides = [
                "model.stdit_args={hidden_size=384, depth=4, num_heads=6}",
                "data.num_frames=[8]",
                "data.resolution=[128]",
                "data.frame_interval=2",
            ]
            print_steps(
                "mid video (hidden 384, depth 4; 8×128 px, batch 2)",
                bench_steps(ws, root, "run-mid", "video", args.steps, overrides),
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
