"""Workspace storage, catalog, schema docs, ids, ingest and probe."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit.executors import run_stage
from datakit.ids import canonical_url, clip_id, url_video_id
from datakit.ingest import ingest
from datakit.registry import tables
from datakit.schema import SCHEMA_VERSION, fingerprint, render_markdown
from datakit.stages.probe import ProbeStage
from datakit.workspace import Workspace, WorkspaceError
from tests.conftest import PYTHON, cli_env

REQUIRED_VIDEO_COLUMNS = (
    "video_id source path status error width height fps num_frames duration_s codec bytes".split()
)
REQUIRED_CLIP_COLUMNS = (
    "clip_id video_id start_frame end_frame start_s end_s num_frames fps width height path".split()
)


def test_schema_doc_is_in_sync():
    doc = (Path(__file__).resolve().parents[1] / "manifests" / "SCHEMA.md").read_text()
    assert doc == render_markdown(), "run: python -m datakit.generated"
    assert f"version {SCHEMA_VERSION} (fingerprint {fingerprint()})" in doc


def test_plain_duckdb_client_reads_views(tmp_path):
    ws = Workspace(tmp_path / "ws")
    con = duckdb.connect(str(ws.catalog_path), read_only=True)
    con.execute(ws.attach_sql().splitlines()[0])  # the views' globs are relative to the workspace
    videos = con.sql("select * from videos")
    clips = con.sql("select * from clips")
    assert set(REQUIRED_VIDEO_COLUMNS) <= set(videos.columns)
    assert set(REQUIRED_CLIP_COLUMNS) <= set(clips.columns)
    assert clips.fetchall() == []
    con.close()


def test_latest_row_per_key_wins_and_parts_are_atomic(tmp_path):
    ws = Workspace(tmp_path)
    ws.write("probes", [{"video_id": "v1", "status": "error", "error": "first"}])
    ws.write("probes", [{"video_id": "v1", "status": "ok", "width": 64}, {"video_id": "v2", "status": "ok"}])
    rows = ws.sql("select video_id, status, error, width from probes order by video_id")
    assert rows == [
        {"video_id": "v1", "status": "ok", "error": None, "width": 64},
        {"video_id": "v2", "status": "ok", "error": None, "width": None},
    ]
    assert not list(ws.table_dir("probes").glob(".*")), "no temp files left behind"
    assert ws.compact("probes") == 2
    assert len([p for p in ws.table_dir("probes").glob("*.parquet") if "init" not in p.name]) == 1
    assert ws.sql("select count(*) n from probes")[0]["n"] == 2


def test_moved_workspace_rebuilds_catalog(tmp_path):
    ws = Workspace(tmp_path / "a")
    ws.write("sources", [{"video_id": "v", "source": "x", "source_kind": "file", "status": "ok"}])
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    con = duckdb.connect(str(tmp_path / "b" / "manifest.duckdb"), read_only=True)
    con.execute(Workspace(tmp_path / "b").attach_sql().splitlines()[0])  # globs relative to the workspace
    assert con.sql("select video_id from videos").fetchall() == [("v",)]


def test_newer_schema_is_refused(tmp_path):
    ws = Workspace(tmp_path)
    (ws.root / "workspace.json").write_text(json.dumps({"schema_version": 999, "root": str(ws.root)}))
    with pytest.raises(WorkspaceError, match="newer"):
        Workspace(tmp_path)


def test_missing_workspace_is_a_clear_error(tmp_path):
    with pytest.raises(WorkspaceError, match="no datakit workspace"):
        Workspace(tmp_path / "nope", create=False)


def test_ids_are_deterministic():
    assert (
        canonical_url("HTTPS://Example.COM:443/a/b.mp4?utm_source=x&k=1#frag")
        == "https://example.com/a/b.mp4?k=1"
    )
    assert url_video_id("https://youtu.be/abc123") == url_video_id(
        "https://www.youtube.com/watch?v=abc123&utm_medium=s"
    )
    assert url_video_id("https://example.com/a.mp4") != url_video_id("https://example.com/b.mp4")
    assert clip_id("00ff", 10, 20) == "00ff-10-20"


def test_ingest_files_dirs_and_url_lists(tmp_path, demo_samples, bad_inputs):
    ws = Workspace(tmp_path / "ws")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "urls.txt").write_text("# comment\nhttps://example.com/a.mp4\n\nhttps://example.com/b.mp4\n")
    (lists / "urls.csv").write_text("id,url\n1,https://example.com/c.mp4\n2,https://example.com/a.mp4\n")
    pq.write_table(pa.table({"url": ["https://example.com/d.webm"]}), lists / "urls.parquet")
    # a video without a video extension is found by sniffing its header
    sniffed = tmp_path / "extra" / "no_extension"
    sniffed.parent.mkdir()
    shutil.copy(demo_samples[0].path, sniffed)
    (sniffed.parent / "readme.md").write_text("not a video")
    sample_dir = Path(demo_samples[0].path).parent
    stats = ingest(
        ws,
        [str(sample_dir), str(bad_inputs["empty"].parent), str(sniffed.parent), *map(str, lists.iterdir())],
    )
    assert stats.urls == 4  # a.mp4 appears twice
    assert stats.duplicates == 1  # the sniffed copy has the same content as sample 0
    rows = ws.sql("select * from sources")
    by_source = {Path(r["source"]).name if r["source_kind"] == "file" else r["source"]: r for r in rows}
    assert by_source["folder.mp4"]["status"] == "error" and "directory" in by_source["folder.mp4"]["error"]
    assert (
        by_source["dangling.mp4"]["status"] == "error"
        and "broken symlink" in by_source["dangling.mp4"]["error"]
    )
    assert "readme.md" not in by_source
    assert {r["source"] for r in rows if r["source_kind"] == "url"} == {
        f"https://example.com/{n}" for n in ("a.mp4", "b.mp4", "c.mp4", "d.webm")
    }
    before = ws.sql("select * from sources order by video_id")
    again = ingest(ws, [str(sample_dir)])
    assert again.files == 0 and again.unchanged == len(demo_samples)
    assert ws.sql("select * from sources order by video_id") == before


def test_probe_reads_metadata_and_turns_bad_inputs_into_error_rows(tmp_path, demo_samples, bad_inputs):
    ws = Workspace(tmp_path)
    ingest(ws, [str(Path(demo_samples[0].path).parent), str(bad_inputs["empty"].parent)])
    stats = run_stage(ws, ProbeStage(), progress=False)
    assert stats.processed == stats.planned
    videos = {Path(r["source"]).name: r for r in ws.sql("select * from videos")}
    for truth in demo_samples:
        v = videos[Path(truth.path).name]
        assert v["status"] == "ok", v
        assert (v["width"], v["height"], v["num_frames"]) == (truth.width, truth.height, truth.num_frames)
        assert v["fps"] == pytest.approx(truth.fps)
        assert v["duration_s"] == pytest.approx(truth.num_frames / truth.fps)
    expected = {
        "empty.mp4": "empty file",
        "truncated.mp4": "not a readable video",
        "corrupt.mp4": "not a readable video",
        "notes.mp4": "not a readable video",
        "audio_only.m4a": "audio only",
        "folder.mp4": "directory",
        "dangling.mp4": "broken symlink",
    }
    for name, message in expected.items():
        assert videos[name]["status"] == "error", name
        assert message in videos[name]["error"], (name, videos[name]["error"])
    weird = videos[bad_inputs["weird_name_ok"].name]
    assert weird["status"] == "ok" and weird["num_frames"] == 48
    assert not (Path.cwd() / "pwned").exists() and not (bad_inputs["empty"].parent / "pwned").exists()
    # a rerun has nothing to do
    assert run_stage(ws, ProbeStage(), progress=False).planned == 0


def test_every_table_has_key_status_contract():
    from datakit.registry import stages

    TABLES = tables()
    for t in TABLES.values():
        assert t.key == t.columns[0].name
    for stage in stages().values():  # a marker table says why an item failed
        assert {"status", "error"} <= set(TABLES[stage.marker_table].column_names), stage.name
    assert {"status", "error"} <= set(TABLES["sources"].column_names)


def test_contact_sheet_shows_one_strip_per_clip(tmp_path, demo_samples):
    from PIL import Image

    from datakit.preview import THUMB_H, contact_sheet

    ws = Workspace(tmp_path)
    ingest(ws, [demo_samples[0].path])
    vid = ws.sql("select video_id from sources")[0]["video_id"]
    spans = [(0, 40), (60, 100)]
    ws.write(
        "clip_spans",
        [
            {
                "clip_id": clip_id(vid, a, b),
                "video_id": vid,
                "start_frame": a,
                "end_frame": b,
                "start_s": a / 24,
                "end_s": b / 24,
                "run_key": "r1",
            }
            for a, b in spans
        ],
    )
    ws.write("scene_runs", [{"video_id": vid, "status": "ok", "run_key": "r1", "num_clips": len(spans)}])
    image = Image.open(contact_sheet(ws, tmp_path / "sheet.png"))
    assert image.height == 8 + len(spans) * (THUMB_H + 22)
    pixels = image.crop((4, 24, 4 + THUMB_H, 24 + THUMB_H)).getextrema()
    assert any(hi - lo > 30 for lo, hi in pixels), "the strip holds real frames, not a blank"


def test_reader_snapshot_views_equal_the_catalog_views(tmp_path):
    """The fast in-memory views (lone part, compacted part + newer parts) give the catalog's rows."""
    ws = Workspace(tmp_path)

    def both() -> tuple[list, list]:
        fast = ws.sql("select * from probes order by video_id")
        con = duckdb.connect(str(ws.catalog_path), read_only=True)
        con.execute(ws.attach_sql().splitlines()[0])  # globs relative to the workspace
        cur = con.execute("select * from probes order by video_id")
        cols = [d[0] for d in cur.description]
        slow = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        con.close()
        return fast, slow

    ws.write("probes", [{"video_id": f"v{i}", "status": "ok", "width": i} for i in range(50)])
    fast, slow = both()
    assert fast == slow and len(fast) == 50
    ws.write("probes", [{"video_id": f"v{i}", "status": "error", "error": "again"} for i in range(0, 50, 5)])
    ws.compact("probes")
    ws.write(
        "probes",
        [{"video_id": "v1", "status": "error", "error": "newer"}, {"video_id": "v99", "status": "ok"}],
    )
    ws.write("probes", [{"video_id": "v1", "status": "ok", "width": 7}])
    fast, slow = both()
    assert fast == slow
    rows = {r["video_id"]: r for r in fast}
    assert len(rows) == 51 and rows["v1"]["width"] == 7 and rows["v5"]["error"] == "again"


def test_runs_compact_many_small_parts(tmp_path, demo_samples):
    ws = Workspace(tmp_path)
    ingest(ws, [str(Path(demo_samples[0].path).parent)])
    stage = ProbeStage()
    stage.commit_every = 1
    run_stage(ws, stage, progress=False, compact_above_parts=2)
    assert len(ws.data_parts("probes")) == 1, "the first run's parts are merged"
    assert ws.sql("select count(*) n from probes where status = 'ok'")[0]["n"] == len(demo_samples)
    from demo.sample_videos import SampleSpec, make_sample

    for i in range(3):  # small later runs add parts beside the compacted one, up to the limit
        ingest(
            ws,
            [
                make_sample(
                    SampleSpec(f"extra{i}", 64, 48, 12, scene_frames=[6], seed=50 + i), tmp_path / "x"
                ).path
            ],
        )
        run_stage(ws, stage, progress=False, compact_above_parts=2)
        assert len(ws.data_parts("probes")) == [2, 3, 1][i]
    assert ws.sql("select count(*) n from probes where status = 'ok'")[0]["n"] == len(demo_samples) + 3


def test_a_reader_keeps_its_snapshot_while_compaction_replaces_the_parts(tmp_path):
    ws = Workspace(tmp_path)
    ws.write("probes", [{"video_id": f"v{i}", "status": "ok", "width": i} for i in range(10)])
    ws.write("probes", [{"video_id": "v0", "status": "error", "error": "newer"}])
    old_parts = ws.data_parts("probes")
    con = ws.connect()  # lists the two parts now
    assert ws.compact("probes") == 10
    assert all(p.exists() for p in old_parts), "replaced parts stay while a snapshot may read them"
    assert ws.live_parts("probes") != old_parts
    assert con.execute("select count(*), count(*) filter (status = 'error') from probes").fetchone() == (
        10,
        1,
    )
    assert ws.sql("select count(*) n from probes")[0]["n"] == 10, "a new snapshot reads the compacted part"
    con.close()
    del con  # the snapshot ends with its connection
    ws.compact("probes")
    assert ws.data_parts("probes") == ws.live_parts("probes") and len(ws.data_parts("probes")) == 1


@pytest.mark.timeout(120)
def test_readers_never_fail_beside_a_compaction_loop(tmp_path):
    """Every read path (sql, connect, pipeline status) sees whole tables while another process
    writes and compacts in a loop; before, about 1 read in 3 failed with 'No files found'."""
    from datakit.pipeline import status

    ws = Workspace(tmp_path / "ws")
    ws.write(
        "sources",
        [
            {"video_id": f"v{i:04d}", "source": f"/v/{i}", "source_kind": "file", "status": "ok"}
            for i in range(500)
        ],
    )
    ws.write("probes", [{"video_id": f"v{i:04d}", "status": "ok", "width": i} for i in range(500)])
    loop = (
        "import sys\nfrom pathlib import Path\nfrom datakit.workspace import Workspace\n"
        f"ws, stop, i = Workspace({str(ws.root)!r}), Path({str(tmp_path / 'stop')!r}), 0\n"
        "while not stop.exists():\n"
        "    ws.write('probes', [{'video_id': f'n{i:06d}', 'status': 'ok'}, {'video_id': 'v0001', 'status': 'ok', 'width': i}])\n"
        "    ws.compact('probes')\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([PYTHON, "-c", loop], env=cli_env(), stderr=subprocess.PIPE)
    reads, seen = 0, 500
    try:
        while reads < 60 or seen < 520:  # until the loop has compacted at least 20 times under our reads
            assert proc.poll() is None, proc.stderr.read().decode()
            if reads % 3 == 0:
                n, distinct = ws.sql("select count(*) n, count(distinct video_id) d from probes")[0].values()
            elif reads % 3 == 1:
                con = ws.connect()
                n, distinct = con.execute("select count(*), count(distinct video_id) from probes").fetchone()
                con.close()
                del con
            else:
                n = distinct = next(r for r in status(ws) if r["stage"] == "probe")["ok"]
            assert n == distinct >= seen, "no duplicate rows, and no rows lost"
            seen, reads = n, reads + 1
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read().decode()


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"video_id": "v", "status": "ok", "widht": 64},
            "table 'probes' has no column 'widht' (did you mean 'width'?)",
        ),
        ({"video_id": "v", "stauts": "ok", "zzz": 1}, "'stauts' (did you mean 'status'?), 'zzz'"),
        ({"video_id": "v", "_written_ns": 1}, "no column '_written_ns'"),
        ({"video_id": "v", "width": "64"}, "column 'width' (int32): row 1 has '64' of type str"),
        ({"video_id": "v", "width": 2.5}, "column 'width' (int32): row 1 has 2.5 of type float"),
        ({"video_id": "v", "width": 2**40}, "column 'width' (int32): row 1 has 1099511627776"),
        ({"video_id": "v", "has_audio": "yes"}, "column 'has_audio' (bool): row 1 has 'yes'"),
        ({"video_id": "v", "fps": [24.0]}, "column 'fps' (double): row 1 has [24.0]"),
        ({"status": "ok"}, "row 1 has no value for the key column 'video_id'"),
    ],
)
def test_write_refuses_rows_that_do_not_fit_the_table(tmp_path, row, message):
    from datakit.workspace import RowError

    ws = Workspace(tmp_path)
    with pytest.raises(RowError) as exc:
        ws.write("probes", [{"video_id": "fine", "status": "ok", "width": 64}, row])
    assert message in str(exc.value)
    assert ws.data_parts("probes") == [], "nothing of the batch is written"


def test_write_keeps_values_that_fit(tmp_path):
    ws = Workspace(tmp_path)
    ws.write(
        "probes",
        [{"video_id": "v", "status": "ok", "width": 64.0, "fps": 24, "has_audio": False, "bytes": 2**40}],
    )
    assert ws.sql("select width, fps, has_audio, bytes from probes") == [
        {"width": 64, "fps": 24.0, "has_audio": False, "bytes": 2**40}
    ]
