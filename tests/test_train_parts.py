"""Trainer parts in-process: config, buckets, span decoding, the resumable sampler, selections,
STDiT reshaping, EMA; then short single-process runs (over-fitting, a NaN stop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from demo.sample_videos import SampleSpec, make_sample
from mediaio import read_frames
from training.bucket_sampler import BucketBatchSampler
from training.buckets import Bucket, assign_bucket, size_for
from training.config import ConfigError, DataConfig, parse_overrides, resolve_config
from training.data import ClipDataset, SampleKey, collate, window_frames
from training.selection import SelectionError, check_files, normalise, read_set


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("train-videos")
    specs = {
        "wide": SampleSpec("wide", 320, 180, 24, "libx264", "mp4", [40, 40], seed=11),
        "tall": SampleSpec("tall", 144, 256, 24, "libx264", "mp4", [40, 40], seed=12),
        "square": SampleSpec("square", 160, 160, 25, "mpeg4", "mp4", [80], seed=13),
    }
    return {name: Path(make_sample(spec, out).path) for name, spec in specs.items()}


def row(path: Path, start: int, end: int, width: int, height: int, caption: str = "a scene") -> dict:
    return dict(
        clip_id=f"{path.stem}-{start}-{end}",
        source_path=str(path),
        path=None,
        start_frame=start,
        end_frame=end,
        fps=24.0,
        width=width,
        height=height,
        caption=caption,
    )


# ------------------------------------------------------------------------------------ config
def test_config_layers_and_overrides(tmp_path):
    video = resolve_config("video")
    assert (video.data.num_frames, video.data.frame_interval, video.optim.lr) == ([16], 3, 2e-5)
    assert (video.train.ema_decay, video.train.caption_dropout, video.optim.grad_clip) == (0.9999, 0.1, 1.0)
    assert resolve_config("image").data.num_frames == [1]
    tiny = resolve_config("hq", tiny=True)
    assert tiny.model.tiny and tiny.data.resolution == [96]
    file = tmp_path / "c.toml"
    file.write_text("[optim]\nlr = 3e-4\n[data]\nresolution = [512]\n")
    cfg = resolve_config(
        "hq", config_file=file, overrides=["optim.lr=1e-4", "data.num_frames=8", "model.init_from=x"]
    )
    assert (cfg.optim.lr, cfg.data.resolution, cfg.data.num_frames, cfg.model.init_from) == (
        1e-4,
        [512],
        [8],
        "x",
    )
    assert parse_overrides(["a.b=[1, 2]", "c=true", "d=some text"]) == {
        "a": {"b": [1, 2]},
        "c": True,
        "d": "some text",
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key"),
        ("data.batch_size=two", "expected int"),
        ("train.plugin=fsdp", "plugin"),
        ("data.aspect_ratios=['wide']", "aspect ratio"),
        ("noequals", "key=value"),
    ],
)
def test_config_rejects_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("video", overrides=[override])


# ------------------------------------------------------------------------------------ buckets
def test_buckets_by_aspect_resolution_and_frames():
    cfg = DataConfig(num_frames=[4, 8], frame_interval=2, resolution=[256, 512])
    assert size_for(256, 16 / 9, 16) == (192, 336) and size_for(256, 1.0, 16) == (256, 256)
    r = dict(start_frame=0, end_frame=100)
    assert assign_bucket({**r, "width": 1280, "height": 720}, cfg, 16) == Bucket(8, 384, 688)  # 512 px, 16:9
    assert assign_bucket({**r, "width": 480, "height": 640}, cfg, 16) == Bucket(8, 288, 224)  # 256 px, 3:4
    assert assign_bucket({**r, "end_frame": 10, "width": 320, "height": 320}, cfg, 16) == Bucket(4, 256, 256)
    assert assign_bucket({**r, "end_frame": 6, "width": 320, "height": 320}, cfg, 16) is None  # too short


def test_window_frames():
    assert window_frames(10, 20, 1, 3, None) == [14]  # centred
    assert window_frames(0, 7, 4, 2, None) == [0, 2, 4, 6]
    picks = {tuple(window_frames(0, 30, 4, 3, np.random.default_rng(i))) for i in range(20)}
    assert len(picks) > 1 and all(p[0] >= 0 and p[-1] < 30 and np.all(np.diff(p) == 3) for p in picks)


# ------------------------------------------------------------------------------------ data
def test_span_decoding_matches_whole_file_decode(videos):
    """The sample's frames are exactly the source frames at the picked indices (resized and cropped)."""
    cfg = DataConfig(num_frames=[4], frame_interval=3, resolution=[64], flip=False)
    rows = [row(videos["wide"], 41, 79, 320, 180)]
    ds = ClipDataset(rows, cfg, multiple=16, seed=0)
    item = ds[SampleKey(0, 5)]
    assert item["video"].shape == (3, 4, 48, 80) and item["caption"] == "a scene"
    assert -1 <= item["video"].min() and item["video"].max() <= 1
    indices = window_frames(41, 79, 4, 3, np.random.default_rng([0, 5, 0]))
    whole = read_frames(videos["wide"], 0, 80)  # decode everything, then pick
    from training.data import resize_crop, to_tensor

    expected = to_tensor([resize_crop(whole[i], 48, 80) for i in indices])
    torch.testing.assert_close(item["video"], expected, atol=0, rtol=0)
    assert torch.equal(ds[SampleKey(0, 5)]["video"], item["video"]), "a key always gives the same sample"


def test_flip_image_stage_and_decode_failures(videos, tmp_path):
    cfg = DataConfig(num_frames=[1], frame_interval=1, resolution=[64], flip=True)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(videos["tall"].read_bytes()[:2000])
    rows = [row(videos["tall"], 0, 39, 144, 256), row(broken, 0, 39, 144, 256)]
    ds = ClipDataset(rows, cfg, multiple=16, seed=1)
    flips = set()
    for epoch in range(12):
        v = ds[SampleKey(0, epoch)]["video"]
        assert v.shape == (3, 1, 80, 48)
        rng = np.random.default_rng([1, epoch, 0])
        window_frames(0, 39, 1, 1, rng)
        flips.add(bool(rng.random() < 0.5))
    assert flips == {True, False}, "both flipped and unflipped samples occur"
    bad = ds[SampleKey(1, 0)]
    assert "video" not in bad and bad["error"]
    batch = collate([ds[SampleKey(0, 0)], bad])
    assert batch["video"].shape[0] == 1 and batch["failed"] == [(rows[1]["clip_id"], bad["error"])]
    assert collate([bad])["video"] is None


# ------------------------------------------------------------------------------------ sampler
def test_sampler_shards_buckets_and_resumes():
    buckets = [Bucket(1, 32, 32)] * 7 + [Bucket(1, 32, 48)] * 5 + [None] * 2
    ranks = [BucketBatchSampler(buckets, 2, world_size=2, rank=r, seed=3) for r in range(2)]
    for s in ranks:
        s.set_epoch(4)
    plans = [list(s) for s in ranks]
    assert len(plans[0]) == len(plans[1]) == 2 + 2  # ceil(7/4) + ceil(5/4)
    seen = set()
    for b0, b1 in zip(*plans, strict=True):
        shapes = {buckets[k.index] for k in b0 + b1}
        assert len(shapes) == 1, "all ranks run one bucket per step"
        seen |= {k.index for k in b0 + b1}
        assert all(k.epoch == 4 for k in b0 + b1)
    assert seen == set(range(12)), "every usable row once per epoch (none of the too-short ones)"
    ranks[0].set_epoch(4, start_step=3)
    assert list(ranks[0]) == plans[0][3:], "a resumed epoch continues where the checkpoint stopped"
    other = BucketBatchSampler(buckets, 2, world_size=2, rank=0, seed=3)
    other.set_epoch(5)
    assert list(other) != plans[0], "each epoch has its own order"


# ------------------------------------------------------------------------------------ selections
def test_read_set_versions_and_missing_files(tmp_path, videos):
    table = pa.table({k: [v] for k, v in row(videos["wide"], 0, 39, 320, 180).items()})
    for version, n in ((1, 1), (2, 2)):
        folder = tmp_path / "sets" / "hq" / f"v{version}"
        folder.mkdir(parents=True)
        pq.write_table(pa.concat_tables([table] * n), folder / "rows.parquet")
        (folder / "card.json").write_text(json.dumps({"name": "hq", "version": version, "recipe": "r.sql"}))
    rows, card = read_set(tmp_path, "hq")
    assert (card["version"], rows.num_rows) == (2, 2)
    rows, card = read_set(tmp_path, "hq@v1")
    assert (card["version"], rows.num_rows, card["recipe"]) == (1, 1, "r.sql")
    with pytest.raises(SelectionError, match="no version 7"):
        read_set(tmp_path, "hq@v7")
    with pytest.raises(SelectionError, match="no curated set"):
        read_set(tmp_path, "nope")
    no_caption = normalise(table.drop(["caption", "clip_id"]))
    assert no_caption["caption"].to_pylist() == [""] and no_caption["clip_id"][0].as_py().endswith("-0-39")
    gone = [row(tmp_path / f"moved{i}.mp4", 0, 10, 10, 10) for i in range(7)] + [
        row(videos["wide"], 0, 9, 9, 9)
    ]
    with pytest.raises(SelectionError, match=r"7 of 8 clips have no readable file") as err:
        check_files(gone)
    assert "moved0.mp4" in str(err.value) and "and 2 more" in str(err.value)
    with pytest.raises(SelectionError, match="lacks column"):
        normalise(table.drop(["start_frame"]))


# ------------------------------------------------------------------------------------ models
def test_stdit_reshaped_for_a_bucket_equals_a_fresh_model():
    from models.stdit import STDiT
    from models.tiny import tiny_stdit_config
    from training.build import set_latent_shape

    cfg = tiny_stdit_config()
    torch.manual_seed(0)
    model = STDiT(**cfg).eval()
    fresh = STDiT(**{**cfg, "input_size": (2, 6, 10)}).eval()
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("pos_embed")}
    fresh.load_state_dict(shared, strict=False)
    set_latent_shape(model, (2, 6, 10))
    x, t = torch.randn(2, 4, 2, 6, 10), torch.tensor([3, 700])
    y = torch.randn(2, 1, cfg["model_max_length"], cfg["caption_channels"])
    torch.testing.assert_close(model(x, t, y), fresh(x, t, y), atol=0, rtol=0)
    assert torch.equal(model.pos_embed, fresh.pos_embed)


def test_ema_is_an_fp32_moving_average():
    from training.weights import EMA

    w = {"a": torch.zeros(3)}
    ema = EMA(w)
    w["a"] += 1.0
    ema.update(w, decay=0.9)
    ema.update(w, decay=0.9)
    torch.testing.assert_close(ema.shadow["a"], torch.full((3,), 1 - 0.81))
    assert ema.shadow["a"].dtype == torch.float32 and ema.shadow["a"] is not w["a"]


# ------------------------------------------------------------------------------------ short runs
@pytest.fixture()
def one_clip_set(tmp_path, videos) -> Path:
    """A curated set whose rows are one 1-frame span twice (the second is held out for validation)."""
    folder = tmp_path / "ws" / "sets" / "one" / "v1"
    folder.mkdir(parents=True)
    rows = [{**row(videos["square"], 30, 31, 160, 160), "clip_id": cid} for cid in ("a", "b")]
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")
    (folder / "card.json").write_text(json.dumps({"name": "one", "version": 1, "recipe": "by hand"}))
    return tmp_path / "ws"


def run_in_process(ws: Path, run_dir: Path, overrides: list[str]) -> Path:
    from training.config import resolve_config
    from training.dist import shutdown
    from training.run import Source, launch

    base = [
        f"model.tiny_dir={run_dir.parent / 'tiny'}",
        "train.progress=false",
        "data.num_workers=0",
        "data.flip=false",
        "data.val_min_rows=2",
        "data.val_fraction=0.5",
    ]
    cfg = resolve_config("image", tiny=True, overrides=base + overrides)
    try:
        return launch(cfg, run_dir=run_dir, source=Source(ws, set_spec="one"), resume=False)
    finally:
        shutdown()


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_overfitting_one_batch_lowers_the_loss(one_clip_set, tmp_path):
    run = run_in_process(
        one_clip_set,
        tmp_path / "run",
        ["train.max_steps=30", "train.val_every=10", "train.ckpt_every=30", "optim.lr=3e-3"],
    )
    m = read_metrics(run)
    losses = [r["loss"] for r in m]
    assert len(m) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    val = [r["val_loss"] for r in m if "val_loss" in r]  # fixed timesteps and noise: comparable
    assert len(val) == 3 and val[-1] < 0.8 * val[0], val
    assert {r["bucket"][0] for r in m} == {1}, "image stage: 1-frame samples"
    card = json.loads((run / "data" / "card.json").read_text())
    assert (card["name"], card["version"], card["row_count"]) == ("one", 1, 2)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(one_clip_set, tmp_path):
    from training.errors import RunError

    run_dir = tmp_path / "nan"
    with pytest.raises(RunError, match=r"non-finite (loss|gradient norm) .* at step 2: stopping") as err:
        run_in_process(
            one_clip_set,
            run_dir,
            ["train.max_steps=5", "train.ckpt_every=1", "optim.lr=1e30", "optim.grad_clip=0"],
        )
    assert "step-00000001" in str(err.value)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-00000001"]
    assert (run_dir / "checkpoints" / "latest").resolve().name == "step-00000001"
    assert [r["step"] for r in read_metrics(run_dir)] == [1]
