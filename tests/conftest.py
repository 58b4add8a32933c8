"""Shared fixtures: generated sample videos (nothing is downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="session")
def demo_samples(tmp_path_factory) -> list:
    """The demo's synthetic videos with their truth sidecars (session-wide, read-only)."""
    from demo.sample_videos import make_demo_set

    return make_demo_set(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    from demo.sample_videos import make_bad_inputs

    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DATAKIT_WORKSPACE", None)
    return env
