"""`datakit samples`: provided by the top-level CLI (the sample generator stands above datakit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console(highlight=False)


def samples(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the synthetic sample videos.")] = Path(
        "samples"
    ),
    bad: Annotated[
        bool, typer.Option(help="Also write a gallery of bad inputs (empty, corrupt, ...).")
    ] = False,
    transitions: Annotated[
        bool, typer.Option(help="Also write short shots and dissolves of several lengths.")
    ] = True,
    shots: Annotated[
        bool,
        typer.Option(help="Also write captioned shots and their Panda-70M-style table (shots/meta.csv)."),
    ] = True,
) -> None:
    """Generate synthetic sample videos with known cuts (several codecs and sizes), each with its truth;
    and captioned shots with a Panda-70M-style metadata table (`datakit ingest shots/meta.csv --format panda70m`)."""
    from demo.sample_videos import make_bad_inputs, make_demo_set, make_learnable_set, make_transition_set

    truths = make_demo_set(out_dir) + (make_transition_set(out_dir / "transitions") if transitions else [])
    for truth in truths:
        out.print(
            f"{truth.path}: {truth.num_frames} frames, cuts {truth.hard_cuts}, dissolves {truth.dissolves}"
        )
    if shots:
        out.print(f"{make_learnable_set(out_dir / 'shots')}: shots with true captions (Panda-70M columns)")
    if bad:
        for name, path in make_bad_inputs(out_dir / "bad").items():
            out.print(f"bad input {name}: {path}")


def samples_command():
    """The click command for `datakit samples`."""
    app = typer.Typer(add_completion=False)
    app.command()(samples)
    return typer.main.get_command(app)
