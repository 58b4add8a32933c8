"""Command-line entry point.

`python cli.py datakit <command>` (or the installed `datakit` script) drives the dataset toolkit;
`python cli.py sample ...` runs text-to-video sampling; `python cli.py demo` runs the end-to-end
demo on generated sample videos.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Open-Sora 1.0 datakit, models and trainer.")


def _register() -> None:
    from demo.run import demo
    from models.sample_cli import sample

    app.command("sample", help="Text to video with an STDiT checkpoint, a VAE and a T5 encoder.")(sample)

    app.command("demo", help="End-to-end demo on generated sample videos.")(demo)

    from training.cli import train

    app.command("train", help="Train STDiT on a curated set or a SQL selection (image, video or hq stage).")(train)


def main() -> None:
    _register()
    group = typer.main.get_command(app)
    group.add_command(_datakit_group(), "datakit")
    group()


def _datakit_group():
    """datakit's commands plus `samples` (the sample generator lives above datakit, in demo/)."""
    from datakit.cli import main_group
    from demo.cli import samples_command

    group = main_group()
    group.add_command(samples_command(), "samples")
    return group


def datakit_main() -> None:
    _datakit_group()()


if __name__ == "__main__":
    main()
