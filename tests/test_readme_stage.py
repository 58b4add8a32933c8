"""The README's one-file stage works as written: discovered, given a command, a table and a status row."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import PYTHON, ROOT, cli_env


def _readme_stage_source() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Extending: a new stage is one file"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_stage_is_one_file(tmp_path, demo_samples):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "brightness_stage.py").write_text(_readme_stage_source())
    env = cli_env()
    env["PYTHONPATH"] = f"{plugins}:{env['PYTHONPATH']}"
    env["DATAKIT_STAGES"] = "brightness_stage"
    ws = tmp_path / "ws"

    def datakit(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([PYTHON, "-m", "datakit.cli", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out

    datakit("ingest", "-w", str(ws), str(demo_samples[0].path))
    datakit("probe", "-w", str(ws))
    datakit("scenes", "-w", str(ws))
    assert "--batch-size" in datakit("brightness", "--help").stdout
    run = datakit("brightness", "-w", str(ws), "--batch-size", "2")
    n_clips = int(datakit("query", "-w", str(ws), "select count(*) from clips", "--format", "csv").stdout.split()[-1])
    assert f"{n_clips}/{n_clips} items ({n_clips} ok)" in run.stdout
    means = datakit("query", "-w", str(ws), "select mean from brightness", "--format", "csv").stdout.split()[1:]
    assert len(means) == n_clips and all(0 < float(m) < 255 for m in means)
    status = datakit("status", "-w", str(ws), "--json").stdout
    assert '"stage": "brightness"' in status
    assert "[brightness]" in datakit("config").stdout
