"""Metadata-table import: Panda-70M, WebVid, InternVid, Open-Sora and mapped tables, bad rows, reruns,
and the end-to-end path import -> probe -> scenes -> clips inside spans with provided captions and scores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from datakit.executors import run_stage
from datakit.ids import url_video_id
from datakit.ingest import ingest
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.table_import import TableImportError, VideoIds, import_table
from datakit.workspace import Workspace
from demo.sample_videos import SampleSpec, make_sample

PANDA_HEADER = "videoID,url,timestamp,caption,matching_score\n"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Two 6 s videos at 12 fps: `cut` has a hard cut at 3 s (frame 36), `still` has one shot."""
    out = tmp_path_factory.mktemp("media")
    cut = make_sample(SampleSpec("cut", 96, 72, 12, scene_frames=[36, 36], seed=3), out)
    still = make_sample(SampleSpec("still", 96, 72, 12, scene_frames=[72], seed=4), out)
    return {"cut": Path(cut.path), "still": Path(still.path)}


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _spans(ws: Workspace) -> list[dict]:
    return ws.sql("SELECT * FROM given_spans ORDER BY table_row, span_index")


def test_panda70m_end_to_end_clips_stay_inside_spans_and_carry_the_tables_captions(tmp_path, videos):
    folder = tmp_path / "meta"
    folder.mkdir()
    os.symlink(videos["cut"], folder / "cut.mp4")  # a relative path: resolved against the table's folder
    table = _csv(
        folder / "panda.csv",
        PANDA_HEADER
        + (
            # one span across the hard cut at 3 s, one past the video's end (6 s)
            "c,cut.mp4,\"[['0:00:00.500', '0:00:05.500'], ['0:00:04.000', '0:00:09.000']]\","
            "\"['a red shot then a blue shot', 'runs past the end']\",\"[0.41, 0.2]\"\n"
            f"s,{videos['still']},\"[['0:00:01.000', '0:00:04.000']]\",\"['the still one\\'s shot']\",[0.35]\n"
        ),
    )
    ws = Workspace(tmp_path / "ws")
    stats = ingest(ws, [str(table)], "panda70m")
    assert stats.errors == 0 and "2 videos, 3 spans" in stats.summary()
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(min_clip_s=1.0), progress=False)

    clips = ws.sql("SELECT * FROM clips ORDER BY video_id, start_frame")
    cut_id = ws.sql(f"SELECT video_id FROM sources WHERE path = '{folder / 'cut.mp4'}'")[0]["video_id"]
    cut_clips = [c for c in clips if c["video_id"] == cut_id]
    # [0.5 s, 5.5 s) = frames [6, 66), split at the cut (frame 36, one frame trimmed each side)
    assert [(c["start_frame"], c["end_frame"]) for c in cut_clips] == [(6, 35), (37, 66)]
    assert {c["caption"] for c in cut_clips} == {"a red shot then a blue shot"}
    assert {c["caption_source"] for c in clips} == {"provided"}
    assert {c["caption_status"] for c in clips} == {"ok"}
    assert [c["given_matching_score"] for c in cut_clips] == [0.41, 0.41]
    still = [c for c in clips if c["video_id"] != cut_id]
    assert [(c["start_frame"], c["end_frame"], c["caption"]) for c in still] == [
        (12, 48, "the still one's shot")
    ]
    # the span past the end became an error row naming the table row and the reason
    errors = ws.sql("SELECT error FROM given_spans WHERE status = 'error'")
    assert len(errors) == 1 and errors[0]["error"].startswith(
        "row 1 span 1: ends at 9.000 s, past the video's end"
    )

    # A VLM caption is another source, never an overwrite; the default preference keeps the table's
    row = dict(
        row_id=f"{cut_clips[0]['clip_id']}:vlmkey",
        status="ok",
        clip_id=cut_clips[0]["clip_id"],
        model_key="vlmkey",
        engine="transformers",
        model="tiny [random weights]",
        caption="noise",
        caption_status="ok",
        scored_at=1.0,
    )
    ws.write("captions", [row])
    first = ws.sql(f"SELECT * FROM clips WHERE clip_id = '{cut_clips[0]['clip_id']}'")[0]
    assert (first["caption"], first["vlm_caption"], first["provided_caption"]) == (
        "a red shot then a blue shot",
        "noise",
        "a red shot then a blue shot",
    )
    # a recipe may prefer the VLM's caption; and it can filter on the given scores
    from datakit.sets import select

    version = select(
        ws,
        "given",
        "SELECT * REPLACE (coalesce(vlm_caption, provided_caption) AS caption) "
        "FROM clips WHERE given_matching_score >= 0.4",
    )
    got = version.read().to_pylist()
    assert sorted(r["caption"] for r in got) == ["a red shot then a blue shot", "noise"]

    # reruns add nothing: the table is unchanged, and a re-read of a touched table writes the same keys
    again = ingest(ws, [str(table)], "panda70m")
    assert "unchanged since its last import" in again.summary()
    os.utime(table)
    ingest(ws, [str(table)], "panda70m")
    assert len(ws.sql("SELECT * FROM sources")) == 2
    assert len(ws.sql("SELECT * FROM clips")) == len(clips)


def test_trusted_spans_skip_detection_and_ignore_keeps_plain_scenes(tmp_path, videos):
    table = _csv(tmp_path / "p.csv", PANDA_HEADER + f"c,{videos['cut']},\"[[0.5, 5.5]]\",['one span'],\n")
    ws = Workspace(tmp_path / "ws")
    import_table(ws, table, "panda70m")
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(min_clip_s=1.0, given_spans="trust"), progress=False)
    assert [(c["start_frame"], c["end_frame"]) for c in ws.sql("SELECT * FROM clips")] == [(6, 66)]
    assert (
        ws.sql("SELECT analysed_frames, params FROM scene_runs")[0]["params"].count('"given_spans": "trust"')
        == 1
    )


def test_bad_rows_become_error_rows_and_every_good_row_imports(tmp_path):
    table = _csv(
        tmp_path / "bad.csv",
        PANDA_HEADER
        + "\n".join(
            [
                "ok,https://example.com/a.mp4,\"[['0:00:00.000', '0:00:02.000']]\",\"['fine']\",\"[0.3]\"",
                "ts,https://example.com/b.mp4,\"[['0:00:0x', '0:00:02']]\",\"['x']\",\"[0.3]\"",
                "order,https://example.com/c.mp4,\"[['0:00:03.000', '0:00:02.000'], ['0:00:04', '0:00:06']]\",\"['x', 'y']\",",
                "nourl,,\"[['0:00:00', '0:00:02']]\",\"['x']\",",
                "count,https://example.com/d.mp4,\"[['0:00:00', '0:00:02']]\",\"['x', 'y']\",",
            ]
        )
        + "\n",
    )
    ws = Workspace(tmp_path / "ws")
    stats = import_table(ws, table, "panda70m")
    errors = {r["table_row"]: r["error"] for r in _spans(ws) if r["status"] == "error"}
    assert errors == {
        2: "row 2: unparsable timestamps: expected a list of [start, end] pairs",
        3: "row 3 span 0: end 2.0 s <= start 3.0 s",
        4: "row 4: missing url",
        5: "row 5: caption list has 2 entries for 1 spans",
    }
    ok = [(r["table_row"], r["start_s"], r["end_s"], r["caption"]) for r in _spans(ws) if r["status"] == "ok"]
    assert ok == [(1, 0.0, 2.0, "fine"), (3, 4.0, 6.0, "y")]
    assert (stats.rows, stats.spans, stats.errors) == (5, 2, 4)
    ids = {r["video_id"] for r in ws.sql("SELECT video_id FROM sources")}
    assert ids == {url_video_id("https://example.com/a.mp4"), url_video_id("https://example.com/c.mp4")}


def test_csv_rows_with_the_wrong_number_of_cells_are_error_rows_quoting_them(tmp_path):
    table = _csv(
        tmp_path / "ragged.csv",
        PANDA_HEADER + "a,https://x.org/a.mp4,\"[[0, 2]]\",['a'],[0.1]\n"
        'b,https://x.org/b.mp4,"[[0, 2]]"\n'
        "c,https://x.org/c.mp4,\"[[0, 2]]\",['c'],[0.2]\n",
    )
    ws = Workspace(tmp_path / "ws")
    stats = import_table(ws, table, "panda70m")
    assert (stats.spans, stats.errors) == (2, 1)
    errors = [r["error"] for r in _spans(ws) if r["status"] == "error"]
    assert errors == ['unreadable row (5 columns expected, 3 found): b,https://x.org/b.mp4,"[[0, 2]]"']


def test_a_wrong_format_or_missing_column_fails_before_anything_is_written(tmp_path):
    table = _csv(tmp_path / "p.csv", PANDA_HEADER + "a,https://x.org/a.mp4,\"[[0, 2]]\",['a'],\n")
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(TableImportError, match="no column for url \\(contentUrl\\)"):
        ingest(ws, [str(table), "https://x.org/other.mp4"], "webvid")
    with pytest.raises(TableImportError, match="caption \\(nope\\)"):
        ingest(ws, [str(table)], "panda70m", {"caption": "nope"})
    assert ws.sql("SELECT * FROM sources") == [] and ws.sql("SELECT * FROM given_spans") == []

    from datakit.cli import app

    result = CliRunner().invoke(app, ["ingest", str(table), "--format", "internvid", "-w", str(ws.root)])
    assert result.exit_code == 2 and "no column for id (YoutubeID)" in result.output
    result = CliRunner().invoke(app, ["ingest", str(table), "--col", "caption", "-w", str(ws.root)])
    assert result.exit_code == 2 and "expected FIELD=COLUMN" in result.output
    assert ws.sql("SELECT * FROM sources") == []
    result = CliRunner().invoke(app, ["ingest", str(table), "-w", str(ws.root)])  # a Panda header: auto
    assert result.exit_code == 0 and "1 rows, 1 videos, 1 spans" in result.output


def test_webvid_csv_whole_video_captions(tmp_path, videos):
    table = _csv(
        tmp_path / "webvid.csv",
        "videoid,contentUrl,duration,page_dir,name\n"
        f"1,{videos['still']},PT00H00M06S,dir,A calm one-shot clip\n"
        "2,https://ak.picdn.net/shutterstock/videos/2/preview/stock-footage-2.mp4,PT00H00M10S,dir,Remote one\n",
    )
    ws = Workspace(tmp_path / "ws")
    stats = import_table(ws, table, "auto")
    assert (stats.rows, stats.spans, stats.errors) == (2, 2, 0)
    spans = _spans(ws)
    assert [(s["start_s"], s["end_s"], s["caption"], s["external_id"]) for s in spans] == [
        (0.0, None, "A calm one-shot clip", "1"),
        (0.0, None, "Remote one", "2"),
    ]
    assert spans[1]["video_id"] == url_video_id(
        "https://ak.picdn.net/shutterstock/videos/2/preview/stock-footage-2.mp4"
    )
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(min_clip_s=1.0), progress=False)
    clips = ws.sql("SELECT * FROM clips")
    assert len(clips) == 1 and (clips[0]["start_frame"], clips[0]["end_frame"]) == (0, 72)
    assert clips[0]["caption"] == "A calm one-shot clip"


def test_internvid_parquet_one_row_per_clip_with_its_scores(tmp_path):
    rows = {
        "YoutubeID": ["abc123", "abc123", "zz"],
        "Start_timestamp": ["00:00:01.000", "00:00:05.500", "bad"],
        "End_timestamp": ["00:00:04.000", "00:00:09.250", "00:00:02.000"],
        "Caption": ["a cat", "a dog", "x"],
        "Aesthetic_Score": [5.1, 4.2, 1.0],
        "UMT_Score": [0.4, 0.3, 0.1],
    }
    pq.write_table(pa.table(rows), tmp_path / "internvid.parquet")
    ws = Workspace(tmp_path / "ws")
    stats = import_table(ws, tmp_path / "internvid.parquet", "internvid")
    assert (stats.rows, stats.spans, stats.errors, stats.videos) == (3, 2, 1, 1)
    vid = url_video_id("https://www.youtube.com/watch?v=abc123")
    ok = [(s["video_id"], s["start_s"], s["end_s"], s["caption"]) for s in _spans(ws) if s["status"] == "ok"]
    assert ok == [(vid, 1.0, 4.0, "a cat"), (vid, 5.5, 9.25, "a dog")]
    scores = ws.sql("SELECT name, value, model_key, scale FROM given_scores ORDER BY value")
    assert [(s["name"], s["value"]) for s in scores] == [
        ("umt_score", 0.3),
        ("umt_score", 0.4),
        ("aesthetic_score", 4.2),
        ("aesthetic_score", 5.1),
    ]
    assert all(s["model_key"].startswith("given:") for s in scores)
    assert "InternVid's aesthetic score" in scores[-1]["scale"]
    assert ws.sql("SELECT source FROM sources")[0]["source"] == "https://www.youtube.com/watch?v=abc123"


@pytest.mark.parametrize("kind", ["v1-csv", "v1.1-csv", "v1.1-jsonl"])
def test_opensora_tables_with_given_scores_in_the_clips_view(tmp_path, videos, kind):
    path = str(videos["still"])
    if kind == "v1-csv":  # header-less path,text,num_frames
        table = _csv(tmp_path / "os.csv", f"{path},a quiet shot,72\n")
    elif kind == "v1.1-csv":
        table = _csv(
            tmp_path / "os.csv",
            "path,text,num_frames,height,width,aspect_ratio,resolution,fps,aes,flow,match\n"
            f"{path},a quiet shot,72,72,96,0.75,6912,12,5.25,0.8,0.31\n",
        )
    else:
        table = tmp_path / "os.jsonl"
        table.write_text(
            json.dumps({"path": path, "text": "a quiet shot", "num_frames": 72, "aes": 5.25}) + "\n"
        )
    ws = Workspace(tmp_path / "ws")
    stats = ingest(ws, [str(table)], "opensora")
    assert stats.errors == 0
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(min_clip_s=1.0), progress=False)
    clip = ws.sql("SELECT * FROM clips")[0]
    assert clip["caption"] == "a quiet shot" and clip["caption_source"] == "provided"
    if kind == "v1-csv":
        assert clip["given_aes"] is None
    else:
        assert clip["given_aes"] == 5.25 and clip["given_scores"]["aes"] == 5.25
    if kind == "v1.1-csv":
        assert (clip["given_flow"], clip["given_match"]) == (0.8, 0.31)


def test_a_generic_mapping_reads_json_lists(tmp_path):
    table = tmp_path / "mine.jsonl"
    lines = [
        {
            "link": "https://Example.COM/v.mp4#frag",
            "desc": ["one", "two"],
            "ts": [["0:00:01", "0:00:03"], ["4", "0:06.5"]],
        },
        {"link": "http://user:pw@host.org/w.mp4", "desc": ["three"], "ts": [["0", "2"]]},
    ]
    table.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ws = Workspace(tmp_path / "ws")
    stats = ingest(ws, [str(table)], None, {"url": "link", "caption": "desc", "spans": "ts"})
    assert (stats.errors, len(stats.imports)) == (0, 1)
    spans = [(s["video_id"], s["start_s"], s["end_s"], s["caption"]) for s in _spans(ws)]
    a, b = url_video_id("https://Example.COM/v.mp4#frag"), url_video_id("http://user:pw@host.org/w.mp4")
    assert spans == [(a, 1.0, 3.0, "one"), (a, 4.0, 6.5, "two"), (b, 0.0, 2.0, "three")]
    sources = {r["video_id"]: r["source"] for r in ws.sql("SELECT * FROM sources")}
    assert sources[b] == "http://user:***@host.org/w.mp4"  # the password went to the secrets file


def test_fast_url_ids_match_url_video_id(tmp_path):
    urls = [
        "https://www.youtube.com/watch?v=AbC_-12",
        "https://youtu.be/AbC_-12",
        "http://example.com/a/b.mp4",
        "https://example.com/x.mp4?utm_source=y",
        "HTTPS://EXAMPLE.com/a",
        "https://example.com:443/a",
    ]
    ids, errors, _, _ = VideoIds(Workspace(tmp_path / "ws"), tmp_path)(pa.array(urls))
    assert ids.to_pylist() == [url_video_id(u) for u in urls] and errors.null_count == len(urls)


def test_the_benchmarks_generated_panda_table_imports_without_errors(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_import", Path(__file__).parents[1] / "bench" / "bench_import.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.make_table(tmp_path / "p.csv", 3000, 3, chunk=1000)
    ws = Workspace(tmp_path / "ws")
    stats = import_table(ws, tmp_path / "p.csv", "panda70m", batch_rows=1024)
    assert (stats.rows, stats.spans, stats.errors, stats.videos) == (3000, 9000, 0, 3000)
    first = ws.sql("SELECT start_s, end_s, caption FROM given_spans WHERE table_row = 1 ORDER BY span_index")
    assert len(first) == 3 and all(0 < r["start_s"] < r["end_s"] for r in first)
    assert ws.sql("SELECT count(*) AS n FROM given_scores")[0]["n"] == 9000
