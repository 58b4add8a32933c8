"""Curated sets: immutable, versioned selections of clips, made by SQL over the manifest.

    <workspace>/sets/<NAME>/v<N>/rows.parquet   one row per clip: what a trainer needs
    <workspace>/sets/<NAME>/v<N>/card.json      name, version, recipe (name and SQL), row count,
                                                manifest snapshot (live part files per table), created

`select` runs one read-only SELECT (a recipe from manifests/recipes, `--where` over `clips`, or any
`--sql` returning `clip_id`) in the query sandbox, completes each row with the set columns from the
`clips` view (recipe columns of the same name win; other recipe columns are kept after them) and
writes the next version. A version is never rewritten: files are made read-only and a new select
writes v<N+1>. `NAME` names the latest version, `NAME@v2` a given one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datakit.workspace import Workspace, WorkspaceError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "manifests" / "recipes"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

# The columns of every set row (a recipe may add more after them).
SET_COLUMNS = {
    "clip_id": "c.clip_id",
    "video_id": "c.video_id",
    "media_type": "c.media_type",
    "source_path": "c.source_path",
    "path": "c.path",
    "start_frame": "c.start_frame",
    "end_frame": "c.end_frame",
    "num_frames": "c.num_frames",
    "fps": "c.fps",
    "height": "c.height",
    "width": "c.width",
    "aspect_ratio": "CAST(c.height AS DOUBLE) / c.width",
    "duration_s": "c.num_frames / c.fps",
    "caption": "c.caption",
    "aesthetic": "c.aesthetic",
    "motion": "c.motion",
    "static": "c.static",
    "text_match": "c.text_match",
    "dup_group": "c.dup_group",
    "dup_of": "c.dup_of",
}


class SetError(WorkspaceError):
    """A set that cannot be made or found; printed as `Error: ...` by the CLI."""


@dataclass(frozen=True)
class SetVersion:
    name: str
    version: int
    path: Path  # the v<N> folder

    @property
    def rows_path(self) -> Path:
        return self.path / "rows.parquet"

    @property
    def card(self) -> dict:
        return json.loads((self.path / "card.json").read_text())

    def read(self) -> pa.Table:
        return pq.read_table(self.rows_path)


def sets_dir(ws: Workspace | Path) -> Path:
    """`<workspace>/sets` (a Workspace or just its folder: reading a set opens no catalog)."""
    return (ws.root if isinstance(ws, Workspace) else Path(ws)) / "sets"


def parse_spec(spec: str) -> tuple[str, int | None]:
    """`NAME` -> (NAME, None: the latest version); `NAME@vN` or `NAME@N` -> (NAME, N)."""
    match = re.fullmatch(r"([^@/\s]+)(?:@v?(\d+))?", spec.strip())
    if not match:
        raise SetError(f"set {spec!r} is not NAME or NAME@vN")
    return match.group(1), int(match.group(2)) if match.group(2) else None


def recipe_sql(name: str) -> str:
    """The SQL of a shipped recipe (`video` or `@video`), or of a recipe file (`my/recipe.sql`)."""
    if name.endswith(".sql") and not name.startswith("@"):
        if not Path(name).is_file():
            raise SetError(f"no recipe file {name}")
        return Path(name).read_text()
    path = RECIPES_DIR / f"{name.lstrip('@')}.sql"
    if not path.is_file():
        names = ", ".join(sorted("@" + p.stem for p in RECIPES_DIR.glob("*.sql")))
        raise SetError(f"no recipe {name} (recipes: {names})")
    return path.read_text()


def versions(ws: Workspace | Path, name: str) -> list[SetVersion]:
    return versions_in(sets_dir(ws) / name, name)


def versions_in(folder: Path, name: str | None = None) -> list[SetVersion]:
    """The complete versions (card.json written last) in a set folder, oldest first."""
    name = name or folder.name
    found = []
    for d in folder.glob("v*") if folder.is_dir() else []:
        if re.fullmatch(r"v\d+", d.name) and (d / "card.json").is_file():
            found.append(SetVersion(name, int(d.name[1:]), d))
    return sorted(found, key=lambda v: v.version)


def resolve(ws: Workspace | Path, spec: str) -> SetVersion:
    """`NAME` (latest version) or `NAME@vN` -> the set version (the trainer and `features` use this too)."""
    name, _, ver = spec.partition("@")
    if ver and not re.fullmatch(r"v?\d+", ver):
        raise SetError(f"bad set version {ver!r} in {spec!r}: use NAME@v2")
    name, wanted = parse_spec(spec)
    found = versions(ws, name)
    if not found:
        known = ", ".join(list_sets(ws)) or "none yet"
        raise SetError(f"no curated set named {name!r} in {sets_dir(ws)} (sets: {known})")
    if wanted is None:
        return found[-1]
    for v in found:
        if v.version == wanted:
            return v
    raise SetError(
        f"set {name} has no version {wanted} (versions: {', '.join(f'v{v.version}' for v in found)})"
    )


def resolve_folder(spec: str) -> SetVersion | None:
    """A set given by folder: `<ws>/sets/NAME` (latest), `<ws>/sets/NAME@vN`, or a version folder."""
    path = Path(spec).expanduser()
    if not path.exists() and "@" in spec:
        folder, _, _ = spec.rpartition("@")
        _, wanted = parse_spec(Path(folder).name + spec[len(folder) :])
        return next((v for v in versions_in(Path(folder).expanduser()) if v.version == wanted), None)
    if (path / "card.json").is_file() and re.fullmatch(r"v\d+", path.name):
        return SetVersion(path.parent.name, int(path.name[1:]), path)
    found = versions_in(path) if path.is_dir() else []
    return found[-1] if found else None


def media_path(row: dict, prefer: str = "source") -> tuple[str | None, bool]:
    """(file to read a clip from, whether it is the cut file): the source file (`source_path`,
    exact spans at any frame rate) or the cut file (`path`), `prefer` first; None when neither exists."""
    source, cut = row.get("source_path"), row.get("path")
    order = [(cut, True), (source, False)] if prefer == "cut" else [(source, False), (cut, True)]
    for path, is_cut in order:
        if path and os.path.isfile(path):
            return path, is_cut
    return None, False


def list_sets(ws: Workspace | Path) -> dict[str, list[SetVersion]]:
    root = sets_dir(ws)
    names = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    return {n: vs for n in names if (vs := versions(ws, n))}


def _select_rows(ws: Workspace, sql: str, params: dict[str, float | str] | None = None) -> pa.Table:
    """Run the user's SELECT in the sandbox and complete its rows with the set columns."""
    import duckdb

    from datakit.query import check_read_only

    check_read_only(sql)
    for key in params or {}:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise SetError(f"bad recipe parameter name {key!r} (lower-case letters, digits, '_')")

    def run(con) -> pa.Table:
        for key, value in (params or {}).items():
            con.execute(f"SET VARIABLE {key} = ?", [value])
        picked = con.sql(sql).to_arrow_table()
        if "clip_id" not in picked.column_names:
            raise SetError(f"the selection has no clip_id column (it has {', '.join(picked.column_names)})")
        picked = picked.append_column("__order", pa.array(range(picked.num_rows), pa.int64()))
        con.register("__picked", picked)
        dupes = con.execute(
            "SELECT clip_id, count(*) FROM __picked GROUP BY ALL HAVING count(*) > 1 LIMIT 3"
        ).fetchall()
        if dupes:
            raise SetError(
                f"the selection returns a clip more than once, e.g. {dupes[0][0]} x{dupes[0][1]}: "
                "a set holds each clip once"
            )
        unknown = con.execute(
            "SELECT count(*), any_value(clip_id) FROM __picked ANTI JOIN clips USING (clip_id)"
        ).fetchall()[0]
        if unknown[0]:
            raise SetError(f"{unknown[0]} selected clip id(s) are not in the clips view, e.g. {unknown[1]!r}")
        own = [c for c in picked.column_names if c != "__order"]
        cols = [f'r."{n}"' if n in own else f'{expr} AS "{n}"' for n, expr in SET_COLUMNS.items()]
        cols += [f'r."{n}"' for n in own if n not in SET_COLUMNS]
        return con.sql(
            f"SELECT {', '.join(cols)} FROM __picked r JOIN clips c USING (clip_id) ORDER BY r.__order"
        ).to_arrow_table()

    try:
        return ws.read(run, sandbox=True)
    except duckdb.Error as exc:
        raise SetError(f"the selection failed: {exc}") from None


def manifest_snapshot(ws: Workspace) -> dict:
    """The live part files of every table and their row counts (what the set was selected from)."""
    from datakit.schema import SCHEMA_VERSION, fingerprint, tables

    out: dict = {"schema_version": SCHEMA_VERSION, "schema": fingerprint(), "tables": {}}
    for name in tables():
        parts = ws.live_parts(name)
        out["tables"][name] = {
            "parts": [p.name for p in parts],
            "part_rows": sum(pq.read_metadata(p).num_rows for p in parts),
        }
    return out


def select(
    ws: Workspace,
    name: str,
    sql: str,
    *,
    recipe: str | None = None,
    kind: str = "sql",
    params: dict[str, float | str] | None = None,
) -> SetVersion:
    """Write the next version of set `name` from a SELECT; returns it. `params`: recipe parameters,
    DuckDB variables the SQL reads with `getvariable('name')` (recorded in the card)."""
    if not NAME_RE.fullmatch(name):
        raise SetError(
            f"bad set name {name!r}: letters, digits, '_', '.', '-' (not starting with '.', '_' or '-')"
        )
    snapshot = manifest_snapshot(ws)
    rows = _select_rows(ws, sql, params)
    folder = sets_dir(ws) / name
    folder.mkdir(parents=True, exist_ok=True)
    with ws.lock(f"set-{name}"):
        done = versions(ws, name)
        version = done[-1].version + 1 if done else 1
        tmp = folder / f".v{version}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            pq.write_table(rows, tmp / "rows.parquet", compression="zstd")
            card = {
                "name": name,
                "version": version,
                "recipe": {
                    "name": recipe,
                    "kind": kind,
                    "text": sql,
                    **({"params": dict(params)} if params else {}),
                },
                "row_count": rows.num_rows,
                "columns": rows.column_names,
                "manifest": snapshot,
                "workspace": str(ws.root),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "created_unix": time.time(),
            }
            (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
            for f in tmp.iterdir():
                os.chmod(f, 0o444)
            final = folder / f"v{version}"
            os.rename(tmp, final)
            os.chmod(final, 0o555)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return SetVersion(name, version, final)


def selection_sql(recipe: str | None, where: str | None, sql: str | None) -> tuple[str, str, str | None]:
    """(SQL, kind, recipe name) from exactly one of --recipe, --where, --sql."""
    given = [(k, v) for k, v in (("recipe", recipe), ("where", where), ("sql", sql)) if v]
    if len(given) != 1:
        raise SetError("give exactly one of --recipe @NAME, --where CONDITION or --sql SELECT")
    kind, value = given[0]
    if kind == "recipe":
        text = recipe_sql(value)
        return (
            text,
            kind,
            value if value.endswith(".sql") and not value.startswith("@") else "@" + value.lstrip("@"),
        )
    if kind == "where":
        return f"SELECT * FROM clips WHERE {value}", kind, None
    return value, kind, None


# --------------------------------------------------------------------------------- media files
# A set row's file for a trainer, made once and cached in the workspace under data/ (atomic
# writes, so a killed export leaves no half file and a rerun reuses what is done).
IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}
KEPT_IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # exported as they are when no resize is asked


def _save_image(arr_or_img, path: Path, fmt: str) -> None:
    from io import BytesIO

    from PIL import Image

    from datakit.workspace import atomic_write_bytes

    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = BytesIO()
    img.convert("RGB").save(buf, IMAGE_FORMATS[fmt], **({"quality": 95} if fmt == "jpg" else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def frame_file(ws: Workspace, row: dict, short_side: int | None = None, fmt: str = "jpg") -> Path:
    """The set's chosen frame (`row["frame"]`, a source frame index) of a video row as an image file:
    data/frames/<video_id>/<clip_id>-f<frame>[-s<short side>].<fmt>, decoded once."""
    from mediaio import read_frames_at

    size = f"-s{short_side}" if short_side else ""
    path = (
        ws.root / "data" / "frames" / row["video_id"] / f"{row['clip_id']}-f{int(row['frame'])}{size}.{fmt}"
    )
    if not path.is_file():
        frames = read_frames_at(row["source_path"], [int(row["frame"])], size=short_side)
        if not len(frames):
            raise SetError(f"frame {row['frame']} of {row['source_path']} could not be decoded")
        _save_image(frames[0], path, fmt)
    return path


def image_file(ws: Workspace, row: dict, short_side: int | None = None, fmt: str = "jpg") -> Path:
    """An image row's file: the source itself when it is a JPEG/PNG and no resize is asked, else
    data/images/<clip_id>[-s<short side>].<fmt> (resized with the short side `short_side`, even sizes)."""
    from PIL import Image

    from mediaio.reader import even_size

    src = Path(row["source_path"])
    if not short_side and src.suffix.lower() in KEPT_IMAGE_EXTS:
        return src
    size = f"-s{short_side}" if short_side else ""
    path = ws.root / "data" / "images" / f"{row['clip_id']}{size}.{fmt}"
    if not path.is_file():
        with Image.open(src) as img:
            img = img.convert("RGB")
            if short_side:
                img = img.resize(even_size(*img.size, short_side), Image.Resampling.LANCZOS)
            _save_image(img, path, fmt)
    return path
