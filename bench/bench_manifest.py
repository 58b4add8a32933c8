"""Manifest query latency at 1M clips: status counts, a curated-set query, and resume planning.

    .venv/bin/python bench/bench_manifest.py [--videos 50000] [--clips-per-video 20] [--parts 4]

Builds a synthetic workspace in a temp dir with `Workspace.write` (a few large parts per table):
sources, probes, scene_runs for every video, clip_spans and cuts for every clip. Then times
typical queries (best of 3): as written (several parts: every view deduplicates by key), after
`compact`, and compacted plus a newer part. Target: each < 1 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datakit.executors import plan  # noqa: E402
from datakit.pipeline import status  # noqa: E402
from datakit.stages.cut import CutStage  # noqa: E402
from datakit.stages.scenes import SceneStage  # noqa: E402
from datakit.workspace import Workspace  # noqa: E402
from manifests.schema import TABLES  # noqa: E402


def build(ws: Workspace, n_videos: int, per_video: int, parts: int) -> None:
    fps, w, h = 30.0, [320, 640, 1280, 1920], [240, 360, 720, 1080]
    vids = [f"{i:016x}" for i in range(n_videos)]
    ws.write(
        "sources",
        [
            dict(
                video_id=v,
                source=f"/data/{v}.mp4",
                source_kind="file",
                path=f"/data/{v}.mp4",
                bytes=10**7,
                status="ok",
            )
            for v in vids
        ],
    )
    ws.write(
        "probes",
        [
            dict(
                video_id=v,
                status="ok" if i % 50 else "error",
                width=w[i % 4],
                height=h[i % 4],
                fps=fps,
                num_frames=per_video * 240,
                duration_s=per_video * 8.0,
                codec="h264",
                bytes=10**7,
            )
            for i, v in enumerate(vids)
        ],
    )
    chunk = max(1, n_videos // parts)
    for p in range(0, n_videos, chunk):
        spans, cuts, runs = [], [], []
        for i in range(p, min(p + chunk, n_videos)):
            v = vids[i]
            runs.append(
                dict(
                    video_id=v,
                    status="ok",
                    detector="adaptive",
                    params="{}",
                    run_key=f"r{v}",
                    num_scenes=per_video,
                    num_clips=per_video,
                    analysed_frames=per_video * 240,
                )
            )
            for k in range(per_video):
                s, e = k * 240, k * 240 + 30 + (k * 37 + i) % 420  # 1-15 s clips
                cid = f"{v}-{s}-{e}"
                spans.append(
                    dict(
                        clip_id=cid,
                        video_id=v,
                        scene_index=k,
                        start_frame=s,
                        end_frame=e,
                        start_s=s / fps,
                        end_s=e / fps,
                        num_frames=e - s,
                        fps=fps,
                        width=w[i % 4],
                        height=h[i % 4],
                        run_key=f"r{v}",
                    )
                )
                cuts.append(
                    dict(
                        clip_id=cid,
                        status="ok",
                        path=f"/clips/{v}/{cid}.mp4",
                        width=w[i % 4],
                        height=h[i % 4],
                        fps=fps,
                        num_frames=e - s,
                        bytes=10**6,
                    )
                )
        ws.write("clip_spans", spans)
        ws.write("scene_runs", runs)
        ws.write("cuts", cuts)


def timed(label: str, fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    flag = "" if best < 1.0 else "   <-- over 1 s"
    print(f"  {label:58s} {best:7.3f} s   ({out}){flag}")
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=50_000)
    ap.add_argument("--clips-per-video", type=int, default=20)
    ap.add_argument("--parts", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        t0 = time.perf_counter()
        build(ws, args.videos, args.clips_per_video, args.parts)
        print(
            f"built {args.videos} videos, {args.videos * args.clips_per_video} clips in {time.perf_counter() - t0:.1f}s"
        )
        curated = """
            SELECT c.clip_id, c.source_path, c.start_frame, c.end_frame, c.path, v.width, v.height
            FROM clips c JOIN videos v USING (video_id)
            WHERE v.status = 'ok' AND v.width >= 256 AND c.end_s - c.start_s BETWEEN 2 AND 15
            ORDER BY c.clip_id LIMIT 1000
        """
        curated_count = """
            SELECT count(*) FROM clips c JOIN videos v USING (video_id)
            WHERE v.status = 'ok' AND v.width >= 256 AND c.end_s - c.start_s BETWEEN 2 AND 15
        """
        def measure(title: str) -> None:
            con = ws.connect()  # a reader's snapshot of the parts as they are now

            def q(sql: str):
                return lambda: con.execute(sql).fetchall().__len__()

            def one(sql: str):
                return lambda: con.execute(sql).fetchone()[0]

            parts = {t: len(ws.data_parts(t)) for t in ("clip_spans", "cuts")}
            print(f"{title} (parts: {parts})")
            timed("status: all stage/status counts (datakit status)", lambda: len(status(ws)))
            timed("curated: clips 2-15 s, ok videos, width>=256, LIMIT 1000", q(curated))
            timed("curated: count(*) of the same set", one(curated_count))
            timed("plan scenes (50k videos, all done)", lambda: len(plan(ws, SceneStage())))
            timed("plan cut (1M clips, all done)", lambda: len(plan(ws, CutStage(out_dir=tmp))))
            con.close()

        measure("as written by the stages (several parts per table: full dedupe)")
        for table in TABLES:
            ws.compact(table)
        measure("after compaction (what a stage run does when parts pile up)")
        ws.write("cuts", [dict(clip_id=f"{i:016x}-0-{30 + i % 420}", status="error", error="redo") for i in range(1000)])
        measure("compacted + a newer part of 1000 rows (dedupe of the new part only)")


if __name__ == "__main__":
    main()
