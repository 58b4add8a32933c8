"""Export a curated set for a trainer: Open-Sora's training tables, or WebDataset tar shards.

Every row needs one file. Video clips are cut first (the `cut` stage on the set's clips without a
clip file: resumable, error rows for bad spans); a clip cut earlier at another `--short-side` or
`--fps` is re-cut once into data/cuts/<params>/. Image sets (a `frame` column, as the @image recipe
writes) export each video row's chosen frame as a JPEG/PNG file (data/frames/, made once), so
image and video rows are told apart by their extension as Open-Sora 1.1+ does; images are kept
as they are unless resized or not JPEG/PNG (data/images/). Rows without a file or a caption are
left out and counted, never silently; an export with no row fails unless allow_empty.

- `opensora` (1.1+): CSV or Parquet (by suffix), headed, with their columns
  `path,text,num_frames,height,width,aspect_ratio,resolution,fps` (aspect_ratio = height/width,
  resolution = height*width, fps empty for images) and `text_len` (T5 tokens, as their
  `datautil --count-num-token t5`), `aes` (LAION aesthetic, their scale), `match` (CLIP
  logit_scale*cosine = 100*cos, their scale: `--matchmin 20` means what it means there), plus ours
  on our own scales and names: `motion` (mean optical-flow speed in short sides per second; not their
  `flow`, which is UniMatch pixels at 320x576) and `clip_id`.
- `opensora-v1.0`: header-less CSV `path,text,num_frames` (their DatasetFromCSV reads it with
  csv.reader, takes the kind of every row from row 0's extension: all rows must be videos or all images).
- `webdataset`: tar shards of at most about `shard_bytes` each, per clip `<clip_id>.mp4` (or
  .jpg/.png), `.txt` (caption) and `.json` (the set row and the file's properties). A shard is
  written under a temp name and renamed when complete; `<prefix>-index.json` marks the export
  complete. A rerun after a kill keeps the complete shards and writes the rest.

`root`: paths relative to this folder (Open-Sora 1.0's `root`, their datautil `--relpath`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from datakit.scoring import sql_str
from datakit.sets import IMAGE_FORMATS, SetError, SetVersion, frame_file, image_file, resolve
from datakit.stage import option
from datakit.stages.cut import CutStage, cut_clip
from datakit.workspace import Workspace, atomic_write_bytes

FORMATS = ("opensora", "opensora-v1.0", "webdataset")
OPENSORA_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "resolution", "fps")
CLIP_LOGIT_SCALE = 100.0  # CLIP's learned logit scale (exp(4.6052), ViT-L/14): Open-Sora's match = 100*cos
V10_VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")  # the extensions Open-Sora 1.0's loader reads as videos
V10_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(kw_only=True)
class SetCutStage(CutStage):
    """The cut stage restricted to the video clips of a set's rows file."""

    rows_file: str = option("", "Parquet file of set rows whose video clips are cut.", cli=False)

    def items_sql(self) -> str:
        picked = f"SELECT clip_id FROM read_parquet({sql_str(self.rows_file)}) WHERE media_type = 'video'"
        return f"SELECT * FROM ({super().items_sql()}) WHERE clip_id IN ({picked})"


@dataclass
class ExportResult:
    target: Path
    rows: int
    files: list[Path] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)  # reason -> rows
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"exported {self.rows} rows to {self.target}"
        if self.files and len(self.files) > 1:
            text += f" ({len(self.files)} shards)"
        if self.left_out:
            text += "; left out: " + ", ".join(f"{n} {why}" for why, n in self.left_out.most_common())
        return "\n".join([text, *self.notes])

    def as_dict(self) -> dict:
        return {
            "target": str(self.target),
            "rows": self.rows,
            "files": [str(f) for f in self.files],
            "left_out": dict(self.left_out),
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------- output paths
def check_output(path: Path, *, folder: bool) -> Path:
    """Make the output's folder (or check it) and turn every way it can fail into one SetError line."""
    path = Path(path).expanduser().absolute()
    where = path if folder else path.parent
    for parent in [where, *where.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise SetError(f"--output {path}: {parent} is a file, not a folder")
            break
    if not folder and path.is_dir():
        raise SetError(f"--output {path} is a folder; give a file name")
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise SetError(f"--output {path}: cannot write in {where} ({exc.strerror or exc})") from None
    return path


# --------------------------------------------------------------------------------- rows -> files
def _cut_missing(ws: Workspace, version: SetVersion, cut: dict, workers: int, progress: bool) -> None:
    from datakit.executors import run_stage

    stage = SetCutStage(rows_file=str(version.rows_path), **cut)
    run_stage(ws, stage, workers=workers, progress=progress)


def _recut(ws: Workspace, row: dict, cut: dict) -> dict:
    """A clip cut earlier with other settings, cut again with `cut` into data/cuts/<params>/ (once)."""
    tag = "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(cut.items()))
    dst = (
        ws.root / "data" / "cuts" / tag.replace("short_side", "s") / row["video_id"] / f"{row['clip_id']}.mp4"
    )
    info_file = dst.with_suffix(".json")
    if dst.is_file() and info_file.is_file():
        return json.loads(info_file.read_text())
    got = cut_clip(row["source_path"], dst, int(row["start_frame"]), int(row["end_frame"]), **cut)
    if got["status"] == "ok":
        atomic_write_bytes(info_file, json.dumps(got).encode())
    return got


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def _file_rows(
    ws: Workspace, version: SetVersion, cut: dict, image_format: str
) -> tuple[list[dict], Counter]:
    """Each set row with the file a trainer reads (`file`, and its own frames/size/fps), and what is left out."""
    table = version.read()
    rows, image_set = table.to_pylist(), "frame" in table.column_names
    cuts = {
        r["clip_id"]: r
        for r in ws.sql(
            "SELECT clip_id, status, error, path, num_frames, fps, width, height, params FROM _latest_cuts "
            f"WHERE clip_id IN (SELECT clip_id FROM read_parquet({sql_str(str(version.rows_path))}))"
        )
    }
    short_side = cut.get("short_side")
    ready, left_out = [], Counter()
    for row in rows:
        if not row.get("caption"):
            left_out["without caption"] += 1
            continue
        try:
            if row["media_type"] == "image" or (image_set and row.get("frame") is not None):
                if row["media_type"] == "image":
                    file = image_file(ws, row, short_side, image_format)
                else:
                    file = frame_file(ws, row, short_side, image_format)
                width, height = _image_size(file)
                info = {"file": str(file), "num_frames": 1, "fps": None, "width": width, "height": height}
            else:
                got = cuts.get(row["clip_id"])
                if got is None or got["status"] != "ok":
                    left_out["not cut" if got is None else "whose cut failed"] += 1
                    continue
                params = json.loads(got["params"] or "{}")
                if any(params.get(k) != v for k, v in cut.items()):
                    got = _recut(ws, row, cut)
                    if got["status"] != "ok":
                        left_out["whose cut failed"] += 1
                        continue
                info = {"file": got["path"], **{k: got[k] for k in ("num_frames", "fps", "width", "height")}}
        except Exception:  # an undecodable frame or image is a row left out, never a crash
            left_out["whose file cannot be read"] += 1
            continue
        if not info["file"] or not Path(info["file"]).is_file():
            left_out["whose file is missing"] += 1
            continue
        ready.append({**row, **info})
    return ready, left_out


def _relative(rows: list[dict], root: Path | None) -> list[str]:
    if root is None:
        return [str(Path(r["file"]).absolute()) for r in rows]
    root = Path(root).expanduser().absolute()
    out = []
    for r in rows:
        file = Path(r["file"]).absolute()
        if not file.is_relative_to(root):
            raise SetError(
                f"--root {root}: {file} is not under it (clip {r['clip_id']}); pick a folder holding every file"
            )
        out.append(str(file.relative_to(root)))
    return out


# Open-Sora 1.0's text encoder (the same id as models.defaults.DEFAULT_T5; datakit imports no models).
DEFAULT_T5_TOKENIZER = "DeepFloyd/t5-v1_1-xxl"


# --------------------------------------------------------------------------------- writers
def _text_lengths(texts: list[str], tokenizer: str | None, notes: list[str]) -> list[int | None]:
    """T5 token counts as Open-Sora's datautil counts them (`len(tokenizer(text)["input_ids"])`, EOS included)."""
    name = tokenizer or os.environ.get("DATAKIT_T5_TOKENIZER") or DEFAULT_T5_TOKENIZER
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # not cached here (no network): leave the column empty, and say so
        if tokenizer:
            raise SetError(f"--tokenizer {tokenizer}: cannot load it ({type(exc).__name__})") from None
        notes.append(f"text_len left empty: no T5 tokenizer {name} in the local cache (pass --tokenizer DIR)")
        return [None] * len(texts)
    return [len(ids) for ids in tok(texts)["input_ids"]] if texts else []


def opensora_table(rows: list[dict], paths: list[str], text_len: list[int | None]) -> pa.Table:
    def col(name: str) -> list:
        return [r.get(name) for r in rows]

    match = [None if m is None else CLIP_LOGIT_SCALE * m for m in col("text_match")]
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "text": pa.array(col("caption"), pa.string()),
            "num_frames": pa.array(col("num_frames"), pa.int64()),
            "height": pa.array(col("height"), pa.int64()),
            "width": pa.array(col("width"), pa.int64()),
            "aspect_ratio": pa.array([r["height"] / r["width"] for r in rows], pa.float64()),
            "resolution": pa.array([r["height"] * r["width"] for r in rows], pa.int64()),
            "fps": pa.array(col("fps"), pa.float64()),
            "text_len": pa.array(text_len, pa.int64()),
            "aes": pa.array(col("aesthetic"), pa.float64()),
            "match": pa.array(match, pa.float64()),
            "motion": pa.array(col("motion"), pa.float64()),
            "clip_id": pa.array(col("clip_id"), pa.string()),
        }
    )


def _write_opensora(table: pa.Table, output: Path) -> list[Path]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    if output.suffix.lower() == ".parquet":
        pq.write_table(table, buf)
    else:
        pacsv.write_csv(table, buf)
    atomic_write_bytes(output, buf.getvalue())
    return [output]


def _write_v10(rows: list[dict], paths: list[str], output: Path) -> list[Path]:
    kinds = {Path(p).suffix.lower() in V10_VIDEO_EXTS for p in paths}
    bad = [p for p in paths if Path(p).suffix.lower() not in V10_VIDEO_EXTS + V10_IMAGE_EXTS]
    if len(kinds) > 1 or bad:
        raise SetError(
            "opensora-v1.0 reads every row as the kind of row 0's file (video or image): this set mixes "
            "videos and images; export an image set (@image) or a video set, or use --format opensora"
        )
    buf = io.StringIO()
    writer = csv.writer(buf)
    for row, path in zip(rows, paths, strict=True):
        writer.writerow([path, row["caption"], row["num_frames"]])
    atomic_write_bytes(output, buf.getvalue().encode())
    return [output]


def _shard_keys(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {m.name.split(".", 1)[0] for m in tar.getmembers()}


def _write_webdataset(
    rows: list[dict],
    out_dir: Path,
    prefix: str,
    shard_bytes: int,
    on_sample: Callable[[Path, int], None] | None = None,
) -> tuple[list[Path], int]:
    """Shards <prefix>-NNNNNN.tar; returns (shards, rows resumed from shards a killed run completed)."""
    import webdataset as wds

    index = out_dir / f"{prefix}-index.json"
    if index.is_file():
        raise SetError(
            f"{out_dir} already holds a complete {prefix} export ({index.name}); remove it or pick another --output"
        )
    for stale in out_dir.glob(f".{prefix}-*.partial"):
        stale.unlink()  # a shard a killed run was writing
    done = sorted(out_dir.glob(f"{prefix}-[0-9]*.tar"))
    resumed = set().union(*(_shard_keys(p) for p in done)) if done else set()
    todo = [r for r in rows if r["clip_id"] not in resumed]
    written = list(done)
    sink, tmp, size, n = None, None, 0, len(done)

    def close() -> None:
        nonlocal sink
        sink.close()
        final = out_dir / f"{prefix}-{n:06d}.tar"
        os.replace(tmp, final)
        written.append(final)
        sink = None

    for row in todo:
        if sink is None:
            tmp = out_dir / f".{prefix}-{n:06d}.tar.partial"
            sink, size = wds.TarWriter(str(tmp)), 0
        ext = (
            "mp4"
            if Path(row["file"]).suffix.lower() == ".mp4"
            else Path(row["file"]).suffix.lower().lstrip(".")
        )
        meta = {k: v for k, v in row.items() if k != "file"} | {"file_name": Path(row["file"]).name}
        data = Path(row["file"]).read_bytes()
        sink.write(
            {
                "__key__": row["clip_id"],
                ext: data,
                "txt": row["caption"],
                "json": json.dumps(meta, default=str).encode(),
            }
        )
        size += len(data)
        if on_sample:
            on_sample(tmp, len(written))
        if size >= shard_bytes:
            close()
            n += 1
    if sink is not None:
        close()
    atomic_write_bytes(index, json.dumps({"shards": [p.name for p in written], "rows": len(rows)}).encode())
    return written, len(rows) - len(todo)


# --------------------------------------------------------------------------------- entry point
def export_set(
    ws: Workspace,
    spec: str,
    fmt: str,
    output: Path | None = None,
    *,
    cut: bool = True,
    cut_options: dict | None = None,
    workers: int = 1,
    shard_bytes: int = 1 << 30,
    progress: bool = True,
    root: Path | None = None,
    allow_empty: bool = False,
    image_format: str = "jpg",
    tokenizer: str | None = None,
    on_sample: Callable[[Path, int], None] | None = None,
) -> ExportResult:
    """Export set `spec` (NAME or NAME@vN) as `fmt`; cuts the clips that have no file first (unless cut=False)."""
    if fmt not in FORMATS:
        raise SetError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if image_format not in IMAGE_FORMATS:
        raise SetError(f"unknown image format {image_format!r} (one of {', '.join(IMAGE_FORMATS)})")
    version = resolve(ws, spec)
    stem = f"{version.name}-v{version.version}"
    default = {
        "opensora": f"{stem}-opensora.csv",
        "opensora-v1.0": f"{stem}-opensora-v1.0.csv",
        "webdataset": f"{stem}-wds",
    }
    target = check_output(
        Path(output) if output else ws.root / "exports" / default[fmt], folder=fmt == "webdataset"
    )
    suffixes = {"opensora": (".csv", ".parquet"), "opensora-v1.0": (".csv",)}.get(fmt)
    if suffixes and target.suffix.lower() not in suffixes:
        raise SetError(f"--output {target}: the {fmt} format writes {' or '.join(suffixes)}")
    if root is not None and fmt == "webdataset":
        raise SetError("--root applies to the table formats (opensora, opensora-v1.0), not to webdataset")
    if root is not None and not Path(root).is_dir():
        raise SetError(f"--root {root} is not a folder")
    cut_options = cut_options or {}
    if cut and "frame" not in version.read().column_names:
        _cut_missing(ws, version, cut_options, workers, progress)
    rows, left_out = _file_rows(ws, version, cut_options, image_format)
    if not rows and not allow_empty:
        why = "; left out: " + ", ".join(f"{n} {w}" for w, n in left_out.most_common()) if left_out else ""
        raise SetError(
            f"set {version.name}@v{version.version} has no row to export{why} (--allow-empty writes an empty export)"
        )
    notes: list[str] = []
    if fmt == "webdataset":
        files, resumed = _write_webdataset(rows, target, stem, shard_bytes, on_sample)
        if resumed:
            notes.append(f"resumed: {resumed} rows were in shards a killed run had completed")
    else:
        paths = _relative(rows, root)
        if fmt == "opensora":
            table = opensora_table(rows, paths, _text_lengths([r["caption"] for r in rows], tokenizer, notes))
            files = _write_opensora(table, target)
        else:
            files = _write_v10(rows, paths, target)
    return ExportResult(target, len(rows), files, left_out, notes)
