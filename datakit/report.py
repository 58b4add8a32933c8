"""`datakit report`: one self-contained HTML page about the manifest (or one curated set).

- counts: sources by status, clips, images, what has been scored, captioned and deduplicated;
- histograms (matplotlib) of clip durations, short sides and each score;
- a contact sheet of the clips at aesthetic quantiles (lowest, quartiles, median, highest), each as
  its frames at 10/50/90 % of the span (the frames the aesthetic score reads);
- caption samples with their QA status and text match;
- for each recipe of manifests/recipes: how many clips it keeps and, for each top-level AND
  condition of its WHERE (split with DuckDB's own parser), how many clips fail it and how many it
  removes after the conditions before it.

Images are embedded as data URIs, so the page can be copied anywhere.
"""

from __future__ import annotations

import base64
import html
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
        text = con.execute("SELECT json_deserialize_sql(?)", [json.dumps({**tree, "statements": [{"node": probe}]})])
        texts.append(text.fetchall()[0][0].split("SELECT ", 1)[1].split(" FROM ", 1)[0])
    columns = [{**p, "alias": f"c{i}"} for i, p in enumerate(parts)]
    select = {**node, "select_list": columns, "where_clause": None, "modifiers": [], "qualify": None}
    query = con.execute("SELECT json_deserialize_sql(?)", [json.dumps({**tree, "statements": [{"node": select}]})])
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
    steps = [f"count_if({' AND '.join([f'coalesce(c{k}, false)' for k in range(i)] or ['true'])} AND c{i} IS NOT TRUE)"
             for i in range(n)]  # fmt: skip
    counts = con.execute(f"SELECT count(*), {', '.join(fails + steps)} FROM ({query})").fetchall()[0]
    total = counts[0]
    conditions = [{"condition": t, "fail": counts[1 + i], "removed": counts[1 + n + i]} for i, t in enumerate(texts)]
    return {"kept": kept, "total": total, "conditions": conditions}


# ----------------------------------------------------------------------------------- page
def _esc(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(ws: Workspace, clips: list[dict]) -> str:
    sources = ws.sql("SELECT status, count(*) AS n FROM videos GROUP BY ALL ORDER BY status")
    rows = [["sources: " + r["status"], r["n"]] for r in sources]
    rows += [["clips (video)", sum(c["media_type"] == "video" for c in clips)],
             ["clips (image)", sum(c["media_type"] == "image" for c in clips)]]  # fmt: skip
    for col, label in (("aesthetic", "aesthetic scored"), ("motion", "motion scored"), ("text_match", "text match scored"),
                       ("caption", "captioned"), ("dup_group", "compared by dedup")):  # fmt: skip
        rows.append([label, sum(c[col] is not None for c in clips)])
    rows.append(["near-duplicates (dup_of set)", sum(c["dup_of"] is not None for c in clips)])
    return _table(["what", "count"], rows)


def _contact_sheet(clips: list[dict]) -> str:
    scored = sorted((c for c in clips if c["aesthetic"] is not None), key=lambda c: (c["aesthetic"], c["clip_id"]))
    if not scored:
        return "<p>No aesthetic scores yet (run <code>datakit score aesthetic</code>).</p>"
    cards = []
    for label, q in QUANTILES:
        c = scored[round(q * (len(scored) - 1))]
        try:
            img = f'<img src="{_strip(c)}" alt="{_esc(c["clip_id"])}">'
        except Exception as exc:  # an unreadable source: say so in place of the frames
            img = f"<p class=err>frames unreadable: {_esc(exc)}</p>"
        motion = "" if c["motion"] is None else f" · motion {c['motion']:.3f}"
        cards.append(f"<div class=card><b>{label}</b>: aesthetic {c['aesthetic']:.2f}{motion}<br>"
                     f"<code>{_esc(c['clip_id'])}</code><br>{img}<br><i>{_esc(c['caption'])}</i></div>")  # fmt: skip
    return "".join(cards)


def _captions(clips: list[dict], n: int = 8) -> str:
    import hashlib

    with_caption = [c for c in clips if c["caption"]]
    if not with_caption:
        return "<p>No captions yet (run <code>datakit caption</code>).</p>"
    sample = sorted(with_caption, key=lambda c: hashlib.md5(c["clip_id"].encode()).hexdigest())[:n]
    return _table(["clip", "caption", "QA", "text match"],
                  [[c["clip_id"], c["caption"], c["caption_status"], c["text_match"]] for c in sample])  # fmt: skip


def _recipes(ws: Workspace) -> str:
    out = []
    for path in sorted(RECIPES_DIR.glob("*.sql")):
        sql = path.read_text()
        try:
            funnel = ws.read(lambda con, sql=sql: recipe_funnel(con, sql), sandbox=True)
        except Exception as exc:  # a recipe that does not run: shown, never fatal to the report
            out.append(f"<h3>@{path.stem}</h3><p class=err>recipe failed: {_esc(exc)}</p>")
            continue
        total = "" if funnel["total"] is None else f" of {funnel['total']} rows considered"
        out.append(f"<h3>@{path.stem}: keeps {funnel['kept']}{total}</h3>")
        if funnel["conditions"]:
            rows = [[c["condition"], c["fail"], c["removed"]] for c in funnel["conditions"]]
            out.append(_table(["condition (top-level AND)", "rows failing it", "removed here (in order)"], rows))
    return "".join(out)


CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #ddd;padding:6px;font-size:13px;max-width:380px}
.card img{max-width:100%;height:auto}
.err{color:#b00}code{font-size:12px}"""


def write_report(ws: Workspace, out: Path, *, set_spec: str | None = None) -> Path:
    """Write the HTML report of the whole manifest, or of one set's rows; returns its path."""
    subject = "all clips"
    source = "clips"
    if set_spec:
        version = resolve(ws, set_spec)
        subject = f"set {version.name}@v{version.version} ({version.card['row_count']} rows)"
        source = f"(SELECT * FROM clips SEMI JOIN read_parquet({sql_str(str(version.rows_path))}) USING (clip_id))"
    cuts = "(SELECT clip_id, path, num_frames, fps FROM _latest_cuts WHERE status = 'ok')"
    clips = ws.sql(f"SELECT {_CLIP_COLUMNS} FROM {source} c LEFT JOIN {cuts} k USING (clip_id) ORDER BY clip_id")
    hists = []
    for col, title, stage in METRICS:
        values = [c[col] for c in clips if c[col] is not None]
        if values:
            hists.append(f'<img src="{_histogram(values, title)}" alt="{_esc(title)}">')
        elif stage:
            hists.append(f"<p>{_esc(title)}: not scored yet (<code>datakit {stage}</code>).</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>datakit report</title>
<style>{CSS}</style></head><body>
<h1>datakit report: {_esc(subject)}</h1>
<p>workspace <code>{_esc(ws.root)}</code>, written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>
<h2>Counts</h2>{_summary(ws, clips)}
<h2>Distributions</h2><div class=grid>{''.join(hists)}</div>
<h2>Clips at aesthetic quantiles</h2><p>Frames at 10, 50 and 90 % of each clip.</p><div class=grid>{_contact_sheet(clips)}</div>
<h2>Caption samples</h2>{_captions(clips)}
<h2>Recipes over the whole manifest</h2>{_recipes(ws)}
</body></html>"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return out
