"""The README's first command runs the demo: it must keep working end to end."""

from __future__ import annotations

import json
import subprocess

import av
import duckdb
import pytest

from tests.conftest import PYTHON, ROOT, cli_env


@pytest.mark.timeout(600)
def test_demo_end_to_end(tmp_path):
    ws = tmp_path / "demo"
    proc = subprocess.run([PYTHON, str(ROOT / "cli.py"), "demo", "-w", str(ws)], env=cli_env(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    con = duckdb.connect(str(ws / "manifest" / "manifest.duckdb"), read_only=True)
    con.execute(f"SET file_search_path = '{ws / 'manifest'}'")  # the views' globs are relative to the workspace
    statuses = dict(con.sql("select status, count(*) from videos group by all").fetchall())
    assert statuses == {"ok": 6, "error": 7}
    n_clips, n_files = con.execute("select count(*), count(path) from clips").fetchall()[0]
    assert n_clips >= 10 and n_files == n_clips, "every clip was cut to a file"
    assert (ws / "clips_contact_sheet.png").stat().st_size > 10_000
    meta = json.loads((ws / "samples-random-weights" / "samples.json").read_text())
    with av.open(meta["samples"][0]["mp4"]) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8
    out = proc.stdout.decode()
    assert "the video is noise" in out and "inputs that became error rows" in out
