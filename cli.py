"""Command-line entry point.

`python cli.py datakit <command>` (or the installed `datakit` script) drives the dataset toolkit;
`python cli.py sample ...` runs text-to-video sampling; `python cli.py train ...` trains STDiT;
`python cli.py demo` runs the end-to-end demo on generated sample videos.

Plain click with lazily loaded commands: a command's module (and typer, torch, ...) is imported
only when that command runs or `--help` lists it, so `datakit status` starts fast.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute, help). The attribute is a typer-annotated function (wrapped with
# typer when loaded), or a function returning a click command (`datakit`).
LAZY: dict[str, tuple[str, str, str]] = {
    "datakit": (
        "cli",
        "datakit_group",
        "Build, inspect and curate video manifests (ingest, scenes, scores, sets, export).",
    ),
    "sample": (
        "models.sample_cli",
        "sample",
        "Text to video with an STDiT checkpoint, a VAE and a T5 encoder.",
    ),
    "train": (
        "training.cli",
        "train",
        "Train STDiT on a curated set or a SQL selection (image, video or hq stage).",
    ),
    "demo": ("demo.run", "demo", "End-to-end demo on generated sample videos."),
    "export-ckpt": (
        "models.export_ckpt",
        "export_ckpt",
        "Write a checkpoint of ours as Open-Sora 1.0's .pth (EMA weights by default).",
    ),
}


def _load(name: str, module: str, attr: str, help_text: str) -> click.Command:
    obj = getattr(importlib.import_module(module), attr)
    if name == "datakit":
        return obj()

    def build():
        import typer

        app = typer.Typer(add_completion=False)
        app.command(name, help=help_text)(obj)
        return typer.main.get_command(app)

    return foreign_command(name, build, help_text)


def foreign_command(name: str, build, help_text: str) -> click.Command:
    """A click command that hands its arguments to a command of another click (typer vendors its
    own click, whose exceptions this click does not know), built by `build()` when run."""

    @click.command(
        name,
        help=help_text,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def command(ctx: click.Context, args: tuple[str, ...]) -> None:
        build().main(args=list(args), prog_name=ctx.command_path)

    return command


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY:
            self.commands[name] = _load(name, *LAZY[name])
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the lazy commands with their help text, without importing them."""
        rows = [
            (name, LAZY[name][2] if name in LAZY else self.commands[name].get_short_help_str(90))
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
def app() -> None:
    """Open-Sora 1.0 datakit, models and trainer."""


def datakit_group() -> click.Group:
    """datakit's commands plus `samples` (the sample generator lives above datakit, in demo/)."""
    from datakit.cli import main_group

    group = main_group()
    group.lazy["samples"] = (
        _samples,
        "Generate synthetic sample videos with known cuts, each with its truth.",
    )
    return group


def _samples() -> click.Command:
    from demo.cli import samples_command

    return foreign_command(
        "samples", samples_command, "Generate synthetic sample videos with known cuts, each with its truth."
    )


def main() -> None:
    app(prog_name="cli.py")


def datakit_main() -> None:
    datakit_group()(prog_name="datakit")


if __name__ == "__main__":
    main()
