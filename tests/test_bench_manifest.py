"""bench/bench_manifest.py runs at a tiny size, so it cannot go stale (no timing is asserted)."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import PYTHON, ROOT, cli_env


def test_bench_manifest_runs_and_prints_its_summary_line(tmp_path):
    proc = subprocess.run([PYTHON, str(ROOT / "bench" / "bench_manifest.py"), "--clips", "400", "--part-rows", "100",
                           "--repeat", "1", "--workspace", str(tmp_path / "ws")],
                          env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"status [\d.]+ s, curated [\d.]+ s, plan-cut [\d.]+ s", lines[-1]), lines[-1]
    assert "built 20 videos, 400 clips" in proc.stdout and "peak RSS" in proc.stdout
    assert re.search(r"plan cut \(400 clips, all done\)\s+[\d.]+ s\s+\(0\)", proc.stdout), "every clip was cut"
