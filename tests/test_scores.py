"""Score stages: the aesthetic head and CLIP pass, motion, dedup and text match (tiny RANDOM models).

The models are random (built here: nothing can be downloaded), so the tests check what does not
depend on weights: that the same numbers come out as from open_clip and the head used directly,
the rows, the keys, reruns, bad inputs and kills.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datakit.clip_models import image_transform, load_aesthetic_head, save_tiny_aesthetic_head, save_tiny_clip
from datakit.executors import plan, run_stage
from datakit.ingest import ingest
from datakit.stages.aesthetic import AestheticStage
from datakit.stages.dedup import DedupStage
from datakit.stages.match import TextMatchStage
from datakit.stages.motion import MotionStage
from datakit.stages.probe import ProbeStage
from datakit.stages.scenes import SceneStage
from datakit.workspace import Workspace
from demo.sample_videos import write_video
from tests.conftest import PYTHON, ROOT, cli_env
from tests.curation_fixtures import small_videos, write_clips, write_scores

RELEASED_KEYS = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("bias", "weight")]


class ReleasedLayout(torch.nn.Module):
    """The layout of LAION's `sac+logos+ava1-l14-linearMSE.pth`, written out independently."""

    def __init__(self):
        super().__init__()
        L, D = torch.nn.Linear, torch.nn.Dropout  # noqa: N806
        self.layers = torch.nn.Sequential(
            L(768, 1024), D(0.2), L(1024, 128), D(0.2), L(128, 64), D(0.1), L(64, 16), L(16, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tiny-random-models")
    config, weights = save_tiny_clip(d)
    return {
        "model": str(config),
        "pretrained": str(weights),
        "head": str(save_tiny_aesthetic_head(d / "head.pth")),
    }


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    small_videos(d, 2)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(d / "photo.png")
    return d


def _scanned(tmp_path: Path, media: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ingest(ws, [str(media)])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    return ws


def _open_clip_reference(tiny: dict, path: str, indices: list[int]) -> torch.Tensor:
    """L2-normalised CLIP embeddings of frames, straight from open_clip (no datakit code)."""
    import open_clip

    from mediaio import read_frames_at

    open_clip.add_model_config(Path(tiny["model"]))
    model, _, preprocess = open_clip.create_model_and_transforms(
        Path(tiny["model"]).stem, pretrained=tiny["pretrained"]
    )
    pixels = torch.stack([preprocess(Image.fromarray(f)) for f in read_frames_at(path, indices)])
    with torch.no_grad():
        return torch.nn.functional.normalize(model.eval().encode_image(pixels), dim=-1)


# ------------------------------------------------------------------------------- aesthetic head
def test_aesthetic_head_loads_the_released_layout_from_a_file_and_a_url(tmp_path, monkeypatch):
    torch.manual_seed(3)
    reference = ReleasedLayout().eval()
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(reference.state_dict(), path)
    assert sorted(torch.load(path, weights_only=True)) == RELEASED_KEYS

    x = torch.nn.functional.normalize(torch.randn(5, 768), dim=-1)
    head = load_aesthetic_head(path)
    assert isinstance(head, torch.nn.Module) and not head.training
    torch.testing.assert_close(head(x).reshape(-1), reference(x).reshape(-1))

    # the same file over HTTP (cached by torch hub under TORCH_HOME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/sac%2Blogos%2Bava1-l14-linearMSE.pth"
        torch.testing.assert_close(load_aesthetic_head(url)(x).reshape(-1), reference(x).reshape(-1))
    finally:
        server.shutdown()

    other = tmp_path / "other.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(768, 1)).state_dict(), other)
    with pytest.raises(ValueError, match=r"expected keys \['layers.0.bias'"):
        load_aesthetic_head(other)
    with pytest.raises(FileNotFoundError):
        load_aesthetic_head(tmp_path / "missing.pth")


def test_frames_are_preprocessed_as_open_clip_does_without_building_the_model(tiny):
    import open_clip

    open_clip.add_model_config(Path(tiny["model"]))
    _, _, preprocess = open_clip.create_model_and_transforms(
        Path(tiny["model"]).stem, pretrained=tiny["pretrained"]
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8))
    torch.testing.assert_close(image_transform(tiny["model"], tiny["pretrained"])(image), preprocess(image))


# ------------------------------------------------------------------------------- aesthetic stage
def test_aesthetic_scores_every_clip_and_image_and_keeps_each_models_rows(tmp_path, tiny, media):
    ws = _scanned(tmp_path, media)
    clips = {c["clip_id"]: c for c in ws.sql("SELECT * FROM clips")}
    assert sorted(c["media_type"] for c in clips.values()) == ["image", "video", "video", "video", "video"]

    stats = run_stage(ws, AestheticStage(**tiny, batch_size=3), progress=False)
    assert stats.statuses == {"ok": 5}
    rows = {r["clip_id"]: r for r in ws.sql("SELECT * FROM aesthetic_scores")}
    assert set(rows) == set(clips)

    # one video clip, recomputed with open_clip and the head directly: frames at 10/50/90 % of the span
    cid = next(c for c in sorted(clips) if clips[c]["media_type"] == "video")
    c = clips[cid]
    n = c["end_frame"] - c["start_frame"]
    indices = [c["start_frame"] + int(f * n) for f in (0.1, 0.5, 0.9)]
    emb = _open_clip_reference(tiny, c["source_path"], indices)
    head = ReleasedLayout()
    head.load_state_dict(torch.load(tiny["head"], weights_only=True))
    expected = head.eval()(emb).reshape(-1)
    assert rows[cid]["frame_scores"] == pytest.approx(expected.tolist(), abs=1e-4)
    assert rows[cid]["aesthetic"] == pytest.approx(float(expected.mean()), abs=1e-4)
    assert rows[cid]["frames"] == f'{{"file": "source", "indices": {indices}}}'
    assert tiny["pretrained"] in rows[cid]["model"] and "open_clip 3." in rows[cid]["model"]

    # the stored embedding: float16 of the re-normalised mean frame embedding
    (stored,) = ws.sql("SELECT dim, embedding FROM clip_embeddings WHERE clip_id = ?", [cid])
    vec = np.frombuffer(stored["embedding"], "<f2")
    assert stored["dim"] == len(vec) == 768
    mean = torch.nn.functional.normalize(emb.mean(0), dim=0).numpy()
    np.testing.assert_allclose(vec, mean, atol=2e-3)

    image_id = next(c for c in clips if clips[c]["media_type"] == "image")
    assert rows[image_id]["frames"] == '{"file": "source", "indices": [0]}'
    assert len(rows[image_id]["frame_scores"]) == 1

    # a rerun does nothing; another head adds rows under a new key and the view shows the newest
    assert run_stage(ws, AestheticStage(**tiny), progress=False).planned == 0
    other_head = save_tiny_aesthetic_head(tmp_path / "other-head.pth", seed=7)
    run_stage(ws, AestheticStage(**{**tiny, "head": str(other_head)}), progress=False)
    keys = ws.sql("SELECT model_key, count(*) AS n FROM aesthetic_scores GROUP BY ALL")
    assert sorted(k["n"] for k in keys) == [5, 5]
    newest = {
        r["clip_id"]: r["aesthetic"]
        for r in ws.sql("SELECT clip_id, aesthetic FROM aesthetic_scores WHERE model LIKE '%other-head.pth%'")
    }
    assert {c["clip_id"]: c["aesthetic"] for c in ws.sql("SELECT * FROM clips")} == newest
    assert (
        ws.sql("SELECT count(DISTINCT model_key) AS n FROM clip_embeddings")[0]["n"] == 1
    )  # same CLIP: same rows


def test_a_clip_whose_files_are_gone_becomes_an_error_row(tmp_path, tiny, media):
    folder = tmp_path / "media"
    shutil.copytree(media, folder)
    ws = _scanned(tmp_path, folder)
    (folder / "v0.mp4").unlink()
    stats = run_stage(ws, AestheticStage(**tiny), progress=False)
    assert stats.statuses == {"ok": 3, "error": 2}
    errors = ws.sql("SELECT clip_id, error, model_key FROM aesthetic_scores WHERE status = 'error'")
    assert all("neither the source" in e["error"] and e["model_key"] for e in errors)
    assert all(
        e["clip_id"].startswith(
            ws.sql("SELECT video_id FROM videos WHERE path LIKE '%v0.mp4'")[0]["video_id"]
        )
        for e in errors
    )
    assert run_stage(ws, AestheticStage(**tiny), progress=False).planned == 0  # errors are not retried


def test_process_batch_makes_one_model_call_per_batch(tmp_path, tiny, media):
    from datakit.stage import WorkerContext

    ws = _scanned(tmp_path, media)
    stage = AestheticStage(**tiny, batch_size=5)
    stage.setup(WorkerContext.for_workspace(ws.root, stage.name))
    calls = []
    encode = stage._clip.model.encode_image
    stage._clip.model.encode_image = lambda x: calls.append(len(x)) or encode(x)
    items = [stage.prepare(i) for i in plan(ws, stage)]
    out = stage.process_batch(items)
    assert len(out) == 5 and calls == [
        15
    ]  # 4 video clips x 3 frames + 1 image frame, one call padded to 5 x 3


@pytest.mark.timeout(300)
def test_aesthetic_sigkill_then_rerun_scores_each_clip_once(tmp_path, tiny):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(60):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, [str(folder)])
    run_stage(ws, ProbeStage(), progress=False)
    args = [f"--model={tiny['model']}", f"--pretrained={tiny['pretrained']}", f"--head={tiny['head']}"]
    cmd = [PYTHON, str(ROOT / "cli.py"), "datakit", "score", "aesthetic", "-w", str(ws.root), *args]
    table = ws.table_dir("aesthetic_scores")

    def parts() -> int:
        return len([p for p in table.glob("part-*.parquet") if "init" not in p.name])

    proc = subprocess.Popen(
        [*cmd, "--set", "commit_every=1", "--set", "batch_size=1"],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while parts() < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before 3 commits"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(ws.sql("SELECT * FROM aesthetic_scores"))
    assert 3 <= done < 60, "the run finished before the kill: the test proves nothing"

    stats = run_stage(ws, AestheticStage(**tiny), progress=False)  # the rerun does the rest, once
    assert stats.planned == 60 - done
    rows = ws.sql("SELECT clip_id, status, aesthetic FROM aesthetic_scores")
    assert len(rows) == 60 and {r["status"] for r in rows} == {"ok"}
    reference = Workspace(tmp_path / "reference")
    ingest(reference, [str(folder)])
    run_stage(reference, ProbeStage(), progress=False)
    run_stage(reference, AestheticStage(**tiny), progress=False)
    expected = {
        r["clip_id"]: r["aesthetic"] for r in reference.sql("SELECT clip_id, aesthetic FROM aesthetic_scores")
    }
    assert {r["clip_id"]: r["aesthetic"] for r in rows} == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------------------- motion
def test_motion_measures_pan_speed_and_flags_static_clips(tmp_path):
    rng = np.random.default_rng(0)
    h, w, fps, n = 120, 160, 24, 60
    tex = np.kron(rng.normal(128, 40, (h // 8 + 1, (w + 4 * n) // 8 + 1, 3)), np.ones((8, 8, 1)))
    import cv2

    tex = cv2.GaussianBlur(tex.clip(0, 255).astype(np.uint8), (5, 5), 0)[:h]
    folder = tmp_path / "pans"
    speeds = {"static": 0, "pan1": 1, "pan3": 3}  # pixels per frame
    for name, speed in speeds.items():
        frames = (np.ascontiguousarray(tex[:, k * speed : k * speed + w]) for k in range(n))
        write_video(folder / f"{name}.mp4", frames, fps=fps, codec="libx264", width=w, height=h)
    ws = Workspace(tmp_path / "ws")
    ingest(ws, [str(folder)])
    run_stage(ws, ProbeStage(), progress=False)
    run_stage(ws, SceneStage(), progress=False)
    assert run_stage(ws, MotionStage(), progress=False).statuses == {"ok": 3}
    got = {Path(r["source_path"]).stem: r for r in ws.sql("SELECT * FROM clips")}
    assert got["static"]["motion"] < 1e-3 and got["static"]["static"] is True
    for name in ("pan1", "pan3"):  # short sides per second: speed / height * fps
        assert got[name]["motion"] == pytest.approx(speeds[name] / h * fps, rel=0.1)
        assert got[name]["static"] is False
    # another threshold is another setting: new rows, and the view shows them
    run_stage(ws, MotionStage(static_threshold=1.0), progress=False)
    assert {r["static"] for r in ws.sql("SELECT static FROM clips")} == {True}
    assert len(ws.sql("SELECT * FROM motion_scores")) == 6


# ------------------------------------------------------------------------------- dedup
def _embedded_manifest(ws: Workspace, x: np.ndarray, scores: dict[int, float]) -> list[str]:
    ids = [f"vid{k:04d}-0-48" for k in range(len(x))]
    write_clips(
        ws,
        [
            {
                "clip_id": cid,
                "video_id": cid[:7],
                "start_frame": 0,
                "end_frame": 48,
                "fps": 24.0,
                "width": 64,
                "height": 48,
            }
            for cid in ids
        ],
    )
    ws.write(
        "clip_embeddings",
        [
            {
                "row_id": f"{cid}:e",
                "clip_id": cid,
                "model_key": "e",
                "dim": x.shape[1],
                "embedding": x[k].astype("<f2").tobytes(),
                "scored_at": 1.0,
            }
            for k, cid in enumerate(ids)
        ],
    )
    write_scores(ws, {ids[k]: {"aesthetic": s} for k, s in scores.items()})
    return ids


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_dedup_groups_planted_near_duplicates_keeps_the_best_and_reruns_after_new_clips(tmp_path):
    rng = np.random.default_rng(0)
    x = _unit(rng.normal(size=(300, 64)))
    x[10], x[11] = _unit(x[5] + 0.01 * rng.normal(size=64)), _unit(x[5] + 0.01 * rng.normal(size=64))
    x[20] = x[7]
    ws = Workspace(tmp_path / "ws")
    ids = _embedded_manifest(ws, x, {5: 4.0, 10: 6.0, 11: 5.0, 7: 5.0})  # 20 unscored: 7 stays

    stats = run_stage(ws, DedupStage(), progress=False)
    assert stats.statuses == {"ok": 1}
    clips = {c["clip_id"]: c for c in ws.sql("SELECT * FROM clips")}
    assert len(clips) == 300  # nothing dropped
    dups = {cid: c["dup_of"] for cid, c in clips.items() if c["dup_of"]}
    assert dups == {ids[5]: ids[10], ids[11]: ids[10], ids[20]: ids[7]}
    assert {clips[ids[k]]["dup_group"] for k in (5, 10, 11)} == {ids[10]}
    assert all(
        c["dup_group"] == cid for cid, c in clips.items() if cid not in dups and cid not in (ids[10], ids[7])
    )
    (run,) = ws.sql("SELECT * FROM dedup_runs")
    assert (run["num_clips"], run["num_groups"], run["num_duplicates"], run["index"]) == (300, 2, 3, "flat")

    assert run_stage(ws, DedupStage(), progress=False).planned == 0  # same snapshot: nothing to do
    # a new, better-scored near-duplicate of clip 7 arrives: the groups are recomputed
    new = _unit(x[7] + 0.01 * rng.normal(size=64))
    write_clips(
        ws,
        [
            {
                "clip_id": "newvid-0-48",
                "video_id": "newvid",
                "start_frame": 0,
                "end_frame": 48,
                "fps": 24.0,
                "width": 64,
                "height": 48,
            }
        ],
    )
    ws.write(
        "clip_embeddings",
        [
            {
                "row_id": "newvid-0-48:e",
                "clip_id": "newvid-0-48",
                "model_key": "e",
                "dim": 64,
                "embedding": new.astype("<f2").tobytes(),
                "scored_at": 2.0,
            }
        ],
    )
    write_scores(ws, {"newvid-0-48": {"aesthetic": 9.0}}, key="later")
    assert run_stage(ws, DedupStage(), progress=False).statuses == {"ok": 1}
    clips = {c["clip_id"]: c for c in ws.sql("SELECT * FROM clips")}
    assert (clips[ids[7]]["dup_of"], clips[ids[20]]["dup_of"], clips["newvid-0-48"]["dup_of"]) == (
        "newvid-0-48",
        "newvid-0-48",
        None,
    )
    assert clips[ids[5]]["dup_of"] == ids[10]


def test_dedup_ivf_index_finds_the_planted_groups_of_the_exact_search(tmp_path):
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(2000, 64)))
    planted = {int(k): int(k) + 1000 for k in rng.choice(1000, 40, replace=False)}
    for a, b in planted.items():
        x[b] = _unit(x[a] + 0.01 * rng.normal(size=64))
    ws = Workspace(tmp_path / "ws")
    ids = _embedded_manifest(ws, x, {a: 5.0 for a in planted})
    run_stage(ws, DedupStage(exact_below=100, nprobe=4), progress=False)
    (run,) = ws.sql("SELECT index FROM dedup_runs")
    assert run["index"].startswith("ivf")
    dups = {
        c["clip_id"]: c["dup_of"]
        for c in ws.sql("SELECT clip_id, dup_of FROM clips WHERE dup_of IS NOT NULL")
    }
    assert dups == {ids[b]: ids[a] for a, b in planted.items()}


# ------------------------------------------------------------------------------- text match
def test_text_match_compares_caption_and_middle_frame_and_follows_new_captions(tmp_path, tiny, media):
    import open_clip

    ws = _scanned(tmp_path, media)
    clips = ws.sql("SELECT * FROM clips WHERE media_type = 'video' ORDER BY clip_id")
    captioned = {
        c["clip_id"]: {"caption": f"a red ball number {i}", "caption_status": "ok"}
        for i, c in enumerate(clips[:3])
    }
    write_scores(ws, captioned)
    stage = TextMatchStage(model=tiny["model"], pretrained=tiny["pretrained"])
    assert run_stage(ws, stage, progress=False).statuses == {"ok": 3}  # only captioned clips
    got = {r["clip_id"]: r for r in ws.sql("SELECT * FROM text_match_scores")}
    c = clips[0]
    middle = c["start_frame"] + (c["end_frame"] - c["start_frame"]) // 2
    image = _open_clip_reference(tiny, c["source_path"], [middle])
    model = open_clip.create_model(Path(tiny["model"]).stem, pretrained=tiny["pretrained"]).eval()
    tokens = open_clip.get_tokenizer(Path(tiny["model"]).stem)(["a red ball number 0"])
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    assert got[c["clip_id"]]["text_match"] == pytest.approx(float((image * text).sum()), abs=1e-4)
    assert got[c["clip_id"]]["frame"] == middle
    view = {r["clip_id"]: r["text_match"] for r in ws.sql("SELECT clip_id, text_match FROM clips")}
    assert view[c["clip_id"]] == got[c["clip_id"]]["text_match"] and view[clips[3]["clip_id"]] is None

    assert run_stage(ws, stage, progress=False).planned == 0
    write_scores(
        ws, {c["clip_id"]: {"caption": "a completely different caption", "caption_status": "ok"}}, key="v2"
    )
    assert [i["clip_id"] for i in plan(ws, stage)] == [c["clip_id"]]  # the new caption is pending
    run_stage(ws, stage, progress=False)
    assert (
        ws.sql("SELECT text_match FROM clips WHERE clip_id = ?", [c["clip_id"]])[0]["text_match"]
        != view[c["clip_id"]]
    )
