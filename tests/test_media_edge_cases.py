"""Media that broke probe, the reader and cut (issue 6): rotated, variable frame rate, huge frames,
killed cuts, images named like videos, several video streams. All generated here with PyAV."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from datakit.shot_detection import detect_scenes
from datakit.stages.cut import clean_stale_temps, cut_clip
from datakit.stages.probe import probe_file
from demo.sample_videos import (
    make_huge_sample,
    make_image_as_video,
    make_rotated_sample,
    make_two_stream_sample,
    make_vfr_sample,
    read_stamp,
    write_video,
)
from mediaio import (
    FrameTooLargeError,
    VideoReadError,
    av_open,
    decoder_threads,
    exact_timing,
    iter_video_frames,
    media_type,
    read_frames,
    x264_options,
)

ROOT = Path(__file__).resolve().parents[1]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _decode_as_stored(path) -> tuple[list[np.ndarray], list[Fraction], Fraction | None]:
    """Every frame as coded (no rotation applied), its time in seconds, and the stream duration."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [(f.to_ndarray(format="rgb24"), f.pts * f.time_base) for f in c.decode(stream)]
        duration = stream.duration * stream.time_base if stream.duration else None
    return [f for f, _ in frames], [t for _, t in frames], duration


# ------------------------------------------------------------------------------------ rotation
@pytest.fixture(scope="module", params=[90, 180, 270])
def rotated(request, tmp_path_factory):
    return request.param, make_rotated_sample(tmp_path_factory.mktemp("rot"), request.param)


def test_probe_reports_rotation_and_displayed_size(rotated):
    rotation, sample = rotated
    row = probe_file("v", str(sample.path))
    assert row["status"] == "ok", row
    upright_h, upright_w = sample.frames.shape[1:3]
    assert (row["rotation"], row["width"], row["height"]) == (rotation, upright_w, upright_h)
    coded = (upright_h, upright_w) if rotation in (90, 270) else (upright_w, upright_h)
    assert (row["coded_width"], row["coded_height"]) == coded
    assert row["media_type"] == "video" and row["video_stream"] == 0


def test_reader_returns_upright_frames(rotated):
    rotation, sample = rotated
    frames = read_frames(sample.path, 5, 15)
    assert frames.shape == sample.frames[5:15].shape
    assert [read_stamp(f) for f in frames] == list(
        range(5, 15)
    )  # the index band is at the top, left to right
    assert max(_mad(a, b) for a, b in zip(frames, sample.frames[5:15], strict=True)) < 4
    small = read_frames(sample.path, 0, 2, size=48)  # an int size is the upright short side
    assert small.shape[1:3] == (80, 48)


def test_cut_clips_come_out_upright(rotated, tmp_path):
    rotation, sample = rotated
    row = cut_clip(sample.path, tmp_path / "clip.mp4", 3, 20)
    assert row["status"] == "ok", row
    stored, _, _ = _decode_as_stored(row["path"])  # what any player shows: no rotation left to apply
    with av.open(row["path"]) as c:
        assert next(c.decode(video=0)).rotation == 0
    assert (row["height"], row["width"]) == stored[0].shape[:2] == sample.frames.shape[1:3]
    assert [read_stamp(f) for f in stored] == list(range(3, 20))


# ------------------------------------------------------------------------------------ variable frame rate
@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    sample = make_vfr_sample(tmp_path_factory.mktemp("vfr"))
    stored, times, _ = _decode_as_stored(sample.path)
    assert len(stored) == len(sample.frames) == 80
    return sample, stored, times


@pytest.mark.parametrize("span", [(0, 10), (0, 80), (25, 35), (28, 55), (49, 51), (70, 80), (75, 90)])
def test_vfr_spans_are_frame_exact(vfr, span):
    sample, stored, _ = vfr
    a, b = span
    got = list(iter_video_frames(sample.path, a, b))
    assert [i for i, _ in got] == list(range(a, min(b, 80)))
    frames = read_frames(sample.path, a, b)
    assert len(frames) == min(b, 80) - a
    assert all(np.array_equal(f, stored[a + k]) for k, f in enumerate(frames))


def test_vfr_frame_times(vfr):
    sample, _, times = vfr
    timing = exact_timing(sample.path)
    assert [timing.time_of(i) for i in range(80)] == times
    assert timing.time_of(80) == times[-1] + Fraction(17, 1000)  # the end of the last frame


def test_vfr_is_never_misnumbered_by_frame_rate_arithmetic(vfr):
    sample, _, _ = vfr
    with pytest.raises(VideoReadError, match="variable frame rate"):
        read_frames(sample.path, 0, 10, index="cfr")  # forced arithmetic: an error, not wrong frames


@pytest.mark.parametrize("span", [(0, 10), (25, 60), (45, 80)])
def test_vfr_cut_keeps_the_source_timestamps(vfr, tmp_path, span):
    sample, _, times = vfr
    a, b = span
    row = cut_clip(sample.path, tmp_path / "clip.mp4", a, b)
    assert row["status"] == "ok", row
    frames, out_times, duration = _decode_as_stored(row["path"])
    assert [read_stamp(f) for f in frames] == list(range(a, b))
    assert out_times == [t - times[a] for t in times[a:b]]  # same timing, from 0
    span_s = Fraction(sample.times_ms[b] - sample.times_ms[a], 1000) if b < 80 else None
    if span_s is not None:  # the last frame lasts until the next source frame
        assert duration == span_s
        assert row["fps"] == pytest.approx(float((b - a) / span_s))


def test_vfr_cut_resampled_shows_the_frame_on_screen(vfr, tmp_path):
    sample, _, _ = vfr
    a, b, fps = 20, 60, 10  # source: 10 frames at 30 fps, 20 at 10 fps, 10 at 60 fps
    row = cut_clip(sample.path, tmp_path / "clip.mp4", a, b, fps=fps)
    assert row["status"] == "ok" and row["fps"] == fps, row
    frames, out_times, _ = _decode_as_stored(row["path"])
    t0, ms = sample.times_ms[a], sample.times_ms
    span_ms = ms[b] - t0
    want = [
        max(i for i in range(a, b) if ms[i] - t0 <= k * 1000 // fps) for k in range(-(-span_ms * fps // 1000))
    ]
    assert [read_stamp(f) for f in frames] == want
    assert out_times == [Fraction(k, fps) for k in range(len(want))]


# ------------------------------------------------------------------------------------ pixel limit, memory
@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    return make_huge_sample(tmp_path_factory.mktemp("huge"), 8192, 8192, frames=2)


def test_huge_frames_are_refused_before_decoding(huge, tmp_path):
    row = probe_file("v", str(huge))
    assert row["status"] == "error" and row["error"].startswith(
        "frame too large: 8192x8192 = 67.1 Mpx > max_pixels"
    )
    assert (row["width"], row["height"]) == (8192, 8192)
    with pytest.raises(FrameTooLargeError):
        read_frames(huge, 0, 1)
    with pytest.raises(FrameTooLargeError):
        next(iter_video_frames(huge, 0, 1))
    with pytest.raises(FrameTooLargeError):
        detect_scenes(huge)
    cut = cut_clip(huge, tmp_path / "clip.mp4", 0, 2)
    assert cut["status"] == "error" and "frame too large" in cut["error"]
    assert list(tmp_path.iterdir()) == []


def test_pixel_limit_is_configurable(demo_samples):
    path = demo_samples[0].path  # 320x240
    assert probe_file("v", path, max_pixels=320 * 240)["status"] == "ok"
    assert "frame too large" in probe_file("v", path, max_pixels=320 * 240 - 1)["error"]
    with pytest.raises(FrameTooLargeError):
        read_frames(path, 0, 1, max_pixels=100 * 100)
    assert read_frames(path, 0, 1, max_pixels=None).shape == (1, 240, 320, 3)


def test_frames_in_flight_shrink_with_frame_size():
    assert decoder_threads(1920, 1080) == 0  # FFmpeg's default (a thread per core)
    assert decoder_threads(16384, 16384) == 1  # one 384 MB frame: a single frame thread
    assert "x264-params" not in x264_options(3840, 2160)
    assert "rc-lookahead=0" in x264_options(8192, 4320)["x264-params"]


# ------------------------------------------------------------------------------------ temp files
def test_killed_cut_leaves_no_media_file_and_cleanup_removes_it(demo_samples, tmp_path):
    src = next(t for t in demo_samples if t.path.endswith(".mkv")).path
    out = tmp_path / "clips" / "vid"
    code = (  # SIGKILL the process in the middle of writing a clip
        "import os, signal\n"
        "import mediaio.writer as w\n"
        "write = w.ClipWriter.write\n"
        "def dying(self, *a, **k):\n"
        "    write(self, *a, **k)\n"
        "    if self.frames == 20: os.kill(os.getpid(), signal.SIGKILL)\n"
        "w.ClipWriter.write = dying\n"
        "from datakit.stages.cut import cut_clip\n"
        f"cut_clip({src!r}, {str(out / 'vid-0-60.mp4')!r}, 0, 60)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".vid-0-60.mp4.") and left[0].endswith(".partial")
    assert list(tmp_path.rglob("*.mp4")) == []  # globbing for clips finds nothing
    finished = cut_clip(src, out / "vid-0-10.mp4", 0, 10)
    assert finished["status"] == "ok"
    assert clean_stale_temps(tmp_path / "clips") == 1
    assert [p.name for p in out.iterdir()] == ["vid-0-10.mp4"]


def test_clean_stale_temps_touches_only_cut_temps(tmp_path):
    keep = ["a/clip.mp4", "a/.hidden.mp4", "a/notes.partial", "a/.x.partial", "b/.c.mp4.0123abcd.partial.txt"]
    stale = ["a/.clip.mp4.0123abcd.partial", "b/c/.d-0-1.mp4.deadbeef.partial", "b/.old-0-1.89abcdef.tmp.mp4"]
    for name in keep + stale:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    hour_ago = time.time() - 3600
    for name in stale[1:]:
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    assert clean_stale_temps(tmp_path, min_age_s=600) == 2  # a temp written recently may be in use
    assert (tmp_path / stale[0]).exists()
    assert clean_stale_temps(tmp_path) == 1
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)
    assert clean_stale_temps(tmp_path) == 0


# ------------------------------------------------------------------------------------ images, streams
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_image_named_mp4_is_an_image(tmp_path, fmt):
    """Not a one-frame 25 fps video: an image (one frame, no frame rate), whatever its name."""
    path = make_image_as_video(tmp_path, fmt)
    row = probe_file("v", str(path))
    assert (row["media_type"], row["codec"], row["width"], row["height"]) == ("image", fmt, 64, 48)
    assert row.get("fps") is None and row.get("duration_s") is None and row.get("num_frames") in (None, 1)
    with av_open(path) as container:
        assert media_type(container) == "image"


def test_one_frame_video_is_still_a_video(tmp_path):
    path = tmp_path / "one.mp4"
    write_video(path, [np.zeros((48, 64, 3), np.uint8)], fps=24, codec="libx264", width=64, height=48)
    row = probe_file("v", str(path))
    assert (row["status"], row["media_type"], row["num_frames"]) == ("ok", "video", 1)


def test_the_largest_video_stream_is_used(tmp_path):
    sample = make_two_stream_sample(tmp_path)
    row = probe_file("v", str(sample.path))
    assert row["status"] == "ok"
    assert (row["video_stream"], row["width"], row["height"], row["num_frames"]) == (1, 192, 128, 24)
    frames = read_frames(sample.path, 4, 12)
    assert frames.shape == (8, 128, 192, 3)
    assert [read_stamp(f) for f in frames] == list(range(4, 12))
    assert detect_scenes(sample.path, min_scene_len=5).cuts == [12]


def _imported_packages(package: str) -> set[str]:
    """Top-level packages imported anywhere in a package's sources (function-level imports too)."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


def test_mediaio_is_a_leaf_and_models_do_not_import_datakit():
    assert _imported_packages("mediaio") & {"datakit", "models", "training", "torch"} == set()
    assert "datakit" not in _imported_packages("models")
