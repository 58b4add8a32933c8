"""TransNetV2 on the CPU, technique by technique, side by side in one run (issue 16).

    .venv/bin/python bench/bench_transnet_cpu.py                     # cpu, profile, net, stage
    .venv/bin/python bench/bench_transnet_cpu.py --parts net stage --videos 1 --seconds 1

Every row prints frames/s, frames per CPU-second (all threads of this process) and the load
average when it ended: on a shared machine frames per CPU-second is the steadier figure.

cpu: what the CPU offers (torch's kernel level, native bf16) and the precision `auto` picks.
profile: torch.profiler on one 550-frame window, fp32, one thread: the ops that take the time.
net: the network alone on one 550-frame window (500 new frames): FastTransNetV2 in torch with 1 and
  2 threads, and its convolution trunk exported to ONNX and run by ONNX Runtime (heads in torch),
  where `onnx` and `onnxruntime` are installed (they are not in requirements.lock).
stage: decode + shrink to 48x27 alone, `datakit scenes --detector adaptive` and
  `--detector transnetv2` (torch's 2 threads and 1 thread) on 720p H.264, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scenes import Clock, _cpu, _threads, decode_fps, make_videos, stage_fps  # noqa: E402

WINDOW = 550  # frames per window (--window changes it, for a quick run)


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def row(label: str, frames: float, clock: Clock, note: str = "") -> None:
    print(f"  {label:52} {frames / clock.wall:8.1f} {frames / clock.cpu:10.1f}   load {load():>5}  {note}")


def header(title: str) -> None:
    print(title)
    print(f"  {'':52} {'frames/s':>8} {'per CPU-s':>10}")


def cpu() -> None:
    import torch

    from datakit.transnet import resolve_precision

    c = torch._C._cpu
    print(
        f"cpu: torch kernels {torch.backends.cpu.get_cpu_capability()}, native bf16 "
        f"{c._is_avx512_bf16_supported() or c._is_amx_tile_supported()}, {torch.get_num_threads()} threads; "
        f"precision auto -> {resolve_precision('auto', 'cpu')}"
    )


def _window(seed: int = 0):
    import torch

    x = np.random.default_rng(seed).integers(0, 256, (1, WINDOW, 27, 48, 3), dtype=np.uint8)
    return torch.from_numpy(x)


def profile() -> None:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from datakit.transnet import load_model
    from datakit.transnet_net import FastTransNetV2

    net, x = FastTransNetV2(load_model("cpu")), _window()
    with torch.inference_mode():
        net(x)
        with _threads_set(1), torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            net(x)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"profile: FastTransNetV2, one {WINDOW}-frame window, fp32, 1 thread; ops by self time")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        shapes = " ".join(str(s) for s in e.input_shapes[:2])
        print(f"  {100 * e.self_cpu_time_total / total:5.1f} %  {e.key:26} x{e.count:<3} {shapes}")
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    print(f"  convolutions: {100 * conv / total:.0f} % of {total / 1e6:.2f} s")


class _threads_set:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)


class OrtTrunk:
    """FastTransNetV2 with its convolution trunk run by ONNX Runtime (fp32), heads in torch."""

    def __init__(self, net, threads: int, tmp: Path):
        import onnxruntime as ort
        import torch

        self.net = net
        path = tmp / "trunk.onnx"
        if not path.exists():
            trunk = _TrunkModule(net)
            torch.onnx.export(
                trunk,
                (torch.rand(1, WINDOW, 27, 48, 3),),
                str(path),
                input_names=["x"],
                output_names=["means", "feats"],
                dynamic_axes={k: {0: "b", 1: "t"} for k in ("x", "means", "feats")},
                opset_version=17,
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, frames, dtype=None):
        import torch

        means, feats = self.session.run(None, {"x": (frames.float() / 255.0).numpy()})
        return self.net.heads(frames, torch.from_numpy(means), torch.from_numpy(feats))


def _TrunkModule(net):
    import torch

    class Trunk(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.trunk(x)

    return Trunk().eval()


def net_part(calls: int) -> None:
    import torch

    from datakit.transnet import load_model
    from datakit.transnet_net import FastTransNetV2

    net = FastTransNetV2(load_model("cpu"))
    x = _window()
    new = WINDOW - 50  # frames a window adds (25 of context on each side)
    header(f"net: the network alone, {calls} call(s) of one {WINDOW}-frame window ({new} new frames each)")
    with torch.inference_mode():
        ref = [p.numpy() for p in net(x)]
        variants: list[tuple[str, object, int]] = [
            ("FastTransNetV2, torch fp32, 2 threads", net, 2),
            ("FastTransNetV2, torch fp32, 1 thread", net, 1),
        ]
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            print("  (onnx / onnxruntime not installed: no ONNX Runtime rows)")
        else:
            tmp = Path(tempfile.mkdtemp())
            for threads in (2, 1):
                variants.append(
                    (
                        f"ONNX Runtime fp32 trunk + torch heads, {threads} thread(s)",
                        OrtTrunk(net, threads, tmp),
                        threads,
                    )
                )
        for label, fn, threads in variants:
            with _threads_set(threads):
                got = fn(x, torch.float32)  # warm-up
                diff = max(float(np.abs(g.numpy() - r).max()) for g, r in zip(got, ref, strict=True))
                with Clock() as clock:
                    for _ in range(calls):
                        fn(x, torch.float32)
            row(label, calls * new, clock, f"max |p - torch fp32| {diff:.1e}")


def stage(videos: int, seconds: int) -> None:
    truths = make_videos(videos, seconds)
    frames = sum(t.num_frames for t in truths)
    header(f"stage: {videos} x {seconds} s of 1280x720 30 fps H.264 ({frames} frames), one worker (-j 1)")
    decode_fps(truths)  # warm the page cache
    rows = [
        ("decode + shrink to 48x27 (small_frames)", decode_fps, (truths,), {}),
        ("datakit scenes --detector adaptive", stage_fps, (truths,), {"detector": "adaptive"}),
        (
            "datakit scenes --detector transnetv2 (CPU, 2 threads)",
            _cpu,
            (stage_fps, truths),
            {"detector": "transnetv2"},
        ),
        (
            "datakit scenes --detector transnetv2 (CPU, 1 thread)",
            _cpu,
            (_threads, 1, stage_fps, truths),
            {"detector": "transnetv2"},
        ),
    ]
    got = {}
    for label, fn, args, kw in rows:
        fps, per_cpu, used = fn(*args, **kw)
        got[label] = fps
        print(f"  {label:52} {fps:8.1f} {per_cpu:10.1f}   load {load():>5}  {used}")
    adaptive = got["datakit scenes --detector adaptive"]
    best = max(v for k, v in got.items() if "transnetv2" in k)
    print(
        f"  transnetv2 stage time / adaptive stage time: {adaptive / best:.2f} (target <= 2.5), best of the two"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["cpu", "profile", "net", "stage"],
        choices=["cpu", "profile", "net", "stage"],
    )
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=2, help="net: timed calls per row")
    ap.add_argument("--window", type=int, default=WINDOW, help="profile, net: frames per window (>= 100)")
    args = ap.parse_args()
    globals()["WINDOW"] = max(100, args.window)
    print(f"load average at the start: {open('/proc/loadavg').read().strip()}")
    if "cpu" in args.parts:
        cpu()
    if "profile" in args.parts:
        profile()
    if "net" in args.parts:
        net_part(args.calls)
    if "stage" in args.parts:
        stage(args.videos, args.seconds)
    print(f"load average at the end: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
