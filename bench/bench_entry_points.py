"""Start-up cost of finding `datakit.stages` entry points: the registry's cached list versus an
importlib.metadata scan of every installed distribution, each in a fresh interpreter, interleaved.

    python bench/bench_entry_points.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHED = (
    "import time; from datakit import registry; t = time.perf_counter(); registry.entry_point_values(); "
    "print(time.perf_counter() - t)"
)
SCAN = (
    "import time; t = time.perf_counter(); from importlib.metadata import entry_points; "
    "[e.value for e in entry_points(group='datakit.stages')]; print(time.perf_counter() - t)"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"registry (cached list)": [], "importlib.metadata scan": []}
    for _ in range(args.repeat):
        for label, code in zip(times, (CACHED, SCAN), strict=True):
            out = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
            )
            times[label].append(float(out.stdout))
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for label, values in times.items():
        print(
            f"{label:26s} median {1e3 * statistics.median(values):6.1f} ms  min {1e3 * min(values):6.1f} ms"
        )


if __name__ == "__main__":
    main()
