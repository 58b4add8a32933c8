"""`opensora export-ckpt RUN --format opensora-pth`: a checkpoint of ours as Open-Sora 1.0's `.pth`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

FORMATS = ("opensora-pth",)


def export_ckpt(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder (its latest checkpoint), a checkpoints/step-N folder, or a .safetensors file of ours."
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="opensora-pth: Open-Sora 1.0's plain STDiT state dict.")
    ] = "opensora-pth",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: <RUN>/opensora.pth).")
    ] = None,
    ema: Annotated[bool, typer.Option(help="Export the EMA weights (--no-ema: the trained weights).")] = True,
) -> None:
    """Write a checkpoint for Open-Sora's own inference scripts (their STDiT-XL/2 loads it with strict key names)."""
    from models.checkpoint import CheckpointMismatchError
    from models.stdit import export_opensora_pth

    if fmt not in FORMATS:
        raise typer.BadParameter(
            f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", param_hint="--format"
        )
    target = output or (run if run.is_dir() else run.parent) / "opensora.pth"
    try:
        path = export_opensora_pth(run, target, use_ema=ema)
    except (FileNotFoundError, ValueError, CheckpointMismatchError, OSError) as exc:
        typer.echo(f"error: {exc}".splitlines()[0], err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {path} ({'EMA' if ema else 'trained'} weights, Open-Sora 1.0 .pth)")
