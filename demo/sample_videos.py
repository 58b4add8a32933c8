"""Synthetic sample videos with known scene boundaries, and a gallery of bad inputs.

Nothing is downloaded: the demo and the tests make their own videos. Each scene has its own
palette, texture and moving shapes, so a content detector sees a clear change at a hard cut; a
cross-dissolve blends two scenes linearly over several frames (the case detectors often miss).
Every video gets a JSON sidecar (`<name>.truth.json`) with its true cut frames.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mediaio import av_open


@dataclass
class SampleSpec:
    name: str
    width: int = 320
    height: int = 240
    fps: int = 24
    codec: str = "libx264"
    container: str = "mp4"
    scene_frames: list[int] = field(default_factory=lambda: [48, 36, 60])
    dissolve_frames: int = 0  # >0: the last transition is a cross-dissolve of this many frames
    seed: int = 0
    # One entry per scene boundary: 0 for a hard cut, N > 0 for a cross-dissolve of N frames at the
    # end of the earlier scene (overrides `dissolve_frames`).
    transitions: list[int] | None = None

    def transition_frames(self) -> list[int]:
        """Length of the transition at each scene boundary (0: a hard cut)."""
        if self.transitions is not None:
            if len(self.transitions) != len(self.scene_frames) - 1:
                raise ValueError(f"{self.name}: one transition per scene boundary expected")
            return list(self.transitions)
        last = [self.dissolve_frames] if self.scene_frames[1:] else []
        return [0] * (len(self.scene_frames) - 2) + last


@dataclass
class SampleTruth:
    path: str
    num_frames: int
    fps: int
    width: int
    height: int
    codec: str
    hard_cuts: list[int]  # first frame of each new scene after a hard cut
    dissolves: list[tuple[int, int]]  # [start, end) frame ranges of cross-dissolves


def _scene_painter(index: int, seed: int, width: int, height: int):
    rng = np.random.default_rng(seed * 1000 + index)
    base = rng.integers(30, 226, size=3).astype(np.float32)
    accent = 255 - base
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    grad = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
    texture = rng.normal(0, 12, size=(height // 8 + 1, width // 8 + 1, 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 1), np.float32))[:height, :width]
    background = np.clip(base * (0.6 + 0.6 * grad) + texture, 0, 255)
    radius = max(4, min(width, height) // 8)
    speed = rng.uniform(1.5, 3.5, size=2)
    start = rng.uniform(0.2, 0.8, size=2) * (width, height)

    def paint(t: int) -> np.ndarray:
        frame = background.copy()
        cx = (start[0] + speed[0] * t) % width
        cy = (start[1] + speed[1] * t * 0.6) % height
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        frame[mask] = accent
        sq = max(2, radius // 2)
        sx, sy = int((width - 1 - cx) % (width - sq)), int(cy * 0.5)
        frame[sy : sy + sq, sx : sx + sq] = 255 - accent * 0.5
        return frame

    return paint


def render_frames(spec: SampleSpec):
    """Yield (frame uint8 HxWx3) for the whole video; also returns truth via StopIteration value."""
    painters = [_scene_painter(i, spec.seed, spec.width, spec.height) for i in range(len(spec.scene_frames))]
    blends = [*spec.transition_frames(), 0]
    for s, n in enumerate(spec.scene_frames):
        d = blends[s]
        if d >= n:
            raise ValueError(f"{spec.name}: a {d}-frame dissolve does not fit in a {n}-frame scene")
        for t in range(n):
            frame = painters[s](t)
            if d and t >= n - d:
                # Cross-dissolve: the next scene fades in while both keep moving (it reaches its
                # own frame 0 right after the dissolve).
                alpha = (t - (n - d) + 1) / (d + 1)
                frame = (1 - alpha) * frame + alpha * painters[s + 1](t - n)
            yield frame.astype(np.uint8)


def truth_for(spec: SampleSpec, path: Path) -> SampleTruth:
    bounds = np.cumsum(spec.scene_frames).tolist()
    hard, dissolves = [], []
    for b, d in zip(bounds[:-1], spec.transition_frames(), strict=True):
        if d:
            dissolves.append((b - d, b))
        else:
            hard.append(b)
    return SampleTruth(str(path), bounds[-1], spec.fps, spec.width, spec.height, spec.codec, hard, dissolves)


def _add_video_stream(out, codec: str, fps: int, width: int, height: int):
    stream = out.add_stream(codec, rate=Fraction(fps))
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if codec in ("libx264", "libx265"):
        stream.options = {"preset": "veryfast", "crf": "20"}
    elif codec in ("mpeg4", "mjpeg"):
        stream.bit_rate = 4_000_000
    elif codec.startswith("libvpx"):
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        stream.bit_rate = 2_000_000
    return stream


def write_video(
    path: Path,
    frames,
    *,
    fps: int,
    codec: str,
    width: int,
    height: int,
    rotation: int = 0,
    times_ms: list[int] | None = None,
) -> int:
    """Encode RGB frames with PyAV (no shell, no ffmpeg binary). Returns frames written.

    rotation: degrees clockwise a player turns the frames for display (a display matrix).
    times_ms: each frame's presentation time in milliseconds (variable frame rate); default k / fps.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with av_open(str(path), mode="w") as out:
        stream = _add_video_stream(out, codec, fps, width, height)
        if rotation:
            stream.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if times_ms is not None:
                video_frame.pts, video_frame.time_base = times_ms[n], Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                out.mux(packet)
            n += 1
        for packet in stream.encode():
            out.mux(packet)
    return n


def make_sample(spec: SampleSpec, out_dir: Path) -> SampleTruth:
    path = Path(out_dir) / f"{spec.name}.{spec.container}"
    write_video(
        path, render_frames(spec), fps=spec.fps, codec=spec.codec, width=spec.width, height=spec.height
    )
    truth = truth_for(spec, path)
    path.with_name(path.name + ".truth.json").write_text(json.dumps(asdict(truth), indent=2) + "\n")
    return truth


DEMO_SPECS = [
    SampleSpec("city_h264_320x240", 320, 240, 24, "libx264", "mp4", [72, 60, 84], 0, seed=1),
    SampleSpec("beach_mpeg4_426x240", 426, 240, 25, "mpeg4", "mp4", [75, 60, 90], 12, seed=2),
    SampleSpec("forest_vp9_256x144", 256, 144, 30, "libvpx-vp9", "webm", [90, 75, 105], 0, seed=3),
    SampleSpec("studio_mjpeg_352x288", 352, 288, 24, "mjpeg", "avi", [60, 96], 0, seed=4),
    SampleSpec("street_h264_640x360", 640, 360, 30, "libx264", "mkv", [120, 75, 96, 84], 15, seed=5),
]


# Harder cases for shot-boundary detection: shots of 8 and 12 frames (shorter than PySceneDetect's
# min_scene_len) and cross-dissolves of 4 to 48 frames (0.17-2 s), beside hard cuts.
TRANSITION_SPECS = [
    SampleSpec(
        "short_shots_h264_256x144",
        256,
        144,
        24,
        "libx264",
        "mp4",
        [40, 8, 30, 8, 8, 36, 12, 40],
        seed=21,
        transitions=[0] * 7,
    ),
    SampleSpec(
        "dissolves_h264_256x144",
        256,
        144,
        30,
        "libx264",
        "mp4",
        [40, 30, 45, 50],
        seed=22,
        transitions=[6, 12, 24],
    ),
    SampleSpec(
        "mixed_mpeg4_320x180",
        320,
        180,
        25,
        "mpeg4",
        "mp4",
        [36, 8, 45, 40, 8, 60, 50],
        seed=23,
        transitions=[0, 0, 16, 0, 0, 32],
    ),
    SampleSpec(
        "quick_dissolves_h264_256x144",
        256,
        144,
        24,
        "libx264",
        "mkv",
        [40, 30, 40, 30, 40],
        seed=24,
        transitions=[4, 8, 0, 10],
    ),
    SampleSpec(
        "long_dissolves_h264_256x144",
        256,
        144,
        24,
        "libx264",
        "mp4",
        [60, 70, 80],
        seed=25,
        transitions=[36, 48],
    ),
]


def make_transition_set(out_dir: Path, specs: list[SampleSpec] | None = None) -> list[SampleTruth]:
    """Write the short-shot and dissolve videos (skipping ones already there) and return their truths."""
    return make_demo_set(out_dir, specs or TRANSITION_SPECS)


def make_demo_set(out_dir: Path, specs: list[SampleSpec] | None = None) -> list[SampleTruth]:
    """Write the demo videos (skipping ones already there) and return their truths."""
    out_dir = Path(out_dir)
    truths = []
    for spec in specs or DEMO_SPECS:
        path = out_dir / f"{spec.name}.{spec.container}"
        sidecar = path.with_name(path.name + ".truth.json")
        if path.exists() and sidecar.exists():
            truths.append(SampleTruth(**json.loads(sidecar.read_text())))
        else:
            truths.append(make_sample(spec, out_dir))
    return truths


def make_bad_inputs(out_dir: Path) -> dict[str, Path]:
    """A gallery of inputs that must become error rows, never crashes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bad: dict[str, Path] = {}
    bad["empty"] = out_dir / "empty.mp4"
    bad["empty"].write_bytes(b"")
    good = make_sample(SampleSpec("tmp_good", 160, 120, 24, "libx264", "mp4", [24, 24], seed=9), out_dir)
    good_bytes = Path(good.path).read_bytes()
    Path(good.path).unlink()
    Path(good.path + ".truth.json").unlink()
    bad["truncated"] = out_dir / "truncated.mp4"
    bad["truncated"].write_bytes(good_bytes[: len(good_bytes) // 3])
    bad["corrupt"] = out_dir / "corrupt.mp4"
    rng = np.random.default_rng(0)
    bad["corrupt"].write_bytes(good_bytes[:64] + rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    bad["not_a_video"] = out_dir / "notes.mp4"
    bad["not_a_video"].write_text("this is a text file with a video extension\n")
    bad["audio_only"] = out_dir / "audio_only.m4a"
    _write_tone(bad["audio_only"])
    bad["dir_named_like_video"] = out_dir / "folder.mp4"
    bad["dir_named_like_video"].mkdir(exist_ok=True)
    bad["broken_symlink"] = out_dir / "dangling.mp4"
    if not bad["broken_symlink"].is_symlink():
        bad["broken_symlink"].symlink_to(out_dir / "does-not-exist.mp4")
    weird = out_dir / "we ird $(touch pwned) 'quote\" ;&|.mp4"
    make_sample(SampleSpec("tmp_weird", 160, 120, 24, "libx264", "mp4", [24, 24], seed=10), out_dir)
    (out_dir / "tmp_weird.mp4").rename(weird)
    (out_dir / "tmp_weird.mp4.truth.json").unlink()
    bad["weird_name_ok"] = weird
    return bad


def _write_tone(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    with av_open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame_size = stream.codec_context.frame_size or 1024
        for i in range(0, samples.shape[1], frame_size):
            chunk = samples[:, i : i + frame_size]
            if chunk.shape[1] < frame_size:
                chunk = np.pad(chunk, ((0, 0), (0, frame_size - chunk.shape[1])))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


# ------------------------------------------------------------------------------------ edge cases
@dataclass
class EdgeSample:
    path: Path
    frames: np.ndarray  # (T, H, W, 3) the frames as a viewer should see them (upright)
    times_ms: list[int] = field(default_factory=list)  # presentation times, when not k / fps


_STAMP_BITS = 8


def _stamp_blocks(width: int, height: int) -> tuple[int, int]:
    return width // _STAMP_BITS, max(8, height // 10)


def stamp_index(frame: np.ndarray, index: int) -> np.ndarray:
    """Write `index` (0-255) into the top band of an upright frame as 8 black/white blocks, so
    a test can tell which source frame it sees after compression, resizing and rotation."""
    bw, bh = _stamp_blocks(frame.shape[1], frame.shape[0])
    for bit in range(_STAMP_BITS):
        frame[:bh, bit * bw : (bit + 1) * bw] = 255 if index >> (_STAMP_BITS - 1 - bit) & 1 else 0
    return frame


def read_stamp(frame: np.ndarray) -> int:
    """The index `stamp_index` wrote (read from the centre of each block)."""
    bw, bh = _stamp_blocks(frame.shape[1], frame.shape[0])
    rows = frame[bh // 4 : bh - bh // 4]
    bits = [rows[:, b * bw + bw // 4 : (b + 1) * bw - bw // 4].mean() > 127 for b in range(_STAMP_BITS)]
    return sum(int(bit) << (_STAMP_BITS - 1 - i) for i, bit in enumerate(bits))


def _scene_frames(width: int, height: int, lengths: list[int], seed: int) -> np.ndarray:
    """Frames of scenes with the given lengths, each stamped with its index (see `stamp_index`)."""
    spec = SampleSpec("edge", width, height, 24, scene_frames=lengths, seed=seed)
    return np.stack([stamp_index(f, k) for k, f in enumerate(render_frames(spec))])


def make_rotated_sample(out_dir: Path, rotation: int, width: int = 96, height: int = 160) -> EdgeSample:
    """A portrait-style video stored turned, with a display matrix saying to turn it `rotation`
    degrees clockwise (what phones write). `frames` are the upright frames (width x height)."""
    upright = _scene_frames(width, height, [12, 12], seed=20 + rotation // 90)
    coded = np.stack([np.ascontiguousarray(np.rot90(f, k=rotation // 90)) for f in upright])  # turned left
    path = Path(out_dir) / f"rotated_{rotation}.mp4"
    height, width = coded.shape[1:3]
    write_video(path, coded, fps=24, codec="libx264", width=width, height=height, rotation=rotation)
    return EdgeSample(path, upright)


def make_vfr_sample(out_dir: Path, name: str = "vfr") -> EdgeSample:
    """A variable-frame-rate H.264 MP4 (with B-frames): 30 frames at 30 fps, 20 at 10 fps, 30 at
    60 fps, three scenes so neighbouring frames differ."""
    frames = _scene_frames(160, 96, [30, 20, 30], seed=30)
    steps = [33] * 30 + [100] * 20 + [17] * 30
    times = [sum(steps[:k]) for k in range(len(steps))]
    path = Path(out_dir) / f"{name}.mp4"
    write_video(path, frames, fps=30, codec="libx264", width=160, height=96, times_ms=times)
    return EdgeSample(path, frames, times)


def make_huge_sample(out_dir: Path, width: int = 8192, height: int = 8192, frames: int = 2) -> Path:
    """A small H.264 file with enormous frames (flat grey with a moving bar): a few hundred KB on
    disk, but each decoded frame is width x height (67 Mpx, 200 MB as RGB, by default)."""
    path = Path(out_dir) / f"huge_{width}x{height}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av_open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "35"}
        planes = np.full((height * 3 // 2, width), 128, np.uint8)
        for k in range(frames):
            planes[:height, k * 64 % width : k * 64 % width + 64] = 235
            for packet in stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_image_as_video(out_dir: Path, fmt: str = "png") -> Path:
    """A still image (PIL format name: 'png', 'jpeg', ...) saved under a `.mp4` name."""
    from PIL import Image

    path = Path(out_dir) / f"image_{fmt}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_scene_frames(64, 48, [1], seed=40)[0]).save(path, format=fmt.upper())
    return path


def make_two_stream_sample(out_dir: Path) -> EdgeSample:
    """An MP4 with two video streams: a 96x64 one first (a cut at frame 6), then a 192x128 one
    (a cut at frame 12). `frames` are those of the larger stream (the one to use)."""
    small = _scene_frames(96, 64, [6, 18], seed=50)
    large = _scene_frames(192, 128, [12, 12], seed=51)
    path = Path(out_dir) / "two_streams.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av_open(str(path), mode="w") as out:
        streams = [_add_video_stream(out, "libx264", 24, f.shape[2], f.shape[1]) for f in (small, large)]
        for k in range(len(large)):
            for stream, frames in zip(streams, (small, large), strict=True):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frames[k], format="rgb24")):
                    out.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                out.mux(packet)
    return EdgeSample(path, large)


# ------------------------------------------------------------------------------ learnable shots
# Shots simple enough for tiny models to learn on a CPU in minutes: a flat, lightly textured
# background and a ball of another colour moving in one direction. Each shot's caption is drawn
# from the same parameters that paint it, so it is true, and the metadata table that lists the
# shots has Panda-70M's layout: the demo ingests it as a user ingests Panda-70M.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 40),
    "green": (45, 165, 60),
    "blue": (40, 75, 205),
    "yellow": (225, 205, 45),
    "purple": (125, 50, 170),
    "orange": (235, 135, 35),
    "pink": (240, 140, 185),
    "teal": (35, 150, 150),
}
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class Shot:
    background: str
    ball: str
    direction: str

    @property
    def caption(self) -> str:
        def a(word: str) -> str:
            return ("an " if word[0] in "aeiou" else "a ") + word

        return f"{a(self.ball)} ball moves {self.direction} over {a(self.background)} background"


def learnable_shots(videos: int = 4, shots_per_video: int = 4) -> list[list[Shot]]:
    """Every background colour twice (other ball, other direction), spread over the videos."""
    names, dirs = list(COLOURS), list(DIRECTIONS)
    shots = [
        Shot(bg, names[(i + 3 + 2 * k) % len(names)], dirs[(i + k) % len(dirs)])
        for k in range(2)
        for i, bg in enumerate(names)
    ]
    n = videos * shots_per_video
    shots = (shots * (n // len(shots) + 1))[:n]
    order = np.random.default_rng(7).permutation(n)  # neighbouring shots differ
    return [[shots[j] for j in order[v * shots_per_video : (v + 1) * shots_per_video]] for v in range(videos)]


def paint_shot(shot: Shot, t: int, n: int, size: int, seed: int) -> np.ndarray:
    """Frame `t` of `n` of a shot: background with a light texture, and the moving ball."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[shot.background], np.float32)
    import cv2

    grid = rng.normal(0, 24, (6, 6)).astype(np.float32)  # smooth blotches, wrapping around the frame
    texture = cv2.resize(np.tile(grid, (2, 2)), (2 * size, 2 * size), interpolation=cv2.INTER_CUBIC)[
        ..., None
    ]
    dx, dy = DIRECTIONS[shot.direction]
    drift = int(round(t * size / n))  # the texture drifts a frame width per shot, against the ball
    texture = np.roll(texture, (int(dy) * -drift, int(dx) * -drift), axis=(0, 1))[:size, :size]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frame = np.clip(base * (0.9 + 0.2 * yy / size)[..., None] + texture, 0, 255)
    progress = t / max(1, n - 1) - 0.5  # the ball crosses the middle 80% of the frame
    cx, cy = size / 2 + dx * progress * size * 0.8, size / 2 + dy * progress * size * 0.8
    frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (size / 5) ** 2] = COLOURS[shot.ball]
    return frame.astype(np.uint8)


def _stamp(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m // 60)}:{int(m % 60):02d}:{s:06.3f}"


def make_learnable_set(
    out_dir: Path,
    *,
    size: int = 96,
    fps: int = 12,
    shot_s: float = 3.0,
    videos: int = 4,
    shots_per_video: int = 4,
) -> Path:
    """Write the shot videos and `meta.csv` (Panda-70M's columns `videoID,url,timestamp,caption`;
    url is the video's path relative to the table). Returns the table's path; reruns reuse it."""
    import csv

    out_dir = Path(out_dir)
    table = out_dir / "meta.csv"
    if table.is_file():
        return table
    out_dir.mkdir(parents=True, exist_ok=True)
    n = round(shot_s * fps)
    rows = []
    for v, shots in enumerate(learnable_shots(videos, shots_per_video)):
        name = f"shots_{v:02d}"
        frames = (paint_shot(s, t, n, size, seed=100 * v + k) for k, s in enumerate(shots) for t in range(n))
        write_video(out_dir / f"{name}.mp4", frames, fps=fps, codec="libx264", width=size, height=size)
        spans = [[_stamp(k * n / fps), _stamp((k + 1) * n / fps)] for k in range(len(shots))]
        rows.append(
            {
                "videoID": name,
                "url": f"{name}.mp4",
                "timestamp": repr(spans),
                "caption": repr([s.caption for s in shots]),
            }
        )
    tmp = table.with_name(".meta.csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["videoID", "url", "timestamp", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(table)
    return table


def learnable_rows(table: Path, *, size: int, frames_per_shot: int, fps: float = 12.0) -> list[dict]:
    """Selection rows (one per shot, as a curated set holds them) of a `make_learnable_set` table,
    for training straight from it; `size`, `frames_per_shot` and `fps` as it was made with."""
    import ast
    import csv

    table = Path(table)
    rows = []
    with table.open() as f:
        for video in csv.DictReader(f):
            for k in range(len(ast.literal_eval(video["timestamp"]))):
                rows.append(
                    dict(
                        clip_id=f"{video['videoID']}-{k}",
                        video_id=video["videoID"],
                        source_path=str(table.parent / video["url"]),
                        path=None,
                        start_frame=frames_per_shot * k,
                        end_frame=frames_per_shot * (k + 1),
                        fps=fps,
                        width=size,
                        height=size,
                    )
                )
    return rows
