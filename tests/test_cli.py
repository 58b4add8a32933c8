"""The datakit command line as a user drives it: ingest, probe, status, query, run."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import PYTHON, ROOT, cli_env


def datakit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [PYTHON, str(ROOT / "cli.py"), "datakit", *args], env=cli_env(), capture_output=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"datakit {' '.join(args)} failed: {proc.stderr.decode()[-2000:]}")
    return proc


@pytest.fixture(scope="module")
def probed(tmp_path_factory, demo_samples, bad_inputs) -> Path:
    ws = tmp_path_factory.mktemp("cli") / "ws"
    datakit("ingest", "-w", str(ws), str(Path(demo_samples[0].path).parent), str(bad_inputs["empty"].parent))
    datakit("probe", "-w", str(ws), "-j", "2")
    return ws


def test_status_json_and_table(probed, demo_samples):
    rows = {r["stage"]: r for r in json.loads(datakit("status", "-w", str(probed), "--json").stdout)}
    assert rows["probe"]["ok"] == len(demo_samples) + 1  # + the weird-but-valid name
    assert rows["probe"]["error"] == 5 and rows["probe"]["pending"] == 0
    assert rows["ingest"]["error"] == 2  # directory named like a video, broken symlink
    assert rows["scenes"]["pending"] == rows["probe"]["ok"]
    text = datakit("status", "-w", str(probed)).stdout.decode()
    assert "probe" in text and "pending" in text


def test_query_formats(probed, demo_samples, tmp_path):
    """csv, json, parquet and the printed table hold the same values: the probed sizes of the samples."""
    sql = "select video_id, width, height from videos where status = 'ok' order by video_id"
    rows = list(
        csv.DictReader(
            io.StringIO(datakit("query", "-w", str(probed), sql, "--format", "csv").stdout.decode())
        )
    )
    expected_sizes = sorted(
        [(t.width, t.height) for t in demo_samples] + [(160, 120)]
    )  # + the weird-name sample
    assert sorted((int(r["width"]), int(r["height"])) for r in rows) == expected_sizes
    ids = [r["video_id"] for r in rows]
    assert ids == sorted(set(ids)) and all(len(i) == 16 for i in ids)
    typed = [{"video_id": r["video_id"], "width": int(r["width"]), "height": int(r["height"])} for r in rows]
    lines = datakit("query", "-w", str(probed), sql, "-f", "json").stdout.decode().splitlines()
    assert [json.loads(line) for line in lines] == typed
    table = pq.read_table(io.BytesIO(datakit("query", "-w", str(probed), sql, "-f", "parquet").stdout))
    assert table.to_pylist() == typed
    out = tmp_path / "r.parquet"
    datakit("query", "-w", str(probed), sql, "-f", "parquet", "--output", str(out))
    assert pq.read_table(out).to_pylist() == typed
    shown = datakit(
        "query", "-w", str(probed), "select count(*) as n_ok from videos where status = 'ok'"
    ).stdout.decode()
    header = [line.strip(" ┃") for line in shown.splitlines() if "┃" in line]
    values = [line.strip(" │") for line in shown.splitlines() if "│" in line]
    assert header == ["n_ok"] and values == [str(len(typed))]


def test_query_table_shows_values_as_they_are(probed):
    """Brackets in values are not rich markup, and a repeated column name keeps its own column."""
    sql = "select '[red]x[/red]' as \"[b]name\", '[/]' as v, [1, 2] as v"
    proc = datakit("query", "-w", str(probed), sql)
    shown = proc.stdout.decode()
    header = [
        c.strip() for c in next(line for line in shown.splitlines() if "┃" in line).strip("┃").split("┃")
    ]
    values = [
        c.strip() for c in next(line for line in shown.splitlines() if "│" in line).strip("│").split("│")
    ]
    assert header == ["[b]name", "v", "v"] and values == ["[red]x[/red]", "[/]", "[1, 2]"]


def test_query_csv_writes_nested_values_as_json(probed):
    sql = "select [1, 2] as ints, {'a': 'x'} as rec, ['p', null] as strs, null::int[] as none"
    rows = list(
        csv.DictReader(io.StringIO(datakit("query", "-w", str(probed), sql, "-f", "csv").stdout.decode()))
    )
    assert len(rows) == 1
    assert json.loads(rows[0]["ints"]) == [1, 2] and json.loads(rows[0]["rec"]) == {"a": "x"}
    assert json.loads(rows[0]["strs"]) == ["p", None] and rows[0]["none"] == ""


def test_query_output_file_and_format_errors(probed, tmp_path):
    sql = "select video_id from videos order by video_id"
    out = tmp_path / "new" / "folder" / "ids.csv"  # missing folders are created; the suffix names the format
    datakit("query", "-w", str(probed), sql, "--output", str(out))
    ids = [r["video_id"] for r in csv.DictReader(out.open())]
    lines = datakit("query", "-w", str(probed), sql, "-f", "json").stdout.decode().splitlines()
    assert ids == [json.loads(line)["video_id"] for line in lines] and len(ids) > 1
    for args, message in [
        (["-f", "xml"], "unknown --format 'xml'"),
        (["--output", str(tmp_path / "ids.txt")], "cannot tell the format"),
        (["-f", "table", "--output", str(tmp_path / "t.csv")], "--output needs --format"),
        (["-f", "csv", "--output", str(tmp_path / "new")], "is a folder"),
        (["-f", "csv", "--output", str(out / "below-a-file.csv")], "cannot write"),
    ]:
        proc = datakit("query", "-w", str(probed), sql, *args, check=False)
        err = proc.stderr.decode()
        assert proc.returncode in (1, 2) and message in err and "Traceback" not in err, (args, err)
    assert [r["video_id"] for r in csv.DictReader(out.open())] == ids, (
        "a failed write leaves the old file alone"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "insert into sources values ('x')",
        "copy (select 1) to '{out}'",
        "attach '{out}'",
        "create table t as select 1",
        "select 1; drop view videos",
        "explain analyze copy (select 1) to '{out}'",
        "explain analyze install httpfs",
    ],
)
def test_query_refuses_writes(probed, sql, tmp_path):
    out = tmp_path / "should-not-exist"
    proc = datakit("query", "-w", str(probed), sql.format(out=out), check=False)
    assert proc.returncode == 2
    assert "read-only" in proc.stderr.decode() or "one statement" in proc.stderr.decode()
    assert not out.exists()


def test_query_errors_are_messages_not_tracebacks(probed):
    proc = datakit("query", "-w", str(probed), "select nope from videos", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
    assert "nope" in proc.stderr.decode()


def test_query_on_missing_workspace(tmp_path):
    proc = datakit("query", "-w", str(tmp_path / "none"), "select 1", check=False)
    assert proc.returncode != 0 and "no datakit workspace" in proc.stderr.decode()


def test_unknown_stage_option_is_refused(probed):
    proc = datakit("probe", "-w", str(probed), "--set", "no_such_option=1", check=False)
    assert proc.returncode != 0 and "no_such_option" in proc.stderr.decode()


def test_every_command_has_help():
    for cmd in (
        "ingest",
        "download",
        "probe",
        "scenes",
        "cut",
        "status",
        "query",
        "run",
        "compact",
        "samples",
    ):
        assert "Usage" in datakit(cmd, "--help").stdout.decode()


def test_query_runs_a_recipe(tmp_path):
    from datakit.workspace import Workspace

    ws = Workspace(tmp_path)
    ws.write("sources", [{"video_id": v, "source": v, "source_kind": "file", "status": "ok"} for v in "ab"])
    ws.write(
        "probes",
        [
            {"video_id": "a", "status": "ok", "width": 640, "height": 360},
            {"video_id": "b", "status": "ok", "width": 320, "height": 240},
        ],
    )
    ws.write("scene_runs", [{"video_id": v, "status": "ok", "run_key": v} for v in "ab"])
    spans = [
        ("a", 0, 90),
        ("a", 100, 130),
        ("a", 200, 700),
        ("b", 0, 90),
    ]  # 3 s, 1 s, 16.7 s at 30 fps; b too small
    ws.write(
        "clip_spans",
        [
            {
                "clip_id": f"{v}-{s}-{e}",
                "video_id": v,
                "start_frame": s,
                "end_frame": e,
                "fps": 30.0,
                "start_s": s / 30,
                "end_s": e / 30,
                "width": 640 if v == "a" else 320,
                "height": 360 if v == "a" else 240,
                "run_key": v,
            }
            for v, s, e in spans
        ],
    )
    lines = datakit("query", "-w", str(tmp_path), "@clips_2_15s", "-f", "json").stdout.decode().splitlines()
    assert [json.loads(line)["clip_id"] for line in lines] == ["a-0-90"]
    proc = datakit("query", "-w", str(tmp_path), "@nope", check=False)
    assert proc.returncode == 2 and "@clips_2_15s" in proc.stderr.decode()


def test_run_from_a_pipeline_config(tmp_path, demo_samples):
    """`datakit run -c FILE`: inputs relative to the file, stage options and `enabled` honoured."""
    import shutil

    src = tmp_path / "proj" / "raw"
    src.mkdir(parents=True)
    for t in demo_samples[:2]:
        shutil.copy(t.path, src)
    config = tmp_path / "proj" / "pipeline.toml"
    config.write_text(
        '[ingest]\ninputs = ["raw"]\n[download]\nenabled = false\n[probe]\nworkers = 2\n'
        "[scenes]\nmin_clip_s = 1.0\nmax_clip_s = 2.0\n[cut]\nenabled = true\nshort_side = 64\n"
    )
    ws = tmp_path / "ws"
    datakit("run", "-c", str(config), "-w", str(ws))
    rows = {r["stage"]: r for r in json.loads(datakit("status", "-w", str(ws), "--json").stdout)}
    assert rows["probe"]["ok"] == 2 and rows["scenes"]["ok"] == 2
    assert rows["cut"]["ok"] == rows["clips"]["ok"] > 0 and rows["cut"]["pending"] == 0
    clips = [
        json.loads(line)
        for line in datakit("query", "-w", str(ws), "select * from clips", "-f", "json").stdout.splitlines()
    ]
    assert all(c["end_s"] - c["start_s"] <= 2.0 + 1e-9 for c in clips)
    from mediaio import read_frames

    first = read_frames(clips[0]["path"], 0, 1)
    assert min(first.shape[1:3]) == 64, "cut honoured short_side from the config"
    again = datakit("run", "-c", str(config), "-w", str(ws))
    assert "0/0 items" in (again.stdout + again.stderr).decode(), "a rerun has nothing to do"


def test_run_settings_never_reach_the_stage(probed, tmp_path):
    from datakit.pipeline import run_settings

    opts, run = run_settings(
        "probe", {"executor": "local", "workers": 2, "enabled": False, "count_frames": True}
    )
    assert opts == {"count_frames": True}
    assert run == {"enabled": False, "workers": 2, "executor": "local", "cpus": None, "gpus": None}
    config = tmp_path / "p.toml"
    config.write_text('[probe]\nexecutor = "local"\nworkers = 2\n')
    out = datakit("probe", "-w", str(probed), "-c", str(config), "--executor", "local")
    assert "0/0 items" in (out.stdout + out.stderr).decode()


def test_help_names_every_group():
    top = subprocess.run(
        [PYTHON, str(ROOT / "cli.py"), "--help"], env=cli_env(), capture_output=True, text=True
    )
    commands = top.stdout.split("Commands:")[1]
    names = [line.split()[0] for line in commands.strip().splitlines() if line[:3].strip()]
    assert {"datakit", "demo", "sample", "train"} <= set(names), names
    listed = datakit("--help").stdout.decode()
    for name in ("status", "query", "export", "select", "scenes", "score", "samples"):
        assert f"\n  {name} " in listed, name


def test_stage_options_one_spelling_old_one_deprecated(probed):
    new = datakit("probe", "-w", str(probed), "-o", "count_frames=false")
    assert "0/0 items" in new.stdout.decode() and "deprecated" not in new.stderr.decode()
    old = datakit("probe", "-w", str(probed), "--set", "count_frames=false")
    assert (
        "0/0 items" in old.stdout.decode()
        and "--set KEY=VALUE for stage options is deprecated" in old.stderr.decode()
    )
    bad = datakit("probe", "-w", str(probed), "--option", "count_frame=1", check=False)
    assert bad.returncode == 2 and "count_frames" in bad.stderr.decode()


def test_status_counts_pending_per_model_key_run(tmp_path):
    """Work for the default model is counted only with --defaults (the user never chose it)."""
    from datakit.workspace import Workspace

    ws = Workspace(tmp_path)
    ws.write("sources", [{"video_id": "a", "source": "a", "source_kind": "file", "status": "ok"}])
    ws.write("probes", [{"video_id": "a", "status": "ok", "width": 640, "height": 360}])
    ws.write("scene_runs", [{"video_id": "a", "status": "ok", "run_key": "r"}])
    ws.write(
        "clip_spans",
        [
            {
                "clip_id": f"a-{s}-{s + 90}",
                "video_id": "a",
                "start_frame": s,
                "end_frame": s + 90,
                "fps": 30.0,
                "start_s": s / 30,
                "end_s": s / 30 + 3,
                "run_key": "r",
            }
            for s in (0, 100, 200)
        ],
    )
    ws.write(
        "aesthetic_scores",
        [
            {
                "row_id": "a-0-90:mine",
                "clip_id": "a-0-90",
                "model_key": "mine",
                "status": "ok",
                "aesthetic": 5.0,
            }
        ],
    )
    rows = [
        r
        for r in json.loads(datakit("status", "-w", str(tmp_path), "--json").stdout)
        if r["stage"] == "aesthetic"
    ]
    assert [(r["model_key"], r["ok"], r["pending"]) for r in rows] == [("mine", 1, 2)]
    caption = [
        r
        for r in json.loads(datakit("status", "-w", str(tmp_path), "--json").stdout)
        if r["stage"] == "caption"
    ]
    assert [(r["model_key"], r["pending"]) for r in caption] == [(None, 0)], "never run: nothing counted"
    with_defaults = json.loads(datakit("status", "-w", str(tmp_path), "--json", "--defaults").stdout)
    keys = [(r["model_key"], r["pending"]) for r in with_defaults if r["stage"] == "aesthetic"]
    assert keys[0] == ("mine", 2) and len(keys) == 2 and keys[1][1] == 3, keys
    text = datakit("status", "-w", str(tmp_path)).stdout.decode()
    assert "mine" in text and "aesthetic" in text
    card = json.loads(
        datakit("select", "mine", "--where", "aesthetic >= 5", "-w", str(tmp_path), "--json").stdout
    )
    assert card["set"] == "mine@v1" and card["row_count"] == 1 and Path(card["path"]).is_dir()


def test_off_a_terminal_a_stage_prints_plain_progress_lines(tmp_path, demo_samples):
    ws = str(tmp_path / "ws")
    datakit("ingest", "-w", ws, *[str(t.path) for t in demo_samples[:2]])
    env = cli_env() | {"DATAKIT_PROGRESS_INTERVAL": "0"}
    proc = subprocess.run(
        [PYTHON, str(ROOT / "cli.py"), "datakit", "probe", "-w", ws], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("probe: ")]
    assert lines[0].startswith("probe: 1/2 (50%)") and "items/s" in lines[0]
    assert lines[-1].startswith("probe: 2/2 (100%)"), lines


def test_run_exits_1_when_every_item_of_a_stage_errored(tmp_path, bad_inputs):
    ws = str(tmp_path / "ws")
    datakit("ingest", "-w", ws, str(bad_inputs["corrupt"]), str(bad_inputs["truncated"]))
    proc = datakit("run", "-w", ws, "--only", "probe", check=False)
    assert proc.returncode == 1 and "every item of probe ended in error (2)" in proc.stderr.decode()
