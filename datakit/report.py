"""`datakit report`: one self-contained HTML page about the manifest (or one curated set).

- counts: sources by status, clips, images, what has been scored, captioned and deduplicated;
- histograms (matplotlib) of clip durations, short sides and each score;
- a contact sheet of the clips at aesthetic quantiles (lowest, quartiles, median, highest), each as
  its frames at 10/50/90 % of the span (the frames the aesthetic score reads);
- caption samples with their QA status and text match;
- for each recipe of manifests/recipes: how many clips it keeps and, for each top-level AND
  condition of its WHERE (split with DuckDB's own parser), how many clips fail it and how many it
  removes after the conditions before it.

Images are embedded as data URIs, so the page can be copied anywhere. The page itself is the
jinja2 template datakit/templates/report.html.j2.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np

from datakit.scoring import sql_str
from datakit.sets import RECIPES_DIR, resolve
from datakit.workspace import Workspace, atomic_write_bytes

QUANTILES = (("lowest", 0.0), ("25 %", 0.25), ("median", 0.5), ("75 %", 0.75), ("highest", 1.0))
METRICS = (
    ("duration_s", "clip duration (s)", None),
    ("short_side", "short side (px)", None),
    ("aesthetic", "aesthetic (LAION, 1-10)", "score aesthetic"),
    ("motion", "motion (short sides / s)", "score motion"),
    ("text_match", "text match (CLIP cosine)", "score match"),
)
_CLIP_COLUMNS = """c.clip_id, c.media_type, c.source_path, c.start_frame, c.end_frame, c.fps,
    c.num_frames / c.fps AS duration_s, least(c.width, c.height) AS short_side, c.aesthetic, c.motion, c.static,
    c.text_match, c.caption, c.caption_status, c.dup_group, c.dup_of,
    k.path AS cut_path, k.num_frames AS cut_frames, k.fps AS cut_fps"""


# ----------------------------------------------------------------------------------- pictures
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _histogram(values: list[float], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    ax.hist(values, bins=min(30, max(5, len(values) // 3)), color="#4a78b5", edgecolor="white")
    ax.set_title(f"{title}  (n={len(values)})", fontsize=9)
    ax.tick_params(labelsize=8)
    return _png(fig)


def _strip(row: dict) -> str:
    """The clip's frames at 10/50/90 % of its span, side by side, 96 px tall, as a JPEG data URI."""
    from PIL import Image

    from datakit.scoring import clip_file, frame_positions, read_frames_at

    path, start, end, _, _ = clip_file(row)
    frames = read_frames_at(path, sorted(set(frame_positions(start, end, [0.1, 0.5, 0.9]))), size=96)
    h = min(f.shape[0] for f in frames)
    strip = Image.fromarray(np.concatenate([f[:h] for f in frames], axis=1))
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------------- recipes
def recipe_conditions(con, sql: str) -> tuple[str, list[str]] | None:
    """(SELECT of one boolean column per top-level AND condition over the recipe's FROM, conditions).

    None when the recipe is not one SELECT with a WHERE clause."""
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error") or len(tree["statements"]) != 1:
        return None
    node = tree["statements"][0]["node"]
    where = node.get("where_clause")
    if node.get("type") != "SELECT_NODE" or where is None:
        return None
    parts = where["children"] if where.get("type") == "CONJUNCTION_AND" else [where]
    texts = []
    for part in parts:
        probe = {**node, "select_list": [part], "where_clause": None, "modifiers": [], "qualify": None}
        text = con.execute(
            "SELECT json_deserialize_sql(?)", [json.dumps({**tree, "statements": [{"node": probe}]})]
        )
        texts.append(text.fetchall()[0][0].split("SELECT ", 1)[1].split(" FROM ", 1)[0])
    columns = [{**p, "alias": f"c{i}"} for i, p in enumerate(parts)]
    select = {**node, "select_list": columns, "where_clause": None, "modifiers": [], "qualify": None}
    query = con.execute(
        "SELECT json_deserialize_sql(?)", [json.dumps({**tree, "statements": [{"node": select}]})]
    )
    return query.fetchall()[0][0], texts


def recipe_funnel(con, sql: str) -> dict:
    """Kept rows, rows considered, and per condition: rows failing it, rows it removes in order."""
    kept = con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
    split = recipe_conditions(con, sql)
    if split is None:
        return {"kept": kept, "total": None, "conditions": []}
    query, texts = split
    n = len(texts)
    fails = [f"count_if(c{i} IS NOT TRUE)" for i in range(n)]
    steps = [
        f"count_if({' AND '.join([f'coalesce(c{k}, false)' for k in range(i)] or ['true'])} AND c{i} IS NOT TRUE)"
        for i in range(n)
    ]
    counts = con.execute(f"SELECT count(*), {', '.join(fails + steps)} FROM ({query})").fetchall()[0]
    total = counts[0]
    conditions = [
        {"condition": t, "fail": counts[1 + i], "removed": counts[1 + n + i]} for i, t in enumerate(texts)
    ]
    return {"kept": kept, "total": total, "conditions": conditions}


# ----------------------------------------------------------------------------------- page
# The page is datakit/templates/report.html.j2 (jinja2, autoescaped); the functions below only
# gather its data. Other parts of the project add sections with `extra_sections`.
TEMPLATES = Path(__file__).with_name("templates")


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))


def _counts(ws: Workspace, clips: list[dict]) -> list[list]:
    sources = ws.sql("SELECT status, count(*) AS n FROM videos GROUP BY ALL ORDER BY status")
    rows = [["sources: " + r["status"], r["n"]] for r in sources]
    rows += [
        ["clips (video)", sum(c["media_type"] == "video" for c in clips)],
        ["clips (image)", sum(c["media_type"] == "image" for c in clips)],
    ]
    for col, label in (
        ("aesthetic", "aesthetic scored"),
        ("motion", "motion scored"),
        ("text_match", "text match scored"),
        ("caption", "captioned"),
        ("dup_group", "compared by dedup"),
    ):
        rows.append([label, sum(c[col] is not None for c in clips)])
    rows.append(["near-duplicates (dup_of set)", sum(c["dup_of"] is not None for c in clips)])
    return rows


def _cards(clips: list[dict]) -> list[dict]:
    scored = sorted(
        (c for c in clips if c["aesthetic"] is not None), key=lambda c: (c["aesthetic"], c["clip_id"])
    )
    cards = []
    for label, q in QUANTILES if scored else ():
        c = scored[round(q * (len(scored) - 1))]
        card = {"label": label, **{k: c[k] for k in ("clip_id", "aesthetic", "motion", "caption")}}
        try:
            card["strip"] = _strip(c)
        except Exception as exc:  # an unreadable source: say so in place of the frames
            card["error"] = str(exc)
        cards.append(card)
    return cards


def _captions(clips: list[dict], n: int = 8) -> list[list]:
    import hashlib

    sample = sorted(
        (c for c in clips if c["caption"]), key=lambda c: hashlib.md5(c["clip_id"].encode()).hexdigest()
    )[:n]
    return [[c["clip_id"], c["caption"], c["caption_status"], c["text_match"]] for c in sample]


def _recipes(ws: Workspace) -> list[dict]:
    out = []
    for path in sorted(RECIPES_DIR.glob("*.sql")):
        sql = path.read_text()
        try:
            funnel = ws.read(lambda con, sql=sql: recipe_funnel(con, sql), sandbox=True)
        except Exception as exc:  # a recipe that does not run: shown, never fatal to the report
            out.append({"name": path.stem, "error": str(exc)})
            continue
        rows = [[c["condition"], c["fail"], c["removed"]] for c in funnel["conditions"]]
        out.append({"name": path.stem, "kept": funnel["kept"], "total": funnel["total"], "conditions": rows})
    return out


def render(context: dict) -> str:
    """The report page for `context` (see write_report for its keys)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, keep_trailing_newline=True
    )
    env.filters["cell"] = _cell
    return env.get_template("report.html.j2").render({"extra_sections": [], **context})


def write_report(
    ws: Workspace, out: Path, *, set_spec: str | None = None, extra_sections: list[dict] | None = None
) -> Path:
    """Write the HTML report of the whole manifest, or of one set's rows; returns its path.

    extra_sections: more sections at the end, each {"title", optional "links": [{"href", "text"}],
    optional "headers" + "rows"} (text only: everything is escaped).
    """
    subject = "all clips"
    source = "clips"
    if set_spec:
        version = resolve(ws, set_spec)
        subject = f"set {version.name}@v{version.version} ({version.card['row_count']} rows)"
        source = (
            f"(SELECT * FROM clips SEMI JOIN read_parquet({sql_str(str(version.rows_path))}) USING (clip_id))"
        )
    cuts = "(SELECT clip_id, path, num_frames, fps FROM _latest_cuts WHERE status = 'ok')"
    clips = ws.sql(
        f"SELECT {_CLIP_COLUMNS} FROM {source} c LEFT JOIN {cuts} k USING (clip_id) ORDER BY clip_id"
    )
    histograms = []
    for col, title, stage in METRICS:
        values = [c[col] for c in clips if c[col] is not None]
        if values or stage:
            histograms.append(
                {"title": title, "stage": stage, "png": _histogram(values, title) if values else None}
            )
    page = render(
        {
            "subject": subject,
            "workspace": str(ws.root),
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
            "counts": _counts(ws, clips),
            "histograms": histograms,
            "cards": _cards(clips),
            "captions": _captions(clips),
            "recipes": _recipes(ws),
            "extra_sections": extra_sections or [],
        }
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return out
