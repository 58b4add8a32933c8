"""Scenes: detect cuts in every probed video and write frame-exact clip spans (see datakit.scenes)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from datakit.stage import Stage, option
from datakit.tables import Column as C
from datakit.tables import Table

TABLES = (
    Table.marker(
        "scene_runs",
        C("video_id", "VARCHAR", "id of the video"),
        "One row per video after scene detection; marks the video done (its spans are in clip_spans).",
        (
            C("detector", "VARCHAR", "'adaptive' or 'content'"),
            C("params", "VARCHAR", "JSON of the detector and clip-length settings used"),
            C("num_scenes", "INTEGER", "scenes found before the clip-length policy"),
            C("num_clips", "INTEGER", "clips kept after the policy (rows in clip_spans)"),
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
            C("run_key", "VARCHAR", "the scene run that made this span (spans of older runs are hidden in `clips`)"),
        ),
    ),
)

DETECTORS = ("adaptive", "content")


@dataclass(kw_only=True)
class SceneStage(Stage):
    """PySceneDetect per video (streamed at analysis size), then the clip-length policy."""

    name = "scenes"
    marker_table = "scene_runs"
    extra_tables = ("clip_spans",)
    order = 30

    detector: str = option("adaptive", "Scene detector.", choices=DETECTORS)
    threshold: float | None = option(None, "Detector threshold (default: adaptive 3.0, content 27).", min=0)
    min_scene_len: int = option(15, "Frames; the detector never reports two cuts closer than this.", min=1)
    min_clip_s: float = option(2.0, "Drop scenes (and tail windows) shorter than this (seconds).", min=0)
    max_clip_s: float | None = option(15.0, "Split longer scenes into consecutive windows of this length.", min=0.1)
    trim_frames: int = option(1, "Frames dropped at each scene edge that is a cut.", min=0)
    analysis_width: int = option(256, "Frames are shrunk to this width before detection.", min=16)
    analysis_interp: str = option("linear", "Shrinking filter for analysis frames.", choices=("linear", "area"))
    gradual: bool = option(False, "Extra sparse pass that finds cross-dissolves and fades.")
    gradual_step: int = option(8, "Frame stride of the gradual pass.", min=1)
    gradual_threshold: float = option(20.0, "ContentDetector threshold of the gradual pass.", min=0)
    skip_loop_filter: bool = option(True, "Faster H.264/HEVC decoding for analysis (no effect on spans).")
    redo: bool = option(False, "Re-detect videos whose last run used other settings (their old clips vanish).")
    commit_every: int = option(16, "Items per committed part file.", min=1)

    def items_sql(self) -> str:
        return """
            SELECT p.video_id, coalesce(d.path, s.path) AS path, p.fps, p.num_frames, p.width, p.height
            FROM _latest_probes p
            JOIN _latest_sources s USING (video_id)
            LEFT JOIN _latest_downloads d USING (video_id)
            WHERE p.status = 'ok'
        """

    def stale_sql(self, marker: str) -> str | None:
        if not self.redo:  # a run with other settings does not count as done
            return None
        return f"{marker}.params IS DISTINCT FROM " + "'" + self.params_json().replace("'", "''") + "'"

    def params_json(self) -> str:
        return json.dumps(self.params(), sort_keys=True)

    def params(self) -> dict:
        from datakit.scenes import DEFAULT_THRESHOLDS

        threshold = DEFAULT_THRESHOLDS.get(self.detector) if self.threshold is None else self.threshold
        p = {
            "detector": self.detector,
            "threshold": threshold,
            "min_scene_len": self.min_scene_len,
            "min_clip_s": self.min_clip_s,
            "max_clip_s": self.max_clip_s,
            "trim_frames": self.trim_frames,
            "analysis_width": self.analysis_width,
            "analysis_interp": self.analysis_interp,
            "gradual": self.gradual,
        }
        if self.gradual:
            p |= {"gradual_step": self.gradual_step, "gradual_threshold": self.gradual_threshold}
        return p

    def process(self, item: dict) -> dict[str, list[dict]]:
        from datakit.scenes import apply_clip_policy, detect_scenes, scenes_from_cuts

        video_id = item["video_id"]
        params = self.params_json()
        # Clips belong to one run: the `clips` view shows those of the video's latest run only.
        run_key = hashlib.blake2b(f"{video_id} {params}".encode(), digest_size=8).hexdigest()
        base = {"video_id": video_id, "detector": self.detector, "params": params, "run_key": run_key}
        try:
            det = detect_scenes(
                item["path"],
                detector=self.detector,
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
            return {
                "scene_runs": [
                    {
                        **base,
                        "status": "error",
                        "error": f"scene detection failed: {exc}",
                        "analysed_frames": 0,
                    }
                ]
            }
        fps = float(item["fps"])
        n = det.analysed_frames  # a partial decode (corrupt tail) ends the video where it stopped
        scenes = scenes_from_cuts(det.cuts, n, det.gradual)
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
        run = {
            **base,
            "status": "ok",
            "error": det.error,
            "num_scenes": len(scenes),
            "num_clips": len(spans),
            "analysed_frames": n,
        }
        return {"clip_spans": spans, "scene_runs": [run]}


STAGE = SceneStage
