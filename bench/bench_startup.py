"""Start-up cost of datakit commands, side by side with the floors they are compared against.

Each command is run `--repeat` times, interleaved (A B C A B C ...) so that load on a noisy machine
hits all of them alike; the median wall and CPU (user + sys) times are printed.

- `bare import`: `python -c "import duckdb, pyarrow.parquet"` (what any manifest command needs)
- `datakit status` on a small workspace, `datakit scenes` with nothing to do (a no-op stage run);
  each twice: as repeated (the workspace remembers the counts and the empty plan, `Workspace.read`)
  and as the first command after a write (its remembered answer removed before each run)
- `scenedetect version` (PySceneDetect's CLI start-up)
- one 482-frame 720p video: `datakit scenes` (whole command, fresh workspace after ingest+probe)
  against `scenedetect -i FILE detect-adaptive list-scenes -n`

    .venv/bin/python bench/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.sample_videos import SampleSpec, make_demo_set  # noqa: E402

BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out" / "startup"
PACKAGES = ("cli.py", "datakit", "mediaio", "training", "models", "demo")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU time (user + sys) is what the machine's load inflates least."""
    t0, c0 = time.perf_counter(), children_cpu()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0, children_cpu() - c0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="a 48-frame 320x180 video instead (smoke test)")
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    # Bytecode as an install has it (pip compiles at install): with PYTHONDONTWRITEBYTECODE set and
    # files edited since setup.sh, every run would compile the project's modules again (~0.2 s).
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / d) for d in PACKAGES)], check=True)
    spec = SampleSpec("one720", 1280, 720, 30, "libx264", "mp4", [150, 120, 212], 0, seed=7)
    if args.small:
        spec = SampleSpec("one180", 320, 180, 30, "libx264", "mp4", [24, 24], 0, seed=7)
    one = f"one {sum(spec.scene_frames)}-frame {spec.height}p video"
    video = make_demo_set(OUT / "media", [spec])[0].path
    datakit = str(BIN / "datakit")
    ws = OUT / "ws"
    subprocess.run([datakit, "ingest", "-w", str(ws), str(video)], check=True, capture_output=True)
    subprocess.run([datakit, "probe", "-w", str(ws)], check=True, capture_output=True)
    subprocess.run([datakit, "scenes", "-w", str(ws)], check=True, capture_output=True)

    def fresh_scenes() -> list[str]:  # a workspace where scenes has the video still to do
        target = OUT / f"ws-{time.monotonic_ns()}"
        subprocess.run([datakit, "ingest", "-w", str(target), str(video)], check=True, capture_output=True)
        subprocess.run([datakit, "probe", "-w", str(target)], check=True, capture_output=True)
        return [datakit, "scenes", "-w", str(target)]

    def forget(make, name: str):  # the first command after a write: its answer is not remembered yet
        def run() -> list[str]:
            (ws / "cache" / f"{name}.json").unlink(missing_ok=True)  # Workspace.read(remember=(name, ...))
            return make()

        return run

    commands = {
        "bare import (duckdb, pyarrow.parquet)": lambda: [
            sys.executable,
            "-c",
            "import duckdb, pyarrow.parquet",
        ],
        "datakit status": lambda: [datakit, "status", "-w", str(ws)],
        "datakit status, nothing remembered": forget(lambda: [datakit, "status", "-w", str(ws)], "status"),
        "datakit scenes, nothing to do": lambda: [datakit, "scenes", "-w", str(ws)],
        "datakit scenes, nothing to do, nothing remembered": forget(
            lambda: [datakit, "scenes", "-w", str(ws)], "plan-scenes"
        ),
        "scenedetect version": lambda: [str(BIN / "scenedetect"), "version"],
        f"{one}: datakit scenes": fresh_scenes,
        f"{one}: scenedetect CLI": lambda: [
            str(BIN / "scenedetect"),
            "-i",
            str(video),
            "detect-adaptive",
            "list-scenes",
            "-n",
        ],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, make in commands.items():
            times[name].append(timed(make()))
    wall = {name: statistics.median(w for w, _ in v) for name, v in times.items()}
    cpu = {name: statistics.median(c for _, c in v) for name, v in times.items()}
    base = "bare import (duckdb, pyarrow.parquet)"
    print(
        f"median of {args.repeat} interleaved runs (seconds); load average: {open('/proc/loadavg').read().strip()}"
    )
    for name in times:
        print(
            f"  {name:50s} {wall[name]:6.2f} s   {wall[name] / wall[base]:5.2f}x bare import   "
            f"cpu {cpu[name]:5.2f} s  {cpu[name] / cpu[base]:5.2f}x"
        )
    ours, cli = f"{one}: datakit scenes", f"{one}: scenedetect CLI"
    print(f"one video, datakit scenes / scenedetect CLI: {wall[ours] / wall[cli]:.2f} (target <= 1.0)")
    for name in (
        "datakit status",
        "datakit status, nothing remembered",
        "datakit scenes, nothing to do",
        "datakit scenes, nothing to do, nothing remembered",
    ):
        print(
            f"{name}: {wall[name] / wall[base]:.2f}x bare import, cpu {cpu[name] / cpu[base]:.2f}x (target <= 1.5)"
        )
    shutil.rmtree(OUT, ignore_errors=True)


if __name__ == "__main__":
    main()
