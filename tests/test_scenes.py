"""Scene detection against the synthetic truth, the clip-length policy, and the scenes stage."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from datakit.executors import plan, run_stage
from datakit.ingest import ingest
from datakit.shot_detection import (
    Detection,
    Transition,
    apply_clip_policy,
    clip_frames_limits,
    detect_scenes,
    scenes_from_cuts,
    scenes_from_transitions,
)
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace


# ------------------------------------------------------------------------------------ detection
@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_hard_cuts_equal_truth(demo_samples, detector):
    for truth in demo_samples:
        det = detect_scenes(truth.path, detector=detector)
        assert det.error is None
        assert det.analysed_frames == truth.num_frames, truth.path
        assert det.cuts == truth.hard_cuts, (truth.path, det.cuts, truth.hard_cuts)


def test_dissolves_need_the_gradual_pass(demo_samples):
    with_dissolve = [t for t in demo_samples if t.dissolves]
    assert with_dissolve
    for truth in with_dissolve:
        plain = detect_scenes(truth.path)
        assert plain.gradual == [] and plain.cuts == truth.hard_cuts  # documented: missed
        det = detect_scenes(truth.path, gradual=True)
        assert det.cuts == truth.hard_cuts  # the sparse pass never moves hard cuts
        for d0, d1 in truth.dissolves:
            assert any(g0 <= d0 and d1 <= g1 for g0, g1 in det.gradual), (truth.path, det.gradual)
        for g0, g1 in det.gradual:
            assert g1 - g0 <= 48  # a gap, not a scene


def test_detection_is_not_affected_by_analysis_width(demo_samples):
    truth = next(t for t in demo_samples if t.width >= 640)
    assert detect_scenes(truth.path, analysis_width=160).cuts == truth.hard_cuts
    assert detect_scenes(truth.path, skip_loop_filter=False).cuts == truth.hard_cuts


# ------------------------------------------------------------------------------------ policy
def test_scenes_from_cuts_and_gaps():
    assert scenes_from_cuts([], 100) == [(0, 100)]
    assert scenes_from_cuts([40, 0, 100, 40], 100) == [(0, 40), (40, 100)]
    assert scenes_from_cuts([40], 100, [(60, 70)]) == [(0, 40), (40, 60), (70, 100)]
    assert scenes_from_cuts([40], 100, [(30, 50)]) == [(0, 30), (50, 100)]


def test_clip_limits_round_safely():
    assert clip_frames_limits(24, 2.0, 15.0) == (48, 360)
    assert clip_frames_limits(29.97, 2.0, 15.0) == (60, 449)
    assert clip_frames_limits(25, 2.0, None) == (50, None)


def test_policy_drops_short_and_trims_only_inner_edges():
    # fps 10: min 20 frames, max 150 frames
    scenes = [(0, 30), (30, 45), (45, 100)]
    assert apply_clip_policy(scenes, 10, 100, trim_frames=0) == [(0, 0, 30), (2, 45, 100)]
    # trim 1: (0, 29) keeps its video-start edge; (46, 100) keeps its video-end edge
    assert apply_clip_policy(scenes, 10, 100, trim_frames=1) == [(0, 0, 29), (2, 46, 100)]
    # a scene of exactly min length after trimming survives, one frame less does not
    assert apply_clip_policy([(0, 10), (10, 32), (32, 50)], 10, 50, trim_frames=1) == [(1, 11, 31)]
    assert apply_clip_policy([(0, 10), (10, 31), (31, 50)], 10, 50, trim_frames=1) == []


def test_policy_splits_long_scenes_into_windows():
    fps, n = 10, 400
    # 400 frames, max 150: windows 0-150, 150-300, tail 300-400 (100 >= 20) kept
    assert apply_clip_policy([(0, n)], fps, n, trim_frames=0) == [(0, 0, 150), (0, 150, 300), (0, 300, 400)]
    # tail shorter than min_clip_s is dropped
    assert apply_clip_policy([(0, 310)], fps, 310, trim_frames=0) == [(0, 0, 150), (0, 150, 300)]
    # no maximum: one clip per scene
    assert apply_clip_policy([(0, n)], fps, n, max_clip_s=None) == [(0, 0, n)]
    for _, s, e in apply_clip_policy([(0, 1234)], 24, 1234):
        assert 48 <= e - s <= 360


def test_transitions_split_scenes_and_keep_their_frames_out():
    found = [Transition(40, 40, "hard"), Transition(60, 70, "gradual"), Transition(90, 100, "gradual")]
    assert scenes_from_transitions(found, 100) == [(0, 40), (40, 60), (70, 90)]
    # PySceneDetect's cuts and gradual gaps become transitions in frame order
    det = Detection(cuts=[80, 40], gradual=[(60, 70)], analysed_frames=100)
    assert det.transitions == [
        Transition(40, 40, "hard"),
        Transition(60, 70, "gradual"),
        Transition(80, 80, "hard"),
    ]


def _random_transitions(rng: random.Random, n: int) -> list[Transition]:
    found = []
    for _ in range(rng.randint(0, 6)):
        if rng.random() < 0.5:
            c = rng.randint(1, n - 1)
            found.append(Transition(c, c, "hard"))
        else:
            s = rng.randint(0, n - 1)
            found.append(Transition(s, min(n, s + rng.randint(1, 40)), "gradual"))
    return found


def test_policy_never_puts_a_transition_frame_in_a_clip():
    rng = random.Random(9)
    for _ in range(400):
        n = rng.randint(2, 700)
        fps = rng.choice([10, 24, 25, 29.97, 60])
        min_s, trim = rng.choice([0.0, 0.1, 0.5, 2.0]), rng.randint(0, 2)
        max_s = rng.choice([m for m in (None, 0.5, 3.0, 15.0) if m is None or m > min_s])
        found = _random_transitions(rng, n)
        scenes = scenes_from_transitions(found, n)
        clips = apply_clip_policy(scenes, fps, n, min_clip_s=min_s, max_clip_s=max_s, trim_frames=trim)
        min_f, max_f = clip_frames_limits(fps, min_s, max_s)
        for _, s, e in clips:
            assert 0 <= s < e <= n and min_f <= e - s and (max_f is None or e - s <= max_f)
            for t in found:  # at least `trim` frames away from every transition, never across a cut
                assert e <= t.start - trim or s >= t.end + trim, (t, s, e, trim)
        # the length rules apply to what remains: in each scene, the clips are consecutive windows
        # from its (trimmed) start, and only a tail shorter than min_clip_s is left out
        for i, (s, e) in enumerate(scenes):
            s, e = s + (trim if s > 0 else 0), e - (trim if e < n else 0)
            mine = [(a, b) for j, a, b in clips if j == i]
            if e - s < min_f:
                assert mine == []
                continue
            assert mine[0][0] == s and all(
                b == a2 for (_, b), (a2, _) in zip(mine, mine[1:], strict=False)
            ), (mine, s, e)
            assert 0 <= e - mine[-1][1] < min_f


# ------------------------------------------------------------------------------------ stage
def _manifest(ws: Workspace) -> tuple[list, list]:
    spans = ws.sql("SELECT * FROM clip_spans ORDER BY clip_id")
    runs = ws.sql("SELECT * FROM scene_runs ORDER BY video_id")
    return spans, runs


@pytest.fixture
def probed_workspace(tmp_path, demo_samples):
    src = tmp_path / "videos"
    src.mkdir()
    for t in demo_samples:
        shutil.copy(t.path, src / Path(t.path).name)
    ws = Workspace(tmp_path / "ws")
    ingest(ws, [str(src)])
    run_stage(ws, ProbeStage(), progress=False)
    return ws


def test_stage_end_to_end_and_resume(probed_workspace, demo_samples):
    ws = probed_workspace
    stage = SceneStage(min_clip_s=1.0, max_clip_s=3.0)
    assert len(plan(ws, stage)) == len(demo_samples)
    stats = run_stage(ws, stage, workers=2, progress=False)
    assert stats.statuses == {"ok": len(demo_samples)}
    spans, runs = _manifest(ws)
    assert all(r["status"] == "ok" and r["error"] is None for r in runs)
    assert json.loads(runs[0]["params"])["threshold"] == 3.0
    by_name = {Path(t.path).name: t for t in demo_samples}
    videos = {
        v["video_id"]: by_name[Path(v["path"]).name] for v in ws.sql("SELECT video_id, path FROM videos")
    }
    for run in runs:
        truth = videos[run["video_id"]]
        assert run["analysed_frames"] == truth.num_frames
        mine = [s for s in spans if s["video_id"] == run["video_id"]]
        assert run["num_clips"] == len(mine) > 0
        for s in mine:
            assert s["clip_id"] == f"{s['video_id']}-{s['start_frame']}-{s['end_frame']}"
            assert s["num_frames"] == s["end_frame"] - s["start_frame"]
            assert 1.0 <= s["num_frames"] / truth.fps <= 3.0 + 1e-9
            assert s["start_s"] == pytest.approx(s["start_frame"] / truth.fps)
            # no clip straddles a true hard cut
            assert not any(s["start_frame"] < c < s["end_frame"] for c in truth.hard_cuts)
            assert (s["width"], s["height"]) == (truth.width, truth.height)
    # resume: nothing planned, manifest unchanged
    assert plan(ws, stage) == []
    again = run_stage(ws, stage, progress=False)
    assert again.planned == 0
    assert _manifest(ws) == (spans, runs)


def test_stage_survives_broken_videos(tmp_path, demo_samples):
    ws = Workspace(tmp_path / "ws")
    good = next(t for t in demo_samples if t.path.endswith(".mkv"))
    data = Path(good.path).read_bytes()
    broken = {
        "truncated": data[: len(data) // 2],  # mkv: a playable prefix, then EOF
        "garbage_middle": data[:4000] + bytes(range(256)) * 40 + data[4000 + 256 * 40 :],
        "not_video": b"plain text, not a video\n" * 10,
    }
    rows_src, rows_probe = [], []
    for i, (name, blob) in enumerate(broken.items()):
        path = tmp_path / f"{name}.mkv"
        path.write_bytes(blob)
        vid = f"{i:016x}"
        rows_src.append(dict(video_id=vid, source=str(path), source_kind="file", path=str(path), status="ok"))
        # probes claim 'ok' so the scenes stage has to cope on its own
        rows_probe.append(dict(video_id=vid, status="ok", width=640, height=360, fps=30.0, num_frames=240))
    rows_src.append(
        dict(video_id="f" * 16, source="/nope.mp4", source_kind="file", path="/nope.mp4", status="ok")
    )
    rows_probe.append(dict(video_id="f" * 16, status="ok", width=640, height=360, fps=30.0, num_frames=240))
    ws.write("sources", rows_src)
    ws.write("probes", rows_probe)
    stats = run_stage(ws, SceneStage(), progress=False)
    assert stats.processed == 4
    runs = {r["video_id"]: r for r in ws.sql("SELECT * FROM scene_runs")}
    assert runs["f" * 16]["status"] == "error"
    assert runs["0000000000000002"]["status"] == "error"
    trunc = runs["0000000000000000"]
    assert trunc["status"] == "ok" and 0 < trunc["analysed_frames"] < 240
    spans = ws.sql("SELECT * FROM clip_spans WHERE video_id = '0000000000000000'")
    assert all(s["end_frame"] <= trunc["analysed_frames"] for s in spans)
    # garbage over the first key frame: the decoder rejects it, nothing is kept for that video
    garbled = runs["0000000000000001"]
    assert garbled["status"] == "error" and "Invalid data" in garbled["error"], garbled
    assert ws.sql("SELECT * FROM clip_spans WHERE video_id = '0000000000000001'") == []
    assert plan(ws, SceneStage()) == []


def test_redo_with_new_settings_replaces_the_clips(probed_workspace, demo_samples):
    ws = probed_workspace
    run_stage(ws, SceneStage(min_clip_s=1.0, max_clip_s=3.0), progress=False)
    old = {r["clip_id"] for r in ws.sql("SELECT clip_id FROM clips")}
    assert all(r["end_s"] - r["start_s"] <= 3.0 + 1e-9 for r in ws.sql("SELECT * FROM clips"))
    # without --redo, other settings do not re-run finished videos
    assert plan(ws, SceneStage(min_clip_s=1.0, max_clip_s=None)) == []
    redo = SceneStage(min_clip_s=1.0, max_clip_s=None, redo=True)
    assert len(plan(ws, redo)) == len(demo_samples)
    run_stage(ws, redo, progress=False)
    new = ws.sql("SELECT * FROM clips")
    assert {r["clip_id"] for r in new} != old
    assert any(r["end_s"] - r["start_s"] > 3.0 for r in new), "long scenes are no longer split"
    # clips of the earlier run stay in clip_spans (history) but not in the clips view
    assert ws.sql("SELECT count(*) n FROM clip_spans")[0]["n"] > len(new)
    assert sum(r["num_clips"] for r in ws.sql("SELECT num_clips FROM scene_runs")) == len(new)
    assert plan(ws, redo) == []  # same settings again: nothing to do


def test_prefetched_passes_items_errors_and_stops_early():
    import threading

    from datakit.shot_detection import prefetched

    assert list(prefetched(lambda: iter(range(100)), depth=4)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("corrupt at frame 1")

    got = []
    with pytest.raises(ValueError, match="corrupt"):
        for x in prefetched(failing):
            got.append(x)
    assert got == [1]

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()  # the producer left its with-blocks

    for x in prefetched(endless, depth=2):
        if x == 5:
            break
    assert closed.wait(5), "stopping the consumer stops the producer"
