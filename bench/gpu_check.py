"""The first thing a session with a GPU runs (through `bench/gpu_check.sh`): the REAL trainer
(`python cli.py train`) on synthetic clips, at Open-Sora 1.0's sizes, with random weights.

  1. online    16x256: decode + VAE + T5 + STDiT-XL/2 step, ZeRO-2, HybridAdam, bf16
  2. cache     16x256: the same step from the feature cache (no VAE/T5 in the step)
  3. online    16x512
  4. resume    20 steps, SIGKILL after step 13, --resume: per-step losses equal an uninterrupted run
  5. compile   case 2 with torch.compile (inductor) against case 2 without

Encoders: an SD-sized VAE (diffusers AutoencoderKL, SD 1.x/2.x config, 84M parameters) and a
T5-XXL-sized encoder (24 layers, d_model 4096, d_ff 10240, 64 heads, 4.8B parameters, a byte
tokenizer), both RANDOM weights built here: the figures are speed and memory, never quality.
Throughput is the trainer's own `samples_per_s` (median over the steps after the warm-up) and
peak memory its `peak_mem_gib` (torch.cuda.max_memory_allocated); each case is its own process,
stopped once it logged its steps (so no end-of-run checkpoint is timed).

    python3 bench/gpu_check.py --out bench/out/gpu_check            # on the GPU (~6-8 min)
    python3 bench/gpu_check.py --dry-run --out /tmp/gpu-dry         # CPU, tiny models: the plumbing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
    block_out_channels=[128, 256, 512, 512],
    scaling_factor=0.18215,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
)
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")


# ------------------------------------------------------------------------------------ facts
def facts() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
        "nvcc": shutil.which("nvcc") or "not found",
        "ninja": shutil.which("ninja") or "not found",
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    try:
        import colossalai

        out["colossalai"] = colossalai.__version__
    except Exception as err:  # noqa: BLE001 (reported, not raised)
        out["colossalai"] = f"import failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return out


def probe_setup(dry_run: bool) -> tuple[dict[str, str], str]:
    """The trainer settings this machine can run, and a label saying what they are."""
    if dry_run:
        return {
            "train.plugin": "ddp",
            "train.precision": "fp32",
            "optim.name": "adamw",
        }, "DRY RUN (CPU, DDP, AdamW)"
    import torch

    try:
        from training.trainer import import_colossalai

        import_colossalai()
    except Exception as err:  # noqa: BLE001
        raise SystemExit(f"colossalai does not import here ({type(err).__name__}: {err})") from None
    zero = {"train.plugin": "zero2", "train.precision": "bf16"}
    try:
        from colossalai.nn.optimizer import HybridAdam

        HybridAdam([torch.nn.Parameter(torch.zeros(8, device="cuda"))], adamw_mode=True)
        return {**zero, "optim.name": "hybrid_adam"}, "ZeRO-2 + HybridAdam + bf16 (Open-Sora 1.0's setup)"
    except Exception as err:  # noqa: BLE001
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}" if str(err) else type(err).__name__
        return {**zero, "optim.name": "adamw"}, f"ZeRO-2 + torch AdamW + bf16 (NOT HybridAdam: {why})"


# ------------------------------------------------------------------------------------ inputs
def make_inputs(out: Path, dry_run: bool, clips: int) -> dict[str, Any]:
    """Synthetic videos and a curated set `gpu` in a workspace; random encoders (full sizes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from demo.sample_videos import SampleSpec, make_sample

    side, frames = (96, 12) if dry_run else (512, 50)
    rows = []
    for i in range(clips):
        path = Path(
            make_sample(
                SampleSpec(f"clip{i}", side, side, 24, "libx264", "mp4", [frames], seed=100 + i),
                out / "videos",
            ).path
        )
        rows.append(
            dict(
                clip_id=f"clip{i}",
                source_path=str(path),
                path=None,
                start_frame=0,
                end_frame=frames,
                fps=24.0,
                width=side,
                height=side,
                caption=f"random shapes moving, clip {i}",
            )
        )
    folder = out / "ws" / "sets" / "gpu" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")
    card = {
        "name": "gpu",
        "version": 1,
        "recipe": "bench/gpu_check.py",
        "row_count": len(rows),
        "created": "now",
    }
    (folder / "card.json").write_text(json.dumps(card))
    info: dict[str, Any] = {"ws": out / "ws", "clips": clips}
    if dry_run:
        info["model"] = ["--preset", "tiny", f"model.tiny_dir={out / 'tiny'}"]
        return info
    vae, t5 = out / "vae-sd-random", out / "t5-xxl-random"
    tick = time.perf_counter()
    save_random_encoders(vae, t5)
    info["encoders_s"] = round(time.perf_counter() - tick, 1)
    info["model"] = [
        f"model.vae={vae}",
        f"model.text_encoder={t5}",
        "model.local_files_only=true",
        "model.stdit=STDiT-XL/2",
        "model.model_max_length=120",
    ]
    return info


def save_random_encoders(vae_dir: Path, t5_dir: Path) -> None:
    """RANDOM weights at SD-VAE and T5-XXL sizes (built on the GPU in bf16: seconds, not minutes)."""
    import torch
    from diffusers.models import AutoencoderKL
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    if not (vae_dir / "config.json").is_file():
        torch.manual_seed(0)
        AutoencoderKL(**SD_VAE).save_pretrained(vae_dir)
    if not (t5_dir / "config.json").is_file():
        tokenizer = ByT5Tokenizer()
        config = T5Config(vocab_size=len(tokenizer), is_encoder_decoder=False, use_cache=False, **T5_XXL)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda"):
                model = T5EncoderModel(config)
        finally:
            torch.set_default_dtype(default)
        model.save_pretrained(t5_dir, max_shard_size="20GB")  # safetensors (the default)
        tokenizer.save_pretrained(t5_dir)
        del model
        torch.cuda.empty_cache()


def write_feature_cache(src_run: Path, dst_run: Path) -> None:
    """A `data.source=features` run folder made from a pixels run's frozen rows: each clip encoded
    with the run's own VAE/T5 as `datakit features` does (centred window, posterior, caption
    tokens), stored with training.features' writer. (`datakit features` itself needs duckdb,
    which does not fit beside PyAV in what travels to the GPU machine.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from training.buckets import assign_bucket
    from training.build import build_encoders
    from training.config import from_dict
    from training.data import clip_window, load_clip
    from training.features import INDEX_FILE, write_shard
    from training.selection import load_frozen

    cfg_data = json.loads((src_run / "train_config.json").read_text())
    cfg_data["data"]["source"] = "features"
    cfg = from_dict(cfg_data)
    (dst_run / "data").mkdir(parents=True, exist_ok=True)
    for name in ("rows.parquet", "card.json"):
        shutil.copy(src_run / "data" / name, dst_run / "data" / name)
    (dst_run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    rows, _ = load_frozen(dst_run)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    vae, t5 = build_encoders(cfg, device, dtype)
    multiple = vae.spatial_factor * 2
    index = []
    with torch.no_grad():
        for i, row in enumerate(rows):
            bucket = assign_bucket(row, cfg.data, multiple)
            video = load_clip(row, bucket, cfg.data, clip_window(row, bucket, cfg.data, None))
            mean, std = vae.posterior(video[None].to(device))
            text = t5.encode([row["caption"] or ""])
            entry = {
                "mean": mean[0],
                "std": std[0],
                "text": text["y"][0, 0][text["mask"][0].bool()],
                "mask": text["mask"][0].to(torch.uint8),
            }
            shard = dst_run / "features" / f"clip-{i:05d}.safetensors"
            write_shard(
                shard,
                [{k: v.detach().to("cpu", copy=True) for k, v in entry.items()}],
                {"bench": "gpu_check"},
            )
            index.append(
                {
                    "clip_id": row["clip_id"],
                    "status": "ok",
                    "error": None,
                    "shard": str(shard),
                    "shard_index": 0,
                    "frames": bucket.frames,
                    "height": bucket.height,
                    "width": bucket.width,
                }
            )
    pq.write_table(pa.Table.from_pylist(index), dst_run / "data" / INDEX_FILE)
    del vae, t5
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ running
def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written when the run was stopped
            pass
    return out


def train(
    args: list[str], run_dir: Path, steps: int, timeout: float, kill: bool = True
) -> tuple[list[dict], str]:
    """`cli.py train` in its own process group; with `kill`, stopped (SIGKILL) once `steps` steps
    are logged, else left to finish. Returns (metrics, error line or "")."""
    log = run_dir.with_name(run_dir.name + ".log")
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", "--run-dir", str(run_dir), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if kill and len(metrics(run_dir)) >= steps:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return metrics(run_dir), f"timed out after {timeout:.0f} s"
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return metrics(run_dir), ""
    try:  # loader workers of a finished run
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
        return metrics(run_dir), (errors or lines or ["no output"])[-1][:300]
    return metrics(run_dir), ""


def summarise(m: list[dict], warmup: int) -> dict[str, Any]:
    timed = m[warmup:] or m
    return {
        "steps": len(m),
        "samples_per_s": round(statistics.median(r["samples_per_s"] for r in timed), 3) if timed else None,
        "step_s": round(statistics.median(r["step_time"] for r in timed), 3) if timed else None,
        "data_wait": round(statistics.median(r["data_wait"] for r in timed), 3) if timed else None,
        "peak_mem_gib": round(max((r.get("peak_mem_gib") or 0) for r in m), 2) if m else None,
        "loss_finite": all(r["loss"] == r["loss"] for r in m),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny random models, tiny sizes")
    ap.add_argument("--budget-s", type=float, default=430, help="stop starting cases after this many seconds")
    ap.add_argument(
        "--steps", type=int, default=8, help="steps per throughput case (the first 3 are warm-up)"
    )
    ap.add_argument("--batch-256", type=int, default=8)
    ap.add_argument("--batch-512", type=int, default=2)
    ap.add_argument("--cases", default="1,2,3,4,5")
    ap.add_argument(
        "--resume-steps", default="20,13,10", help="case 4: steps, killed after, checkpoint every"
    )
    a = ap.parse_args()
    start = time.monotonic()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = facts()
    print(json.dumps(info), flush=True)
    setup, label = probe_setup(a.dry_run)
    clips = 4 if a.dry_run else max(2 * a.batch_256, 16)
    inputs = make_inputs(out, a.dry_run, clips)
    print(f"inputs ready in {time.monotonic() - start:.0f} s ({label})", flush=True)

    res = ["64"] if a.dry_run else ["256"]
    hi = ["96"] if a.dry_run else ["512"]
    frames = (
        ["data.num_frames=[4]", "data.frame_interval=2"]
        if a.dry_run
        else ["data.num_frames=[16]", "data.frame_interval=3"]
    )
    common = [
        "--stage",
        "video",
        "-w",
        str(inputs["ws"]),
        *inputs["model"],
        *frames,
        "train.progress=false",
        "data.val_fraction=0",
        "train.val_every=100000",
        "train.ckpt_every=100000",
        "data.num_workers=4",
        *(f"{k}={v}" for k, v in setup.items()),
    ]
    warmup, steps = min(3, a.steps - 1), a.steps
    big = steps + 10_000  # stopped by us once `steps` are logged
    rows: list[dict[str, Any]] = []
    wanted = {int(c) for c in a.cases.split(",")}

    def case(n: int, name: str, what: str, fn) -> None:
        if n not in wanted:
            return
        left = a.budget_s - (time.monotonic() - start)
        if left < 30:
            rows.append({"case": n, "name": name, "what": what, "error": "not run: out of time budget"})
            return
        tick = time.perf_counter()
        try:
            row = fn(left)
        except Exception as err:  # noqa: BLE001 (the table says what failed)
            row = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
        rows.append(
            {"case": n, "name": name, "what": what, **row, "wall_s": round(time.perf_counter() - tick)}
        )
        print(json.dumps(rows[-1]), flush=True)

    def online(resolution: list[str], batch: int, run: str):
        def fn(left: float) -> dict:
            args = [
                *common,
                "--set",
                "gpu",
                f"data.resolution=[{resolution[0]}]",
                f"data.batch_size={batch}",
                "--max-steps",
                str(big),
            ]
            m, err = train(args, out / run, steps, min(left, 240))
            return {**summarise(m, warmup), "batch": batch, **({"error": err} if err else {})}

        return fn

    size = "4x64 tiny" if a.dry_run else "16x256"
    case(1, "online", f"{size}: decode + VAE + T5 + STDiT step", online(res, a.batch_256, "online-256"))

    def cached(run: str, extra: list[str]):
        def fn(left: float) -> dict:
            src = out / "online-256"
            if not (src / "train_config.json").is_file():
                return {"error": "needs case 1's run folder"}
            dst = out / run
            if not (dst / "data" / "features.parquet").is_file():
                write_feature_cache(src, dst)
            args = ["--resume", "--max-steps", str(big), *extra]
            if extra:  # a setting --resume does not allow changing: into the run's config instead
                cfg = json.loads((dst / "train_config.json").read_text())
                for item in extra:
                    key, _, value = item.partition("=")
                    section, field = key.split(".")
                    cfg[section][field] = value
                (dst / "train_config.json").write_text(json.dumps(cfg, indent=2))
                args = ["--resume", "--max-steps", str(big)]
            m, err = train(args, dst, steps, min(left, 300))
            return {**summarise(m, warmup), "batch": a.batch_256, **({"error": err} if err else {})}

        return fn

    case(2, "cache", f"{size} from the feature cache: STDiT step only", cached("cache-256", []))

    def resume(left: float) -> dict:
        src = out / "online-256"
        if not (src / "train_config.json").is_file():
            return {"error": "needs case 1's run folder"}
        small = json.loads((src / "train_config.json").read_text())
        small["model"]["stdit_args"] = {"depth": 2}  # XL/2 width, 2 blocks: small checkpoints
        total, kill_at, every = (int(x) for x in a.resume_steps.split(","))
        small["train"]["ckpt_every"] = every
        runs = {}
        for name in ("whole", "killed"):
            run = out / f"resume-{name}"
            (run / "data").mkdir(parents=True, exist_ok=True)
            for f in ("rows.parquet", "card.json", "features.parquet"):
                if (out / "cache-256" / "data" / f).is_file():
                    shutil.copy(out / "cache-256" / "data" / f, run / "data" / f)
            cfg = dict(
                small,
                data={
                    **small["data"],
                    "source": "features" if (run / "data" / "features.parquet").is_file() else "pixels",
                },
            )
            (run / "train_config.json").write_text(json.dumps(cfg, indent=2))
            runs[name] = run
        end = time.monotonic() + min(left, 600 if a.dry_run else 300)
        steps_arg = ["--resume", "--max-steps", str(total)]
        whole, err = train(steps_arg, runs["whole"], total, end - time.monotonic(), kill=False)
        if err:
            return {"error": f"uninterrupted run: {err}"}
        train(steps_arg, runs["killed"], kill_at, end - time.monotonic())  # SIGKILL once kill_at are logged
        first = len(metrics(runs["killed"]))
        got, err = train(steps_arg, runs["killed"], total, end - time.monotonic(), kill=False)
        if err:
            return {"error": f"resumed run: {err}"}
        same = [(r["loss"], r["grad_norm"]) for r in got] == [(r["loss"], r["grad_norm"]) for r in whole]
        return {
            "steps": len(got),
            "killed_after": first,
            "equal": same,
            "max_loss_diff": max(
                (abs(x["loss"] - y["loss"]) for x, y in zip(got, whole, strict=False)), default=None
            ),
        }

    total, kill_at, _ = a.resume_steps.split(",")
    case(4, "resume", f"{total} steps, SIGKILL after {kill_at}, --resume (2 blocks)", resume)
    # the correctness check (4) runs before the second throughput size (3)
    case(
        3,
        "online",
        f"{'4x96 tiny' if a.dry_run else '16x512'}: decode + VAE + T5 + STDiT step",
        online(hi, a.batch_512, "online-512"),
    )
    backend = "eager" if a.dry_run else "inductor"
    case(
        5,
        "compile",
        f"case 2 with torch.compile ({backend})",
        cached("cache-256-compile", [f"train.compile={backend}"]),
    )

    report(info, label, inputs, rows, out, time.monotonic() - start)


def report(info: dict, label: str, inputs: dict, rows: list[dict], out: Path, wall: float) -> None:
    lines = [
        f"gpu_check: {info['card']} | torch {info['torch']} (CUDA {info['cuda']}) | colossalai {info['colossalai']} "
        f"| python {info['python']} | nvcc {info['nvcc']} | ninja {info['ninja']} | load {' '.join(info['loadavg'])}",
        f"setup: {label}; STDiT-XL/2 unless noted; RANDOM weights (SD-sized VAE, T5-XXL-sized encoder"
        f"{', built in ' + str(inputs.get('encoders_s')) + ' s' if 'encoders_s' in inputs else ''}); "
        f"{inputs['clips']} synthetic clips",
        f"{'case':<5}{'what':<52}{'batch':>6}{'samples/s':>11}{'s/step':>8}{'wait':>6}{'peak GiB':>10}  note",
    ]
    for r in rows:
        note = r.get("error") or ""
        if r["name"] == "resume" and not note:
            note = f"per-step losses {'EQUAL' if r['equal'] else 'DIFFER'} (killed after {r['killed_after']}, max diff {r['max_loss_diff']})"
        elif not note and not r.get("loss_finite", True):
            note = "non-finite loss"
        cells = "".join(
            f"{r[k] if r.get(k) is not None else '-':>{w}}"
            for k, w in (
                ("batch", 6),
                ("samples_per_s", 11),
                ("step_s", 8),
                ("data_wait", 6),
                ("peak_mem_gib", 10),
            )
        )
        lines.append(f"{r['case']:<5}{r['what'][:51]:<52}{cells}  {note}")
    lines.append(f"total {wall:.0f} s")
    text = "\n".join(lines)
    print(text, flush=True)
    (out / "gpu_check.txt").write_text(text + "\n")
    (out / "gpu_check.json").write_text(
        json.dumps({"facts": info, "setup": label, "rows": rows}, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
