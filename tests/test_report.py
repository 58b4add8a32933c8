"""`datakit report`: the recipe funnel, and the page rendered in headless Chromium with every image loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from datakit.executors import run_stage
from datakit.ingest import ingest
from datakit.report import recipe_funnel, write_report
from datakit.sets import recipe_sql, select
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace
from tests.curation_fixtures import GOOD, curated_manifest, small_videos, write_scores

# Marks the page's title with how many images finished loading with real pixels.
PROBE_SCRIPT = """<script>window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.title = 'IMAGES ' + ok + '/' + imgs.length;
});</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed: apt-get install -y chromium"
    return found


def test_recipe_funnel_counts_what_each_condition_removes(tmp_path):
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)
    funnel = ws.read(lambda con: recipe_funnel(con, recipe_sql("video")), sandbox=True)
    assert (funnel["kept"], funnel["total"]) == (5, 13)
    got = {c["condition"]: (c["fail"], c["removed"]) for c in funnel["conditions"]}
    assert got == {
        "(media_type = 'video')": (0, 0),
        "((end_s - start_s) BETWEEN 2 AND 15)": (2, 2),  # short, long
        "(aesthetic >= COALESCE(getvariable('video_min_aesthetic'), 4.5))": (
            2,
            2,
        ),  # ugly, unscored (a recipe parameter)
        "(static = false)": (1, 1),  # still
        "(caption_status = 'ok')": (1, 1),  # refused
        "(dup_group IS NOT NULL)": (1, 1),  # undeduped
        "(dup_of IS NULL)": (1, 1),  # copy
    }
    assert funnel["kept"] == funnel["total"] - sum(c["removed"] for c in funnel["conditions"])


def test_recipe_funnel_of_a_query_without_where_only_counts(tmp_path):
    con = duckdb.connect()
    con.execute("CREATE TABLE clips AS SELECT range AS clip_id FROM range(7)")
    assert recipe_funnel(con, "SELECT * FROM clips LIMIT 3") == {"kept": 3, "total": None, "conditions": []}


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Workspace, Path]:
    root = tmp_path_factory.mktemp("report")
    small_videos(root / "media", 3)
    Image.new("RGB", (80, 60), (20, 120, 200)).save(root / "media" / "sky.png")
    ws = Workspace(root / "ws")
    ingest(ws, [str(root / "media")])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    clips = [c["clip_id"] for c in ws.sql("SELECT clip_id FROM clips ORDER BY clip_id")]
    write_scores(
        ws,
        {
            cid: {
                **GOOD,
                "aesthetic": 3.0 + i,
                "motion": 0.1 * i,
                "caption": f"clip <{i}> & more",
                "dup_group": cid,
            }
            for i, cid in enumerate(clips)
        },
    )
    return ws, write_report(ws, root / "report.html")


def test_report_renders_in_chromium_with_every_image_loaded(reported, tmp_path):
    ws, page = reported
    text = page.read_text()
    n_images = len(re.findall(r"<img ", text))
    assert n_images == 5 + 5  # duration, short side, aesthetic, motion, text match; 5 quantile strips
    assert "clip &lt;0&gt; &amp; more" in text  # captions are escaped
    for recipe in ("@video", "@hq", "@image"):
        assert f"<h3>{recipe}: keeps " in text

    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE_SCRIPT + "</body>"))
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*browser, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert f"<title>IMAGES {n_images}/{n_images}</title>" in dom

    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 1000, "the screenshot is (nearly) blank"


def test_report_of_a_set_covers_its_rows_only(reported, tmp_path):
    ws, _ = reported
    select(ws, "top", "SELECT * FROM clips WHERE aesthetic >= 5 ORDER BY clip_id")
    text = write_report(ws, tmp_path / "top.html", set_spec="top").read_text()
    n = len(ws.sql("SELECT * FROM clips WHERE aesthetic >= 5"))
    assert f"set top@v1 ({n} rows)" in text and f"<td>aesthetic scored</td><td>{n}</td>" in text
    assert "<td>aesthetic scored</td><td>7</td>" in write_report(ws, tmp_path / "all.html").read_text()


def test_the_page_is_a_template_that_escapes_every_value_and_takes_extra_sections(tmp_path):
    ws = Workspace(tmp_path / "ws")
    curated_manifest(ws)
    write_scores(ws, {"good": {**GOOD, "caption": "<script>alert(1)</script> & more"}}, key="xss")
    extra = [
        {
            "title": "Training <run>",
            "links": [{"href": "loss.png", "text": "loss curve"}],
            "headers": ["clip", "loss"],
            "rows": [["good", 0.5], ["<b>x</b>", None]],
        }
    ]
    page = write_report(ws, tmp_path / "r.html", extra_sections=extra).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "<h2>Training &lt;run&gt;</h2>" in page and '<a href="loss.png">loss curve</a>' in page
    assert "<td>0.500</td>" in page and "<td>&lt;b&gt;x&lt;/b&gt;</td>" in page
    assert (Path(__file__).parents[1] / "datakit" / "templates" / "report.html.j2").is_file()
