"""Every bench/ script runs at a tiny size and prints the lines a reader relies on (no timing is asserted).

Each script runs as a subprocess, as a reader would run it. Parts over the CI budget (~90 s for this
file) are not run by default; they run with DATAKIT_BENCH_SLOW=1 and the skip reason says so:
- bench_scenes `accuracy` and `speed`: TransNetV2 works on 550-frame windows, so even 1 s videos
  cost 10-35 s of CPU; `cli` and `memory` run here.
- bench_train `loader`, `encode`, `mid` (60 s sources, an SD-sized VAE, a 14M STDiT); `steps` and
  `features` run here.
- bench_caption with vLLM (and so bench/vllm_offline.py): vLLM starts in 1.5-7 minutes on this CPU;
  the transformers engine runs here.
- bench_demo runs the demo with --pipeline-only (samples + pipeline, ~10 s); the whole demo (~3 min)
  is tests/test_demo.py's.
- gpu_stdit_xl.py: its CPU-safe part (the one-line refusal without CUDA, and --device cpu --tiny).
bench/gpu_check.sh is tests/test_train_gpu_check.py's.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, cli_env

NUM = r"[\d.,]+"
SLOW = pytest.mark.skipif(
    not os.environ.get("DATAKIT_BENCH_SLOW"),
    reason="over the CI budget (see the module docstring); set DATAKIT_BENCH_SLOW=1",
)


def bench(script: str, *args: str, timeout: float = 300, env: dict | None = None, ok: bool = True):
    proc = subprocess.run(
        [PYTHON, str(ROOT / "bench" / script), *args],
        env=env or cli_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def lines_matching(text: str, *patterns: str) -> None:
    for pattern in patterns:
        assert re.search(pattern, text, re.M), f"{pattern!r} not in:\n{text}"


def test_bench_aesthetic(tmp_path):
    out = bench(
        "bench_aesthetic.py", "--model", "tiny", "--videos", "1", "--repeats", "1", "--batch-size", "4"
    ).stdout
    lines_matching(
        out,
        r"^aesthetic on 4 clips \(12 frames, 320x240 H\.264\), model tiny .*median of 1$",
        rf"^  model alone \(prepared frames\): {NUM} clips/s \({NUM} frames/s\)$",
        rf"^  whole stage .*: {NUM} clips/s$",
        rf"^  ratio stage / model: {NUM} \(target >= 0\.9\); per run: {NUM}$",
    )


TINY_CAPTION = ("--clips", "2", "--frames", "1", "--frame-size", "32", "--max-tokens", "4")


def test_bench_caption_transformers():
    out = bench("bench_caption.py", "--no-vllm", *TINY_CAPTION).stdout
    lines_matching(
        out,
        r"^tiny random Qwen2-VL, 2 clips x 1 frames \(32px\), max 4 tokens, greedy",
        rf"^datakit caption --engine transformers\s+2 clips\s+\d+ tokens\s+{NUM}s\s+{NUM} tokens/s\s+start-up",
    )


@SLOW
def test_bench_caption_vllm_and_vllm_offline():
    if not Path(ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.skip(".venv-vllm missing (bash scripts/setup_vllm.sh builds it)")
    out = bench("bench_caption.py", *TINY_CAPTION, timeout=1800).stdout
    lines_matching(
        out,
        r"^vLLM offline LLM\.chat\s+2 clips",
        r"^datakit caption --engine vllm\s+2 clips",
        rf"^ratio stage\(vllm\) / vLLM offline: {NUM} \(target >= 0\.8\)$",
    )


def test_bench_catalog():
    out = bench("bench_catalog.py").stdout
    lines_matching(
        out,
        r"^loadavg: .* duckdb \d",
        rf"^datakit open \(Workspace\(create=False\)\)\s+{NUM} ms \(best of 5\)$",
        rf"^plain DuckDB: attach_sql \+ first clips query\s+{NUM} ms",
    )


def test_bench_dedup():
    out = bench("bench_dedup.py", "--n", "2000", "--dim", "32", "--pairs", "20").stdout
    lines_matching(
        out,
        r"^dedup of 2,000 x 32-d float16 vectors, 20 planted pairs",
        rf"^  index \w+: {NUM} s to search and group, {NUM} CPU-seconds",
        r"^  groups 20, duplicates 20, recall of planted pairs 1\.0000, peak memory",
        r"^  targets: under 600 s \(met\), recall >= 0\.95 \(met\)$",
    )


def test_bench_demo_pipeline_only(tmp_path):
    out = bench(
        "bench_demo.py",
        "--pipeline-only",
        "--workspace",
        str(tmp_path / "demo"),
        "--out",
        str(tmp_path / "demo.txt"),
        timeout=600,
    ).stdout
    lines_matching(
        out,
        rf"^demo on \d+ cores; load average before {NUM}, at its end {NUM}$",
        rf"^  samples\s+{NUM} s$",
        rf"^  ingest → probe → scenes → cut\s+{NUM} s$",
        rf"^  total \(parts\)\s+{NUM} s$",
        rf"^  wall \(with start-up\)\s+{NUM} s$",
    )
    assert (tmp_path / "demo.txt").read_text() == out


def test_bench_download():
    out = bench("bench_download.py", "--n", "4", "--size-kb", "4", "--workers", "1,2").stdout
    lines_matching(
        out,
        r"^4 files x 4 KiB, fsync=on",
        r"^\s+workers\s+seconds\s+downloads/s\s+MB/s$",
        rf"^\s+1\s+{NUM}\s+{NUM}\s+{NUM}$",
        rf"^\s+2\s+{NUM}\s+{NUM}\s+{NUM}$",
    )


def test_bench_entry_points():
    out = bench("bench_entry_points.py", "--repeat", "1").stdout
    lines_matching(
        out,
        rf"^registry \(cached list\)\s+median\s+{NUM} ms\s+min\s+{NUM} ms$",
        rf"^importlib\.metadata scan\s+median\s+{NUM} ms",
    )


def test_bench_import():
    out = bench("bench_import.py", "--rows", "1000").stdout
    lines_matching(
        out,
        r"^table: 1000 rows x 2 spans",
        rf"^import: {NUM} s, {NUM} rows/s, {NUM} spans/s, 0 error rows; .*peak RSS",
    )


def test_bench_manifest(tmp_path):
    out = bench(
        "bench_manifest.py",
        "--clips",
        "400",
        "--part-rows",
        "100",
        "--repeat",
        "1",
        "--workspace",
        str(tmp_path / "ws"),
    ).stdout
    lines = out.strip().splitlines()
    assert re.fullmatch(r"status [\d.]+ s, curated [\d.]+ s, plan-cut [\d.]+ s", lines[-1]), lines[-1]
    assert "built 20 videos, 400 clips" in out and "peak RSS" in out
    assert re.search(r"plan cut \(400 clips, all done\)\s+[\d.]+ s\s+\(0\)", out), "every clip was cut"
    assert re.fullmatch(
        r"remembered \(repeated on unchanged parts\): status [\d.]+ s, plan-cut [\d.]+ s", lines[-2]
    )


def test_bench_media_memory(tmp_path):
    out = bench("bench_media_memory.py", "--frames", "2", "--sizes", "64x48", "--out", str(tmp_path)).stdout
    lines = out.strip().splitlines()
    assert lines[0].split() == ["file", "max_pixels", "operation", "peak", "RSS,", "wall,", "result"]
    ops = [
        re.match(rf"huge_64x48\.mp4\s+default\s+(\S+)\s+{NUM} MiB\s+{NUM} s  (.*)$", line)
        for line in lines[1:]
    ]
    assert all(ops), lines
    assert [(m[1], m[2]) for m in ops] == [
        ("imports", "imports only"),
        ("probe", "ok"),
        ("scenes", "2 frames"),
        ("cut", "2 frames 64x48"),
        ("cut:256", "2 frames 340x256"),
    ]


def test_bench_scenes_cli_and_memory():
    out = bench(
        "bench_scenes.py",
        "--parts",
        "memory",
        "cli",
        "--videos",
        "1",
        "--seconds",
        "1",
        "--memory-seconds",
        "1",
    ).stdout
    lines_matching(
        out,
        r"^torch .*, GPU: ",
        rf"^      1 s \(\s+24 frames, \d+ transitions, truth 0\): peak RSS\s+{NUM} MiB",
        rf"^cli: ours \(adaptive, width 256\) {NUM} frames/s, .*cut mismatches 0$",
        r"^peak RSS of this process",
    )


@SLOW
def test_bench_scenes_accuracy_and_speed():
    out = bench(
        "bench_scenes.py", "--parts", "accuracy", "speed", "--videos", "1", "--seconds", "1", timeout=1800
    ).stdout
    lines_matching(
        out,
        r"^  detector\s+set\s+P\s+R\s+F1\s+cuts\s+dissolves\s+covered\s+lost\s+dirty clips$",
        r"^  adaptive\s+all\s",
        r"^  transnetv2 \(\w+, cpu\)\s+all\s",
        rf"^  datakit scenes --detector transnetv2 \(CPU\)\s+{NUM}\s+{NUM}",
        rf"^  transnetv2 stage time / adaptive stage time: {NUM} \(target <= 2\.5\)",
    )


def test_bench_transnet_cpu():
    out = bench("bench_transnet_cpu.py", "--parts", "cpu", "net", "--window", "100", "--calls", "1").stdout
    lines_matching(
        out,
        r"^cpu: torch kernels \w+, native bf16 (True|False), \d+ threads; precision auto -> (fp32|bf16)$",
        rf"^  FastTransNetV2, torch fp32, 1 thread\s+{NUM}\s+{NUM}\s+load\s+{NUM}\s+max \|p - torch fp32\| 0\.0e\+00",
        r"^load average at the end: ",
    )


def test_bench_startup():
    out = bench("bench_startup.py", "--repeat", "1", "--small").stdout
    row = rf"\s+{NUM} s\s+{NUM}x bare import\s+cpu\s+{NUM} s\s+{NUM}x$"
    lines_matching(
        out,
        r"^median of 1 interleaved runs",
        rf"^  bare import \(duckdb, pyarrow\.parquet\){row}",
        rf"^  datakit status{row}",
        rf"^  datakit status, nothing remembered{row}",
        rf"^  one 48-frame 180p video: scenedetect CLI{row}",
        rf"^one video, datakit scenes / scenedetect CLI: {NUM} \(target <= 1\.0\)$",
        rf"^datakit scenes, nothing to do: {NUM}x bare import, cpu {NUM}x \(target <= 1\.5\)$",
        rf"^datakit scenes, nothing to do, nothing remembered: {NUM}x bare import, cpu {NUM}x \(target <= 1\.5\)$",
    )


def test_bench_stdit():
    out = bench("bench_stdit.py", "--tiny", "--steps", "1", "--batch", "1").stdout
    lines_matching(
        out,
        r"^STDiT depth 2, hidden 32, .*batch 1, .*best of 1 steps$",
        r"^\s+grad ckpt\s+fwd\+bwd\+opt s/step\s+peak RSS MiB\s+step peak growth MiB$",
        rf"^\s+off\s+{NUM}\s+{NUM}\s+-?{NUM}$",
        rf"^\s+on\s+{NUM}\s+{NUM}\s+-?{NUM}$",
    )


def test_bench_train_steps_and_features():
    out = bench("bench_train.py", "--parts", "steps,features", "--steps", "3").stdout
    lines_matching(
        out,
        rf"^tiny video .*, online: {NUM} s/step, {NUM} samples/s, data wait {NUM}% of the step$",
        rf"^feature cache for it: \d+ clips at {NUM} clips/s",
        rf"^tiny video from the feature cache: {NUM} s/step",
        rf"^  step time from the cache: {NUM}x the online step$",
    )


@SLOW
def test_bench_train_loader_encode_mid():
    out = bench(
        "bench_train.py", "--parts", "loader,encode,mid", "--clips", "3", "--steps", "3", timeout=1800
    ).stdout
    lines_matching(
        out,
        rf"^  span decoding \(trainer\):\s+{NUM} clips/s$",
        rf"^  speedup:\s+{NUM}x$",
        rf"^SD-sized VAE encode at 256×256, online: {NUM} s/frame",
        rf"^mid video .*: {NUM} s/step",
    )


def test_gpu_stdit_xl_refuses_without_cuda_in_one_line():
    proc = bench("gpu_stdit_xl.py", env={**cli_env(), "CUDA_VISIBLE_DEVICES": ""}, ok=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "gpu_stdit_xl.py: --device cuda but CUDA is not available here "
        "(use --device cpu --tiny for a smoke test)"
    )


def test_gpu_stdit_xl_tiny_on_cpu():
    out = bench(
        "gpu_stdit_xl.py",
        "--device",
        "cpu",
        "--tiny",
        "--batch-sizes",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--no-ckpt",
    ).stdout
    lines_matching(
        out,
        r"^model: tiny STDiT, [\d,]+ params",
        r"^SDPA flash check: (OK|FAILED)",
        r"^\s+ckpt\s+batch\s+s/step\s+samples/s\s+peak alloc GiB\s+peak reserved GiB$",
        rf"^\s+off\s+1\s+{NUM}\s+{NUM}\s+nan\s+nan$",
        r"^total \d+s$",
    )


def test_bench_vae_heldout(tmp_path):
    out = bench(
        "bench_vae_heldout.py",
        "--shots",
        "2",
        "--size",
        "32",
        "--base",
        "steps=4,val_every=2,frames_per_clip=2,batch_size=4,block_out_channels=8/8",
        "--variant",
        "hue_rotate=true,equivariance=1.0",
        "--out",
        str(tmp_path / "vae.txt"),
    ).stdout
    lines_matching(
        out,
        r"^vae held-out PSNR on 8 clips \(2 generated shot videos \(32 px\)\); load average",
        rf"^  demo: 4 steps, {NUM} s \({NUM} CPU-s\), held-out PSNR {NUM} dB \(min {NUM}; shots_\d\d-\d {NUM}",
        rf"^  hue_rotate=true,equivariance=1.0: 4 steps, .* held-out PSNR {NUM} dB .*; flat colours from "
        rf"the mean latent: RMS error {NUM} levels; load",
    )
    assert (tmp_path / "vae.txt").read_text() == out
