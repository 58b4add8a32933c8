"""bench/gpu_check.sh's plumbing on a CPU (`--dry-run`: tiny random models, DDP, AdamW): the real
trainer runs online, from a feature cache the script writes, with torch.compile (eager), and a
SIGKILLed run resumes to the same per-step losses; one table comes out. Sizes, speed and ZeRO are
only checked on a GPU."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT, cli_env

pytestmark = pytest.mark.timeout(900)


def test_gpu_check_dry_run_prints_one_table(tmp_path):
    env = {
        **cli_env(),
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "PYTHON": PYTHON,
        "PATH": f"{os.path.dirname(PYTHON)}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu_check.sh"),
            "--dry-run",
            "--cases",
            "1,2,4,5",
            "--steps",
            "2",
            "--resume-steps",
            "4,3,2",
            "--budget-s",
            "800",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert "gpu_check: none (CPU) | torch " in table and "colossalai 0.5.0" in table and "load " in table
    rows = {r["case"]: r for r in json.loads((tmp_path / "out" / "gpu_check.json").read_text())["rows"]}
    assert sorted(rows) == [1, 2, 4, 5]
    for n in (1, 2, 5):
        assert "error" not in rows[n] and rows[n]["steps"] >= 2 and rows[n]["samples_per_s"] > 0, rows[n]
    assert rows[4].get("equal") is True and rows[4]["killed_after"] >= 3, rows[4]
    assert "per-step losses EQUAL" in table
    assert "versions: python" in (tmp_path / "out" / "gpu_check_env.txt").read_text()
