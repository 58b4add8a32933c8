"""Curated sets: select (immutable versions, cards), the shipped recipes' thresholds, sets, export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from datakit.executors import run_stage
from datakit.export import export_set
from datakit.ingest import ingest
from datakit.sets import SET_COLUMNS, SetError, list_sets, recipe_sql, resolve, select, selection_sql
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace
from tests.conftest import PYTHON, ROOT, cli_env
from tests.curation_fixtures import CASES, GOOD, curated_manifest, small_videos, write_scores


def test_recipes_keep_exactly_the_clips_within_the_briefs_thresholds(tmp_path):
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)
    kept = {name: [r["clip_id"] for r in ws.sql(recipe_sql(name))] for name in ("video", "hq", "image")}
    assert kept["video"] == ["fair", "good", "offtopic", "shaky", "terse"]
    assert kept["hq"] == ["good"]
    # images and frames of clips by aesthetic >= 5, known duplicates out (dedup need not have run)
    assert kept["image"] == sorted(set(CASES) - {"ugly", "unscored", "copy"})
    frame = ws.sql(recipe_sql("image"))[0]
    assert frame["frame"] == frame["start_frame"] + (frame["end_frame"] - frame["start_frame"]) // 2


def test_select_writes_immutable_numbered_versions_with_a_card(tmp_path):
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)
    sql, kind, recipe = selection_sql("@video", None, None)
    v1 = select(ws, "pretrain", sql, recipe=recipe, kind=kind)
    assert (v1.version, v1.path) == (1, ws.root / "sets" / "pretrain" / "v1")
    rows = pq.read_table(v1.path / "rows.parquet")
    assert rows.column_names[: len(SET_COLUMNS)] == list(SET_COLUMNS)
    assert rows.column("clip_id").to_pylist() == ["fair", "good", "offtopic", "shaky", "terse"]
    good = rows.to_pylist()[1]
    assert (good["num_frames"], good["fps"], good["height"], good["width"]) == (96, 24.0, 240, 320)
    assert (good["aspect_ratio"], good["duration_s"], good["caption"]) == (0.75, 4.0, GOOD["caption"])
    assert (good["aesthetic"], good["motion"], good["static"], good["text_match"]) == (7.0, 0.3, False, 0.3)
    assert good["source_path"] == "/nonexistent/v-good.mp4" and good["path"] is None

    card = json.loads((v1.path / "card.json").read_text())
    assert card["name"] == "pretrain" and card["version"] == 1 and card["row_count"] == 5
    assert card["recipe"] == {"name": "@video", "kind": "recipe", "text": recipe_sql("video")}
    parts = card["manifest"]["tables"]["clip_spans"]
    assert parts["part_rows"] == len(CASES) and parts["parts"] == [
        p.name for p in ws.live_parts("clip_spans")
    ]
    assert card["created"] and card["manifest"]["schema_version"] >= 3

    # the files are read-only; a new select is v2; NAME is the latest, NAME@v1 the first
    assert oct((v1.path / "rows.parquet").stat().st_mode & 0o777) == "0o444"
    v2 = select(ws, "pretrain", "SELECT clip_id, 'x' AS note FROM clips WHERE clip_id = 'good'", kind="sql")
    assert v2.version == 2 and resolve(ws, "pretrain") == v2 and resolve(ws, "pretrain@v1") == v1
    assert v2.read().to_pylist()[0]["note"] == "x" and v2.read().column("aesthetic").to_pylist() == [7.0]
    assert [v.version for v in list_sets(ws)["pretrain"]] == [1, 2]
    assert pq.read_table(v1.rows_path).num_rows == 5  # v1 is untouched


@pytest.mark.parametrize(
    ("name", "sql", "message"),
    [
        ("bad/name", "SELECT clip_id FROM clips", "bad set name"),
        ("s", "SELECT video_id FROM clips", "no clip_id column"),
        ("s", "SELECT clip_id FROM clips UNION ALL SELECT 'good'", "more than once"),
        ("s", "SELECT 'nope' AS clip_id", "not in the clips view"),
        ("s", "SELECT clip_id FROM no_such_view", "the selection failed"),
        ("s", "SELECT * FROM read_csv('/etc/passwd')", "the selection failed"),
    ],
)
def test_bad_selections_write_nothing(tmp_path, name, sql, message):
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)
    with pytest.raises(SetError, match=message):
        select(ws, name, sql)
    assert list_sets(ws) == {}


def test_selection_is_read_only_and_needs_exactly_one_source():
    from datakit.query import ReadOnlyError, check_read_only

    with pytest.raises(SetError, match="exactly one"):
        selection_sql("@video", "aesthetic > 5", None)
    with pytest.raises(SetError, match="no recipe @nope"):
        selection_sql("@nope", None, None)
    sql, _, _ = selection_sql(None, "1 = 1; DROP TABLE x", None)
    with pytest.raises(ReadOnlyError):
        check_read_only(sql)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Workspace:
    """Two real videos (two clips each) with captions and scores written directly."""
    root = tmp_path_factory.mktemp("scanned")
    small_videos(root / "media", 2)
    ws = Workspace(root / "ws")
    ingest(ws, [str(root / "media")])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    clips = [c["clip_id"] for c in ws.sql("SELECT clip_id FROM clips ORDER BY clip_id")]
    write_scores(
        ws,
        {
            cid: {**GOOD, "aesthetic": 5.0 + i, "caption": f"caption {i}", "dup_group": cid}
            for i, cid in enumerate(clips[:3])
        },
    )
    return ws


def test_cli_select_sets_and_opensora_export_cut_the_clips(scanned, tmp_path):
    def datakit(*args: str) -> str:
        cmd = [PYTHON, str(ROOT / "cli.py"), "datakit", *args, "-w", str(scanned.root)]
        return subprocess.run(cmd, env=cli_env(), check=True, capture_output=True, text=True).stdout

    assert "allclips@v1: 4 rows" in datakit("select", "allclips", "--where", "media_type = 'video'")
    listing = datakit("sets")
    assert "allclips" in listing and "v1" in listing and "--where" in listing
    bad = subprocess.run(
        [
            PYTHON,
            str(ROOT / "cli.py"),
            "datakit",
            "select",
            "x",
            "--sql",
            "DELETE FROM clips",
            "-w",
            str(scanned.root),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "read-only" in bad.stderr

    out = tmp_path / "train.csv"
    printed = datakit(
        "export", "allclips@v1", "--format", "opensora", "--output", str(out), "--short-side", "32"
    )
    assert "exported 3 rows" in printed and "1 without caption" in printed
    table = pacsv.read_csv(out).to_pylist()
    assert list(table[0])[:8] == [
        "path",
        "text",
        "num_frames",
        "height",
        "width",
        "aspect_ratio",
        "resolution",
        "fps",
    ]
    assert [r["text"] for r in table] == ["caption 0", "caption 1", "caption 2"]
    spans = {c["clip_id"]: c for c in scanned.sql("SELECT * FROM clips")}
    for row in table:  # each row is a clip file, cut frame-exact, at the asked size
        assert Path(row["path"]).is_file() and row["clip_id"] in spans
        span = spans[row["clip_id"]]
        assert row["num_frames"] == span["end_frame"] - span["start_frame"]
        assert min(row["height"], row["width"]) == 32 and row["resolution"] == row["height"] * row["width"]
        assert row["aspect_ratio"] == pytest.approx(row["height"] / row["width"])
        assert row["aes"] == span["aesthetic"]


def test_webdataset_export_writes_byte_sized_shards_that_webdataset_reads(scanned, tmp_path):
    import webdataset as wds

    select(scanned, "wds", "SELECT * FROM clips WHERE caption IS NOT NULL ORDER BY clip_id")
    result = export_set(scanned, "wds", "webdataset", tmp_path / "shards", shard_bytes=1, progress=False)
    assert result.rows == 3 and len(result.files) == 3  # every sample reaches 1 byte: one per shard
    samples = list(wds.WebDataset([str(f) for f in result.files], shardshuffle=False))
    rows = {r["clip_id"]: r for r in resolve(scanned, "wds").read().to_pylist()}
    assert [s["__key__"] for s in samples] == sorted(rows)
    for s in samples:
        meta = json.loads(s["json"])
        assert (
            s["txt"].decode() == rows[s["__key__"]]["caption"]
            and meta["aesthetic"] == rows[s["__key__"]]["aesthetic"]
        )
        cut = scanned.sql("SELECT path FROM cuts WHERE clip_id = ?", [s["__key__"]])[0]["path"]
        assert s["mp4"] == Path(cut).read_bytes()
    bigger = export_set(
        scanned, "wds", "webdataset", tmp_path / "one-shard", shard_bytes=10**9, progress=False
    )
    assert len(bigger.files) == 1
    with pytest.raises(SetError, match="already holds"):
        export_set(scanned, "wds", "webdataset", tmp_path / "one-shard", progress=False)


def test_cli_select_takes_recipe_parameters_and_recipe_files(tmp_path):
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)

    def datakit(*args: str) -> subprocess.CompletedProcess:
        cmd = [PYTHON, str(ROOT / "cli.py"), "datakit", "select", *args, "-w", str(ws.root), "--json"]
        return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True)

    # @hq keeps only "good" at its own thresholds; lowering them via --param keeps more, recorded in the card
    strict = json.loads(datakit("hq", "--recipe", "@hq").stdout)
    loose = datakit(
        "hq", "--recipe", "@hq", "--param", "hq_min_aesthetic=0", "--param", "hq_min_text_match=0"
    )
    card = json.loads(loose.stdout)
    assert strict["row_count"] == 1 and card["row_count"] > 1
    assert card["recipe"]["params"] == {"hq_min_aesthetic": 0.0, "hq_min_text_match": 0.0}
    # a recipe file of the user's own
    mine = tmp_path / "mine.sql"
    mine.write_text("SELECT clip_id FROM clips WHERE aesthetic >= getvariable('floor') ORDER BY clip_id")
    picked = json.loads(datakit("mine", "--recipe", str(mine), "--param", "floor=6.5").stdout)
    rows = pq.read_table(ws.root / "sets" / "mine" / "v1" / "rows.parquet").column("clip_id").to_pylist()
    assert picked["recipe"]["name"] == str(mine) and rows == sorted(
        r["clip_id"] for r in ws.sql("SELECT clip_id FROM clips WHERE aesthetic >= 6.5")
    )
    bad = datakit("x", "--recipe", "@hq", "--param", "nonsense")
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr
