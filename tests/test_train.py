"""The trainer as a user runs it: a datakit workspace → `train --stage image` (a --select with a
corrupt clip and mixed aspect ratios) → `video` → `hq` (curated sets), each --init-from the
previous run, 2 processes over gloo; kill -9 and --resume; `sample` from the final EMA weights."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import PYTHON, ROOT, cli_env

pytestmark = pytest.mark.timeout(900)

TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def cli(*args: str, torchrun: bool = False, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    cmd = [*(TORCHRUN if torchrun else [PYTHON]), str(ROOT / "cli.py"), *args]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} failed:\n{proc.stderr.decode()[-4000:]}")
    return proc


def write_set(ws: Path, name: str, version: int, rows: pa.Table) -> None:
    """A curated set in the layout the curation stage writes (rows.parquet + card.json)."""
    folder = ws / "sets" / name / f"v{version}"
    folder.mkdir(parents=True)
    pq.write_table(rows, folder / "rows.parquet")
    card = {
        "name": name,
        "version": version,
        "recipe": f"{name}.sql",
        "row_count": rows.num_rows,
        "created": "now",
    }
    (folder / "card.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """A workspace built with the datakit CLI: 3 videos of different shapes and 2 that get
    corrupted after the scan (their clips stay in the manifest), plus curated sets."""
    from datakit.workspace import Workspace
    from demo.sample_videos import SampleSpec, make_sample

    root = tmp_path_factory.mktemp("train-chain")
    specs = [
        SampleSpec("wide", 320, 180, 24, "libx264", "mp4", [60, 60], seed=21),
        SampleSpec("standard", 320, 240, 24, "libx264", "mp4", [60, 60], seed=22),
        SampleSpec("tall", 180, 320, 24, "libx264", "mp4", [60, 60], seed=23),
        SampleSpec("broken1", 320, 240, 24, "libx264", "mp4", [60, 60], seed=24),
        SampleSpec("broken2", 320, 240, 24, "libx264", "mp4", [60, 60], seed=25),
    ]
    paths = [Path(make_sample(s, root / "videos").path) for s in specs]
    ws = root / "ws"
    for args in (["ingest", str(root / "videos")], ["probe"], ["scenes"]):
        cli("datakit", args[0], "-w", str(ws), *args[1:])
    for broken in paths[3:]:  # corrupt after scanning: the selection still lists their clips
        broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])
    clips = Workspace(ws, create=False).arrow("select * from clips order by clip_id")
    assert clips.num_rows == 10
    captions = pa.array([f"shapes moving, clip {i}" for i in range(clips.num_rows)])
    curated = clips.drop([c for c in ("caption",) if c in clips.column_names]).append_column(
        "caption", captions
    )
    good = curated.filter(pa.array(["broken" not in p for p in curated["source_path"].to_pylist()]))
    write_set(ws, "base", 1, good)
    write_set(ws, "hq", 1, curated)
    write_set(ws, "hq", 2, good.slice(0, 4))
    return {"root": root, "ws": ws, "tiny": root / "tiny"}


def train(
    chain: dict[str, Path], run: str, *args: str, torchrun: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    return cli(
        "train",
        "--preset",
        "tiny",
        "-w",
        str(chain["ws"]),
        "--run-dir",
        str(chain["root"] / run),
        f"model.tiny_dir={chain['tiny']}",
        "train.progress=false",
        *args,
        torchrun=torchrun,
        **kwargs,
    )


IMAGE_ARGS = ("--stage", "image", "--select", "select * from clips", "--max-steps", "8", "--ckpt-every", "4")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def image_launch(chain) -> subprocess.CompletedProcess:
    return train(chain, "image", *IMAGE_ARGS)


@pytest.fixture(scope="module")
def image_run(chain, image_launch) -> Path:
    return chain["root"] / "image"


def test_image_stage_from_a_select_with_a_corrupt_clip_and_mixed_shapes(image_run, image_launch):
    m = metrics(image_run)
    assert [r["step"] for r in m] == list(range(1, 9))
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) and r["samples_per_s"] > 0 for r in m)
    assert all(0 <= r["data_wait"] <= 1 and r["lr"] == 1e-3 for r in m)
    assert {r["bucket"][0] for r in m} == {1}
    assert len({tuple(r["bucket"]) for r in m}) >= 2, "landscape and portrait clips land in different buckets"
    assert m[-1]["failed_clips"] > 0 and "val_loss" in m[-1] and np.isfinite(m[-1]["val_loss"])
    assert "skipped clip" in image_launch.stderr.decode()  # logged by the rank that met it
    card = json.loads((image_run / "data" / "card.json").read_text())
    assert (card["name"], card["recipe"], card["row_count"]) == ("select", "select * from clips", 10)
    assert pq.read_table(image_run / "data" / "rows.parquet").num_rows == 10
    launch = json.loads((image_run / "run.json").read_text())["launches"][0]
    assert (launch["world_size"], launch["backend"]) == (2, "gloo")
    cfg = json.loads((image_run / "train_config.json").read_text())
    assert (cfg["stage"], cfg["train"]["plugin"], cfg["optim"]["name"]) == ("image", "ddp", "adamw")
    ckpts = sorted(p.name for p in (image_run / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000004", "step-00000008"]
    for name in ("model.safetensors", "ema.safetensors", "config.json"):
        assert (image_run / name).resolve() == (image_run / "checkpoints" / "step-00000008" / name).resolve()


def descendants(pid: int) -> list[int]:
    """pid and all processes below it (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def test_kill_and_resume_repeats_the_uninterrupted_run_bitwise(chain, image_run):
    run_dir = chain["root"] / "killed"
    cmd = [
        *TORCHRUN,
        str(ROOT / "cli.py"),
        "train",
        "--preset",
        "tiny",
        "-w",
        str(chain["ws"]),
        "--run-dir",
        str(run_dir),
        f"model.tiny_dir={chain['tiny']}",
        "train.progress=false",
        *IMAGE_ARGS,
    ]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while not (log.exists() and len(log.read_text().splitlines()) >= 5) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    for pid in descendants(proc.pid):  # SIGKILL the launcher, both ranks and their loader workers
        with contextlib.suppress(ProcessLookupError):  # exited between listing and killing
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert done == ["step-00000004"], f"killed between checkpoints, got {done}"
    assert len(metrics(run_dir)) >= 5

    train(chain, "killed", *IMAGE_ARGS, "--resume")  # the same command line, relaunched with --resume
    assert "resumed from" in (run_dir / "train.log").read_text()
    want, got = metrics(image_run), metrics(run_dir)
    assert [r["step"] for r in got] == list(range(1, 9))
    for key in ("loss", "grad_norm", "lr", "bucket", "failed_clips"):
        assert [r[key] for r in got] == [r[key] for r in want], key
    assert len(json.loads((run_dir / "run.json").read_text())["launches"]) == 2

    changed = train(chain, "killed", *IMAGE_ARGS, "optim.lr=0.5", "--resume", check=False, torchrun=False)
    assert changed.returncode == 2 and "optim.lr: run has 0.001, command gives 0.5" in changed.stderr.decode()


@pytest.fixture(scope="module")
def video_run(chain, image_run) -> Path:
    train(
        chain,
        "video",
        "--stage",
        "video",
        "--set",
        "base@v1",
        "--init-from",
        str(image_run),
        "--max-steps",
        "4",
    )
    return chain["root"] / "video"


def test_video_stage_from_a_set_and_the_image_run(video_run, image_run):
    m = metrics(video_run)
    assert len(m) == 4 and all(np.isfinite(r["loss"]) for r in m)
    assert {r["bucket"][0] for r in m} == {4} and m[-1]["failed_clips"] == 0
    log = (video_run / "train.log").read_text()
    assert f"init from {image_run}" in log and "matched" in log
    card = json.loads((video_run / "data" / "card.json").read_text())
    assert (card["name"], card["version"], card["row_count"]) == ("base", 1, 6)


@pytest.fixture(scope="module")
def hq_run(chain, video_run) -> Path:
    train(chain, "hq", "--stage", "hq", "--set", "hq", "--init-from", str(video_run), "--max-steps", "4")
    return chain["root"] / "hq"


def test_hq_stage_takes_the_latest_set_version(hq_run):
    m = metrics(hq_run)
    assert len(m) == 4 and all(np.isfinite(r["loss"]) for r in m)
    assert all(r["bucket"][0] == 4 and max(r["bucket"][1:]) > 64 for r in m), "96 px buckets"
    card = json.loads((hq_run / "data" / "card.json").read_text())
    assert (card["name"], card["version"], card["row_count"]) == ("hq", 2, 4)


def test_sample_from_the_final_ema_weights(chain, hq_run, tmp_path):
    out = tmp_path / "samples"
    # the run folder is a checkpoint: its EMA weights and config.json (so the trained size: 4 × 96 × 96)
    cli(
        "sample",
        "-p",
        "shapes moving",
        "--ckpt",
        str(hq_run),
        "--vae",
        str(chain["tiny"] / "vae"),
        "--text-encoder",
        str(chain["tiny"] / "t5"),
        "--steps",
        "3",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--local-files-only",
        "--no-progress",
    )
    meta = json.loads((out / "samples.json").read_text())
    assert meta["settings"]["ckpt"] == str(hq_run)
    with av.open(meta["samples"][0]["mp4"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (96, 96, 3)


def test_a_set_whose_files_moved_fails_fast(chain, tmp_path):
    clips = pq.read_table(chain["ws"] / "sets" / "base" / "v1" / "rows.parquet")
    moved = clips.set_column(
        clips.column_names.index("source_path"),
        "source_path",
        pa.array([f"/nowhere/{Path(p).name}" for p in clips["source_path"].to_pylist()]),
    )
    write_set(chain["ws"], "moved", 1, moved)
    run_dir = tmp_path / "moved-run"
    proc = cli(
        "train",
        "--stage",
        "video",
        "--preset",
        "tiny",
        "-w",
        str(chain["ws"]),
        "--set",
        "moved",
        "--run-dir",
        str(run_dir),
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "6 of 6 clips have no readable file" in err and "/nowhere/" in err
    assert "Traceback" not in err and not run_dir.exists()
