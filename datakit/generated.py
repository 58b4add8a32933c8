"""The generated files of a source checkout, rewritten from the stages' declarations.

    python -m datakit.generated     # manifests/SCHEMA.md and datakit/defaults.toml

Tests fail when either is stale. This module sits above `schema` and `pipeline` (which it
renders), so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from datakit.pipeline import render_default_config
from datakit.schema import render_markdown

ROOT = Path(__file__).resolve().parents[1]


def generated() -> dict[Path, str]:
    """What each generated file should hold, by path."""
    return {
        ROOT / "manifests" / "SCHEMA.md": render_markdown(),
        ROOT / "datakit" / "defaults.toml": render_default_config(),
    }


def main() -> None:
    for path, text in generated().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
