"""GPU benchmark of the BARE STDiT-XL/2 step at Open-Sora 1.0's 16×256×256 stage: random latents
and caption embeddings, an MSE on the latent channels, torch AdamW; no decoding, VAE, T5, IDDPM
loss or ColossalAI. Not comparable with Open-Sora's whole-step samples/s: `bench/gpu_check.sh`
measures the whole step through the trainer.

Model: STDiT-XL/2 (759.6M params), caption 120×4096, latent 4×16×32×32 (4096 tokens/sample).
Recipe mirrored: fp32 master params + bf16 autocast, gradient checkpointing per block, AdamW
(lr 2e-5, wd 0), grad clip 1.0, random inputs with random caption lengths. Prints step time,
samples/s and peak memory per batch size, and checks that SDPA's flash backend accepts the
model's attention calls. Imports only torch, the stdlib and our `models` package.

    python3 bench/gpu_stdit_xl.py                       # batch sizes 4,8,16,32 within ~4 min
    python3 bench/gpu_stdit_xl.py --device cpu --tiny   # smoke test without a GPU
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from models.stdit import STDiT, build_stdit  # noqa: E402

XL = dict(
    input_size=(16, 32, 32), caption_channels=4096, model_max_length=120, space_scale=0.5, time_scale=1.0
)
TINY = dict(
    input_size=(4, 8, 8),
    patch_size=(1, 2, 2),
    hidden_size=64,
    depth=2,
    num_heads=4,
    caption_channels=32,
    model_max_length=8,
    space_scale=0.5,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(model: STDiT, batch: int, device: torch.device, full_captions: bool = False):
    T, H, W = model.input_size
    L, C = model.model_max_length, model.caption_channels
    x = torch.randn(batch, model.in_channels, T, H, W, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.randn(batch, 1, L, C, device=device)
    lens = (
        torch.full((batch, 1), L, device=device)
        if full_captions
        else torch.randint(1, L + 1, (batch, 1), device=device)
    )
    mask = (torch.arange(L, device=device)[None] < lens).long()
    noise = torch.randn_like(x)
    return x, t, y, mask, noise


def train_step(model, opt, batch, device, use_mask: bool = True) -> float:
    x, t, y, mask, noise = batch
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(x, t, y, mask=mask if use_mask else None)
    loss = (out[:, : model.in_channels].float() - noise).square().mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def flash_check(model, opt, device) -> str:
    """One training step with SDPA restricted to the flash backend (captions unmasked, since
    flash takes no attention mask; masked cross-attention uses the memory-efficient kernel)."""
    batch = make_batch(model, 1, device, full_captions=True)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            train_step(model, opt, batch, device, use_mask=False)
        return "OK (spatial, temporal and unmasked cross-attention ran on the flash backend)"
    except RuntimeError as err:
        return f"FAILED: {str(err).splitlines()[0]}"


def bench(model, opt, bs: int, device, steps: int, warmup: int) -> dict:
    batch = make_batch(model, bs, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        train_step(model, opt, batch, device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = train_step(model, opt, batch, device)
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    res = {"batch": bs, "step_s": dt, "samples_s": bs / dt, "loss": loss}
    if device.type == "cuda":
        res["peak_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        res["reserved_GiB"] = torch.cuda.max_memory_reserved(device) / 2**30
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny model (smoke test)")
    ap.add_argument("--batch-sizes", default=None, help="comma list; default 4,8,16,32 (tiny: 2)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-ckpt", action="store_true", help="disable gradient checkpointing")
    ap.add_argument("--budget-s", type=float, default=210.0, help="skip further runs past this wall time")
    args = ap.parse_args()
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"gpu_stdit_xl.py: --device {args.device} but CUDA is not available here "
            "(use --device cpu --tiny for a smoke test)"
        )
    sizes = [int(s) for s in (args.batch_sizes or ("2" if args.tiny else "4,8,16,32")).split(",")]

    print(f"python {platform.python_version()}, torch {torch.__version__}", end="")
    if device.type == "cuda":
        print(f", {torch.cuda.get_device_name(device)}", end="")
    print()

    t0 = time.perf_counter()
    with torch.device(device):
        model = STDiT(**TINY) if args.tiny else build_stdit("STDiT-XL/2", **XL)
    model.gradient_checkpointing = not args.no_ckpt
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    n_params = sum(p.numel() for p in model.parameters())
    T, H, W = model.input_size
    print(
        f"model: {'tiny STDiT' if args.tiny else 'STDiT-XL/2'}, {n_params:,} params, latent "
        f"{model.in_channels}x{T}x{H}x{W} ({model.num_patches} tokens), caption "
        f"{model.model_max_length}x{model.caption_channels}; fp32 params + bf16 autocast, "
        f"grad checkpointing {'off' if args.no_ckpt else 'on'}, AdamW, clip 1.0 "
        f"(built in {time.perf_counter() - t0:.1f}s)"
    )
    print(f"SDPA flash check: {flash_check(model, opt, device)}")

    print(
        f"{'ckpt':>5} {'batch':>6} {'s/step':>8} {'samples/s':>10} {'peak alloc GiB':>15} {'peak reserved GiB':>18}"
    )
    runs = [(bs, not args.no_ckpt) for bs in sizes]
    if not args.no_ckpt:
        runs.append((sizes[0], False))  # memory/speed trade-off of checkpointing, if time allows
    per_sample = 0.0  # seconds per sample per step, from the last run
    for bs, ckpt in runs:
        model.gradient_checkpointing = ckpt
        tag = "on" if ckpt else "off"
        estimate = per_sample * bs * (args.warmup + args.steps)
        if time.perf_counter() - start + estimate > args.budget_s:
            print(f"{tag:>5} {bs:>6} skipped (time budget {args.budget_s:.0f}s)")
            continue
        try:
            r = bench(model, opt, bs, device, args.steps, args.warmup)
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            print(f"{tag:>5} {bs:>6} out of memory")
            continue
        per_sample = r["step_s"] / bs
        print(
            f"{tag:>5} {bs:>6} {r['step_s']:>8.3f} {r['samples_s']:>10.2f} "
            f"{r.get('peak_GiB', float('nan')):>15.2f} {r.get('reserved_GiB', float('nan')):>18.2f}"
        )
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
