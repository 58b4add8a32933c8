"""`train --json`: one JSON line at the end, the run folder and its last metrics row."""

from __future__ import annotations

import json

from tests.test_train_guards import one_set, train_cli, video  # noqa: F401  (fixture)


def test_train_json_prints_the_run_folder_and_the_last_step(tmp_path, video):  # noqa: F811
    ws = one_set(tmp_path / "ws", video)
    run_dir = tmp_path / "run"
    proc = train_cli(ws, run_dir, "--max-steps", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["run_dir"] == str(run_dir)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["last"] == last and last["step"] == 2
