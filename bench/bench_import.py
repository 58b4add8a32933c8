"""Import speed of a Panda-70M-shaped metadata table: rows/s and peak RSS.

    .venv/bin/python bench/bench_import.py --rows 10000000 --spans 2 [--keep DIR]

Generates the CSV (`videoID,url,timestamp,caption,matching_score`; YouTube URLs, `spans` spans per
row as Python-literal lists of "H:MM:SS.mmm" pairs, captions and scores one per span) with
vectorised Arrow string kernels, then runs `datakit.table_import.import_table` on it in a fresh
workspace and prints rows/s, spans/s, the wall time and the process's peak RSS.
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _hms(seconds: np.ndarray) -> pa.Array:
    ms = np.round(seconds * 1000).astype(np.int64)
    h, rem = np.divmod(ms, 3_600_000)
    m, rem = np.divmod(rem, 60_000)
    s, ms = np.divmod(rem, 1000)
    pad = lambda a, w: pc.utf8_lpad(pa.array(a).cast(pa.string()), w, "0")  # noqa: E731
    hms = pc.binary_join_element_wise(pa.array(h).cast(pa.string()), pad(m, 2), pad(s, 2), ":")
    return pc.binary_join_element_wise(hms, pad(ms, 3), ".")


def make_table(path: Path, rows: int, spans: int, chunk: int = 1_000_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = pa.array(["a man", "a dog", "a green ball", "two people", "a car", "the sea"])
    with pcsv.CSVWriter(
        path,
        pa.schema([(n, pa.string()) for n in ("videoID", "url", "timestamp", "caption", "matching_score")]),
    ) as w:
        for r0 in range(0, rows, chunk):
            n = min(chunk, rows - r0)
            ids = pc.binary_join_element_wise("v", pa.array(np.arange(r0, r0 + n)).cast(pa.string()), "")
            bounds = np.cumsum(rng.uniform(2, 12, size=(n, spans + 1)), axis=1)
            pairs, caps, scores = [], [], []
            for k in range(spans):
                a, b = _hms(bounds[:, k]), _hms(bounds[:, k + 1])
                pairs.append(pc.binary_join_element_wise("['", a, "', '", b, "']", ""))
                who = pc.take(words, pa.array(rng.integers(0, len(words), n)))
                caps.append(
                    pc.binary_join_element_wise(
                        "'", who, " walks in scene ", pa.array(np.full(n, k)).cast(pa.string()), "'", ""
                    )
                )
                scores.append(pa.array(np.round(rng.uniform(0.2, 0.5, n), 3)).cast(pa.string()))
            w.write_table(
                pa.table(
                    {
                        "videoID": ids,
                        "url": pc.binary_join_element_wise("https://www.youtube.com/watch?v=", ids, ""),
                        "timestamp": _list(pairs),
                        "caption": _list(caps),
                        "matching_score": _list(scores),
                    }
                )
            )


def _list(parts: list[pa.Array]) -> pa.Array:
    inner = pc.binary_join_element_wise(*parts, ", ") if len(parts) > 1 else parts[0]
    return pc.binary_join_element_wise("[", inner, "]", "")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--spans", type=int, default=2)
    ap.add_argument("--batch-rows", type=int, default=262144)
    ap.add_argument("--keep", type=Path, default=None, help="folder for the table and workspace (kept)")
    args = ap.parse_args()
    from datakit.table_import import import_table
    from datakit.workspace import Workspace

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-import-"))
    root.mkdir(parents=True, exist_ok=True)
    table = root / f"panda_{args.rows}.csv"
    t = time.perf_counter()
    if not table.exists():
        make_table(table, args.rows, args.spans)
    gen_s = time.perf_counter() - t
    shutil.rmtree(root / "ws", ignore_errors=True)
    ws = Workspace(root / "ws")
    rss0 = peak_rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    stats = import_table(ws, table, "panda70m", batch_rows=args.batch_rows)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"table: {args.rows} rows x {args.spans} spans, {table.stat().st_size / 1e6:.0f} MB CSV (generated in {gen_s:.1f} s)"
    )
    print(
        f"import: {wall:.1f} s, {stats.rows / wall:,.0f} rows/s, {stats.spans / wall:,.0f} spans/s, "
        f"{stats.errors} error rows; CPU {cpu:.1f} s ({stats.rows / cpu:,.0f} rows per CPU-second; "
        f"{os.cpu_count()} cores); peak RSS {peak_rss_mb():.0f} MB (before import {rss0:.0f} MB)"
    )
    print(f"loadavg: {' '.join(load)}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
