"""Dedup at scale: time, peak memory and recall of planted near-duplicates.

Random unit 768-d vectors (float16, as `clip_embeddings` stores them) with a planted set of
near-duplicate pairs (cosine about 0.99), grouped by the dedup stage's own code
(`datakit.stages.dedup.group_rows`: faiss range search, connected components, keepers). Random
vectors have no cluster structure, the hard case for an IVF index (real CLIP embeddings cluster).
Recall: planted pairs that end in one group. Peak memory: the process's max RSS. CPU-seconds
(all threads) are printed beside the wall time: on a shared machine they say what an idle one
would take (about CPU-seconds / threads).

    python bench/bench_dedup.py                 # 1M vectors, 10k planted pairs, 2 threads
    python bench/bench_dedup.py --n 100000      # smaller
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakit.stages.dedup import group_rows  # noqa: E402


def planted_embeddings(
    n: int, d: int, pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float16 unit vectors, first members, second members) with `pairs` planted near-duplicates."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float16)
    for start in range(0, n, 65_536):  # built in chunks: no float32 copy of the whole matrix
        block = rng.standard_normal((min(65_536, n - start), d), dtype=np.float32)
        x[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    members = rng.choice(n, size=(pairs, 2), replace=False)
    a, b = members[:, 0], members[:, 1]
    twin = x[a].astype(np.float32) + rng.standard_normal((pairs, d), dtype=np.float32) * 0.004
    x[b] = twin / np.linalg.norm(twin, axis=1, keepdims=True)
    return x, a, b


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (independent of how busy a shared machine is)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--nprobe", type=int, default=4)
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    t0 = time.monotonic()
    x, a, b = planted_embeddings(args.n, args.dim, args.pairs)
    cos = (x[a[:1000]].astype(np.float32) * x[b[:1000]].astype(np.float32)).sum(1)
    made = time.monotonic() - t0
    ids = [f"c{k:08d}" for k in range(args.n)]
    scores = np.full(args.n, -np.inf)
    t1, cpu1 = time.monotonic(), _cpu_seconds()
    rows, stats = group_rows(ids, x, scores, args.threshold, nprobe=args.nprobe)
    seconds, cpu = time.monotonic() - t1, _cpu_seconds() - cpu1
    group = np.array([r["dup_group"] for r in rows])
    recall = float(np.mean(group[a] == group[b]))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load = os.getloadavg()[0]
    print(
        f"dedup of {args.n:,} x {args.dim}-d float16 vectors, {args.pairs:,} planted pairs "
        f"(cosine {cos.min():.3f}-{cos.max():.3f}), {args.threads} faiss threads, load average {load:.1f}"
    )
    print(
        f"  index {stats['index']}: {seconds:.1f} s to search and group, {cpu:.0f} CPU-seconds "
        f"(data made in {made:.1f} s)"
    )
    print(
        f"  groups {stats['num_groups']:,}, duplicates {stats['num_duplicates']:,}, "
        f"recall of planted pairs {recall:.4f}, peak memory {peak_gib:.2f} GiB"
    )
    print(
        f"  targets: under 600 s ({'met' if seconds < 600 else 'MISSED'}), recall >= 0.95 "
        f"({'met' if recall >= 0.95 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
