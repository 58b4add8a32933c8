"""Command-line entry point.

`python cli.py datakit <command>` (or the installed `datakit` script) drives the dataset toolkit;
`python cli.py sample ...` runs text-to-video sampling; `python cli.py demo` runs the end-to-end
demo on generated sample videos.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Open-Sora 1.0 datakit, models and trainer.")


def _register() -> None:
    from datakit.cli import app as datakit_app

    app.add_typer(datakit_app, name="datakit", help="Build, inspect and curate video manifests.")
    from datakit.demo import demo
    from models.sample_cli import sample

    app.command("sample", help="Text to video with an STDiT checkpoint, a VAE and a T5 encoder.")(sample)

    app.command("demo", help="End-to-end demo on generated sample videos.")(demo)


def main() -> None:
    _register()
    app()


def datakit_main() -> None:
    from datakit.cli import app as datakit_app

    datakit_app()


if __name__ == "__main__":
    main()
