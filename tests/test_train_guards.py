"""What stops a training run cleanly: a selection that never decodes, a second run into the same
folder, a `--resume` that would not continue exactly, out-of-range numbers on the command line."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.sample_videos import SampleSpec, make_sample
from tests.conftest import PYTHON, ROOT, cli_env

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guard-video")
    return Path(make_sample(SampleSpec("square", 160, 160, 25, "mpeg4", "mp4", [80], seed=13), out).path)


def one_set(ws: Path, path: Path, n: int = 2) -> Path:
    """A curated set `one`: n one-frame spans of `path`."""
    folder = ws / "sets" / "one" / "v1"
    folder.mkdir(parents=True)
    rows = [
        dict(
            clip_id=f"c{i}",
            source_path=str(path),
            path=None,
            start_frame=30 + i,
            end_frame=31 + i,
            fps=25.0,
            width=160,
            height=160,
            caption="a scene",
        )
        for i in range(n)
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")
    (folder / "card.json").write_text(json.dumps({"name": "one", "version": 1, "recipe": "by hand"}))
    return ws


BASE = ["train.progress=false", "data.num_workers=0", "data.flip=false", "data.val_fraction=0"]


def launch_here(ws: Path, run_dir: Path, overrides: list[str], resume: bool = False, **kwargs) -> Path:
    from training.config import resolve_config
    from training.dist import shutdown
    from training.run import Source, launch

    tiny = [f"model.tiny_dir={run_dir.parent / 'tiny'}", *BASE]
    cfg = resolve_config("image", tiny=True, overrides=tiny + overrides)
    try:
        return launch(cfg, run_dir=run_dir, source=Source(ws, set_spec="one"), resume=resume, **kwargs)
    finally:
        shutdown()


def train_cli(ws: Path, run_dir: Path, *args: str, wait: bool = True, log: Path | None = None):
    cmd = [
        PYTHON,
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
        *args,
    ]
    if not wait:
        return subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ finding 2
def test_a_selection_that_never_decodes_stops_with_one_error(tmp_path, video):
    from training.errors import RunError

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[:2000])  # a file that exists but does not decode
    ws = one_set(tmp_path / "ws", broken, n=3)
    with pytest.raises(
        RunError, match=r"no usable batch: .* no clip that decodes; 3 clip decodes failed"
    ) as err:
        launch_here(ws, tmp_path / "run", ["train.max_steps=1000", "data.batch_size=1"])
    assert "broken" in str(err.value) or "c0" in str(err.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_consecutive_failures_stop_before_an_epoch_ends(tmp_path, video):
    from training.errors import RunError

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[:2000])
    ws = one_set(tmp_path / "ws", broken, n=12)
    with pytest.raises(RunError, match=r"5 steps in a row had no clip that decodes; 5 clip decodes failed"):
        launch_here(
            ws, tmp_path / "run", ["train.max_steps=10", "data.batch_size=1", "data.max_failed_in_a_row=5"]
        )


# ------------------------------------------------------------------------------------ finding 3
def test_a_second_run_into_a_busy_run_folder_is_refused(tmp_path, video):
    ws = one_set(tmp_path / "ws", video)
    run_dir = tmp_path / "run"
    log = tmp_path / "first.log"
    first = train_cli(ws, run_dir, "--max-steps", "100000", "--ckpt-every", "100000", wait=False, log=log)
    try:
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):  # the first run is training
            assert first.poll() is None, log.read_text()[-2000:]
            time.sleep(0.02)
        for extra in ([], ["--resume"]):
            second = train_cli(ws, run_dir, "--max-steps", "100000", *extra)
            lines = error_lines(second.stderr)
            assert second.returncode == 1 and len(lines) == 1, second.stderr
            assert "is in use by another train run" in lines[0] and str(first.pid) in lines[0]
        assert first.poll() is None, "the first run goes on"
    finally:
        first.kill()
        first.wait()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    assert steps == list(range(1, len(steps) + 1)), "no step written twice"
    second = train_cli(ws, run_dir, "--max-steps", "2", "--resume")  # the lock went with the process
    assert second.returncode == 0, second.stderr


# ------------------------------------------------------------------------------------ findings 4 and 7
def test_resume_refuses_changes_that_break_an_exact_resume(tmp_path, video):
    from training.config import ConfigError

    ws = one_set(tmp_path / "ws", video)
    run_dir = tmp_path / "run"
    launch_here(ws, run_dir, ["train.max_steps=2", "train.ckpt_every=1"])
    config = (run_dir / "train_config.json").read_bytes()
    changed = ["train.max_steps=4", "optim.lr=1e-2", "optim.betas=[0.8, 0.99]", "train.seed=1"]
    with pytest.raises(ConfigError) as err:
        launch_here(ws, run_dir, changed, resume=True)
    message = str(err.value)
    for key in ("optim.lr", "optim.betas", "train.seed"):
        assert f"{key}: run has" in message, message
    assert "train.max_steps" in message.split("only ")[1], "says what may change"
    assert (run_dir / "train_config.json").read_bytes() == config, "a refused resume writes nothing"

    # what may change: when to stop, checkpoint, validate, log
    launch_here(
        ws,
        run_dir,
        ["train.max_steps=3", "train.ckpt_every=1", "train.val_every=7", "train.keep_last=5"],
        resume=True,
    )
    saved = json.loads((run_dir / "train_config.json").read_text())["train"]
    assert (saved["max_steps"], saved["val_every"], saved["keep_last"]) == (3, 7, 5)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-steps", "-3"], "train.max_steps must be >= 1, got -3"),
        (["--ckpt-every", "0"], "train.ckpt_every must be >= 1, got 0"),
        (["optim.lr=nan"], "optim.lr must be a finite"),
    ],
)
def test_out_of_range_numbers_exit_2_with_one_line(tmp_path, video, args, message):
    ws = one_set(tmp_path / "ws", video)
    proc = train_cli(ws, tmp_path / "run", *args)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", "optim.lr must be a finite number > 0"),
        ("data.batch_size=0", "data.batch_size must be >= 1"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("train.val_every=0", "train.val_every must be >= 1"),
        ("optim.betas=[0.9, 1.5]", "optim.betas"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("optim.grad_clip=inf", "optim.grad_clip"),
        ("train.max_nonfinite=0", "train.max_nonfinite must be >= 1"),
    ],
)
def test_config_refuses_out_of_range_numbers(override, message):
    from training.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=message):
        resolve_config("video", overrides=[override])


def test_resume_with_a_bad_max_steps_exits_2_and_keeps_the_config(tmp_path, video):
    ws = one_set(tmp_path / "ws", video)
    run_dir = tmp_path / "run"
    launch_here(ws, run_dir, ["train.max_steps=1"])
    config = (run_dir / "train_config.json").read_bytes()
    proc = subprocess.run(
        [PYTHON, str(ROOT / "cli.py"), "train", "--resume", "--run-dir", str(run_dir), "--max-steps", "-3"],
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "train.max_steps must be >= 1" in lines[0], (
        proc.stderr
    )
    assert (run_dir / "train_config.json").read_bytes() == config
