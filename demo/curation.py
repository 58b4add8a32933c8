"""The demo's curation chain: scores -> dedup -> (captions) -> text match -> curated sets -> report.

It runs on the demo workspace after ingest/probe/scenes/cut, with tiny RANDOM models built here (no
weights can be downloaded): a tiny open_clip ViT and an aesthetic head with the released layout.
Their numbers mean nothing; they run the same code as real weights. The recipes' thresholds for
those scores are meant for the LAION predictor and ViT-L/14, so the demo sets the recipes'
parameters (`image_min_aesthetic`, ..., `hq_min_text_match`) to the lowest decile of the random
scores, and prints them as such; every other condition (duration, motion, static, caption QA,
near-duplicates) is the recipe's own.

`demo.run` calls `curation_demo(ws, folder, console=..., caption=...)`, where `caption` runs
the captioning step between dedup and the text match.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from datakit.executors import run_stage
from datakit.workspace import Workspace

SETS = (("image", "@image"), ("video", "@video"), ("hq", "@hq"))


def demo_scores(ws: Workspace, folder: Path, *, console: Console) -> dict[str, str]:
    """Aesthetic (tiny random CLIP + head), motion and dedup; returns the tiny model paths."""
    from datakit.clip_models import save_tiny_aesthetic_head, save_tiny_clip
    from datakit.stages.aesthetic import AestheticStage
    from datakit.stages.dedup import DedupStage
    from datakit.stages.motion import MotionStage

    tiny = folder / "tiny-random-models"
    config, weights = save_tiny_clip(tiny)
    models = {"model": str(config), "pretrained": str(weights)}
    head = save_tiny_aesthetic_head(tiny / "random-aesthetic-head.pth")
    console.print(
        f"  tiny RANDOM CLIP ({config.name}) and aesthetic head: scores mean nothing", highlight=False
    )
    console.print(run_stage(ws, AestheticStage(**models, head=str(head)), progress=False).summary())
    console.print(run_stage(ws, MotionStage(), progress=False).summary())
    threshold = random_dedup_threshold(ws)
    console.print(
        f"  near-duplicate threshold for the RANDOM CLIP: cosine >= {threshold:.4f} (the 99th percentile of "
        "its pairwise similarities; 0.98 is for real CLIP weights, which a random CLIP exceeds for unrelated "
        "clips)",
        highlight=False,
    )
    console.print(run_stage(ws, DedupStage(threshold=threshold), progress=False).summary())
    return models


def random_dedup_threshold(ws: Workspace) -> float:
    """The 99th percentile of the pairwise cosine similarities of the clips' (random) CLIP embeddings."""
    import numpy as np

    blobs = [r["embedding"] for r in ws.sql("SELECT embedding FROM clip_embeddings")]
    if len(blobs) < 2:
        return 0.98
    x = np.stack([np.frombuffer(b, "<f2") for b in blobs]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = (x @ x.T)[np.triu_indices(len(x), 1)]
    return float(min(0.9999, np.quantile(sims, 0.99)))


def random_score_params(ws: Workspace) -> dict[str, float]:
    """Recipe parameters for scores of random models: the lowest decile of each score over the
    video clips (the recipes' own numbers are for real weights)."""
    row = ws.sql(
        "SELECT quantile_cont(aesthetic, 0.1) AS a, quantile_cont(text_match, 0.1) AS t "
        "FROM clips WHERE media_type = 'video'"
    )[0]
    a, t = float(row["a"] or 0.0), float(row["t"] or 0.0)
    return {"image_min_aesthetic": a, "video_min_aesthetic": a, "hq_min_aesthetic": a, "hq_min_text_match": t}


def demo_sets_and_report(ws: Workspace, folder: Path, models: dict[str, str], *, console: Console) -> Path:
    """Text match (captioned clips), the three recipe sets, and the HTML report; returns the report."""
    from datakit.report import write_report
    from datakit.sets import recipe_sql, select
    from datakit.stages.match import TextMatchStage

    console.print(run_stage(ws, TextMatchStage(**models), progress=False).summary())
    params = random_score_params(ws)
    shown = ", ".join(f"{k}={v:.3f}" for k, v in params.items())
    console.print(
        f"  recipe parameters for the RANDOM scorers (lowest decile of their scores): {shown}",
        highlight=False,
    )
    for name, recipe in SETS:
        version = select(ws, name, recipe_sql(recipe), recipe=recipe, kind="recipe", params=params)
        console.print(
            f"  set {name}@v{version.version} ({recipe}): {version.card['row_count']} rows -> {version.path}",
            highlight=False,
        )
    report = write_report(ws, folder / "report.html")
    console.print(f"  report (histograms, contact sheet, captions, recipe counts): {report}", highlight=False)
    return report


def curation_demo(
    ws: Workspace, folder: Path, *, console: Console, caption: Callable[[], None] | None = None
) -> Path:
    """The whole chain; `caption` (optional) captions the clips between dedup and the text match."""
    models = demo_scores(ws, folder, console=console)
    if caption is not None:
        caption()
    return demo_sets_and_report(ws, folder, models, console=console)
