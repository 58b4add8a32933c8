"""CPU micro-benchmark of an STDiT training step, with and without gradient checkpointing.

A step is what training runs: `IDDPM(timestep_respacing="").training_losses` (noising, STDiT
forward, MSE on eps + the learned-variance VB term), backward, AdamW.

Each configuration runs in a fresh subprocess so its peak RSS (`ru_maxrss`) is its own; we
report the growth of the peak during the training steps (≈ activation memory) and the total.

    .venv/bin/python bench/bench_stdit.py [--steps 3] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = dict(
    input_size=(4, 16, 16),  # latent T, H, W → 4 × 8 × 8 = 256 tokens per sample
    in_channels=4,
    patch_size=(1, 2, 2),
    hidden_size=384,
    depth=4,
    num_heads=6,
    caption_channels=4096,
    model_max_length=32,
    class_dropout_prob=0.1,
)
TINY = {
    **CONFIG,
    "input_size": (2, 8, 8),
    "hidden_size": 32,
    "depth": 2,
    "num_heads": 2,
    "caption_channels": 16,
    "model_max_length": 8,
}  # --tiny: the tests' smoke run


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(ckpt: bool, steps: int, batch: int, config: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from models.diffusion import IDDPM
    from models.stdit import STDiT

    torch.manual_seed(0)
    model = STDiT(**config, grad_checkpointing=ckpt).train()
    diffusion = IDDPM(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    T, H, W = config["input_size"]
    L = config["model_max_length"]
    x = torch.randn(batch, 4, T, H, W)
    t = torch.randint(0, diffusion.num_timesteps, (batch,))
    y = torch.randn(batch, 1, L, config["caption_channels"])
    mask = (torch.arange(L)[None] < torch.randint(L // 2, L + 1, (batch, 1))).long()
    noise = torch.randn_like(x)

    def step() -> float:
        loss = diffusion.training_losses(model, x, t, dict(y=y, mask=mask), noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up (also allocates the AdamW state)
    base = max_rss_mib()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "grad_checkpointing": ckpt,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": min(times),
        "peak_rss_MiB": max_rss_mib(),
        "step_peak_growth_MiB": max_rss_mib() - base,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a tiny STDiT (smoke test)")
    ap.add_argument("--worker", choices=["0", "1"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    config = TINY if args.tiny else CONFIG
    if args.worker is not None:
        print(json.dumps(worker(args.worker == "1", args.steps, args.batch, config)))
        return

    results = []
    for ckpt in ("0", "1"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            ckpt,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            *(["--tiny"] if args.tiny else []),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))

    T, H, W = config["input_size"]
    print(
        f"STDiT depth {config['depth']}, hidden {config['hidden_size']}, {config['num_heads']} heads "
        f"({results[0]['params_M']:.1f}M params); latent {T}x{H}x{W}, batch {args.batch}, "
        f"caption {config['model_max_length']}x{config['caption_channels']}; "
        f"fp32 CPU, {results[0]['threads']} threads, IDDPM loss, AdamW; best of {args.steps} steps"
    )
    print(f"{'grad ckpt':>10} {'fwd+bwd+opt s/step':>19} {'peak RSS MiB':>13} {'step peak growth MiB':>21}")
    for r in results:
        print(
            f"{'on' if r['grad_checkpointing'] else 'off':>10} {r['step_s']:>19.3f} "
            f"{r['peak_rss_MiB']:>13.0f} {r['step_peak_growth_MiB']:>21.0f}"
        )


if __name__ == "__main__":
    main()
