"""Export a curated set for a trainer: Open-Sora's training table, or WebDataset tar shards.

Both targets need one file per row: images are their own file; video clips are cut first (the
`cut` stage, run on the set's clips that have no clip file yet: resumable, error rows for bad
spans) and their clip file is used, with its own frame count, size and frame rate. Rows that
still have no file (a failed cut, a missing image) or no caption are left out and counted, never
silently: the set itself is immutable and stays as it is.

- `opensora`: CSV or Parquet (by the output's suffix) with Open-Sora's columns
  `path,text,num_frames,height,width,aspect_ratio,resolution,fps` (aspect_ratio = height / width,
  resolution = height x width) plus `aes` (LAION aesthetic, Open-Sora's name and scale), `motion`
  (ours: short sides per second), `match` (CLIP caption/frame similarity) and `clip_id`.
- `webdataset`: tar shards of at most about `shard_bytes` each (a shard closes once it reaches the
  size), written with the `webdataset` package: per clip `<clip_id>.mp4` (or .jpg/.png/.webp),
  `.txt` (caption) and `.json` (the set row and the file's properties).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from datakit.scoring import sql_str
from datakit.sets import SetError, SetVersion, resolve
from datakit.stage import option
from datakit.stages.cut import CutStage
from datakit.workspace import Workspace, atomic_write_bytes

FORMATS = ("opensora", "webdataset")
OPENSORA_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "resolution", "fps")


@dataclass(kw_only=True)
class SetCutStage(CutStage):
    """The cut stage restricted to the video clips of a set's rows file."""

    rows_file: str = option("", "Parquet file of set rows whose video clips are cut.", cli=False)

    @classmethod
    def tables(cls):
        return CutStage.tables()  # the `cuts` table, declared in the cut stage's module

    def items_sql(self) -> str:
        picked = f"SELECT clip_id FROM read_parquet({sql_str(self.rows_file)}) WHERE media_type = 'video'"
        return f"SELECT * FROM ({super().items_sql()}) WHERE clip_id IN ({picked})"


@dataclass
class ExportResult:
    target: Path
    rows: int
    files: list[Path] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)  # reason -> rows

    def summary(self) -> str:
        text = f"exported {self.rows} rows to {self.target}"
        if self.files and len(self.files) > 1:
            text += f" ({len(self.files)} shards)"
        if self.left_out:
            text += "; left out: " + ", ".join(f"{n} {why}" for why, n in self.left_out.most_common())
        return text


def _cut_missing(ws: Workspace, version: SetVersion, cut: dict, workers: int, progress: bool) -> None:
    from datakit.executors import run_stage

    stage = SetCutStage(rows_file=str(version.rows_path), **cut)
    run_stage(ws, stage, workers=workers, progress=progress)


def _file_rows(ws: Workspace, version: SetVersion) -> tuple[list[dict], Counter]:
    """Each set row with the file a trainer reads (`file`, and its own frames/size/fps), and what is left out."""
    rows = version.read().to_pylist()
    cuts = {
        r["clip_id"]: r
        for r in ws.sql(
            "SELECT clip_id, status, error, path, num_frames, fps, width, height FROM _latest_cuts "
            f"WHERE clip_id IN (SELECT clip_id FROM read_parquet({sql_str(str(version.rows_path))}))"
        )
    }
    ready, left_out = [], Counter()
    for row in rows:
        if not row.get("caption"):
            left_out["without caption"] += 1
            continue
        if row["media_type"] == "image":
            info = {"file": row["source_path"], "num_frames": 1, "fps": None,
                    "width": row["width"], "height": row["height"]}  # fmt: skip
        else:
            cut = cuts.get(row["clip_id"])
            if cut is None or cut["status"] != "ok":
                left_out["not cut" if cut is None else "whose cut failed"] += 1
                continue
            info = {"file": cut["path"], **{k: cut[k] for k in ("num_frames", "fps", "width", "height")}}
        if not info["file"] or not Path(info["file"]).is_file():
            left_out["whose file is missing"] += 1
            continue
        ready.append({**row, **info})
    return ready, left_out


def opensora_table(rows: list[dict]) -> pa.Table:
    def col(name: str) -> list:
        return [r.get(name) for r in rows]

    return pa.table({
        "path": pa.array(col("file"), pa.string()),
        "text": pa.array(col("caption"), pa.string()),
        "num_frames": pa.array(col("num_frames"), pa.int64()),
        "height": pa.array(col("height"), pa.int64()),
        "width": pa.array(col("width"), pa.int64()),
        "aspect_ratio": pa.array([r["height"] / r["width"] for r in rows], pa.float64()),
        "resolution": pa.array([r["height"] * r["width"] for r in rows], pa.int64()),
        "fps": pa.array(col("fps"), pa.float64()),
        "aes": pa.array(col("aesthetic"), pa.float64()),
        "motion": pa.array(col("motion"), pa.float64()),
        "match": pa.array(col("text_match"), pa.float64()),
        "clip_id": pa.array(col("clip_id"), pa.string()),
    })  # fmt: skip


def _write_opensora(rows: list[dict], output: Path) -> list[Path]:
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = opensora_table(rows)
    buf = io.BytesIO()
    if output.suffix.lower() == ".parquet":
        pq.write_table(table, buf)
    elif output.suffix.lower() == ".csv":
        pacsv.write_csv(table, buf)
    else:
        raise SetError(f"--output {output}: the opensora format writes .csv or .parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, buf.getvalue())
    return [output]


def _write_webdataset(rows: list[dict], out_dir: Path, prefix: str, shard_bytes: int) -> list[Path]:
    import webdataset as wds

    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob(f"{prefix}-*.tar")):
        raise SetError(f"{out_dir} already holds {prefix}-*.tar shards; remove them or pick another --output")
    written: list[Path] = []
    pattern = str(out_dir / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxsize=shard_bytes, maxcount=10**9, verbose=0,
                         post=lambda name: written.append(Path(name))) as sink:  # fmt: skip
        for row in rows:
            ext = "mp4" if row["media_type"] == "video" else Path(row["file"]).suffix.lower().lstrip(".")
            meta = {k: v for k, v in row.items() if k != "file"} | {"file_name": Path(row["file"]).name}
            sink.write({
                "__key__": row["clip_id"],
                ext: Path(row["file"]).read_bytes(),
                "txt": row["caption"],
                "json": json.dumps(meta, default=str).encode(),
            })  # fmt: skip
    return written


def export_set(ws: Workspace, spec: str, fmt: str, output: Path | None = None, *, cut: bool = True,
               cut_options: dict | None = None, workers: int = 1, shard_bytes: int = 1 << 30,
               progress: bool = True) -> ExportResult:  # fmt: skip
    """Export set `spec` (NAME or NAME@vN) as `fmt`; cuts the clips that have no file first (unless cut=False)."""
    if fmt not in FORMATS:
        raise SetError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    version = resolve(ws, spec)
    if cut:
        _cut_missing(ws, version, cut_options or {}, workers, progress)
    rows, left_out = _file_rows(ws, version)
    stem = f"{version.name}-v{version.version}"
    if fmt == "opensora":
        target = Path(output) if output else ws.root / "exports" / f"{stem}-opensora.csv"
        files = _write_opensora(rows, target)
    else:
        target = Path(output) if output else ws.root / "exports" / f"{stem}-wds"
        files = _write_webdataset(rows, target, stem, shard_bytes)
    return ExportResult(target, len(rows), files, left_out)
