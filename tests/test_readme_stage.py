"""The README's one-file stage works as written, in-tree and as a plugin.

In-tree: the stage file is dropped into `datakit/stages/` of a copy of the package (no other file
of the copy is edited), and shows up as a command, in `datakit config`, in `status`, as a column of
the `clips` view, and in a curated set selected over that column.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pyarrow.parquet as pq

from tests.conftest import PYTHON, ROOT, cli_env


def _readme_stage_source() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Extending: a new stage is one file") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _runner(cwd, env):
    def datakit(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [PYTHON, "-m", "datakit.cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return out

    return datakit


def test_the_readme_stage_is_one_file_in_the_tree(tmp_path, demo_samples):
    tree = tmp_path / "tree"
    for package in ("datakit", "manifests"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "datakit" / "stages" / "brightness.py").write_text(_readme_stage_source())  # the one file
    env = cli_env()
    env["PYTHONPATH"] = f"{tree}:{env['PYTHONPATH']}"
    datakit = _runner(tree, env)
    where = subprocess.run(
        [PYTHON, "-c", "import datakit; print(datakit.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(tree)), where

    ws = tmp_path / "ws"
    datakit("ingest", "-w", str(ws), str(demo_samples[0].path))
    datakit("probe", "-w", str(ws))
    datakit("scenes", "-w", str(ws))
    assert "--batch-size" in datakit("brightness", "--help").stdout
    run = datakit("brightness", "-w", str(ws), "--batch-size", "2")
    n_clips = int(
        datakit("query", "-w", str(ws), "select count(*) from clips", "--format", "csv").stdout.split()[-1]
    )
    assert f"{n_clips}/{n_clips} items ({n_clips} ok)" in run.stdout
    values = datakit(
        "query", "-w", str(ws), "select brightness from clips", "--format", "csv"
    ).stdout.split()[1:]
    assert len(values) == n_clips and all(0 < float(m) < 255 for m in values)
    assert '"stage": "brightness"' in datakit("status", "-w", str(ws), "--json").stdout
    assert "[brightness]" in datakit("config").stdout
    datakit("select", "bright", "-w", str(ws), "--where", "brightness > 0")
    rows = pq.read_table(ws / "sets" / "bright" / "v1" / "rows.parquet")
    assert rows.num_rows == n_clips and None not in rows.column("brightness").to_pylist()
    assert "brightness" in datakit("query", "-w", str(ws), "describe clips", "--format", "csv").stdout


def test_the_readme_stage_as_a_plugin_module(tmp_path, demo_samples):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "brightness_stage.py").write_text(_readme_stage_source())
    env = cli_env()
    env["PYTHONPATH"] = f"{plugins}:{env['PYTHONPATH']}"
    env["DATAKIT_STAGES"] = "brightness_stage"
    datakit = _runner(ROOT, env)
    ws = tmp_path / "ws"
    datakit("ingest", "-w", str(ws), str(demo_samples[0].path))
    datakit("probe", "-w", str(ws))
    datakit("scenes", "-w", str(ws))
    datakit("brightness", "-w", str(ws))
    assert '"stage": "brightness"' in datakit("status", "-w", str(ws), "--json").stdout
