"""Manifest query latency at 1M clips: status counts, a curated-set query, and resume planning.

    .venv/bin/python bench/bench_manifest.py [--videos 50000] [--clips-per-video 20] [--parts 4]

Builds a synthetic workspace in a temp dir with `Workspace.write` (a few large parts per table):
sources, probes, scene_runs for every video, clip_spans and cuts for every clip. Then times
typical queries (best of 3) and the `_latest_*` dedupe alternatives (window function, arg_max,
DISTINCT ON, no dedupe after compaction). Target: each < 1 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datakit.stage import plan  # noqa: E402
from datakit.stages.cut import CutStage  # noqa: E402
from datakit.stages.scenes import SceneStage  # noqa: E402
from datakit.workspace import Workspace, _sql_str  # noqa: E402
from manifests.schema import TABLES, WRITTEN_COLUMN  # noqa: E402


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
        con = ws.connect()

        def q(sql: str):
            return lambda: con.execute(sql).fetchall().__len__()

        def one(sql: str):
            return lambda: con.execute(sql).fetchone()[0]

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
        print("queries (current views: row_number() dedupe):")
        for table in TABLES:
            timed(
                f"status: {table} count by status (or count)",
                q(f"SELECT status, count(*) FROM {table} GROUP BY ALL")
                if "status" in TABLES[table].column_names
                else one(f"SELECT count(*) FROM {table}"),
            )
        timed(
            "status: all tables in one connection",
            lambda: sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES),
        )
        timed("curated: clips 2-15 s, ok videos, width>=256, LIMIT 1000", q(curated))
        timed("curated: count(*) of the same set", one(curated_count))
        timed("plan scenes (50k videos, all done)", lambda: len(plan(ws, SceneStage())))
        timed("plan cut (1M clips, all done)", lambda: len(plan(ws, CutStage(out_dir=tmp))))
        timed("plan cut count only (1M done)", one(f"SELECT count(*) FROM ({CutStage().pending_sql()})"))

        print("dedupe alternatives for _latest_clip_spans / _latest_cuts (count + curated query):")
        alternatives = {
            "row_number (current)": None,
            "DISTINCT ON": "SELECT DISTINCT ON ({key}) * EXCLUDE ({w}) FROM {src} ORDER BY {key}, {w} DESC",
            "arg_max struct": "SELECT unnest(arg_max(t, t.{w})) FROM {src} t GROUP BY t.{key}",
            "no dedupe (1 compacted part)": "SELECT * EXCLUDE ({w}) FROM {src}",
        }
        for name, tpl in alternatives.items():
            c2 = ws.connect()
            if tpl:
                for table in ("clip_spans", "cuts", "sources", "probes", "scene_runs", "downloads"):
                    src = f"read_parquet({_sql_str(str(ws.table_dir(table) / '*.parquet'))}, union_by_name = true)"
                    sql = tpl.format(key=TABLES[table].key, w=WRITTEN_COLUMN, src=src)
                    if "arg_max" in tpl:
                        sql = f"SELECT * EXCLUDE ({WRITTEN_COLUMN}) FROM ({sql})"
                    c2.execute(f"CREATE OR REPLACE TEMP VIEW _latest_{table} AS {sql}")
            print(f" {name}:")
            timed(
                "count(*) FROM clip_spans",
                lambda c2=c2: c2.execute("SELECT count(*) FROM clip_spans").fetchone()[0],
            )
            timed("curated LIMIT 1000", lambda c2=c2: len(c2.execute(curated).fetchall()))
            timed(
                "plan cut count (1M done)",
                lambda c2=c2: c2.execute(f"SELECT count(*) FROM ({CutStage().pending_sql()})").fetchone()[0],
            )
            c2.close()
        con.close()


if __name__ == "__main__":
    main()
