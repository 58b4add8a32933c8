"""Manifest query latency at scale: status, the curated recipes, and resume planning.

    .venv/bin/python bench/bench_manifest.py [--clips 1000000] [--clips-per-video 20] [--part-rows 200000]
                                             [--workspace DIR (keep/reuse the built workspace)]

Builds a synthetic workspace with `Workspace.write`, in parts of --part-rows rows (bounded memory,
like a stage run's commits): sources, probes and scene_runs for every video, clip_spans and cuts
for every clip. Then times (best of --repeat) `datakit status` (one query), the @clips_2_15s recipe
with LIMIT 1000 and its count(*), and planning `scenes` and `cut` with everything done: as
written (many parts: every view deduplicates by key), after `compact`, and compacted plus a newer
part. Status and plans are timed as the first read after a write (nothing remembered) and, on a
line of their own, repeated on unchanged parts (remembered: `Workspace.read(remember=...)`).
Prints the peak RSS of writing and of compacting. Targets: at 1M clips each < 1 s; at 10M
status and count(*) < 1 s, the LIMIT 1000 query < 3 s. The last line is
`status <t> s, curated <t> s, plan-cut <t> s` for the compacted workspace.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datakit.executors import plan  # noqa: E402
from datakit.pipeline import status  # noqa: E402
from datakit.registry import stage_class, tables  # noqa: E402
from datakit.workspace import Workspace  # noqa: E402

FPS, WIDTHS, HEIGHTS = 30.0, [320, 640, 1280, 1920], [240, 360, 720, 1080]
RECIPE = (ROOT / "manifests" / "recipes" / "clips_2_15s.sql").read_text()
CURATED = f"SELECT * FROM ({RECIPE}) LIMIT 1000"
CURATED_COUNT = f"SELECT count(*) FROM ({RECIPE})"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def video_rows(vids: range, per_video: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {"sources": [], "probes": [], "scene_runs": []}
    for i in vids:
        v = f"{i:016x}"
        rows["sources"].append(
            dict(
                video_id=v,
                source=f"/data/{v}.mp4",
                source_kind="file",
                path=f"/data/{v}.mp4",
                bytes=10**7,
                status="ok",
            )
        )
        rows["probes"].append(
            dict(
                video_id=v,
                status="ok" if i % 50 else "error",
                width=WIDTHS[i % 4],
                height=HEIGHTS[i % 4],
                fps=FPS,
                num_frames=per_video * 240,
                duration_s=per_video * 8.0,
                codec="h264",
                bytes=10**7,
            )
        )
        rows["scene_runs"].append(
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
    return rows


def clip_rows(vids: range, per_video: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {"clip_spans": [], "cuts": []}
    for i in vids:
        v, w, h = f"{i:016x}", WIDTHS[i % 4], HEIGHTS[i % 4]
        for k in range(per_video):
            s, e = k * 240, k * 240 + 30 + (k * 37 + i) % 420  # 1-15 s clips
            cid = f"{v}-{s}-{e}"
            rows["clip_spans"].append(
                dict(
                    clip_id=cid,
                    video_id=v,
                    scene_index=k,
                    start_frame=s,
                    end_frame=e,
                    start_s=s / FPS,
                    end_s=e / FPS,
                    num_frames=e - s,
                    fps=FPS,
                    width=w,
                    height=h,
                    run_key=f"r{v}",
                )
            )
            rows["cuts"].append(
                dict(
                    clip_id=cid,
                    status="ok",
                    path=f"/clips/{v}/{cid}.mp4",
                    width=w,
                    height=h,
                    fps=FPS,
                    num_frames=e - s,
                    bytes=10**6,
                )
            )
    return rows


def build(ws: Workspace, n_videos: int, per_video: int, part_rows: int) -> None:
    """Every table written in parts of about part_rows rows (memory stays bounded by one part)."""
    step = max(1, part_rows // per_video)
    for p in range(0, n_videos, part_rows):
        for table, rows in video_rows(range(p, min(p + part_rows, n_videos)), per_video).items():
            ws.write(table, rows)
    for p in range(0, n_videos, step):
        for table, rows in clip_rows(range(p, min(p + step, n_videos)), per_video).items():
            ws.write(table, rows)


def cpu_s() -> float:
    """CPU time of this process (user + sys, every thread): what the machine's load inflates least."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(label: str, fn, repeat: int, limit: float = 1.0) -> float:
    """Best wall time of `repeat` runs (printed with the CPU time of that run)."""
    best, cpu, out = float("inf"), 0.0, None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), cpu_s()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, cpu_s() - c0
    flag = "" if best < limit else f"   <-- over {limit:g} s"
    print(f"  {label:58s} {best:7.3f} s   ({out})  cpu {cpu:.3f} s{flag}", flush=True)
    return best


def status_per_stage(ws: Workspace) -> list[tuple]:
    """The status of the previous version: per stage, one status count and one pending count."""
    from datakit.registry import stages

    def run(con) -> list[tuple]:
        out = [con.execute("SELECT status, count(*) FROM sources GROUP BY ALL").fetchall()]
        for cls in stages().values():
            stage = cls()
            out.append(
                con.execute(f"SELECT status, count(*) FROM {stage.marker_table} GROUP BY ALL").fetchall()
            )
            out.append(con.execute(f"SELECT count(*) FROM ({stage.pending_sql()})").fetchall())
        out.append(con.execute("SELECT count(*) FROM clips").fetchall())
        return out

    return ws.read(run)


def cut_over_clips():
    """The cut stage as it planned before datakit.clip_keys: its items read the whole `clips` view."""
    stage = stage_class("cut")()
    stage.items_sql = lambda: (
        """
        SELECT clip_id, video_id, start_frame, end_frame, fps, width, height, source_path AS path
        FROM clips WHERE coalesce(media_type, 'video') = 'video'
    """
    )
    return stage


def forgetting(ws: Workspace, fn):
    """`fn` as the first read after a write: nothing remembered (`Workspace.read(remember=...)`)."""

    def run():
        shutil.rmtree(ws.root / "cache", ignore_errors=True)
        return fn()

    return run


def measure(ws: Workspace, title: str, n_clips: int, repeat: int) -> dict[str, float]:
    con = ws.connect()  # a reader's snapshot of the parts as they are now
    parts = {t: len(ws.live_parts(t)) for t in ("clip_spans", "cuts")}
    print(f"{title} (live parts: {parts})", flush=True)
    big = n_clips >= 5_000_000
    t = {
        "status": timed(
            "status: every stage's counts, one query (datakit status)",
            forgetting(ws, lambda: len(status(ws))),
            repeat,
        ),
        "status-remembered": timed(
            "  the same, repeated on unchanged parts (remembered)", lambda: len(status(ws)), repeat
        ),
        "status-before": timed(
            "  the same counts, one query per stage and count (before)",
            lambda: len(status_per_stage(ws)),
            repeat,
        ),
        "curated": timed(
            "curated: @clips_2_15s LIMIT 1000",
            lambda: len(con.execute(CURATED).fetchall()),
            repeat,
            3.0 if big else 1.0,
        ),
        "count": timed(
            "curated: count(*) of @clips_2_15s", lambda: con.execute(CURATED_COUNT).fetchone()[0], repeat
        ),
        "plan-scenes": timed(
            "plan scenes (every video done)",
            forgetting(ws, lambda: len(plan(ws, stage_class("scenes")()))),
            repeat,
        ),
        "plan-cut": timed(
            f"plan cut ({n_clips} clips, all done)",
            forgetting(ws, lambda: len(plan(ws, stage_class("cut")()))),
            repeat,
        ),
        "plan-cut-remembered": timed(
            "  the same, a resumed run on unchanged parts (remembered)",
            lambda: len(plan(ws, stage_class("cut")())),
            repeat,
        ),
        "plan-cut-before": timed(
            "  the same plan over the full clips view (before)",
            forgetting(ws, lambda: len(plan(ws, cut_over_clips()))),
            repeat,
        ),
    }
    con.close()
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=1_000_000, help="clip spans (and cuts) in all")
    ap.add_argument("--clips-per-video", type=int, default=20)
    ap.add_argument(
        "--part-rows", type=int, default=200_000, help="rows per written part (a stage commits many)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--compacted-only", action="store_true", help="skip the as-written and newer-part rounds (10M)"
    )
    ap.add_argument(
        "--workspace", type=Path, help="build here (kept; reused when it already holds the clips)"
    )
    args = ap.parse_args()
    n_videos = max(1, args.clips // args.clips_per_video)
    n_clips = n_videos * args.clips_per_video
    print(f"load average: {open('/proc/loadavg').read().strip()}  ({os.cpu_count()} CPUs)")
    tmp = None
    if args.workspace is None:
        tmp = tempfile.mkdtemp(prefix="bench-manifest-")
        root = Path(tmp) / "ws"
    else:
        root = args.workspace
    try:
        reuse = (root / "workspace.json").exists()
        ws = Workspace(root)
        if not reuse:
            t0 = time.perf_counter()
            build(ws, n_videos, args.clips_per_video, args.part_rows)
            print(
                f"built {n_videos} videos, {n_clips} clips in {time.perf_counter() - t0:.1f} s "
                f"(parts of {args.part_rows} rows); peak RSS so far {peak_rss_mb():.0f} MB",
                flush=True,
            )
            if not args.compacted_only:
                measure(
                    ws, "as written by the stages (many parts per table: full dedupe)", n_clips, args.repeat
                )
            rss = peak_rss_mb()
            t0 = time.perf_counter()
            for table in tables():
                ws.compact(table)
            print(
                f"compacted in {time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_mb():.0f} MB "
                f"(before compacting: {rss:.0f} MB)",
                flush=True,
            )
        t = measure(ws, "after compaction (what a stage run does when parts pile up)", n_clips, args.repeat)
        if not reuse and not args.compacted_only:
            ws.write(
                "cuts",
                [
                    dict(clip_id=f"{i:016x}-0-{30 + i % 420}", status="error", error="redo")
                    for i in range(1000)
                ],
            )
            measure(
                ws,
                "compacted + a newer part of 1000 rows (dedupe of the new part only)",
                n_clips,
                args.repeat,
            )
        print(f"peak RSS {peak_rss_mb():.0f} MB; load average: {open('/proc/loadavg').read().strip()}")
        print(
            f"remembered (repeated on unchanged parts): status {t['status-remembered']:.3f} s, "
            f"plan-cut {t['plan-cut-remembered']:.3f} s"
        )
        print(f"status {t['status']:.3f} s, curated {t['curated']:.3f} s, plan-cut {t['plan-cut']:.3f} s")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
