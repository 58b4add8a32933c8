"""Frame-exact reading (mediaio) against a sequential decode, and the cut stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from datakit.executors import plan, run_stage
from datakit.ingest import ingest
from datakit.stage import WorkerContext
from datakit.stages.cut import CutStage
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace
from mediaio import even_size, iter_video_frames, pick_indices, read_frames


def _sequential(path: str) -> np.ndarray:
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("index", ["auto", "cfr", "pts", "sequential"])
def test_read_frames_equals_sequential_decode(demo_samples, index):
    rng = np.random.default_rng(0)
    for truth in demo_samples:  # mp4/h264 (B-frames), mp4/mpeg4, webm/vp9, avi/mjpeg, mkv/h264
        seq = _sequential(truth.path)
        assert len(seq) == truth.num_frames
        n = truth.num_frames
        spans = [(0, 5), (n - 4, n), (n - 2, n + 10), *(sorted(rng.integers(1, n, 2)) for _ in range(4))]
        for a, b in spans:
            got = [
                (i, f.to_ndarray(format="rgb24")) for i, f in iter_video_frames(truth.path, a, b, index=index)
            ]
            assert [i for i, _ in got] == list(range(a, min(b, n))), (truth.path, a, b)
            for i, arr in got:
                assert np.array_equal(arr, seq[i]), (truth.path, a, b, i)


def test_read_frames_size_and_fps_pick(demo_samples):
    truth = next(t for t in demo_samples if t.path.endswith(".mkv"))  # 640x360 @ 30
    clip = read_frames(truth.path, 30, 90, size=96)
    assert clip.shape == (60, 96, 170, 3) and clip.dtype == np.uint8
    picked = read_frames(truth.path, 30, 90, fps=12)
    assert len(picked) == len(pick_indices(30, 90, 30, 12)) == 24
    seq = _sequential(truth.path)
    for k, i in enumerate(pick_indices(30, 90, 30, 12)):
        assert np.array_equal(picked[k], seq[i])
    assert read_frames(truth.path, 10, 10).shape[0] == 0


def test_pick_indices_and_sizes():
    assert pick_indices(0, 10, 30, 15) == [0, 2, 4, 6, 8]
    assert pick_indices(5, 8, 24, 30) == [5, 6, 7]  # never upsamples
    assert pick_indices(0, 25, 25, 12) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]
    idx = pick_indices(0, 100, 29.97, 8)
    assert idx == sorted(set(idx)) and len(idx) == 27
    assert even_size(640, 360, 96) == (170, 96)
    assert even_size(353, 287) == (352, 286)


# ------------------------------------------------------------------------------------ cut stage
@pytest.fixture
def scened_workspace(tmp_path, demo_samples):
    src = tmp_path / "videos"
    src.mkdir()
    for t in demo_samples:
        if t.path.endswith((".mkv", ".webm", ".avi")):
            shutil.copy(t.path, src / Path(t.path).name)
    ws = Workspace(tmp_path / "ws")
    ingest(ws, [str(src)])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(min_clip_s=1.0, max_clip_s=2.0), progress=False)
    return ws


def test_cut_stage_frame_exact_and_resumable(scened_workspace):
    ws = scened_workspace
    stage = CutStage()
    pending = plan(ws, stage)
    assert len(pending) == ws.sql("SELECT count(*) AS n FROM clip_spans")[0]["n"] > 3
    stats = run_stage(ws, stage, progress=False)
    assert stats.statuses == {"ok": len(pending)}
    clips = ws.sql(
        "SELECT c.*, k.width AS cut_width, k.height AS cut_height, k.num_frames AS cut_frames "
        "FROM clips c JOIN cuts k USING (clip_id) ORDER BY clip_id"
    )
    sources: dict[str, np.ndarray] = {}
    for c in clips:
        assert c["cut_status"] == "ok" and Path(c["path"]).is_file()
        assert Path(c["path"]).parent.name == c["video_id"] and Path(c["path"]).name == f"{c['clip_id']}.mp4"
        frames = read_frames(c["path"], 0, 10**6)
        assert len(frames) == c["cut_frames"] == c["num_frames"] == c["end_frame"] - c["start_frame"]
        assert frames.shape[1:3] == (c["cut_height"], c["cut_width"]) == (c["height"], c["width"])
        src = sources.setdefault(c["source_path"], _sequential(c["source_path"]))
        s, e = c["start_frame"], c["end_frame"]
        first, last = frames[0], frames[-1]
        assert _mad(first, src[s]) < 4
        assert _mad(last, src[e - 1]) < 4
        if s > 0:  # the neighbour outside the clip is clearly further away
            assert _mad(first, src[s]) < _mad(first, src[s - 1])
        if e < len(src):
            assert _mad(last, src[e - 1]) < _mad(last, src[e])
    assert [p.name for p in ws.clips_dir.rglob("*") if p.is_file() and p.suffix != ".mp4"] == []
    before = ws.sql("SELECT * FROM cuts ORDER BY clip_id")
    assert plan(ws, stage) == []
    assert run_stage(ws, stage, progress=False).planned == 0
    assert ws.sql("SELECT * FROM cuts ORDER BY clip_id") == before


def test_cut_resample_resize_and_errors(scened_workspace, tmp_path):
    ws = scened_workspace
    stage = CutStage(fps=12, short_side=64)
    items = plan(ws, stage)
    stage.setup(WorkerContext.for_workspace(tmp_path / "small", "cut"))
    item = next(i for i in items if i["fps"] == 30)
    rows = stage.process(item)["cuts"][0]
    assert rows["status"] == "ok" and rows["fps"] == 12
    assert rows["height"] == 64 and rows["width"] % 2 == 0
    n = len(pick_indices(item["start_frame"], item["end_frame"], 30, 12))
    assert rows["num_frames"] == n == len(read_frames(rows["path"], 0, 10**6))
    # a span past the end of the video, and a missing file: error rows, no stray files
    bad = stage.process({**item, "clip_id": "x-0-1", "start_frame": 10**5, "end_frame": 10**5 + 30})["cuts"][
        0
    ]
    assert bad["status"] == "error" and "ends after the last frame" in bad["error"]
    gone = stage.process({**item, "clip_id": "y-0-1", "path": str(tmp_path / "missing.mp4")})["cuts"][0]
    assert gone["status"] == "error"
    assert [p.name for p in (tmp_path / "small").rglob("*") if p.is_file()] == [Path(rows["path"]).name]


def test_early_stop_next_to_torchvision_does_not_hang(demo_samples):
    """torchvision enables PyAV's log callback; closing a frame-threaded decoder early then
    deadlocked. Every mediaio open turns the callback off (mediaio.avio)."""
    import subprocess
    import sys

    code = (
        "import torchvision.transforms.v2.functional\n"
        "from mediaio import read_frames\n"
        f"paths = {[t.path for t in demo_samples]!r}\n"
        "for p in paths * 3: read_frames(p, 3, 5)\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, timeout=120)
    assert proc.stdout.strip() == b"ok", proc.stderr.decode()[-1000:]
