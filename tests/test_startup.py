"""Start-up work a CLI process is spared (bench/bench_startup.py measures the time)."""

from __future__ import annotations

import subprocess

from tests.conftest import PYTHON, ROOT, cli_env


def _imports(args: list[str], cwd) -> str:
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "datakit.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_writing_commands_do_not_import_pandas(tmp_path, demo_samples):
    ws = str(tmp_path / "ws")
    log = _imports(["ingest", "-w", ws, str(demo_samples[0].path)], tmp_path)
    log += _imports(["probe", "-w", ws], tmp_path)
    log += _imports(["scenes", "-w", ws], tmp_path)
    assert "pandas.core" not in log, "pyarrow's look for pandas objects imported pandas"
    assert "scenes: 1/1 items (1 ok)" in log, "the commands ran and wrote their rows"


def test_pandas_conversions_still_work_after_the_skipped_look():
    code = """
import math, sys
import pyarrow as pa
from datakit.lazy import pyarrow_skips_pandas
pyarrow_skips_pandas()
assert pa.array(["a", None]).null_count == 1 and "pandas" not in sys.modules
import pandas as pd
frame = pa.table({"x": [1.0, None]}).to_pandas()
assert math.isnan(frame["x"][1])
assert pa.Table.from_pandas(pd.DataFrame({"x": [1.0, math.nan]})).column("x").null_count == 1
assert pa.array(pd.Series([1.0, math.nan])).null_count == 1, "a Series is recognised again"
print("ok")
"""
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
