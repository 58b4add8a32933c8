"""Exports read by loaders written from Open-Sora's documented behaviour (not their code).

- 1.0 (`DatasetFromCSV`): `csv.reader`, no header, the kind of every row (video or image) from
  row 0's file extension, an optional root joined with each path, the whole video decoded.
- 1.1+ (`pd.read_csv` / `read_parquet`): headed columns; image or video by extension; the decoded
  T/H/W and fps must equal the row's `num_frames`/`height`/`width`/`fps`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datakit.executors import run_stage
from datakit.export import export_set
from datakit.ingest import ingest
from datakit.sets import SetError, recipe_sql, select
from datakit.stages.cut import CutStage
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace
from demo.sample_videos import SampleSpec, make_sample
from tests.conftest import ROOT
from tests.curation_fixtures import GOOD, write_scores

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
RECIPES = ("video", "hq", "image", "clips_2_15s")


def decode(path: str) -> tuple[int, int, int, float | None]:
    """(T, H, W, fps) of a file as a loader sees it: every frame of a video, or one image."""
    if Path(path).suffix.lower() in IMAGE_EXTS:
        with Image.open(path) as img:
            return 1, img.height, img.width, None
    with av.open(path) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        return len(frames), frames[0].shape[0], frames[0].shape[1], float(stream.average_rate)


def load_v10(csv_path: Path, root: Path | None = None) -> list[tuple[str, tuple]]:
    with open(csv_path, newline="") as f:
        samples = list(csv.reader(f))
    ext = "." + samples[0][0].split(".")[-1].lower()
    assert ext in VIDEO_EXTS + IMAGE_EXTS, f"Unsupported file format: {ext}"
    out = []
    for path, text, *rest in samples:
        path = os.path.join(root, path) if root else path
        t, h, w, _ = decode(path)
        assert (ext in VIDEO_EXTS) == (t > 1 or Path(path).suffix.lower() in VIDEO_EXTS)
        if rest:
            assert int(rest[0]) == t
        out.append((text, (t, h, w)))
    return out


def load_v12(table_path: Path, root: Path | None = None) -> pd.DataFrame:
    df = pd.read_parquet(table_path) if table_path.suffix == ".parquet" else pd.read_csv(table_path)
    assert list(df.columns[:8]) == [
        "path",
        "text",
        "num_frames",
        "height",
        "width",
        "aspect_ratio",
        "resolution",
        "fps",
    ]
    for row in df.itertuples():
        path = os.path.join(root, row.path) if root else row.path
        t, h, w, fps = decode(path)
        assert (t, h, w) == (row.num_frames, row.height, row.width), path
        assert row.aspect_ratio == pytest.approx(h / w) and row.resolution == h * w
        if Path(path).suffix.lower() in IMAGE_EXTS:
            assert np.isnan(row.fps)
        else:
            assert row.fps == pytest.approx(fps)
    return df


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """Two 288x256 videos (two 2.5 s clips each) and one PNG image, all captioned and scored."""
    root = tmp_path_factory.mktemp("export")
    media = root / "media"
    for i in range(2):
        make_sample(SampleSpec(f"v{i}", 288, 256, 12, "libx264", "mp4", [30, 30], seed=300 + i), media)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (260, 300, 3), np.uint8)).save(
        media / "still.png"
    )
    ws = Workspace(root / "ws")
    ingest(ws, [str(media)])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    clips = [c["clip_id"] for c in ws.sql("SELECT clip_id FROM clips ORDER BY clip_id")]
    assert len(clips) == 5
    write_scores(
        ws,
        {
            cid: {**GOOD, "caption": f'{GOOD["caption"]} number {i}, "quoted"', "dup_group": cid}
            for i, cid in enumerate(clips)
        },
    )
    for name in RECIPES:
        select(ws, name, recipe_sql(name), recipe="@" + name, kind="recipe")
    return ws


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_exports_tables_both_open_sora_loaders_read(ws, tmp_path, recipe):
    v12 = export_set(
        ws, recipe, "opensora", tmp_path / "t.csv", cut_options={"short_side": 64}, progress=False
    )
    df = load_v12(tmp_path / "t.csv")
    assert len(df) == v12.rows > 0
    assert df["match"].tolist() == pytest.approx(
        [100 * GOOD["text_match"]] * len(df)
    )  # their logit_scale*cos
    assert "flow" not in df.columns and df["motion"].tolist() == pytest.approx([GOOD["motion"]] * len(df))
    images = [p for p in df["path"] if Path(p).suffix.lower() in IMAGE_EXTS]
    assert (len(images) == len(df)) == (recipe == "image")  # image sets are image files, nothing else is
    assert all(
        min(h, w) == 64 for h, w in zip(df["height"], df["width"], strict=True)
    )  # --short-side on every row

    export_set(ws, recipe, "opensora", tmp_path / "t.parquet", cut_options={"short_side": 64}, progress=False)
    assert load_v12(tmp_path / "t.parquet")["path"].tolist() == df["path"].tolist()

    out = export_set(
        ws,
        recipe,
        "opensora-v1.0",
        tmp_path / "v10.csv",
        root=ws.root,
        cut_options={"short_side": 64},
        progress=False,
    )
    assert not (tmp_path / "v10.csv").read_text().startswith("path,")  # no header
    assert not os.path.isabs(next(csv.reader(open(tmp_path / "v10.csv")))[0])  # relative to --root
    loaded = load_v10(tmp_path / "v10.csv", root=ws.root)
    assert len(loaded) == out.rows == len(df)
    assert [text for text, _ in loaded] == df["text"].tolist()  # commas and quotes survive csv.reader


def test_text_len_counts_t5_tokens_with_the_given_tokenizer(ws, tmp_path):
    from transformers import AutoTokenizer

    from models.tiny import save_tiny_t5

    tok_dir = save_tiny_t5(tmp_path / "t5")
    export_set(ws, "video", "opensora", tmp_path / "t.csv", tokenizer=str(tok_dir), progress=False)
    df = pd.read_csv(tmp_path / "t.csv")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert df["text_len"].tolist() == [len(tok(t)["input_ids"]) for t in df["text"]]
    with pytest.raises(SetError, match="--tokenizer"):
        export_set(
            ws, "video", "opensora", tmp_path / "t.csv", tokenizer=str(tmp_path / "nope"), progress=False
        )


def test_image_set_frames_are_the_chosen_frame_extracted_once(ws, tmp_path, monkeypatch):
    from mediaio import read_frames_at

    rows = {r["clip_id"]: r for r in ws.sql(recipe_sql("image"))}
    export_set(ws, "image", "opensora", tmp_path / "a.csv", image_format="png", progress=False)
    df = pd.read_csv(tmp_path / "a.csv").set_index("clip_id")
    for cid, row in rows.items():
        path = Path(df.loc[cid, "path"])
        if row["media_type"] == "image":
            assert path == Path(row["source_path"])  # a PNG needs no copy
        else:
            assert path.suffix == ".png" and path.is_relative_to(ws.root / "data" / "frames")
            want = read_frames_at(row["source_path"], [row["frame"]])[0]
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), want)  # PNG: lossless
    # a second export decodes nothing: the frames are cached in the workspace
    import datakit.sets

    monkeypatch.setattr(datakit.sets, "_save_image", lambda *a: pytest.fail("frame decoded again"))
    export_set(ws, "image", "opensora", tmp_path / "b.csv", image_format="png", progress=False)
    assert pd.read_csv(tmp_path / "b.csv")["path"].tolist() == df["path"].tolist()


def test_short_side_is_honoured_for_clips_cut_earlier_at_another_size(ws, tmp_path):
    export_set(ws, "video", "opensora", tmp_path / "a.csv", cut_options={"short_side": 64}, progress=False)
    assert set(pd.read_csv(tmp_path / "a.csv")["height"]) == {64}  # the clips are cut at 64
    run_stage(ws, CutStage(), progress=False)  # nothing left to cut
    export_set(ws, "video", "opensora", tmp_path / "b.csv", progress=False)
    assert set(pd.read_csv(tmp_path / "b.csv")["height"]) == {64}  # no size asked: the cut files
    export_set(
        ws, "video", "opensora", tmp_path / "small.csv", cut_options={"short_side": 32}, progress=False
    )
    df = load_v12(tmp_path / "small.csv")
    assert set(df["height"]) == {32} and all(
        Path(p).is_relative_to(ws.root / "data" / "cuts") for p in df["path"]
    )


def test_empty_sets_and_bad_outputs_fail_in_one_line(ws, tmp_path):
    select(ws, "nothing", "SELECT clip_id FROM clips WHERE false")
    with pytest.raises(SetError, match="no row to export.*--allow-empty"):
        export_set(ws, "nothing", "opensora", tmp_path / "e.csv", progress=False)
    assert not (tmp_path / "e.csv").exists()
    assert (
        export_set(ws, "nothing", "opensora", tmp_path / "e.csv", allow_empty=True, progress=False).rows == 0
    )
    (tmp_path / "file").write_text("x")
    for fmt, out, why in [
        ("opensora", tmp_path / "file" / "x.csv", "is a file, not a folder"),
        ("webdataset", tmp_path / "file" / "shards", "is a file, not a folder"),
        ("opensora", Path("/proc/datakit/x.csv"), "cannot write"),
        ("webdataset", Path("/proc/self/shards"), "cannot write"),
        ("opensora", tmp_path / "x.json", "writes .csv or .parquet"),
        ("opensora-v1.0", tmp_path / "x.parquet", "writes .csv"),
    ]:
        with pytest.raises(SetError, match=why):
            export_set(ws, "video", fmt, out, progress=False)
    with pytest.raises(SetError, match="--root applies to the table formats"):
        export_set(ws, "video", "webdataset", tmp_path / "w", root=tmp_path, progress=False)
    with pytest.raises(SetError, match="not under it"):
        export_set(ws, "video", "opensora", tmp_path / "r.csv", root=tmp_path, progress=False)


KILLER = """
import os, signal, sys
from pathlib import Path
from datakit.export import export_set
from datakit.workspace import Workspace

def on_sample(partial, shards_done):  # SIGKILL while the second shard is half written
    if shards_done == 1:
        os.kill(os.getpid(), signal.SIGKILL)

export_set(Workspace(sys.argv[1], create=False), "video", "webdataset", Path(sys.argv[2]), shard_bytes=1,
           progress=False, on_sample=on_sample)
"""


def test_a_webdataset_export_killed_mid_shard_finishes_on_rerun(ws, tmp_path):
    import webdataset as wds

    out = tmp_path / "shards"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(ws.root), str(out)], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["video-v1-000000.tar"]
    assert any(p.name.endswith(".partial") for p in out.iterdir())  # the half shard is under a temp name

    result = export_set(ws, "video", "webdataset", out, shard_bytes=1, progress=False)
    assert "resumed: 1 rows" in result.summary()
    assert sorted(p.name for p in out.iterdir()) == [f"video-v1-{i:06d}.tar" for i in range(result.rows)] + [
        "video-v1-index.json"
    ]
    keys = [s["__key__"] for s in wds.WebDataset([str(f) for f in result.files], shardshuffle=False)]
    assert keys == [r["clip_id"] for r in ws.sql(recipe_sql("video"))]  # each row once, in set order
    assert json.loads((out / "video-v1-index.json").read_text())["rows"] == result.rows
    with pytest.raises(SetError, match="already holds a complete"):
        export_set(ws, "video", "webdataset", out, progress=False)


def test_the_image_stage_trains_on_the_sets_chosen_frame(ws):
    from training.config import DataConfig
    from training.data import ClipDataset

    rows = [r for r in ws.sql(recipe_sql("image")) if r["media_type"] == "video"]
    cfg = DataConfig(num_frames=[1], resolution=[64], aspect_ratios=["1:1"], flip=False)
    data = ClipDataset(rows, cfg, multiple=16, seed=0, train=True)
    for i, row in enumerate(rows):
        video = data[i]["video"]  # (3, 1, 64, 64) in [-1, 1]
        assert video.shape[1] == 1
        want = ClipDataset(
            [{**row, "start_frame": row["frame"], "end_frame": row["frame"] + 1}], cfg, 16, 0, False
        )[0]
        assert torch_equal(video, want["video"])  # the chosen frame, not a random frame of the span


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_cli_export_errors_are_one_line_and_json_summarises(ws, tmp_path):
    from tests.conftest import PYTHON, cli_env

    def datakit(*args: str) -> subprocess.CompletedProcess:
        cmd = [PYTHON, str(ROOT / "cli.py"), "datakit", "export", *args, "-w", str(ws.root)]
        return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True)

    (tmp_path / "file").write_text("x")
    for args in (
        ["video", "--output", str(tmp_path / "file" / "t.csv")],
        ["video", "--format", "webdataset", "--output", "/proc/self/x"],
        ["nothing-here"],
    ):
        bad = datakit(*args)
        assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    select(ws, "empty", "SELECT clip_id FROM clips WHERE false")
    assert "--allow-empty" in datakit("empty").stderr
    ok = datakit(
        "video",
        "--format",
        "opensora-v1.0",
        "--output",
        str(tmp_path / "v.csv"),
        "--root",
        str(ws.root),
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == len(load_v10(tmp_path / "v.csv", root=ws.root)) > 0


def test_rows_whose_frame_cannot_be_decoded_are_left_out_and_counted(tmp_path):
    from tests.curation_fixtures import curated_manifest

    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)  # sources at /nonexistent/...: no frame can be decoded
    select(ws, "img", recipe_sql("image"))
    with pytest.raises(SetError, match=r"left out: \d+ whose file cannot be read"):
        export_set(ws, "img", "opensora", tmp_path / "t.csv", progress=False)
    assert not (ws.root / "data" / "frames").exists() or not any((ws.root / "data" / "frames").rglob("*.jpg"))
