"""The demo VAE's PSNR on held-out clips, clip by clip, for VaeConfig variants trained side by side.

.venv/bin/python bench/bench_vae_heldout.py --workspace demo-workspace          # the demo's image set
.venv/bin/python bench/bench_vae_heldout.py --variant steps=1200 --variant hue_rotate=true,lr=2e-3
.venv/bin/python bench/bench_vae_heldout.py --shots 2 --size 32 --variant steps=4 --base steps=4  # tiny

Each variant is the demo's VaeConfig (`demo.learn.vae_config()`) with `key=value` fields replaced
(lists as 16/32/32); `demo` is the unchanged one. The held-out clips are the vae stage's own split.
"flat colours from the mean latent": the demo's 8 flat colours decoded from their latents' spatial
mean, RMS error in 0-255 levels (large: the latent carries colour in fine patterns, not in its values).
Without --workspace it generates the demo's captioned shots (`make_learnable_set`) and trains on those.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_variant(text: str, base):
    """'steps=1200,hue_rotate=true,block_out_channels=32/64/64' -> a VaeConfig from `base`."""
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown VaeConfig field {key!r} (fields: {', '.join(fields)})")
        old = getattr(base, key)
        if isinstance(old, bool):
            changes[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(old, list):
            changes[key] = [int(v) for v in value.split("/")]
        elif old is None or value.lower() == "none":
            changes[key] = None if value.lower() == "none" else int(value)
        else:
            changes[key] = type(old)(value)
    return dataclasses.replace(base, **changes)


def shot_rows(out: Path, videos: int, size: int) -> list[dict]:
    from demo.sample_videos import learnable_rows, make_learnable_set

    table = make_learnable_set(out, size=size, videos=videos)
    return learnable_rows(table, size=size, frames_per_shot=36)  # make_learnable_set's 3 s at 12 fps


def per_clip_psnr(run: Path, rows: list[dict], cfg) -> dict[str, float]:
    import torch
    from diffusers.models import AutoencoderKL

    from training.vae_train import VAE_DIR, _frames, psnr

    vae = AutoencoderKL.from_pretrained(str(run / VAE_DIR), local_files_only=True).eval()
    out = {}
    with torch.no_grad():
        for row in rows:
            x = _frames([row], cfg)
            out[row["clip_id"]] = psnr(vae.decode(vae.encode(x).latent_dist.mode()).sample, x)
    return out


def flat_colour_error(run: Path, size: int) -> float:
    """RMS error (0-255 levels) of the demo's flat colours decoded from their latent's spatial mean:
    small when the latent's channel values carry colour, large when fine patterns in it do (a hard
    latent for a diffusion model to sample)."""
    import torch
    from diffusers.models import AutoencoderKL

    from demo.sample_videos import COLOURS
    from training.vae_train import VAE_DIR

    vae = AutoencoderKL.from_pretrained(str(run / VAE_DIR), local_files_only=True).eval()
    rgb = torch.tensor(list(COLOURS.values())).float()
    x = (rgb / 127.5 - 1)[:, :, None, None].expand(-1, -1, size, size)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        flat = vae.decode(z.mean((2, 3), keepdim=True).expand_as(z)).sample
    got = (flat.clamp(-1, 1) + 1).mul(127.5).mean((2, 3))
    return float((got - rgb).pow(2).mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, help="A finished demo's workspace (its set `image`).")
    parser.add_argument("--shots", type=int, default=4, help="Without --workspace: shot videos to generate.")
    parser.add_argument("--size", type=int, default=96, help="Without --workspace: shot frame size.")
    parser.add_argument("--base", default="", help="key=value changes applied to every variant.")
    parser.add_argument("--variant", action="append", default=[], help="key=value,... (repeatable).")
    parser.add_argument("--no-demo", action="store_true", help="Leave out the unchanged demo config.")
    parser.add_argument("--out", type=Path, help="Also write the table here.")
    args = parser.parse_args()

    import torch

    from demo.learn import vae_config
    from training.config import DataConfig
    from training.selection import read_set, split_validation
    from training.vae_train import train_vae

    torch.set_num_threads(
        int(os.environ.get("BENCH_THREADS", 0)) or max(1, min(len(os.sched_getaffinity(0)), 2))
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-vae-"))
    if args.workspace:
        table, card = read_set(args.workspace / "manifest", "image")
        rows, source = table.to_pylist(), f"set image of {args.workspace}"
    else:
        rows, card = shot_rows(tmp / "shots", args.shots, args.size), {"name": "shots", "version": 0}
        source = f"{args.shots} generated shot videos ({args.size} px)"
    base = parse_variant(args.base, vae_config())
    variants = ([("demo", base)] if not args.no_demo else []) + [
        (v, parse_variant(v, base)) for v in args.variant
    ]
    lines = [f"vae held-out PSNR on {len(rows)} clips ({source}); load average {os.getloadavg()[0]:.1f}"]
    print(lines[0], flush=True)
    for name, cfg in variants:
        run = tmp / f"run{len(lines)}"
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        summary = train_vae(rows, card, run, cfg)
        wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        held_out = DataConfig(val_fraction=cfg.val_fraction, val_min_rows=4, val_max=64)
        _, val_rows = split_validation(rows, held_out)
        clips = per_clip_psnr(run, val_rows, cfg)
        shown = ", ".join(f"{k} {v:.1f}" for k, v in clips.items())
        line = (
            f"  {name}: {cfg.steps} steps, {wall:.0f} s ({cpu:.0f} CPU-s), held-out PSNR "
            f"{summary['val_psnr']:.1f} dB (min {min(clips.values()):.1f}; {shown}); flat colours "
            f"from the mean latent: RMS error {flat_colour_error(run, cfg.crop or cfg.resolution):.0f} "
            f"levels; load {os.getloadavg()[0]:.1f}"
        )
        lines.append(line)
        print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
