"""The demo's training part: a VAE, then image → video → hq STDiT on the three curated sets, each
on 2 CPU cores in minutes, and the checks that they learned:

- the VAE's PSNR on frames of held-out clips;
- each stage's validation loss, first measurement against last;
- for the captions of 4 training clips of the hq run with distinct background colours, whether the
  video sampled from each caption is nearest in mean colour to its own clip (chance: 1 in 4).

The text encoder stays a tiny RANDOM T5 (labelled as such): STDiT learns to read its embeddings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

RES = 32  # pixels: the shots are flat colours and a ball, and 2 cores train in minutes at this size
STAGES = (  # (stage, frames, steps)
    ("image", 1, 240),
    ("video", 4, 160),
    ("hq", 4, 160),
)
VAE_STEPS = 600
CHECK = "learned_prompts.json"


def _val_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["val_loss"] for r in map(json.loads, lines) if r.get("val_loss") is not None]


def vae_config(scale: float = 1.0):
    """The demo's VaeConfig (`scale` multiplies its steps)."""
    from training.vae_train import VaeConfig

    steps = max(10, round(VAE_STEPS * scale))
    return VaeConfig(
        resolution=RES, crop=None, batch_size=16, lr=4e-3, steps=steps, val_every=max(5, steps // 4)
    )


def stage_overrides(stage: str, frames: int, steps: int, runs: Path, previous: Path | None) -> list[str]:
    every = max(1, steps // 4)
    out = [
        f"model.tiny_dir={runs / 'tiny-random-models'}",
        f"model.vae={runs / 'vae'}",
        "model.model_max_length=64",
        "model.grad_checkpointing=false",
        f"data.resolution=[{RES}]",
        f"data.num_frames=[{frames}]",
        "data.frame_interval=3",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.aspect_ratios=['1:1']",
        f"train.max_steps={steps}",
        f"train.val_every={every}",
        f"train.ckpt_every={steps}",
        "train.ema_decay=0.95",
        "train.progress=false",
        f"optim.lr={2e-3 if stage == 'image' else 1e-3}",
    ]
    return out + ([f"model.init_from={previous}"] if previous else [])


def train_and_check(ws, workspace: Path, timer, console, *, scale: float = 1.0) -> dict[str, Any]:
    from training.config import resolve_config
    from training.dist import shutdown
    from training.plots import loss_curve
    from training.run import Source, launch
    from training.selection import read_set
    from training.vae_train import train_vae

    runs, out = workspace / "runs", {}
    console.rule("[bold]6. training: VAE, then image → video → hq STDiT on the curated sets (2 CPU cores)")
    with timer.part("train vae"):
        table, card = read_set(ws.root, "image")
        vae = train_vae(table.to_pylist(), card, runs / "vae", vae_config(scale))
    out["vae"] = vae
    console.print(
        f"  vae   AutoencoderKL x4 on {vae['train_frames']} frames of set image: held-out PSNR "
        f"{vae['val_psnr']:.1f} dB, val loss {vae['val_loss'][0]:.4f} → {vae['val_loss'][1]:.4f}  "
        f"({runs / 'vae'})",
        highlight=False,
    )
    previous, out["stages"] = None, {}
    for stage, frames, steps in STAGES:
        run_dir = runs / stage
        steps = max(4, round(steps * scale))
        with timer.part(f"train {stage}"):
            overrides = stage_overrides(stage, frames, steps, runs, previous)
            try:  # resume=True: a second demo run finds the finished runs and does nothing
                launch(
                    resolve_config(stage, tiny=True, overrides=overrides),
                    run_dir=run_dir,
                    source=Source(ws.root, set_spec=stage),
                    resume=True,
                )
            finally:
                shutdown()
        loss_curve(run_dir, f"{stage} stage (STDiT, tiny; random T5)")
        val = _val_losses(run_dir)
        out["stages"][stage] = {"steps": steps, "val_loss": val}
        shown = " → ".join(f"{v:.3f}" for v in val)
        console.print(
            f"  {stage:<5} {steps} steps on set {stage}: val loss {shown}  ({run_dir})", highlight=False
        )
        previous = run_dir
    with timer.part("sample + learned-prompt check"):
        out["prompts"] = prompt_check(runs / "hq", workspace / "samples-hq")
    hits = sum(p["nearest_own"] for p in out["prompts"])
    out["prompts_nearest_own"] = hits
    console.print(
        f"  learned prompts: {hits}/{len(out['prompts'])} prompts nearest their own clip's colour "
        "(chance: 1 in 4)",
        highlight=False,
    )
    for p in out["prompts"]:
        console.print(
            f"    {'✓' if p['nearest_own'] else '✗'} {p['caption']!r}: sampled mean RGB {p['sampled_rgb']}, "
            f"clip {p['clip_rgb']} -> {p['mp4']}",
            highlight=False,
        )
    (workspace / CHECK).write_text(json.dumps(out, indent=2) + "\n")
    _report(ws, workspace, runs)
    console.print(
        f"  sample it yourself, from any folder: python cli.py sample --ckpt {runs / 'hq'} "
        f'--prompt "{out["prompts"][0]["caption"]}" --height {RES} --width {RES} --num-frames 4',
        highlight=False,
    )
    return out


def _clip_rgb(row: dict[str, Any]) -> np.ndarray:
    """Mean RGB of a clip's frames as the trainer sees them (resized to RES)."""
    from training.data import decode_frames, resize_crop
    from training.selection import media_path

    path, is_cut = media_path(row, "source")
    start, end = int(row["start_frame"]), int(row["end_frame"])
    idx = [int(i) - (start if is_cut else 0) for i in np.linspace(start, end - 1, 6).round()]
    return np.mean([resize_crop(f, RES, RES).mean((0, 1)) for f in decode_frames(path, idx)], axis=0)


def prompt_check(run_dir: Path, out_dir: Path, n: int = 4) -> list[dict[str, Any]]:
    """Sample the captions of `n` training clips with distinct background colours from the run;
    is each sample nearest in mean colour to its own clip?"""
    from models.pipeline import TextToVideoPipeline, save_mp4
    from models.run_models import run_models
    from training.selection import load_frozen, split_validation

    rows, _ = load_frozen(run_dir)
    cfg = json.loads((run_dir / "train_config.json").read_text())
    from training.config import from_dict

    train_rows, _ = split_validation(rows, from_dict(cfg).data)
    picked, colours = [], set()
    for row in train_rows:
        m = re.search(r"over an? (\w+) background", row.get("caption") or "")
        if m and m.group(1) not in colours:
            colours.add(m.group(1))
            picked.append(row)
    picked = picked[:n]
    models = run_models(run_dir)
    pipe = TextToVideoPipeline.from_paths(
        str(run_dir),
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        num_frames=4,
        height=RES,
        width=RES,
        steps=50,
        cfg_scale=4.0,
        device="cpu",
        dtype="fp32",
        local_files_only=True,
    )
    videos = pipe([r["caption"] for r in picked], seed=0, progress=False)
    clip_rgb = np.stack([_clip_rgb(r) for r in picked])
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for k, (row, video) in enumerate(zip(picked, videos, strict=True)):
        rgb = video.reshape(-1, 3).mean(0)
        nearest = int(np.argmin(np.linalg.norm(clip_rgb - rgb, axis=1)))
        mp4 = save_mp4(video, out_dir / f"{k:02d}.mp4", fps=4)
        results.append(
            {
                "clip_id": row["clip_id"],
                "caption": row["caption"],
                "nearest_own": nearest == k,
                "sampled_rgb": [round(float(v)) for v in rgb],
                "clip_rgb": [round(float(v)) for v in clip_rgb[k]],
                "mp4": str(mp4),
            }
        )
    return results


def _report(ws, workspace: Path, runs: Path) -> None:
    """The report again, now with each run's loss curve linked."""
    from datakit.report import write_report

    out = workspace / "curation" / "report.html"
    links = [
        {"href": str(Path("..") / "runs" / r / "loss.png"), "text": f"{r}: loss curve (loss.png)"}
        for r in ("vae", *(s for s, _, _ in STAGES))
        if (runs / r / "loss.png").is_file()
    ]
    sections = [{"title": "Training runs", "links": links}]
    top = ws.sql(
        "SELECT clip_id, round(train_loss, 4) AS train_loss, caption FROM clips "
        "WHERE train_loss IS NOT NULL ORDER BY train_loss DESC LIMIT 6"
    )
    if top:
        from datakit.preview import contact_sheet

        ids = ", ".join(f"'{r['clip_id']}'" for r in top)
        sheet = contact_sheet(
            ws,
            out.parent / "highest_loss_clips.png",
            f"SELECT * FROM clips WHERE clip_id IN ({ids}) ORDER BY train_loss DESC",
            len(top),
        )
        sections.append(
            {
                "title": "Clips the last run fits worst (clips.train_loss, highest first)",
                "links": [{"href": sheet.name, "text": "their frames (first, middle, last)"}],
                "headers": ["clip_id", "train_loss", "caption"],
                "rows": [[r["clip_id"], r["train_loss"], r["caption"]] for r in top],
            }
        )
    write_report(ws, out, extra_sections=sections)
