"""The demo's curation chain: scores -> dedup -> (captions) -> text match -> curated sets -> report.

It runs on the demo workspace after ingest/probe/scenes/cut, with tiny RANDOM models built here (no
weights can be downloaded): a tiny open_clip ViT and an aesthetic head with the released layout.
Their numbers mean nothing; they run the same code as real weights. So that the recipes' thresholds
select something, the random head is rescaled on the demo clips' own CLIP embeddings (outputs about
5 +- 1.5): the first aesthetic pass stays in `aesthetic_scores` under its own model key, which also
shows how another model's scores are added rather than overwritten.

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


def _rescale_head(head_path: Path, ws: Workspace, out: Path) -> Path:
    """A copy of the head whose outputs over the workspace's clip embeddings have mean 5 and std 1.5."""
    import numpy as np
    import torch

    from datakit.clip_models import load_aesthetic_head

    blobs = [r["embedding"] for r in ws.sql("SELECT embedding FROM clip_embeddings")]
    x = torch.from_numpy(np.stack([np.frombuffer(b, "<f2") for b in blobs]).astype(np.float32))
    head = load_aesthetic_head(head_path)
    with torch.no_grad():
        y = head(x)
        std = float(y.std()) if len(y) > 1 and float(y.std()) > 0 else 1.0
        head.layers[7].weight.mul_(1.5 / std)
        head.layers[7].bias.add_(5.0 - float(head(x).mean()))
    torch.save(head.state_dict(), out)
    return out


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
    console.print(f"  tiny RANDOM CLIP ({config.name}) and aesthetic head: scores mean nothing", highlight=False)
    console.print(run_stage(ws, AestheticStage(**models, head=str(head)), progress=False).summary())
    scaled = _rescale_head(head, ws, tiny / "random-aesthetic-head-rescaled.pth")
    console.print("  random head rescaled on these clips' embeddings (about 5 +- 1.5); new model key:")
    console.print(run_stage(ws, AestheticStage(**models, head=str(scaled)), progress=False).summary())
    console.print(run_stage(ws, MotionStage(), progress=False).summary())
    console.print(run_stage(ws, DedupStage(), progress=False).summary())
    console.print("  (a random CLIP finds unrelated clips alike: expect false near-duplicates)", highlight=False)
    return models


def demo_sets_and_report(ws: Workspace, folder: Path, models: dict[str, str], *, console: Console) -> Path:
    """Text match (captioned clips), the three recipe sets, and the HTML report; returns the report."""
    from datakit.report import write_report
    from datakit.sets import recipe_sql, select
    from datakit.stages.match import TextMatchStage

    console.print(run_stage(ws, TextMatchStage(**models), progress=False).summary())
    for name, recipe in SETS:
        version = select(ws, name, recipe_sql(recipe), recipe=recipe, kind="recipe")
        console.print(f"  set {name}@v{version.version} ({recipe}): {version.card['row_count']} rows -> {version.path}",
                      highlight=False)  # fmt: skip
    report = write_report(ws, folder / "report.html")
    console.print(f"  report (histograms, contact sheet, captions, recipe counts): {report}", highlight=False)
    return report


def curation_demo(ws: Workspace, folder: Path, *, console: Console, caption: Callable[[], None] | None = None) -> Path:
    """The whole chain; `caption` (optional) captions the clips between dedup and the text match."""
    models = demo_scores(ws, folder, console=console)
    if caption is not None:
        caption()
    return demo_sets_and_report(ws, folder, models, console=console)
