"""Dedup: near-duplicate groups of clips by cosine similarity of their CLIP embeddings (faiss).

Dedup is a whole-table operation, so its one item is a snapshot of the embedding table: the key
(`run_key`) hashes the settings and every embedding row id of the current clips with its clip's
aesthetic score (an order-free XOR of 64-bit hashes: cheap for `datakit status` at millions of
clips). A run finds every pair of clips with cosine >= `threshold` (faiss range search: an exact
flat index below `exact_below` clips, an IVF index with `nprobe` probed lists above), joins pairs
into groups (connected components: A~B and B~C put A, B, C in one group), and writes one
`dup_groups` row per clip: its group (the id of the member that stays) and `dup_of` (null for the
member that stays: the best aesthetic score, then the smallest clip id). Nothing is dropped: the
`video` recipe keeps `dup_of IS NULL`. A rerun after new clips or new scores sees a new snapshot
and recomputes every group; a rerun with nothing new does nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from datakit.scoring import latest_ok_sql, model_key, sql_str
from datakit.stage import Stage, WorkerContext, option
from datakit.tables import Column as C
from datakit.tables import Table

TABLES = (
    Table.marker(
        "dedup_runs",
        C("run_key", "VARCHAR", "hash of the settings and the embedding/score snapshot the run grouped"),
        "One row per dedup run (a snapshot of the embeddings). Written by `dedup`.",
        (
            C("embedding_key", "VARCHAR", "model_key of the clip_embeddings rows compared"),
            C("threshold", "DOUBLE", "cosine similarity at or above which two clips are duplicates"),
            C("index", "VARCHAR", "faiss index used ('flat' exact, or 'ivf<nlist>,nprobe=<n>')"),
            C("num_clips", "BIGINT", "clips compared"),
            C("num_groups", "BIGINT", "groups of two or more clips"),
            C("num_duplicates", "BIGINT", "clips with a dup_of (all members of a group but the one kept)"),
            C("seconds", "DOUBLE", "time to search and group"),
            C("finished_at", "DOUBLE", "unix time; the `clips` view uses the latest ok run"),
        ),
    ),
    Table(
        "dup_groups",
        "clip_id",
        "Near-duplicate group of each compared clip (rows of the latest dedup run are current).",
        (
            C("clip_id", "VARCHAR", "id of the clip"),
            C("run_key", "VARCHAR", "the dedup run that wrote this row"),
            C("dup_group", "VARCHAR", "clip id of the group's kept member (the clip itself when unique)"),
            C("dup_of", "VARCHAR", "clip id of the kept member; null for the kept member and unique clips"),
            C("similarity", "DOUBLE", "highest cosine similarity to another clip of its group (null: unique)"),
        ),
    ),
)


# ----------------------------------------------------------------------------------- algorithm
def similar_pairs(x: np.ndarray, threshold: float, *, exact_below: int = 20_000, nlist: int | None = None,
                  nprobe: int = 4, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:  # fmt: skip
    """Pairs (i < j) of unit rows of `x` with inner product >= threshold: (i, j, similarity, index name).

    Below `exact_below` rows: exact search (flat index). Above: an IVF index (float16 storage) of
    `nlist` = sqrt(nprobe * n) lists, which balances the two costs of a query (comparing it with
    every list centroid, one matrix product, and scanning `nprobe` lists of n / nlist vectors). The
    k-means placing the lists runs briefly on a sample: a pair this close lands in the same or a
    neighbouring list whatever the partition, and `nprobe` lists are searched per vector.
    `x` may be float16; rows are converted to float32 a chunk at a time.
    """
    import faiss

    n, d = x.shape
    if n < exact_below:
        index, name = faiss.IndexFlatIP(d), "flat"
    else:
        nlist = nlist or max(16, int(math.sqrt(nprobe * n)))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        index.cp.niter, index.cp.min_points_per_centroid = 4, 1
        sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, 16 * nlist), replace=False))
        index.train(np.ascontiguousarray(x[sample], dtype=np.float32))
        index.nprobe = nprobe
        name = f"ivf{nlist},nprobe={nprobe}"
    for start in range(0, n, chunk):
        index.add(np.ascontiguousarray(x[start : start + chunk], dtype=np.float32))
    found_i, found_j, found_s = [], [], []
    # Range search keeps results strictly above the radius; step just below the threshold.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    for start in range(0, n, chunk):
        q = np.ascontiguousarray(x[start : start + chunk], dtype=np.float32)
        lims, sims, ids = index.range_search(q, radius)
        rows = np.repeat(np.arange(start, start + len(q)), np.diff(lims).astype(np.int64))
        keep = (ids > rows) & (sims >= threshold)  # each pair once, never a clip with itself
        found_i.append(rows[keep])
        found_j.append(ids[keep])
        found_s.append(sims[keep])
    cat = np.concatenate
    return cat(found_i).astype(np.int64), cat(found_j).astype(np.int64), cat(found_s), name


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest member index) of each of n nodes joined by edges (i, j)."""
    labels = np.arange(n)
    while True:
        low = np.minimum(labels[i], labels[j])
        before = labels.copy()
        np.minimum.at(labels, i, low)
        np.minimum.at(labels, j, low)
        while not np.array_equal(labels, labels[labels]):  # point every node at its root
            labels = labels[labels]
        if np.array_equal(labels, before):
            return labels


def group_rows(clip_ids: list[str], x: np.ndarray, scores: np.ndarray, threshold: float,
               **search) -> tuple[list[dict], dict]:  # fmt: skip
    """One row per clip (dup_group, dup_of, similarity) and run statistics; `scores` -inf: unscored."""
    t0 = time.monotonic()
    n = len(clip_ids)
    if n > 1:
        i, j, sims, index = similar_pairs(x, threshold, **search)
    else:
        i, j, sims, index = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), "flat"
    labels = components(n, i, j)
    best = np.full(n, -np.inf)
    np.maximum.at(best, i, sims)
    np.maximum.at(best, j, sims)
    # The member kept: highest score (unscored last), then smallest clip id.
    rank = np.argsort(np.argsort(np.array(clip_ids)))
    order = np.lexsort((rank, -scores, labels))
    first = order[np.r_[True, labels[order][1:] != labels[order][:-1]]] if n else order
    keeper_of = np.empty(n, np.int64)
    keeper_of[labels[first]] = first
    kept_by = keeper_of[labels]
    sizes = np.bincount(labels, minlength=n)
    rows = []
    for k in range(n):
        kept = int(kept_by[k])
        rows.append({
            "clip_id": clip_ids[k], "dup_group": clip_ids[kept],
            "dup_of": None if kept == k else clip_ids[kept],
            "similarity": float(best[k]) if np.isfinite(best[k]) else None,
        })  # fmt: skip
    stats = {"index": index, "num_clips": n, "num_groups": int((sizes > 1).sum()),
             "num_duplicates": int(sum(r["dup_of"] is not None for r in rows)), "seconds": time.monotonic() - t0}  # fmt: skip
    return rows, stats


def embedding_matrix(blobs, dim: int) -> np.ndarray:
    """(N, dim) float16 from an Arrow binary column of little-endian float16 vectors."""
    import pyarrow as pa

    arr = pa.chunked_array(blobs).combine_chunks() if isinstance(blobs, pa.ChunkedArray) else blobs
    sizes = pa.compute.binary_length(arr).to_numpy(zero_copy_only=False)
    if len(arr) and (sizes != 2 * dim).any():
        raise ValueError(f"embeddings of another size than {dim} values in the compared rows")
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.view("<f2").reshape(len(arr), dim).astype(np.float16)


# ----------------------------------------------------------------------------------------- stage
@dataclass(kw_only=True)
class DedupStage(Stage):
    """Near-duplicate groups by CLIP embedding cosine similarity (faiss); writes dup_group/dup_of, drops nothing."""

    name = "dedup"
    marker_table = "dedup_runs"
    extra_tables = ("dup_groups",)
    order = 70
    run_by_default = False  # needs embeddings (score aesthetic)

    threshold: float = option(0.98, "Cosine similarity at or above which two clips are near-duplicates.", min=-1, max=1)
    embedding_key: str | None = option(None, "model_key of the embeddings to compare (default: the latest written).")
    exact_below: int = option(20_000, "Exact flat search below this many clips, IVF above.", min=2)
    nlist: int | None = option(None, "IVF lists (default: sqrt(nprobe x clips)).", min=1)
    nprobe: int = option(4, "IVF lists searched per clip (more: slower, higher recall).", min=1)

    def settings(self) -> dict:
        return {"threshold": self.threshold, "exact_below": self.exact_below, "nlist": self.nlist, "nprobe": self.nprobe}

    def _embeddings_sql(self) -> str:
        key = (sql_str(self.embedding_key) if self.embedding_key else
               "(SELECT model_key FROM _latest_clip_embeddings ORDER BY scored_at DESC LIMIT 1)")  # fmt: skip
        return f"""
            SELECT e.row_id, e.clip_id, e.dim, e.embedding, e.model_key, a.aesthetic
            FROM _latest_clip_embeddings e
            JOIN (SELECT DISTINCT clip_id FROM clips) USING (clip_id)
            LEFT JOIN ({latest_ok_sql('aesthetic_scores', 'aesthetic')}) a USING (clip_id)
            WHERE e.model_key = {key}
        """

    def items_sql(self) -> str:
        settings = sql_str(model_key(**self.settings()))
        return f"""
            SELECT md5({settings} || ':' || count(*) || ':' || bit_xor(hash(row_id, aesthetic))) AS run_key,
                   any_value(model_key) AS embedding_key, count(*) AS num_clips
            FROM ({self._embeddings_sql()})
            HAVING count(*) > 0
        """

    def setup(self, ctx: WorkerContext) -> None:
        self._root = ctx.workspace

    def process(self, item: dict) -> dict:
        from datakit.workspace import Workspace

        data = Workspace(self._root, create=False).arrow(
            f"SELECT clip_id, dim, embedding, aesthetic FROM ({self._embeddings_sql()}) ORDER BY clip_id"
        )
        dims = set(data.column("dim").to_pylist())
        if len(dims) != 1:
            raise ValueError(f"embeddings of one model have several sizes: {sorted(dims)}")
        x = embedding_matrix(data.column("embedding"), dims.pop())
        scores = data.column("aesthetic").to_numpy(zero_copy_only=False).astype(np.float64)
        rows, stats = group_rows(data.column("clip_id").to_pylist(), x, np.nan_to_num(scores, nan=-np.inf),
                                 self.threshold, exact_below=self.exact_below, nlist=self.nlist, nprobe=self.nprobe)  # fmt: skip
        for row in rows:
            row["run_key"] = item["run_key"]
        run = {"run_key": item["run_key"], "status": "ok", "embedding_key": item["embedding_key"],
               "threshold": self.threshold, "finished_at": time.time(), **stats}  # fmt: skip
        return {"dup_groups": rows, "dedup_runs": [run]}


STAGE = DedupStage
