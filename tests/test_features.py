"""The feature cache (`datakit features`, `train ... data.source=features`) and the trainer's logs:
TensorBoard events and periodic mp4 samples. Tiny random models on CPU, 7-frame clips (the tiny
video stage's 4 frames at interval 2 fill them, so online windows are the cache's centred ones)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from datakit.executors import plan, run_stage
from datakit.stage import OptionError
from datakit.workspace import Workspace
from tests.conftest import PYTHON, ROOT, cli_env
from training.features_stage import FeaturesStage, resolve_selection

pytestmark = pytest.mark.timeout(300)

STAGE_OPTS = {"train_stage": "video", "preset": "tiny", "batch_size": 2, "commit_every": 2}
TRAIN = [
    "train.progress=false",
    "data.num_workers=0",
    "data.flip=false",
    "data.val_min_rows=2",
    "data.val_fraction=0.3",
    "train.max_steps=4",
    "train.val_every=2",
    "train.ckpt_every=4",
    "train.sample_steps=2",
]


def write_set(ws: Path, name: str, version: int, rows: list[dict]) -> Path:
    folder = ws / "sets" / name / f"v{version}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")
    (folder / "card.json").write_text(json.dumps({"name": name, "version": version, "recipe": "by hand"}))
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """Six 7-frame clips of two shapes and one too short, cached with the `datakit features` CLI."""
    from demo.sample_videos import SampleSpec, make_sample

    root = tmp_path_factory.mktemp("features")
    shapes = {"wide": (320, 180), "tall": (180, 320)}
    rows = []
    for seed, (name, (w, h)) in enumerate(shapes.items()):
        path = make_sample(
            SampleSpec(name, w, h, 24, "libx264", "mp4", [30], seed=31 + seed), root / "videos"
        ).path
        rows += [
            dict(
                clip_id=f"{name}-{s}",
                source_path=path,
                path=None,
                start_frame=s,
                end_frame=s + 7,
                fps=24.0,
                width=w,
                height=h,
                caption=f"{name} shapes, clip {s}",
            )
            for s in (0, 10, 20)
        ]
    rows.append({**rows[0], "clip_id": "short", "end_frame": 3})
    ws = Workspace(root / "ws")
    write_set(ws.root, "s", 1, rows)
    overrides = [f"model.tiny_dir={root / 'tiny'}"]
    proc = subprocess.run(
        [
            PYTHON,
            str(ROOT / "cli.py"),
            "datakit",
            "features",
            "-w",
            str(ws.root),
            "--selection",
            str(ws.root / "sets" / "s"),
            "--train-stage",
            "video",
            "--preset",
            "tiny",
            "--batch-size",
            "2",
            "--commit-every",
            "2",
            "-o",
            f"overrides={json.dumps(overrides)}",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    opts = {**STAGE_OPTS, "selection": str(ws.root / "sets" / "s" / "v1"), "overrides": overrides}
    return {"root": root, "ws": ws, "rows": rows, "opts": opts, "tiny": root / "tiny", "log": proc.stdout}


def table(ws: Workspace) -> dict[str, dict]:
    rows = ws.sql("SELECT * EXCLUDE (computed_at) FROM features ORDER BY clip_id")
    return {r["clip_id"]: r for r in rows}


def entry(ws: Workspace, row: dict) -> dict[str, torch.Tensor]:
    from training.features import read_entry

    return read_entry(ws.root / "data" / "features" / row["shard"], row["shard_index"])


def test_the_stage_caches_each_clips_posterior_and_caption_embedding(cache):
    from training.buckets import Bucket
    from training.build import build_encoders
    from training.config import resolve_config
    from training.data import clip_window, load_clip

    ws, rows = cache["ws"], {r["clip_id"]: r for r in cache["rows"]}
    assert "7/7 items (1 error, 6 ok)" in cache["log"]
    got = table(ws)
    assert got["short"]["status"] == "error" and "too short: 3 frames" in got["short"]["error"]
    buckets = {(r["frames"], r["height"], r["width"]) for k, r in got.items() if k != "short"}
    assert buckets == {(4, 48, 80), (4, 80, 48)}
    assert len({r["model_key"] for r in got.values()}) == 1 and got["wide-0"]["dtype"] == "float32"

    cfg = resolve_config("video", tiny=True, overrides=[f"model.tiny_dir={cache['tiny']}"])
    vae, t5 = build_encoders(cfg, torch.device("cpu"), torch.float32)
    for clip_id in ("wide-10", "tall-20"):
        row, cached = got[clip_id], entry(ws, got[clip_id])
        bucket = Bucket(row["frames"], row["height"], row["width"])
        video = load_clip(rows[clip_id], bucket, cfg.data, clip_window(rows[clip_id], bucket, cfg.data, None))
        mean, std = vae.posterior(video[None])
        assert cached["mean"].shape == (4, 4, row["height"] // 8, row["width"] // 8)
        torch.testing.assert_close(cached["mean"], mean[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cached["std"], std[0], atol=1e-5, rtol=1e-4)
        text = t5.encode([rows[clip_id]["caption"]])
        valid = text["mask"][0].bool()
        assert cached["mask"].tolist() == text["mask"][0].tolist() and int(valid.sum()) == row["tokens"]
        torch.testing.assert_close(cached["text"], text["y"][0, 0][valid], atol=1e-5, rtol=1e-4)
    assert plan(ws, FeaturesStage(**cache["opts"])) == [], "a rerun has nothing to do"


def test_a_changed_caption_recomputes_that_clip_and_blocks_training_until_then(cache, tmp_path):
    from training.config import resolve_config
    from training.dist import shutdown
    from training.run import Source, launch
    from training.selection import SelectionError

    ws = cache["ws"]
    changed = [dict(r) for r in cache["rows"]]
    changed[1]["caption"] = "a new caption"
    changed.append({**changed[2], "clip_id": "never-cached"})
    write_set(ws.root, "s2", 1, changed)
    stage = FeaturesStage(**{**cache["opts"], "selection": str(ws.root / "sets" / "s2")})
    assert sorted(i["clip_id"] for i in plan(ws, stage)) == ["never-cached", changed[1]["clip_id"]]
    cfg = resolve_config(
        "video", tiny=True, overrides=[f"model.tiny_dir={cache['tiny']}", "data.source=features"]
    )
    with pytest.raises(SelectionError) as err:
        try:
            launch(cfg, run_dir=tmp_path / "run", source=Source(ws.root, set_spec="s2"), resume=False)
        finally:
            shutdown()
    message = str(err.value)
    assert "1 have none and 1 were cached for an older caption" in message
    assert "python cli.py datakit features" in message and "--train-stage video --preset tiny" in message


@pytest.mark.parametrize("form", ["set", "set@v1", "version", "run", "file"])
def test_selection_forms(cache, form):
    sets = cache["ws"].root / "sets" / "s"
    run = cache["root"] / "a-run"
    (run / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(cache["rows"]), run / "data" / "rows.parquet")
    spec = {
        "set": sets,
        "set@v1": f"{sets}@v1",
        "version": sets / "v1",
        "run": run,
        "file": sets / "v1" / "rows.parquet",
    }[form]
    assert resolve_selection(str(spec)) == (run / "data" if form == "run" else sets / "v1") / "rows.parquet"
    with pytest.raises(OptionError, match="not a rows .parquet file"):
        resolve_selection(str(cache["root"] / "nothing"))


def test_sigkill_between_a_shard_and_its_commit_then_rerun_gives_the_same_table(cache, tmp_path):
    """Killed after writing a shard and before committing its rows: the rerun deletes the shard no
    row points to and computes the rest; the table equals the uninterrupted run's."""
    ws = Workspace(tmp_path / "ws")
    opts = cache["opts"]
    code = (
        "import os, signal, sys\n"
        "from datakit.workspace import Workspace\n"
        "write, calls = Workspace.write, []\n"
        "def dying(self, table, rows):\n"
        "    calls.append(table)\n"
        "    if calls.count('features') == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return write(self, table, rows)\n"
        "Workspace.write = dying\n"
        "from datakit.executors import run_stage\n"
        "from training.features_stage import FeaturesStage\n"
        f"run_stage(Workspace({str(ws.root)!r}), FeaturesStage(**{opts!r}), progress=False)\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, timeout=240)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]
    committed = table(ws)
    shards = ws.root / "data" / "features"
    orphans = {p.relative_to(shards).as_posix() for p in shards.glob("*/*.safetensors")} - {
        r["shard"] for r in committed.values()
    }
    assert 0 < len(committed) < 7 and orphans, "the kill must land after a shard and before its rows"

    stats = run_stage(ws, FeaturesStage(**opts), progress=False)
    assert stats.planned == 7 - len(committed)
    got, want = table(ws), table(cache["ws"])
    columns = (
        "status",
        "error",
        "model_key",
        "frames",
        "height",
        "width",
        "tokens",
        "caption_md5",
        "frames_read",
    )
    assert {k: [r[c] for c in columns] for k, r in got.items()} == {
        k: [r[c] for c in columns] for k, r in want.items()
    }
    for clip_id, row in got.items():
        if row["status"] == "ok":
            a, b = entry(ws, row), entry(cache["ws"], want[clip_id])
            for name in a:
                torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    on_disk = {p.relative_to(shards).as_posix() for p in shards.rglob("*") if p.is_file()}
    assert on_disk == {r["shard"] for r in got.values() if r["shard"]}, "no orphan shards or temp files"


# ------------------------------------------------------------------------------------ training
def launch_run(cache: dict, name: str, overrides: list[str]) -> Path:
    from training.config import resolve_config
    from training.dist import shutdown
    from training.run import Source, launch

    cfg = resolve_config(
        "video", tiny=True, overrides=[f"model.tiny_dir={cache['tiny']}", *TRAIN, *overrides]
    )
    try:
        return launch(
            cfg, run_dir=cache["root"] / name, source=Source(cache["ws"].root, set_spec="s@v1"), resume=False
        )
    finally:
        shutdown()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(cache) -> dict[str, Path]:
    """The same run from pixels (samples at steps 2 and 4) and from the cache (samples at step 3)."""
    return {
        "pixels": launch_run(cache, "pixels", ["train.sample_every=2"]),
        "features": launch_run(cache, "features", ["data.source=features", "train.sample_every=3"]),
    }


def test_training_from_the_cache_equals_training_from_pixels(runs):
    """Same batches, timesteps, noise and caption dropout: the same losses and gradient norms at
    every step (the pixel run encodes online; drawing samples in between changes nothing)."""
    pixels, cached = metrics(runs["pixels"]), metrics(runs["features"])
    assert [r["step"] for r in cached] == [1, 2, 3, 4]
    assert [r["bucket"] for r in cached] == [r["bucket"] for r in pixels]
    assert len({tuple(r["bucket"]) for r in cached}) == 2, "both shapes trained"
    assert (
        [r["step"] for r in cached if "val_loss" in r]
        == [r["step"] for r in pixels if "val_loss" in r]
        == [2, 4]
    )
    for key in ("loss", "grad_norm", "val_loss"):
        want = [r[key] for r in pixels if key in r]
        assert [r[key] for r in cached if key in r] == pytest.approx(want, rel=1e-5), key
    index = pq.read_table(runs["features"] / "data" / "features.parquet").to_pylist()
    assert len(index) == 7 and all(Path(e["shard"]).is_file() for e in index if e["status"] == "ok")


def test_tensorboard_events_hold_every_step_metric(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["pixels"] / "tensorboard"))
    events.Reload()
    m = metrics(runs["pixels"])
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "data_wait", "val_loss"):
        scalars = events.Scalars(f"train/{key}")
        want = [(r["step"], r[key]) for r in m if r.get(key) is not None]
        assert [s.step for s in scalars] == [step for step, _ in want], key
        assert [s.value for s in scalars] == pytest.approx([v for _, v in want], rel=1e-6), key
    assert 0 <= min(r["data_wait"] for r in m) and max(r["data_wait"] for r in m) < 1


@pytest.mark.parametrize("run, steps", [("pixels", [2, 4]), ("features", [3])])
def test_periodic_samples_are_playable_mp4s_at_their_steps(runs, run, steps):
    folders = sorted((runs[run] / "samples").iterdir())
    assert [f.name for f in folders] == [f"step-{s:08d}" for s in steps]
    for folder in folders:
        files = sorted(folder.glob("*.mp4"))
        assert [f.name for f in files] == [
            "00-a-dog-running-on-a-beach.mp4",
            "01-a-city-street-at-night-cars-passing.mp4",
        ]
        for file in files:
            with av.open(str(file)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(frames) == 4 and frames[0].shape == (64, 64, 3) and np.ptp(frames[0]) > 0
