"""Ingest: turn files, directories and URL lists into `sources` rows.

Directories are walked recursively; a file is taken when its extension is a video extension (GIF
included) or a JPEG, PNG or WebP image extension, or when its first bytes look like a video
container or one of those images. Images are one-frame media (probe: `media_type = 'image'`; the
`clips` view: one clip each). Other still images (BMP, TIFF, HEIC...) are skipped by the walk and
an error row when named explicitly. The
walk never enters a datakit workspace (a folder with `workspace.json` and `tables/`), so
re-ingesting a folder that holds a workspace adds none of its downloads or clips. URL lists are
.txt (one per line, '#' comments), .csv/.tsv (a `url` column, or the first column) and .parquet
(a `url` column). A password in a URL is stored redacted (`user:***@host`); the real one goes to
the workspace's secrets file (`datakit.credentials`). Inputs that cannot be read become error
rows; nothing is dropped silently.

Metadata tables of public datasets (Panda-70M, WebVid, InternVid, Open-Sora, or any table with a
`--col` mapping) are imported by `datakit.table_import`: with `fmt`/`cols` every table input is one,
and without them a table whose header is a known format's is one too (otherwise it is a URL list).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from datakit.credentials import save_credentials, split_credentials
from datakit.ids import file_video_id, is_url, path_error_id, url_video_id
from datakit.tables import Column as C
from datakit.tables import Table
from datakit.workspace import Workspace

TABLES = (
    Table(
        "sources",
        "video_id",
        "One row per ingested input (local file or URL). Written by `ingest`.",
        (
            C("video_id", "VARCHAR", "16 hex chars: blake2b of the file content, or of the canonical URL"),
            C("source", "VARCHAR", "absolute file path, or the URL as given with any password as ***"),
            C("source_kind", "VARCHAR", "'file' or 'url'"),
            C("path", "VARCHAR", "absolute local path (null for URLs until downloaded)"),
            C("bytes", "BIGINT", "file size at ingest (null for URLs)"),
            C("mtime_ns", "BIGINT", "file modification time at ingest; lets a re-ingest skip re-hashing"),
            C("status", "VARCHAR", "'ok' or 'error' (unreadable path, broken symlink, directory...)"),
            C("error", "VARCHAR", "readable reason when status is 'error'"),
        ),
    ),
)

VIDEO_EXTENSIONS = {
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".flv",
    ".wmv",
    ".mpg",
    ".mpeg",
    ".ts",
    ".m2ts",
    ".mts",
    ".3gp",
    ".ogv",
    ".vob",
    ".asf",
    ".y4m",
    ".m4a",
    ".gif",
}
# Still images. JPEG, PNG and WebP are ingested as one-frame media; the others are not supported.
SUPPORTED_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}
SUPPORTED_IMAGE_FORMATS = {"JPEG", "PNG", "WebP"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".avif"}
URL_LIST_EXTENSIONS = {".txt", ".csv", ".tsv", ".parquet"}
_SKIP_SNIFF = IMAGE_EXTENSIONS | {
    ".json",
    ".md",
    ".py",
    ".parquet",
    ".csv",
    ".tsv",
    ".txt",
    ".duckdb",
    ".part",
    ".tmp",
    ".lock",
}
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_video(path: Path) -> bool:
    """True when the file starts like a common video container."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if len(head) < 12:
        return False
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")  # MP4 / MOV
        or head.startswith(b"\x1a\x45\xdf\xa3")  # Matroska / WebM
        or (head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"))
        or head.startswith(b"FLV")
        or head.startswith(b"OggS")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG-PS
        or head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")  # ASF / WMV
        or head.startswith(b"YUV4MPEG2")
        or (len(head) >= 377 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47)  # MPEG-TS
        or head.startswith((b"GIF87a", b"GIF89a"))  # animated GIF: a short video
    )


def still_image_format(path: Path) -> str | None:
    """'JPEG', 'PNG', 'WebP', 'TIFF' by magic bytes; 'BMP', 'HEIC'... by extension; None: no image."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        head = b""
    for magic, name in _IMAGE_MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    suffix = path.suffix.lower()
    return suffix.lstrip(".").upper() if suffix in IMAGE_EXTENSIONS else None


def is_workspace(path: str | os.PathLike) -> bool:
    """A datakit workspace root: `workspace.json` beside a `tables/` folder."""
    return (Path(path) / "workspace.json").is_file() and (Path(path) / "tables").is_dir()


@dataclass
class IngestStats:
    files: int = 0
    urls: int = 0
    unchanged: int = 0
    duplicates: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    skipped_workspaces: list[str] = field(default_factory=list)  # datakit workspaces the walk left out
    imports: list[str] = field(default_factory=list)  # one summary line per metadata table imported
    table_errors: int = 0  # error rows of the imported tables (counted in `errors` too)

    def summary(self) -> str:
        text = (
            f"ingest: {self.files} files, {self.urls} URLs, {self.unchanged} unchanged, "
            f"{self.duplicates} duplicate contents, {self.errors} errors"
        )
        if self.skipped_workspaces:
            names = ", ".join(self.skipped_workspaces)
            text += f"; skipped {len(self.skipped_workspaces)} datakit workspace(s): {names}"
        if not self.imports:
            return text
        only_tables = not (
            self.files
            or self.urls
            or self.unchanged
            or self.duplicates
            or self.skipped_workspaces
            or self.errors > self.table_errors
        )
        return "\n".join(self.imports if only_tables else [text, *self.imports])


def _read_url_list(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
        if "url" not in table.column_names:
            raise ValueError(f"{path}: a Parquet URL list needs a 'url' column (has {table.column_names})")
        return [u for u in table.column("url").to_pylist() if u]
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        if not rows:
            return []
        header = [c.strip().lower() for c in rows[0]]
        if "url" in header:
            i = header.index("url")
            return [r[i].strip() for r in rows[1:] if len(r) > i and r[i].strip()]
        return [r[0].strip() for r in rows if r and is_url(r[0].strip())]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def _walk(root: Path, found: list[tuple[Path, str | None]], skipped: list[str]) -> None:
    """Collect (path, error) under root; follows directory symlinks once (no loops).

    A datakit workspace is not entered (its downloads and clips are no sources): its path goes to
    `skipped` instead.
    """
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        if is_workspace(dirpath):
            skipped.append(str(Path(dirpath).absolute()))
            dirnames[:] = []
            continue
        dirnames.sort()
        for d in dirnames:
            if Path(d).suffix.lower() in VIDEO_EXTENSIONS:
                found.append((Path(dirpath) / d, "is a directory, not a video file"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            suffix = p.suffix.lower()
            if suffix in VIDEO_EXTENSIONS or suffix in SUPPORTED_IMAGE_EXTENSIONS:
                found.append((p, None))
            elif (
                suffix not in _SKIP_SNIFF
                and not name.startswith(".")
                and (sniff_video(p) or still_image_format(p) in SUPPORTED_IMAGE_FORMATS)
            ):
                found.append((p, None))


def _classify(path: Path, given_error: str | None) -> str | None:
    if given_error:
        return given_error
    if path.is_symlink() and not path.exists():
        return f"broken symlink (points to {os.readlink(path)})"
    if path.is_dir():
        return "is a directory, not a video file"
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    image = None if sniff_video(path) else still_image_format(path)
    if image and image not in SUPPORTED_IMAGE_FORMATS:
        return f"still image ({image}): only JPEG, PNG and WebP images are supported"
    return None


def _file_rows(
    candidates: list[tuple[Path, str | None]],
    known: dict[str, dict],
    ids_this_run: set[str],
    stats: IngestStats,
) -> list[dict]:
    """Rows for new or changed files (a file unchanged since its row was written is not re-hashed)."""
    rows: list[dict] = []
    for path, given_error in candidates:
        apath = str(path.absolute())
        error = _classify(path, given_error)
        if error is None:
            st = path.stat()
            prev = known.get(apath)
            if prev and prev["bytes"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
                stats.unchanged += 1
                continue
            try:
                vid = file_video_id(path)
            except OSError as exc:
                error = f"cannot read file: {exc.strerror or exc}"
        if error is not None:
            stats.errors += 1
            stats.error_messages.append(f"{apath}: {error}")
            row = dict(video_id=path_error_id(path), source=apath, source_kind="file", path=apath)
            rows.append(row | dict(status="error", error=error))
            continue
        if vid in ids_this_run:
            stats.duplicates += 1
            continue
        ids_this_run.add(vid)
        stats.files += 1
        rows.append(
            dict(video_id=vid, source=apath, source_kind="file", path=apath, status="ok")
            | dict(bytes=st.st_size, mtime_ns=st.st_mtime_ns)
        )
    return rows


def _url_rows(urls: list[str], known: set[str], stats: IngestStats) -> tuple[list[dict], dict[str, str]]:
    """Rows for new URLs, and video id -> user-info of every URL given with a password."""
    rows: list[dict] = []
    secrets: dict[str, str] = {}
    for url in urls:
        vid = url_video_id(url)  # ignores credentials
        shown, userinfo = split_credentials(url)
        if userinfo:
            secrets[vid] = userinfo  # the latest password given for a URL wins
        if vid in known:
            stats.unchanged += 1
            continue
        known.add(vid)
        stats.urls += 1
        rows.append(dict(video_id=vid, source=shown, source_kind="url", status="ok"))
    return rows, secrets


def ingest(
    ws: Workspace, inputs: list[str], fmt: str | None = None, cols: dict[str, str] | None = None
) -> IngestStats:
    """Add files, directories, URL lists, URLs and metadata tables to the manifest. Idempotent.

    fmt / cols: import every table input as a metadata table of that format / column mapping
    (`datakit.table_import`); a bad format or mapping raises TableImportError before anything is written."""
    from datakit import table_import

    stats = IngestStats()
    candidates: list[tuple[Path, str | None]] = []
    urls: list[str] = []
    tables: list[tuple[Path, str]] = []
    for raw in inputs:
        p = Path(raw)
        if not is_url(raw) and table_import.is_table(p) and (fmt or cols or table_import.sniff_format(p)):
            tables.append((p, fmt or "auto"))
    for p, f in tables:  # every table is checked before anything is written
        table_import.check_table(p, f, cols)
    for raw in inputs:
        if is_url(raw):
            urls.append(raw)
            continue
        p = Path(raw)
        if any(p == t for t, _ in tables):
            continue
        if p.is_dir():
            _walk(p, candidates, stats.skipped_workspaces)
        elif p.suffix.lower() in URL_LIST_EXTENSIONS and p.is_file():
            urls.extend(_read_url_list(p))
        else:
            candidates.append((p, None))

    with ws.lock("stage-ingest"):
        ok_files = ws.sql(
            "SELECT path, bytes, mtime_ns, video_id FROM sources WHERE status = 'ok' AND source_kind = 'file'"
        )
        # The first path seen for a content stays its source; later copies count as duplicates.
        ids_this_run: set[str] = {r["video_id"] for r in ok_files}
        rows = _file_rows(candidates, {r["path"]: r for r in ok_files}, ids_this_run, stats)
        known_urls = {r["video_id"] for r in ws.sql("SELECT video_id FROM sources WHERE source_kind = 'url'")}
        url_rows, secrets = _url_rows(urls, known_urls | ids_this_run, stats)
        save_credentials(ws.root, secrets)  # before the rows, so a download never misses them
        ws.write("sources", rows + url_rows)
    for p, f in tables:
        result = table_import.import_table(ws, p, f, cols)
        stats.imports.append(result.summary(str(p)))
        stats.errors += result.errors
        stats.table_errors += result.errors
        stats.error_messages += [f"{p}: {m}" for m in result.error_messages]
    return stats
