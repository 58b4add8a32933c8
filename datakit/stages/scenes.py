"""Scenes: find shot transitions in every probed video and write frame-exact clip spans.

Detectors: PySceneDetect's adaptive/content (see `datakit.shot_detection`) or TransNetV2 (see
`datakit.transnet`); `auto` (the default) picks TransNetV2 on a worker with a GPU and adaptive on
the CPU, and records the one it used. Every transition is stored (`transitions`), and the clip
policy keeps every clip clear of transition frames."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datakit.stage import OptionError, Resources, Rows, Stage, WorkerContext, describe, option
from datakit.tables import Column as C
from datakit.tables import Table

if TYPE_CHECKING:
    from datakit.shot_detection import Detection

TABLES = (
    Table.marker(
        "scene_runs",
        C("video_id", "VARCHAR", "id of the video"),
        "One row per video after scene detection; marks the video done (its spans are in clip_spans).",
        (
            C("detector", "VARCHAR", "detector used: 'adaptive', 'content' or 'transnetv2' (auto resolved)"),
            C("params", "VARCHAR", "JSON of the detector and clip-length settings used"),
            C("num_scenes", "INTEGER", "scenes found before the clip-length policy"),
            C("num_clips", "INTEGER", "clips kept after the policy (rows in clip_spans)"),
            C("num_transitions", "INTEGER", "transitions found (rows in transitions)"),
            C("analysed_frames", "BIGINT", "frames decoded and analysed"),
            C("run_key", "VARCHAR", "hash of video_id and params; the clips of this run carry it"),
        ),
    ),
    Table(
        "clip_spans",
        "clip_id",
        "Frame-exact clip spans from scene detection and the clip-length policy.",
        (
            C("clip_id", "VARCHAR", "'<video_id>-<start_frame>-<end_frame>'"),
            C("video_id", "VARCHAR", "id of the source video"),
            C("scene_index", "INTEGER", "index of the scene this clip came from"),
            C("start_frame", "BIGINT", "first frame (inclusive)"),
            C("end_frame", "BIGINT", "end frame (exclusive)"),
            C("start_s", "DOUBLE", "start_frame / fps"),
            C("end_s", "DOUBLE", "end_frame / fps"),
            C("num_frames", "BIGINT", "end_frame - start_frame"),
            C("fps", "DOUBLE", "frame rate of the source"),
            C("width", "INTEGER", "source width"),
            C("height", "INTEGER", "source height"),
            C(
                "run_key",
                "VARCHAR",
                "the scene run that made this span (spans of older runs are hidden in `clips`)",
            ),
        ),
    ),
    Table(
        "transitions",
        "transition_id",
        "Shot transitions found by scene detection: no clip contains any of their frames.",
        (
            C("transition_id", "VARCHAR", "'<video_id>-<start_frame>-<end_frame>'"),
            C("video_id", "VARCHAR", "id of the source video"),
            C("start_frame", "BIGINT", "first frame of the transition (a hard cut: of the new shot)"),
            C("end_frame", "BIGINT", "first frame of the next shot (= start_frame for a hard cut)"),
            C("kind", "VARCHAR", "'hard' (a cut) or 'gradual' (dissolve, fade: frames of neither shot)"),
            C("peak_probability", "DOUBLE", "TransNetV2's highest probability in it (null: PySceneDetect)"),
            C("run_key", "VARCHAR", "the scene run that found it (the latest: join scene_runs on run_key)"),
        ),
    ),
)

DETECTORS = ("auto", "adaptive", "content", "transnetv2")
PRECISIONS = ("auto", "fp32", "bf16")


def gpu_present() -> bool:
    """Whether this process may use a CUDA GPU, checked without importing torch (the executors
    place workers on GPUs with torch's count)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return bool(ids) and ids[0] != "-1"
    return any(Path("/proc/driver/nvidia/gpus").glob("*"))


@dataclass(kw_only=True)
class SceneStage(Stage):
    """Shot transitions per video (PySceneDetect or TransNetV2), then the clip policy."""

    name = "scenes"
    marker_table = "scene_runs"
    extra_tables = ("transitions", "clip_spans", "given_spans")  # given_spans: spans past the video's end
    tables = TABLES
    after = ("probe",)

    detector: str = option(
        "auto", "Detector; auto: transnetv2 on a GPU worker, adaptive on the CPU.", choices=DETECTORS
    )
    threshold: float | None = option(None, "Threshold (adaptive 3.0, content 27, transnetv2 0.5).", min=0)
    min_scene_len: int = option(15, "Frames; PySceneDetect never reports two cuts closer than this.", min=1)
    min_clip_s: float = option(2.0, "Drop scenes (and tail windows) shorter than this (seconds).", min=0)
    max_clip_s: float | None = option(
        15.0, "Split longer scenes into consecutive windows of this length.", min=0.1
    )
    trim_frames: int = option(1, "Frames dropped at each scene edge that is a transition.", min=0)
    analysis_width: int = option(256, "PySceneDetect: frames are shrunk to this width.", min=16)
    analysis_interp: str = option(
        "linear", "PySceneDetect: shrinking filter for analysis frames.", choices=("linear", "area")
    )
    gradual: bool = option(False, "PySceneDetect: extra sparse pass that finds cross-dissolves and fades.")
    gradual_step: int = option(8, "Frame stride of the gradual pass.", min=1)
    gradual_threshold: float = option(20.0, "ContentDetector threshold of the gradual pass.", min=0)
    transition_margin: int = option(
        2, "transnetv2: frames added on each side of a gradual transition.", min=0, max=100
    )
    precision: str = option(
        "auto",
        "transnetv2 arithmetic; auto: bf16 on a GPU or a CPU with bf16 units, else fp32.",
        choices=PRECISIONS,
    )
    windows_per_batch: int = option(
        4, "transnetv2: 550-frame windows per model call (from several videos).", min=1, max=4096
    )
    skip_loop_filter: bool = option(True, "Faster H.264/HEVC decoding for analysis (no effect on spans).")
    redo: bool = option(False, "Re-detect videos whose last run used other settings (old clips vanish).")
    given_spans: str = option(
        "detect",
        "Spans from an imported metadata table: detect (split them at detected "
        "transitions), trust (take them as shots, no decoding), ignore.",
        choices=("detect", "trust", "ignore"),
    )
    commit_every: int = option(16, "Items per committed part file.", min=1)
    batch_size: int = option(4, "Videos per batch (transnetv2 decodes them in parallel).", min=1)

    def __post_init__(self) -> None:
        # transnetv2 asks for a GPU (one worker on the CPU without one, like other model stages);
        # auto asks for one only where there is one, else it is PySceneDetect with -j N workers.
        if self.detector == "transnetv2" or (self.detector == "auto" and gpu_present()):
            self.resources = Resources(cpus=1.0, gpus=1.0)

    def check(self) -> None:
        if self.max_clip_s is not None and self.max_clip_s < self.min_clip_s:
            raise OptionError(
                f"scenes: max_clip_s ({self.max_clip_s}) is below min_clip_s "
                f"({self.min_clip_s}): no clip could be kept"
            )
        if self.threshold is None:
            return
        if self.detector == "auto":
            raise OptionError(
                "scenes: a threshold needs an explicit detector (adaptive, content or "
                "transnetv2): their thresholds are on different scales"
            )
        if self.detector == "transnetv2" and not 0 < self.threshold < 1:
            raise OptionError(
                f"scenes: the transnetv2 threshold is a probability in (0, 1), got {self.threshold}"
            )

    def items_sql(self) -> str:
        from datakit.table_import import GIVEN_SPANS_SQL

        return f"""
            SELECT p.video_id, coalesce(d.path, s.path) AS path, p.fps, p.num_frames, p.width, p.height,
                   g.given_spans, g.given_digest
            FROM _latest_probes p
            JOIN _latest_sources s USING (video_id)
            LEFT JOIN _latest_downloads d USING (video_id)
            LEFT JOIN ({GIVEN_SPANS_SQL}) g USING (video_id)  -- spans an imported table gave
            WHERE p.status = 'ok' AND coalesce(p.media_type, 'video') = 'video'  -- an image is its own clip
        """

    # ------------------------------------------------------------------ settings
    def resolve(self, device: str) -> tuple[str, str | None]:
        """(detector, precision) a worker on `device` uses (precision only for transnetv2)."""
        detector = self.detector
        if detector == "auto":
            detector = "transnetv2" if device.startswith("cuda") else "adaptive"
        if detector != "transnetv2":
            return detector, None
        from datakit.transnet import resolve_precision

        return detector, resolve_precision(self.precision, device)

    def possible_settings(self) -> list[tuple[str, str | None]]:
        """Every (detector, precision) some worker may resolve to (a GPU's or the CPU's)."""
        detectors = ["adaptive", "transnetv2"] if self.detector == "auto" else [self.detector]
        precisions = ["fp32", "bf16"] if self.precision == "auto" else [self.precision]
        return [(d, p) for d in detectors for p in (precisions if d == "transnetv2" else [None])]

    def stale_sql(self, marker: str) -> str | None:
        if not self.redo:  # a run with other settings does not count as done
            return None
        done = ", ".join(
            "'" + self.params_json(*s, g).replace("'", "''") + "'"
            for s in self.possible_settings()
            for g in (None, self.given_spans)
        )
        return f"coalesce({marker}.params, '') NOT IN ({done})"

    def params_json(self, detector: str, precision: str | None, given_spans: str | None = None) -> str:
        """given_spans: the mode used for a video with imported spans (recorded only for those)."""
        p = self.params(detector, precision)
        return json.dumps(p | {"given_spans": given_spans} if given_spans else p, sort_keys=True)

    def params(self, detector: str, precision: str | None = None) -> dict:
        """What the run used: detector settings (transnetv2: model, weights hash) and the clip policy."""
        policy = {"min_clip_s": self.min_clip_s, "max_clip_s": self.max_clip_s}
        policy["trim_frames"] = self.trim_frames
        if detector == "transnetv2":
            from datakit import transnet

            return {
                "detector": detector,
                "model": transnet.model_name(),
                "weights_sha256": transnet.weights_sha256(),
                "threshold": transnet.DEFAULT_THRESHOLD if self.threshold is None else self.threshold,
                "input": f"{transnet.WIDTH}x{transnet.HEIGHT} rgb24 {transnet.INTERPOLATION.lower()}",
                "window": transnet.KEEP + 2 * transnet.CONTEXT,
                "step": transnet.KEEP,
                "transition_margin": self.transition_margin,
                "precision": precision,
                **policy,
            }
        from datakit.shot_detection import DEFAULT_THRESHOLDS

        threshold = DEFAULT_THRESHOLDS.get(detector) if self.threshold is None else self.threshold
        p = {
            "detector": detector,
            "threshold": threshold,
            "min_scene_len": self.min_scene_len,
            **policy,
            "analysis_width": self.analysis_width,
            "analysis_interp": self.analysis_interp,
            "gradual": self.gradual,
        }
        if self.gradual:
            p |= {"gradual_step": self.gradual_step, "gradual_threshold": self.gradual_threshold}
        return p

    # ------------------------------------------------------------------ work
    def setup(self, ctx: WorkerContext) -> None:
        self._settings = self.resolve(ctx.device)
        self._transnet = None
        detector, precision = self._settings
        if detector == "transnetv2":
            from datakit.transnet import TransNetV2Detector

            threshold = self.params(detector, precision)["threshold"]
            self._transnet = TransNetV2Detector(
                ctx.device,
                precision=precision,
                threshold=threshold,
                margin=self.transition_margin,
                windows_per_batch=self.windows_per_batch,
                skip_loop_filter=self.skip_loop_filter,
            )

    def teardown(self) -> None:
        self._transnet = None

    def _trusted(self, item: dict) -> bool:
        """The video's given spans are taken as shots: nothing to decode."""
        return self.given_spans == "trust" and bool(item.get("given_spans"))

    def process_batch(self, items: list[dict]) -> list[Rows]:
        if self._transnet is None:
            return [self.process(item) for item in items]
        todo = [item for item in items if not self._trusted(item)]
        results = iter(self._transnet.detect_many([str(item["path"]) for item in todo]) if todo else [])
        return [
            self._rows(item, self._no_detection(item) if self._trusted(item) else next(results))
            for item in items
        ]

    def _no_detection(self, item: dict) -> Detection:
        from datakit.shot_detection import Detection

        return Detection([], analysed_frames=int(item["num_frames"]))

    def process(self, item: dict) -> Rows:
        from datakit.shot_detection import detect_scenes

        if self._trusted(item):
            return self._rows(item, self._no_detection(item))
        detector, _ = self._settings
        try:
            det = detect_scenes(
                item["path"],
                detector=detector,
                threshold=self.threshold,
                min_scene_len=self.min_scene_len,
                analysis_width=self.analysis_width,
                interp=self.analysis_interp,
                gradual=self.gradual,
                gradual_step=self.gradual_step,
                gradual_threshold=self.gradual_threshold,
                skip_loop_filter=self.skip_loop_filter,
            )
        except Exception as exc:  # unreadable from the first frame on: an error row, never a crash
            return self._rows(item, exc)
        return self._rows(item, det)

    def _rows(self, item: dict, det: Detection | BaseException) -> Rows:
        from datakit.shot_detection import apply_clip_policy, scenes_from_transitions

        video_id = item["video_id"]
        detector, precision = self._settings
        given = item.get("given_spans") if self.given_spans != "ignore" else None
        params = self.params_json(detector, precision, self.given_spans if given else None)
        # Clips belong to one run: the `clips` view shows those of the video's latest run only.
        digest = f" {item.get('given_digest')}" if given else ""
        run_key = hashlib.blake2b(f"{video_id} {params}{digest}".encode(), digest_size=8).hexdigest()
        base = {"video_id": video_id, "detector": detector, "params": params, "run_key": run_key}
        if isinstance(det, BaseException):
            error = f"scene detection failed: {describe(det)}"
            return {"scene_runs": [{**base, "status": "error", "error": error, "analysed_frames": 0}]}
        fps = float(item["fps"])
        n = det.analysed_frames  # a partial decode (corrupt tail) ends the video where it stopped
        scenes = scenes_from_transitions(det.transitions, n)
        if given:  # clips inside the spans an imported table gave, never across a detected transition
            from datakit.table_import import clips_in_spans, span_frames

            frames, past_end = span_frames(given, video_id, fps, int(item.get("num_frames") or n))
            frames = [(a, min(b, n)) for a, b in frames if a < n]  # a corrupt tail ends the video early
            clips = clips_in_spans(
                scenes,
                frames,
                fps,
                n,
                min_clip_s=self.min_clip_s,
                max_clip_s=self.max_clip_s,
                trim_frames=self.trim_frames,
            )
        else:
            clips = apply_clip_policy(
                scenes,
                fps,
                n,
                min_clip_s=self.min_clip_s,
                max_clip_s=self.max_clip_s,
                trim_frames=self.trim_frames,
            )
        spans = [
            {
                "clip_id": f"{video_id}-{s}-{e}",
                "video_id": video_id,
                "scene_index": i,
                "start_frame": s,
                "end_frame": e,
                "start_s": s / fps,
                "end_s": e / fps,
                "num_frames": e - s,
                "fps": fps,
                "width": item.get("width"),
                "height": item.get("height"),
                "run_key": run_key,
            }
            for i, s, e in clips
        ]
        transitions = [
            {
                "transition_id": f"{video_id}-{t.start}-{t.end}",
                "video_id": video_id,
                "start_frame": t.start,
                "end_frame": t.end,
                "kind": t.kind,
                "peak_probability": t.peak,
                "run_key": run_key,
            }
            for t in det.transitions
        ]
        run = {
            **base,
            "status": "ok",
            "error": det.error,
            "num_scenes": len(scenes),
            "num_clips": len(spans),
            "num_transitions": len(transitions),
            "analysed_frames": n,
        }
        rows = {"transitions": transitions, "clip_spans": spans, "scene_runs": [run]}
        return rows | {"given_spans": past_end} if given else rows
