"""Multi-node training on one machine: the README's multi-node torchrun line, run as two "nodes"
on localhost (c10d rendezvous, one process each, gloo), logs the same per-step losses as
`--standalone --nproc_per_node 2` on one node."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, cli_env
from tests.test_train_guards import BASE, one_set, video  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(600)


def readme_multinode_flags() -> list[str]:
    """The torchrun flags of the README's multi-node command (the line with --nnodes)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^torchrun (--nnodes .*?) \\\n\s+(.*?)cli\.py train", text, re.M)
    assert match, "README: no multi-node torchrun command"
    return shlex.split(f"{match.group(1)} {match.group(2)}")


def set_flag(flags: list[str], name: str, value: str) -> list[str]:
    i = flags.index(name)
    return [*flags[: i + 1], value, *flags[i + 2 :]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_args(ws: Path, run_dir: Path) -> list[str]:
    return [
        str(ROOT / "cli.py"),
        "train",
        "--stage",
        "image",
        "--preset",
        "tiny",
        "-w",
        str(ws),
        "--set",
        "one",
        "--run-dir",
        str(run_dir),
        f"model.tiny_dir={run_dir.parent / 'tiny'}",
        *BASE,
        "--max-steps",
        "3",
        "data.batch_size=1",
    ]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_nodes_on_localhost_match_two_processes_on_one_node(tmp_path, video):  # noqa: F811
    ws = one_set(tmp_path / "ws", video, n=4)
    torchrun = [PYTHON, "-m", "torch.distributed.run"]
    # build the tiny random models once, so neither launch races the other to write them
    from training.build import ensure_tiny_models

    ensure_tiny_models(tmp_path / "tiny")

    one = tmp_path / "one-node"
    proc = subprocess.run(
        [*torchrun, "--standalone", "--nproc_per_node", "2", *train_args(ws, one)],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    flags = readme_multinode_flags()
    assert flags[flags.index("--rdzv-backend") + 1] == "c10d"
    flags = set_flag(set_flag(flags, "--nnodes", "2"), "--nproc_per_node", "1")
    flags = set_flag(set_flag(flags, "--rdzv-endpoint", f"localhost:{free_port()}"), "--rdzv-id", "test")
    two = tmp_path / "two-nodes"
    logs = [(tmp_path / f"node{n}.log").open("w") for n in (0, 1)]
    nodes = [
        subprocess.Popen(
            [*torchrun, *set_flag(flags, "--node_rank", str(n)), *train_args(ws, two)],
            env=cli_env(),
            stdout=logs[n],
            stderr=subprocess.STDOUT,
        )
        for n in (0, 1)
    ]
    codes = [node.wait(timeout=500) for node in nodes]
    assert codes == [0, 0], "\n".join((tmp_path / f"node{n}.log").read_text()[-2000:] for n in (0, 1))

    want, got = metrics(one), metrics(two)
    assert [r["step"] for r in got] == [1, 2, 3]
    for key in ("loss", "grad_norm", "lr", "bucket"):
        assert [r[key] for r in got] == [r[key] for r in want], key
    launch = json.loads((two / "run.json").read_text())["launches"][0]
    assert (launch["world_size"], launch["backend"]) == (2, "gloo")
