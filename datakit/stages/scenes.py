"""Scenes: detect cuts in every probed video and write frame-exact clip spans (see datakit.scenes)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from datakit.scenes import DEFAULT_THRESHOLDS, apply_clip_policy, detect_scenes, scenes_from_cuts
from datakit.stage import Stage


@dataclass
class SceneStage(Stage):
    """PySceneDetect per video (streamed at analysis size), then the clip-length policy."""

    detector: str = "adaptive"  # 'adaptive' or 'content'
    threshold: float | None = None  # None: 3.0 for adaptive, 27 for content
    min_scene_len: int = 15  # frames; the detector never reports two cuts closer than this
    min_clip_s: float = 2.0  # drop scenes (and tail windows) shorter than this
    max_clip_s: float | None = 15.0  # split longer scenes into consecutive windows of this length
    trim_frames: int = 1  # frames dropped at each scene edge that is a cut (not at video start/end)
    analysis_width: int = 256  # frames are shrunk to this width before detection
    analysis_interp: str = "linear"  # 'linear' (fast) or 'area' shrinking for the analysis frames
    gradual: bool = False  # extra sparse pass that finds cross-dissolves/fades (off: hard cuts only)
    gradual_step: int = 8  # frame stride of that pass
    gradual_threshold: float = 20.0  # ContentDetector threshold of that pass
    skip_loop_filter: bool = True  # faster H.264/HEVC decoding for analysis (no effect on spans)
    redo: bool = False  # also re-detect videos whose last run used other settings (their old clips vanish)
    batch_size: int = 16

    name = "scenes"
    marker_table = "scene_runs"
    extra_tables = ("clip_spans",)

    def pending_sql(self) -> str:
        done = "status IN ('ok', 'error')"
        if self.redo:  # a run with other settings does not count as done
            done += " AND params = " + "'" + self.params_json().replace("'", "''") + "'"
        return f"""
            SELECT p.video_id, coalesce(d.path, s.path) AS path, p.fps, p.num_frames, p.width, p.height
            FROM _latest_probes p
            JOIN _latest_sources s USING (video_id)
            LEFT JOIN _latest_downloads d USING (video_id)
            ANTI JOIN (SELECT video_id FROM _latest_scene_runs WHERE {done}) r USING (video_id)
            WHERE p.status = 'ok'
            ORDER BY p.video_id
        """

    def params_json(self) -> str:
        return json.dumps(self.params(), sort_keys=True)

    def params(self) -> dict:
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
