"""Text -> video pipeline and the ``sample`` CLI on tiny random local models."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from models.pipeline import (
    TextToVideoPipeline,
    load_stdit_config,
    save_contact_sheet,
    save_gif,
    save_mp4,
    to_uint8_frames,
)
from models.tiny import TINY_MAX_LEN, save_tiny_stdit, save_tiny_t5, save_tiny_vae_x8

GOLDEN = Path(__file__).parent / "golden" / "opensora-v1.0"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    vae = save_tiny_vae_x8(root / "vae")
    t5 = save_tiny_t5(root / "t5")
    ckpt, cfg = save_tiny_stdit(root / "stdit.safetensors", root / "stdit.json")
    return dict(vae=str(vae), t5=str(t5), ckpt=str(ckpt), config=str(cfg))


def _pipe(parts, **kwargs):
    return TextToVideoPipeline.from_paths(
        parts["ckpt"],
        vae=parts["vae"],
        text_encoder=parts["t5"],
        model=parts["config"],
        num_frames=4,
        height=64,
        width=64,
        device="cpu",
        dtype="fp32",
        **kwargs,
    )


def test_pipeline_iddpm_and_dpm_solver(parts):
    pipe = _pipe(parts, sampler="iddpm", steps=3)
    assert pipe.latent_size == (4, 8, 8) and pipe.video_size == (4, 64, 64)
    assert pipe.text_encoder.model_max_length == TINY_MAX_LEN
    videos = pipe(["a red ball", "a blue cube"], seed=0, progress=False)
    assert len(videos) == 2
    for v in videos:
        assert v.shape == (4, 64, 64, 3) and v.dtype == np.uint8
    again = pipe(["a red ball", "a blue cube"], seed=0, progress=False)
    np.testing.assert_array_equal(videos[0], again[0])

    fast = _pipe(parts, sampler="dpm-solver", steps=4, cfg_channels=3)
    lat = fast.sample_latents(["a red ball"], seed=1, progress=False)
    assert lat.shape == (1, 4, 4, 8, 8) and torch.isfinite(lat).all()


def test_pipeline_checkpoint_is_loaded(parts):
    from safetensors.torch import load_file

    pipe = _pipe(parts, steps=2)
    stored = load_file(parts["ckpt"])
    torch.testing.assert_close(pipe.stdit.blocks[0].attn.qkv.weight, stored["blocks.0.attn.qkv.weight"])
    # The null caption used by the sampler is the checkpoint's y_embedding.
    torch.testing.assert_close(pipe.text_encoder.null(1)[0, 0], stored["y_embedder.y_embedding"])


def test_pipeline_rejects_bad_model(parts):
    with pytest.raises(ValueError):
        _pipe(parts, sampler="nope")
    with pytest.raises(ValueError):
        TextToVideoPipeline.from_paths(None, vae=parts["vae"], text_encoder=parts["t5"], model="STDiT-XXL/9")


def test_load_stdit_config(parts):
    assert load_stdit_config("STDiT-XL/2") == ("STDiT-XL/2", {})
    name, args = load_stdit_config(str(GOLDEN / "stdit_tiny.json"))
    assert name is None and args["hidden_size"] == 64 and args["caption_channels"] == 32
    name, args = load_stdit_config(parts["config"])
    assert args["model_max_length"] == TINY_MAX_LEN


def test_to_uint8_frames():
    v = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 5, 1, 1).expand(3, 5, 1, 1)
    frames = to_uint8_frames(v)
    assert frames.shape == (5, 1, 1, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]


def test_writers(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(6, 35, 47, 3), dtype=np.uint8)  # odd sizes get padded
    mp4 = save_mp4(frames, tmp_path / "v.mp4", fps=8)
    with av.open(str(mp4)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (36, 48, 3)
    gif = save_gif(frames, tmp_path / "v.gif", fps=8)
    with Image.open(gif) as im:
        assert im.n_frames == 6 and im.size == (47, 35)
    sheet = save_contact_sheet(frames, tmp_path / "v.png", cols=3)
    with Image.open(sheet) as im:
        assert im.size == (3 * (47 + 2) + 2, 2 * (35 + 2) + 2)


def test_sample_cli(parts, tmp_path):
    from models.sample_cli import sample

    app = typer.Typer()
    app.command()(sample)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat playing piano\n\n")
    out = tmp_path / "out"
    args = [
        "--prompt",
        "a red ball bouncing",
        "--prompt-file",
        str(prompts),
        "--ckpt",
        parts["ckpt"],
        "--out",
        str(out),
        "--vae",
        parts["vae"],
        "--text-encoder",
        parts["t5"],
        "--model",
        parts["config"],
        "--num-frames",
        "4",
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "3",
        "--seed",
        "7",
        "--fps",
        "4",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = json.loads((out / "samples.json").read_text())
    assert [s["prompt"] for s in meta["samples"]] == ["a red ball bouncing", "a cat playing piano"]
    for record in meta["samples"]:
        with av.open(record["mp4"]) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == 4 and frames[0].shape == (64, 64, 3)
        assert Path(record["gif"]).is_file() and Path(record["contact_sheet"]).is_file()

    no_prompt = CliRunner().invoke(app, ["--ckpt", parts["ckpt"], "--out", str(out)])
    assert no_prompt.exit_code != 0


def test_sample_cli_rebuilds_the_model_from_our_checkpoint(parts, tmp_path):
    """``sample --ckpt DIR`` with no model arguments: the checkpoint's config.json builds the STDiT."""
    from models.checkpoint import save_weights
    from models.sample_cli import sample
    from models.stdit import STDiT

    trained = STDiT.from_pretrained(parts["ckpt"], input_size=(2, 4, 4))  # 2 frames x 32 x 32 pixels
    ckpt = tmp_path / "step_000100"
    save_weights(trained, ckpt / "ema.safetensors")
    app = typer.Typer()
    app.command()(sample)
    out = tmp_path / "out"
    args = [
        "-p",
        "a red ball",
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        "--vae",
        parts["vae"],
        "--text-encoder",
        parts["t5"],
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    settings = json.loads((out / "samples.json").read_text())["settings"]
    assert settings["stdit_config"] == trained.config
    assert (settings["num_frames"], settings["height"], settings["width"]) == (2, 32, 32)
    with av.open(str(next(out.glob("*.mp4")))) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (32, 32, 3)

    # the weights are the checkpoint's; sampling at another size keeps them
    pipe = TextToVideoPipeline.from_paths(
        str(ckpt), vae=parts["vae"], text_encoder=parts["t5"], num_frames=4, height=64, width=64
    )
    assert pipe.latent_size == (4, 8, 8) and pipe.stdit.config["hidden_size"] == trained.config["hidden_size"]
    for k, v in trained.state_dict().items():
        if k not in ("pos_embed", "pos_embed_temporal"):
            assert torch.equal(pipe.stdit.state_dict()[k], v), k


def test_cli_registers_sample_command():
    """``python cli.py sample`` is wired."""
    from click.testing import CliRunner as ClickRunner

    import cli

    result = ClickRunner().invoke(cli.app, ["sample", "--help"])
    assert result.exit_code == 0 and "--cfg-channels" in result.output


def test_sample_from_a_run_folder_anywhere(tmp_path):
    """A run folder records its VAE and T5 (relative to itself): `sample --ckpt RUN` needs nothing
    else, from any folder and after the runs are moved; a missing model is one line, no traceback."""
    import shutil
    import subprocess

    from models.checkpoint import save_weights
    from models.run_models import MODELS_FILE, record_models
    from models.stdit import STDiT
    from models.tiny import tiny_stdit_config
    from tests.conftest import PYTHON, ROOT, cli_env

    runs = tmp_path / "runs"
    vae, t5 = save_tiny_vae_x8(runs / "models" / "vae"), save_tiny_t5(runs / "models" / "t5")
    save_weights(STDiT(**tiny_stdit_config()), runs / "hq" / "ema.safetensors")
    record_models(runs / "hq", str(vae), str(t5))
    assert json.loads((runs / "hq" / MODELS_FILE).read_text())["vae"] == {"path": "../models/vae"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def sample(run) -> subprocess.CompletedProcess:
        args = [
            "sample",
            "--ckpt",
            str(run),
            "--prompt",
            "a red ball",
            "--num-frames",
            "1",
            "--height",
            "64",
            "--width",
            "64",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            "out",
            "--no-progress",
            "--no-gif",
        ]
        return subprocess.run(
            [PYTHON, str(ROOT / "cli.py"), *args],
            cwd=elsewhere,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    proc = sample(runs / "hq")
    assert proc.returncode == 0, proc.stderr[-2000:]
    moved = tmp_path / "moved" / "runs"
    shutil.move(runs, moved)
    proc = sample(moved / "hq")
    assert proc.returncode == 0, proc.stderr[-2000:]
    settings = json.loads((elsewhere / "out" / "samples.json").read_text())["settings"]
    assert settings["vae"] == str(moved / "models" / "vae")
    shutil.rmtree(moved / "models" / "vae")
    proc = sample(moved / "hq")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "vae is missing" in proc.stderr, proc.stderr
