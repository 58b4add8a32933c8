"""``python cli.py train``: registered by the top-level cli.py as ``app.command("train")(train)``.

No ``from __future__ import annotations`` here: typer reads the annotations at runtime.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer


def train(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Config overrides as key=value, e.g. optim.lr=1e-4 data.batch_size=4."),
    ] = None,
    stage: Annotated[str | None, typer.Option(help="image | video | hq (not needed with --resume).")] = None,
    set_spec: Annotated[
        str | None, typer.Option("--set", help="Curated set NAME or NAME@vN (latest version by default).")
    ] = None,
    select: Annotated[
        str | None, typer.Option(help='SQL over the workspace views, e.g. "select * from clips".')
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", "-w", help="datakit workspace (default $DATAKIT_WORKSPACE or ./workspace)."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML or JSON file with model/data/optim/train sections.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default runs/<stage>-<time>).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    ckpt_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (and at the end).")] = None,
    preset: Annotated[
        str | None, typer.Option(help="'tiny': tiny random VAE/T5/STDiT built locally, CPU-sized stages.")
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(help="Start from a previous run folder (its EMA) or PixArt-α/Open-Sora weights."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --run-dir from its last checkpoint (start it if there is none)."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary (run folder, steps) at the end.")
    ] = False,
) -> None:
    """Train STDiT on a curated set or a SQL selection (one stage of Open-Sora 1.0's recipe).

    Exit status: 0 done, 1 the run failed (data, checkpoint, non-finite loss), 2 bad options.

    Multi-process: torchrun --nproc_per_node N cli.py train ... (see README, Training).
    """
    from datakit.workspace import default_workspace

    from .config import ConfigError, resolve_config
    from .errors import RunError
    from .run import Source, launch
    from .selection import SelectionError

    flags: dict = {"train": {}, "model": {}}
    if max_steps is not None:
        flags["train"]["max_steps"] = max_steps
    if ckpt_every is not None:
        flags["train"]["ckpt_every"] = ckpt_every
    if init_from is not None:
        flags["model"]["init_from"] = init_from
    try:
        if preset not in (None, "tiny"):
            raise ConfigError(f"--preset: unknown preset {preset!r} (only 'tiny')")
        cfg = source = None
        if stage is not None:
            cfg = resolve_config(
                stage, tiny=preset == "tiny", config_file=config, overrides=overrides, extra=flags
            )
        elif not resume or config or overrides or preset or init_from:
            raise ConfigError("give --stage image|video|hq")
        if set_spec is not None and select is not None:
            raise ConfigError("give one of --set NAME[@vN] and --select SQL, not both")
        if set_spec is not None or select is not None:
            source = Source(workspace or default_workspace(), set_spec=set_spec, select=select)
        folder = launch(cfg, run_dir=run_dir, source=source, resume=resume, resume_overrides=flags["train"])
        if as_json and os.environ.get("RANK", "0") == "0":  # the last metrics row and where the run is
            import json

            metrics = Path(folder) / "metrics.jsonl"
            rows = metrics.read_text().splitlines() if metrics.exists() else []
            typer.echo(json.dumps({"run_dir": str(folder), "last": json.loads(rows[-1]) if rows else None}))
    except (ConfigError, SelectionError, RunError, FileExistsError, FileNotFoundError) as err:
        rank = os.environ.get("RANK", "0")
        if rank == "0":
            typer.echo(f"error: {err}", err=True)
        sys.stderr.flush()
        # 2: bad options, as the stages. sys.exit, not typer.Exit: the top-level click group
        # does not know typer's own Exit (typer >= 0.26 vendors click) and would print a traceback
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    finally:
        from .dist import shutdown

        shutdown()
