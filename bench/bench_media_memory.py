"""Peak memory of probe, scenes and cut on huge frames (one worker, each run in its own process).

    .venv/bin/python bench/bench_media_memory.py [--frames 48]

Generates small H.264 files with enormous frames (cached under bench/out/media/): 8192x4320 (the
largest common size, allowed) and 8192x8192 (over mediaio's pixel limit). Runs each operation in a
fresh Python process (started from this small one: a child starts from its parent's peak RSS) and
prints its peak RSS (`resource.getrusage`, ru_maxrss) and wall time. The 8192x8192 file is run
twice: with the default limit (refused) and with `max_pixels=0` (no limit), which shows the
decoder/encoder bounds alone. `imports` is the floor: the modules loaded, nothing read.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "media"

RUN = """
import resource, sys, time
from datakit.shot_detection import detect_scenes
from datakit.stages.cut import cut_clip
from datakit.stages.probe import probe_file
op, path, limit, out = sys.argv[1], sys.argv[2], int(sys.argv[3]) if sys.argv[3] else None, sys.argv[4]
t = time.perf_counter()
if op == "probe":
    r = probe_file("v", path, max_pixels=limit)
    result = r["error"] or "ok"
elif op == "scenes":
    try:
        kwargs = {} if limit is None else {"max_pixels": limit}
        result = f"{detect_scenes(path, **kwargs).analysed_frames} frames"
    except Exception as exc:
        result = str(exc)
elif op.startswith("cut"):
    short = int(op.split(":")[1]) if ":" in op else None
    r = cut_clip(path, out, 0, int(sys.argv[5]), short_side=short, max_pixels=limit)
    result = r.get("error") or f"{r['num_frames']} frames {r['width']}x{r['height']}"
else:
    result = "imports only"
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{rss:.0f}\\t{time.perf_counter() - t:.1f}\\t{result[:60]}")
"""


def measure(op: str, path: Path, frames: int, limit: int | None, out: Path = OUT) -> str:
    args = [
        sys.executable,
        "-c",
        RUN,
        op,
        str(path),
        "" if limit is None else str(limit),
        str(out / "clip.mp4"),
        str(frames),
    ]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        return f"failed: {proc.stderr.strip().splitlines()[-1]}"
    rss, wall, result = proc.stdout.strip().split("\t")
    return f"{rss:>6} MiB {wall:>6} s  {result}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument(
        "--sizes",
        default="8192x4320,8192x8192",
        help="WxH list; a size over mediaio's pixel limit also runs with max_pixels=0",
    )
    ap.add_argument("--out", type=Path, default=OUT, help="where the generated files are cached")
    args = ap.parse_args()
    limit_code = (
        "from mediaio.limits import MAX_PIXELS; print(MAX_PIXELS)"  # not imported here: av raises our RSS
    )
    max_pixels = int(
        subprocess.run(
            [sys.executable, "-c", limit_code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )
    args.out.mkdir(parents=True, exist_ok=True)
    cases = []
    for width, height in (tuple(map(int, size.split("x"))) for size in args.sizes.split(",")):
        limits = (None, 0) if width * height > max_pixels else (None,)
        path = args.out / f"huge_{width}x{height}.mp4"
        if not path.exists():  # in a process of its own: a child inherits its parent's peak RSS
            code = "import sys; from demo.sample_videos import make_huge_sample as m; m(sys.argv[1], *map(int, sys.argv[2:]))"
            make = [sys.executable, "-c", code, str(args.out), str(width), str(height), str(args.frames)]
            subprocess.run(make, cwd=ROOT, check=True)
        cases += [(path, limit) for limit in limits]
    print(f"{'file':<22} {'max_pixels':<10} {'operation':<12} peak RSS, wall, result")
    for path, limit in cases:
        for op in ("imports", "probe", "scenes", "cut", "cut:256"):
            label = "default" if limit is None else str(limit)
            print(
                f"{path.name:<22} {label:<10} {op:<12} {measure(op, path, args.frames, limit, args.out)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
