"""The loss-curve PNG of a run folder (`loss.png`), from its `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

LOSS_PNG = "loss.png"


def loss_curve(run_dir: Path, title: str | None = None) -> Path | None:
    """Training loss (and its running mean) and validation loss by step; None without metrics."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    train, val = [], []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("loss") is not None:
            train.append((r["step"], r["loss"]))
        if r.get("val_loss") is not None:
            val.append((r["step"], r["val_loss"]))
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, lw=0.6, alpha=0.4, label="train loss")
        k = max(1, len(losses) // 20)
        mean = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, mean, lw=1.5, label=f"train loss (mean of {k})")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", lw=1.5, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title or run_dir.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / LOSS_PNG
    fig.savefig(out)
    plt.close(fig)
    return out
