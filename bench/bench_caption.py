"""Captioning throughput: `datakit caption --engine vllm` against vLLM's own offline engine, and
against the transformers engine, on the same tiny random Qwen2-VL, clips, frames and prompts (CPU).

    .venv/bin/python bench/bench_caption.py [--clips 64] [--frames 4] [--max-tokens 64] [--no-vllm]

Output tokens/s are counted over generation only: from the end of the stage's setup (the vLLM
server is up, the model loaded) to the end of its last model call, which includes frame decoding
in the prepare threads, the HTTP round trips and the row bookkeeping; and over the one
`LLM.chat` call of the offline baseline (bench/vllm_offline.py, run in the vLLM environment on
the very requests the stage sends, built before its timer starts). A second stage run with the
frames decoded beforehand separates the serving path (HTTP, client, bookkeeping) from frame
decoding, which on a 2-core CPU competes with generation for the same cores. Start-up times are
printed separately. Target: stage/offline >= 0.8. Needs `bash scripts/setup_vllm.sh` for vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datakit.captioning.base import chat_messages  # noqa: E402
from datakit.captioning.frames import clip_frames  # noqa: E402
from datakit.captioning.prompts import load_prompt  # noqa: E402
from datakit.captioning.vllm_server import default_vllm_python  # noqa: E402
from datakit.executors import run_stage  # noqa: E402
from datakit.scoring import CLIP_ITEMS_SQL  # noqa: E402
from datakit.stages.caption import TABLES, CaptionStage  # noqa: E402, F401  (TABLES: the timed stage's tables)
from datakit.workspace import Workspace  # noqa: E402

OUT = ROOT / "bench" / "out" / "caption"
EAGER = ["--enforce-eager", "--distributed-executor-backend", "uni"]  # CPU start-up: no graph compile


@dataclass(kw_only=True)
class TimedCaption(CaptionStage):
    """The caption stage, noting when setup ended and when the last model call returned."""

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.marks = {"ready": time.perf_counter()}

    def process_batch(self, items):
        rows = super().process_batch(items)
        self.marks["done"] = time.perf_counter()
        return rows


@dataclass(kw_only=True)
class PredecodedCaption(TimedCaption):
    """The same stage with each clip's frames decoded before the run: its serving overhead alone."""

    frames_by_clip: dict = field(default_factory=dict)

    def prepare(self, item: dict) -> dict:
        return self._with_request(item, self.frames_by_clip[item["clip_id"]])


def clip_items(template: Path, n_clips: int) -> list[dict]:
    ws = Workspace(template / "ws")
    return ws.sql(f"SELECT * FROM ({CLIP_ITEMS_SQL}) ORDER BY clip_id LIMIT {int(n_clips)}")


def clips_workspace(n_clips: int) -> Path:
    """A template workspace with `n_clips` clips (4 scenes per 160x120 video), cached under bench/out."""
    from datakit.ingest import ingest
    from datakit.stages.probe import ProbeStage
    from datakit.stages.scenes import SceneStage
    from demo.sample_videos import SampleSpec, make_demo_set

    root = OUT / f"template-{n_clips}"
    if (root / "ready").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    specs = [
        SampleSpec(f"cap_{i}", 160, 120, 24, scene_frames=[60, 66, 72, 78], seed=300 + i)
        for i in range((n_clips + 3) // 4)
    ]
    make_demo_set(OUT / "videos", specs)
    ws = Workspace(root / "ws")
    ingest(ws, [str(OUT / "videos" / f"{s.name}.{s.container}") for s in specs])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    (root / "ready").touch()
    return root


def run_engine(template: Path, args, stage_class: type[TimedCaption] = TimedCaption, **options) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-caption-", dir=OUT))
    shutil.copytree(template / "ws", work / "ws")
    ws = Workspace(work / "ws")
    stage = stage_class(
        model=str(args.model),
        frames=args.frames,
        frame_size=args.frame_size,
        max_tokens=args.max_tokens,
        **options,
    )
    t0 = time.perf_counter()
    run_stage(ws, stage, progress=False, limit=args.clips)
    total = time.perf_counter() - t0
    rows = ws.sql("SELECT status, output_tokens, caption_status FROM captions")
    shutil.rmtree(work, ignore_errors=True)
    tokens = sum(r["output_tokens"] or 0 for r in rows)
    seconds = stage.marks["done"] - stage.marks["ready"]
    statuses = {s: sum(r["caption_status"] == s for r in rows) for s in {r["caption_status"] for r in rows}}
    return {
        "clips": len(rows),
        "tokens": tokens,
        "seconds": seconds,
        "startup_s": total - seconds,
        "qa": statuses,
    }


def run_offline(template: Path, args) -> dict:
    """vLLM's LLM.chat on the requests the stage sends (same frames, prompt and settings)."""
    items = clip_items(template, args.clips)
    prompt = load_prompt("video@v1")
    messages = [chat_messages(clip_frames(item, args.frames, args.frame_size), prompt) for item in items]
    spec = {
        "model": str(args.model),
        "seed": 0,
        "max_images": args.frames,
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "messages": messages,
        "engine_kwargs": {"enforce_eager": True, "distributed_executor_backend": "uni"} if args.eager else {},
    }
    scratch = Path(tempfile.mkdtemp(prefix="datakit-vllm-bench-"))
    try:
        (scratch / "requests.json").write_text(json.dumps(spec))
        env = {
            **os.environ,
            "TMPDIR": str(scratch),
            "VLLM_CACHE_ROOT": str(OUT / "vllm-cache"),
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("PYTHONPATH", None)
        cmd = [
            str(default_vllm_python()),
            str(ROOT / "bench" / "vllm_offline.py"),
            str(scratch / "requests.json"),
            str(scratch / "result.json"),
        ]
        subprocess.run(
            cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=open(OUT / "offline.log", "w")
        )
        result = json.loads((scratch / "result.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "clips": len(items),
        "tokens": result["output_tokens"],
        "seconds": result["seconds"],
        "startup_s": result["init_s"],
        "qa": {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--frame-size", type=int, default=112)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument(
        "--no-eager", dest="eager", action="store_false", help="let vLLM compile (slow start on CPU)"
    )
    parser.add_argument("--no-vllm", dest="vllm", action="store_false", help="transformers only")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    args.model = OUT / "tiny-vlm"
    if not (args.model / "config.json").exists():
        from datakit.captioning.tiny import build_tiny_qwen2vl

        build_tiny_qwen2vl(args.model)
    template = clips_workspace(args.clips)
    print(
        f"tiny random Qwen2-VL, {args.clips} clips x {args.frames} frames ({args.frame_size}px), "
        f"max {args.max_tokens} tokens, greedy, {os.cpu_count()} CPUs",
        flush=True,
    )
    results = {}
    if args.vllm:
        server = {
            "engine": "vllm",
            "vllm_args": EAGER if args.eager else [],
            "concurrency": args.concurrency,
            "batch_size": args.batch_size,
        }
        results["datakit caption --engine vllm"] = run_engine(template, args, **server)
        t0 = time.perf_counter()
        decoded = {
            i["clip_id"]: clip_frames(i, args.frames, args.frame_size)
            for i in clip_items(template, args.clips)
        }
        decode_s = time.perf_counter() - t0
        results["  same, frames decoded beforehand"] = run_engine(
            template, args, PredecodedCaption, frames_by_clip=decoded, **server
        )
        results["vLLM offline LLM.chat"] = run_offline(template, args)
    results["datakit caption --engine transformers"] = run_engine(
        template, args, engine="transformers", batch_size=args.hf_batch_size
    )
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        r["rate"] = rate
        print(
            f"{name:40s} {r['clips']:4d} clips {r['tokens']:6d} tokens {r['seconds']:7.1f}s "
            f"{rate:8.1f} tokens/s   start-up {r['startup_s']:6.1f}s  {r['qa'] or ''}"
        )
    if args.vllm:
        ours, offline = results["datakit caption --engine vllm"], results["vLLM offline LLM.chat"]
        hf = results["datakit caption --engine transformers"]
        served = results["  same, frames decoded beforehand"]
        print(f"decoding the frames alone (one thread): {decode_s:.1f}s")
        print(f"ratio stage(vllm) / vLLM offline: {ours['rate'] / offline['rate']:.2f} (target >= 0.8)")
        print(
            f"ratio stage(vllm, frames decoded beforehand) / vLLM offline: {served['rate'] / offline['rate']:.2f}"
        )
        print(f"ratio stage(vllm) / stage(transformers): {ours['rate'] / hf['rate']:.2f}")


if __name__ == "__main__":
    main()
