"""The CUDA vLLM recipe (scripts/setup_vllm_cuda.sh): its arguments and dry run, and that
`caption --engine vllm` finds the environment it builds. (Building it needs a GPU machine with
network; the CPU environment of scripts/setup_vllm.sh is exercised by tests/test_caption.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup_vllm_cuda.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_dry_run_installs_pypis_vllm_wheel_into_its_own_venv(tmp_path):
    venv = tmp_path / "cuda-env"
    out = run("--dry-run", "--venv", str(venv), "--version", "0.32.0")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert lines[0] == f"+ rm -rf {venv}" and f"-m venv {venv}" in lines[1]
    assert any(
        line.endswith("uv pip install --python " + f"{venv}/bin/python vllm==0.32.0") for line in lines
    )
    assert not venv.exists()  # a dry run changes nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument --bogus"),
        (["--version", "x; rm -rf /"], "bad --version"),
        (["--venv"], "usage"),
    ],
)
def test_bad_arguments_fail_in_one_line(args, message):
    out = run(*args)
    assert out.returncode != 0 and message in out.stderr and "+ " not in out.stdout


def test_caption_engine_vllm_finds_the_cuda_environment(tmp_path, monkeypatch):
    import datakit.captioning.vllm_server as vs
    from datakit.stages.caption import CaptionStage

    monkeypatch.delenv("DATAKIT_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(vs, "PROJECT_ROOT", tmp_path)
    cpu = tmp_path / ".venv-vllm" / "bin" / "python"
    cpu.parent.mkdir(parents=True)
    cpu.touch()
    assert CaptionStage(engine="vllm").vllm_python_path == cpu
    cuda = tmp_path / ".venv-vllm-cuda" / "bin" / "python"
    cuda.parent.mkdir(parents=True)
    cuda.touch()
    assert CaptionStage(engine="vllm").vllm_python_path == cuda  # preferred once built
    monkeypatch.setenv("DATAKIT_VLLM_PYTHON", str(cpu))
    assert CaptionStage(engine="vllm").vllm_python_path == cpu  # the variable still wins
