"""The `vae` stage: an AutoencoderKL trained on a set's frames, taken by STDiT stages by run folder."""

from __future__ import annotations

import json

from demo.sample_videos import learnable_rows, make_learnable_set
from training.config import resolve_config
from training.vae_train import VAE_DIR, VaeConfig, train_vae, vae_path


def test_vae_stage_trains_and_is_taken_by_run_folder(tmp_path):
    table = make_learnable_set(tmp_path / "shots", size=32, shot_s=1.0, videos=2, shots_per_video=4)
    header = table.read_text().splitlines()[0]
    assert header == "videoID,url,timestamp,caption"
    assert "ball moves" in table.read_text() and "background" in table.read_text()
    cfg = VaeConfig(
        resolution=32,
        crop=16,
        frames_per_clip=2,
        block_out_channels=[8, 8],
        steps=4,
        permute_colours=True,
        hue_rotate=True,
        batch_size=4,
        val_every=2,
        val_fraction=0.25,
    )
    run = tmp_path / "runs" / "vae"
    summary = train_vae(
        learnable_rows(table, size=32, frames_per_shot=12), {"name": "image", "version": 1}, run, cfg
    )
    assert (run / VAE_DIR / "config.json").is_file() and (run / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 2, 4]
    assert summary["val_clips"] and summary["val_psnr"] > 0
    assert (
        vae_path(run) == run / VAE_DIR
        and vae_path("stabilityai/sd-vae-ft-ema") == "stabilityai/sd-vae-ft-ema"
    )
    assert train_vae([], {}, run, cfg) == summary  # a finished run is not trained again
    from training.build import encoder_paths

    stage = resolve_config(
        "image", tiny=True, overrides=[f"model.vae={run}", f"model.tiny_dir={tmp_path / 'tiny'}"]
    )
    vae, t5 = encoder_paths(stage)
    assert vae == str(run / VAE_DIR) and t5.startswith(str(tmp_path / "tiny"))


def test_hue_rotate_turns_colours_about_the_grey_axis():
    import math

    import torch

    from training.vae_train import hue_rotate

    x = torch.rand(3, 3, 4, 4) * 2 - 1
    y = hue_rotate(x, torch.tensor([0.0, 2 * math.pi / 3, 1.0]))
    assert torch.allclose(y[0], x[0])  # angle 0: unchanged
    assert torch.allclose(y[1], x[1, [2, 0, 1]], atol=1e-6)  # a third of a turn: channels cycle
    assert not torch.allclose(y[2], x[2])
    grey = torch.full((1, 3, 2, 2), 0.3)
    assert torch.allclose(hue_rotate(grey, torch.tensor([1.0])), grey)  # greys keep their level
