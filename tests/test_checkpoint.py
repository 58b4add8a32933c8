"""PixArt-α → STDiT loading parity with Open-Sora 1.0's loader, and the other checkpoint forms."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import CheckpointMismatchError, LoadReport, load_pretrained, save_weights
from models.stdit import STDiT

GOLDEN = Path(__file__).parent / "golden" / "opensora-v1.0"
ATOL = 1e-5


@pytest.fixture(scope="module")
def cfg() -> dict:
    return json.loads((GOLDEN / "stdit_tiny.json").read_text())


@pytest.fixture(scope="module")
def stdit_weights() -> dict[str, torch.Tensor]:
    g = load_file(str(GOLDEN / "stdit_tiny.safetensors"))
    return {k: v for k, v in g.items() if not k.startswith(("input.", "output."))}


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "stdit_from_pixart.safetensors"))


@pytest.fixture(scope="module")
def loader_log() -> dict:
    return json.loads((GOLDEN / "pixart_to_stdit.json").read_text())


def make(cfg: dict, sd: dict[str, torch.Tensor] | None = None, **overrides) -> STDiT:
    m = STDiT(**{**cfg["constructor_args"], **overrides})
    if sd is not None:
        m.load_state_dict(sd)
    return m.eval()


def check_pixart_result(m: STDiT, report: LoadReport, expected, loader_log) -> None:
    sd = m.state_dict()
    exp = {k: v for k, v in expected.items() if not k.startswith(("input.", "output."))}
    assert sd.keys() == exp.keys()
    for k in exp:
        assert torch.equal(sd[k], exp[k]), k
    assert report.missing == loader_log["load_state_dict_strict_false"]["missing_keys"]
    assert report.unexpected == loader_log["load_state_dict_strict_false"]["unexpected_keys"] == []
    assert sorted(report.matched) == sorted(loader_log["keys_overwritten_from_pixart"])
    assert report.mismatched == []
    with torch.no_grad():
        out = m(
            expected["input.x"], expected["input.timestep"], expected["input.y"], mask=expected["input.mask"]
        )
    torch.testing.assert_close(out, expected["output.forward"], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------- PixArt-α


def test_pixart_safetensors_loads_like_open_sora(cfg, stdit_weights, expected, loader_log):
    m = make(cfg, stdit_weights)
    report = load_pretrained(m, GOLDEN / "pixart_tiny.safetensors")
    check_pixart_result(m, report, expected, loader_log)
    text = str(report)
    assert "46/56" in text and "Conv2d -> Conv3d" in text and "attn_temp" in text


def test_pixart_pth_state_dict_wrapped(cfg, stdit_weights, expected, loader_log, tmp_path):
    path = tmp_path / "PixArt-XL-2-512x512.pth"
    torch.save({"state_dict": load_file(str(GOLDEN / "pixart_tiny.safetensors"))}, path)
    m = make(cfg, stdit_weights)
    report = load_pretrained(m, path)
    check_pixart_result(m, report, expected, loader_log)
    assert any("state_dict" in n for n in report.notes)


def test_pixart_into_meta_model_initialises_temporal_branch(cfg):
    with torch.device("meta"):
        m = STDiT(**cfg["constructor_args"])
    report = load_pretrained(m, GOLDEN / "pixart_tiny.safetensors")
    assert not any(t.is_meta for t in m.state_dict().values())
    assert sorted(report.initialized) == sorted(k for k in report.missing if "attn_temp" in k)
    for blk in m.blocks:  # fresh init: zero output projection, xavier qkv
        assert torch.count_nonzero(blk.attn_temp.proj.weight) == 0
        assert blk.attn_temp.qkv.weight.abs().sum() > 0
    assert torch.equal(m.pos_embed, STDiT(**cfg["constructor_args"]).pos_embed)
    pix = load_file(str(GOLDEN / "pixart_tiny.safetensors"))
    assert torch.equal(m.t_block[1].weight, pix["t_block.1.weight"])


# ---------------------------------------------------------------------------- Open-Sora / ours


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"ema": sd},
        lambda sd: {"model": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"ema": {f"module.{k}": v for k, v in sd.items()}, "step": 3},
    ],
    ids=["plain", "ema", "model", "module-prefix", "ema-module-prefix"],
)
def test_open_sora_pth_forms(cfg, stdit_weights, tmp_path, wrap):
    path = tmp_path / "OpenSora-v1-16x256x256.pth"
    torch.save(wrap(dict(stdit_weights)), path)
    m = make(cfg)
    report = load_pretrained(m, path)
    assert len(report.matched) == 54 and report.missing == ["pos_embed", "pos_embed_temporal"]
    assert report.ok
    for k, v in m.state_dict().items():
        assert torch.equal(v, stdit_weights[k]), k


def test_ema_preferred_over_model_and_selectable(cfg, stdit_weights, tmp_path):
    other = {k: v + 1 for k, v in stdit_weights.items()}
    torch.save({"model": other, "ema": stdit_weights}, tmp_path / "both.pth")
    m = make(cfg)
    load_pretrained(m, tmp_path / "both.pth")
    assert torch.equal(m.t_block[1].weight, stdit_weights["t_block.1.weight"])
    load_pretrained(m, tmp_path / "both.pth", use_ema=False)
    assert torch.equal(m.t_block[1].weight, other["t_block.1.weight"])


def test_our_checkpoint_directory(cfg, stdit_weights, tmp_path):
    src = make(cfg, stdit_weights)
    ckpt = tmp_path / "step_000100"
    save_weights(src, ckpt / "ema.safetensors")
    save_weights({k: torch.zeros_like(v) for k, v in src.state_dict().items()}, ckpt / "model.safetensors")
    m = make(cfg)
    report = load_pretrained(m, ckpt)
    assert any("ema.safetensors" in n for n in report.notes)
    assert torch.equal(m.final_layer.linear.weight, stdit_weights["final_layer.linear.weight"])
    load_pretrained(m, ckpt, use_ema=False)
    assert torch.count_nonzero(m.final_layer.linear.weight) == 0
    # a single safetensors file works too, and bf16 tensors are cast to the model's dtype
    save_file({k: v.bfloat16() for k, v in stdit_weights.items()}, str(tmp_path / "w.safetensors"))
    load_pretrained(m, tmp_path / "w.safetensors")
    assert m.final_layer.linear.weight.dtype == torch.float32


# ---------------------------------------------------------------------------- failures


def test_unrelated_checkpoint_raises_clearly(cfg, tmp_path):
    torch.save(
        {"state_dict": {"encoder.weight": torch.zeros(3), "decoder.bias": torch.zeros(2)}}, tmp_path / "x.pth"
    )
    with pytest.raises(CheckpointMismatchError, match=r"does not fit STDiT: matched 0 of 54"):
        load_pretrained(make(cfg), tmp_path / "x.pth")


def test_wrong_size_checkpoint_raises(cfg, tmp_path):
    small = STDiT(**{**cfg["constructor_args"], "hidden_size": 32, "num_heads": 2})
    save_weights(small, tmp_path / "small.safetensors")
    m = make(cfg)
    before = m.t_block[1].weight.clone()
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_pretrained(m, tmp_path / "small.safetensors")
    assert torch.equal(m.t_block[1].weight, before)  # nothing was loaded


def test_deeper_checkpoint_raises_on_unexpected_keys(cfg, tmp_path):
    deep = STDiT(**{**cfg["constructor_args"], "depth": 8})
    save_weights(deep, tmp_path / "deep.safetensors")
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        load_pretrained(make(cfg), tmp_path / "deep.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_pickles_are_refused(cfg, tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointMismatchError, match="Arbitrary pickled objects are refused"):
        load_pretrained(make(cfg), path)


def test_missing_files(cfg, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_pretrained(make(cfg), tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="without"):
        load_pretrained(make(cfg), tmp_path)

    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="hpcai-tech/Open-Sora.*pass the file path"):
        load_pretrained(make(cfg), "OpenSora-v1-HQ-16x512x512.pth")


def test_released_name_found_in_pretrained_models(cfg, stdit_weights, tmp_path, monkeypatch):
    (tmp_path / "pretrained_models").mkdir()
    torch.save(dict(stdit_weights), tmp_path / "pretrained_models" / "OpenSora-v1-16x256x256.pth")
    monkeypatch.chdir(tmp_path)
    m = make(cfg)
    assert load_pretrained(m, "OpenSora-v1-16x256x256.pth").ok


def test_build_stdit_from_pretrained(cfg, stdit_weights, tmp_path):
    from models.stdit import build_stdit

    save_weights(stdit_weights, tmp_path / "w.safetensors")
    args = {
        k: v for k, v in cfg["constructor_args"].items() if k not in ("depth", "hidden_size", "num_heads")
    }
    m = build_stdit(
        "STDiT-XL/2",
        from_pretrained=str(tmp_path / "w.safetensors"),
        depth=2,
        hidden_size=64,
        num_heads=4,
        **args,
    )
    for k, v in m.state_dict().items():
        assert torch.equal(v, stdit_weights[k]), k


# ---------------------------------------------------------------------------- our config travels with the weights


def test_config_records_every_constructor_argument(cfg):
    import inspect

    m = STDiT(**{**cfg["constructor_args"], "dtype": torch.bfloat16, "class_dropout_prob": 0.3})
    assert set(m.config) == set(inspect.signature(STDiT).parameters)
    assert m.config["dtype"] == "bfloat16" and m.config["class_dropout_prob"] == 0.3
    assert m.config["input_size"] == list(cfg["constructor_args"]["input_size"])
    rebuilt = STDiT(**json.loads(json.dumps(m.config)))
    assert rebuilt.config == m.config


def test_checkpoint_directory_rebuilds_its_model(cfg, stdit_weights, expected, tmp_path):
    from models.stdit import build_from_checkpoint

    src = make(cfg, space_scale=0.25, time_scale=2.0)
    load_pretrained(src, dict(stdit_weights))  # position tables stay those of this config
    ckpt = tmp_path / "step_000100"
    save_weights(src, ckpt / "ema.safetensors")
    save_weights({k: torch.zeros_like(v) for k, v in src.state_dict().items()}, ckpt / "model.safetensors")
    stored = json.loads((ckpt / "config.json").read_text())
    assert stored == {"model_class": "STDiT", "constructor_args": src.config}

    m = STDiT.from_pretrained(ckpt).eval()  # no constructor arguments repeated
    assert m.config == src.config and m.space_scale == 0.25 and m.time_scale == 2.0
    for k, v in src.state_dict().items():  # EMA weights, and the position tables of this config
        assert torch.equal(m.state_dict()[k], v), k
    x, t, y, mask = (expected[f"input.{n}"] for n in ("x", "timestep", "y", "mask"))
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, y, mask=mask), src(x, t, y, mask=mask), atol=0, rtol=0)
    raw = build_from_checkpoint(ckpt, use_ema=False)
    assert torch.count_nonzero(raw.final_layer.linear.weight) == 0

    # a single file of ours carries the config in its header; overrides change the size
    bigger = build_from_checkpoint(ckpt / "ema.safetensors", input_size=(8, 16, 16))
    assert bigger.input_size == (8, 16, 16) and bigger.pos_embed.shape[1] == 64
    assert torch.equal(bigger.t_block[1].weight, stdit_weights["t_block.1.weight"])


def test_state_dict_saved_with_explicit_config(cfg, stdit_weights, tmp_path):
    from models.checkpoint import read_model_config

    args = make(cfg).config
    save_weights(stdit_weights, tmp_path / "ckpt" / "ema.safetensors", config=args)
    assert read_model_config(tmp_path / "ckpt") == args
    m = STDiT.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(m.t_block[1].weight, stdit_weights["t_block.1.weight"])


def test_config_json_of_bare_constructor_arguments(cfg, stdit_weights, tmp_path):
    """The trainer's checkpoint folders hold the constructor arguments alone in config.json."""
    src = make(cfg, stdit_weights)
    save_weights(src.state_dict(), tmp_path / "step-00000120" / "ema.safetensors")
    (tmp_path / "step-00000120" / "config.json").write_text(json.dumps(cfg["constructor_args"]))
    m = STDiT.from_pretrained(tmp_path / "step-00000120")
    assert m.config == src.config
    assert torch.equal(m.final_layer.linear.weight, stdit_weights["final_layer.linear.weight"])


def test_released_checkpoints_carry_no_config(cfg, stdit_weights, tmp_path):
    from models.checkpoint import read_model_config
    from models.stdit import build_from_checkpoint

    torch.save(dict(stdit_weights), tmp_path / "OpenSora-v1-16x256x256.pth")
    (tmp_path / "opensora_run").mkdir()
    torch.save(dict(stdit_weights), tmp_path / "opensora_run" / "ema.pt")
    save_file(dict(stdit_weights), str(tmp_path / "plain.safetensors"))
    for source in ("OpenSora-v1-16x256x256.pth", "opensora_run", "plain.safetensors"):
        assert read_model_config(tmp_path / source) is None
        with pytest.raises(FileNotFoundError, match="carries no model config.*load_pretrained"):
            build_from_checkpoint(tmp_path / source)
    m = make(cfg)  # still loaded as before, with the model built by the caller
    assert load_pretrained(m, tmp_path / "OpenSora-v1-16x256x256.pth").ok


def test_bad_or_incomplete_checkpoint_of_ours_raises(cfg, stdit_weights, tmp_path):
    src = make(cfg, stdit_weights)
    save_weights(src, tmp_path / "broken" / "ema.safetensors")
    (tmp_path / "broken" / "config.json").write_text('{"model_class": "STDiT", "constructor_args": ')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        STDiT.from_pretrained(tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text(
        '{"model_class": "AutoencoderKL", "constructor_args": {}}'
    )
    with pytest.raises(ValueError, match="not an STDiT config: expected STDiT constructor arguments"):
        STDiT.from_pretrained(tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(
        ValueError, match=r"not an STDiT config: unknown constructor arguments \['_class_name'\]"
    ):
        STDiT.from_pretrained(tmp_path / "broken")

    partial = {k: v for k, v in src.state_dict().items() if "blocks.1." not in k}
    save_weights(partial, tmp_path / "partial" / "ema.safetensors", config=src.config)
    with pytest.raises(CheckpointMismatchError, match="does not fit STDiT"):
        STDiT.from_pretrained(tmp_path / "partial")


# ------------------------------------------------------------------------------ export to Open-Sora's .pth
def test_export_ckpt_writes_the_pth_open_soras_stdit_loads_strictly_and_round_trips(
    cfg, stdit_weights, expected, tmp_path
):
    """The golden state dict holds Open-Sora 1.0's own key names and shapes (their STDiT's state_dict):
    the exported file must have exactly those (what `load_state_dict(strict=True)` checks), EMA weights
    by default, and load back through our loader to the same outputs as their model."""
    import typer
    from typer.testing import CliRunner

    from models.export_ckpt import export_ckpt

    golden = load_file(str(GOLDEN / "stdit_tiny.safetensors"))
    src = make(cfg, stdit_weights)
    run = tmp_path / "run"
    save_weights(src, run / "ema.safetensors")
    save_weights({k: torch.zeros_like(v) for k, v in src.state_dict().items()}, run / "model.safetensors")

    app = typer.Typer()
    app.command()(export_ckpt)
    result = CliRunner().invoke(app, [str(run), "--format", "opensora-pth"])
    assert result.exit_code == 0, result.output
    sd = torch.load(run / "opensora.pth", map_location="cpu", weights_only=True)
    assert (
        isinstance(sd, dict) and sd.keys() == stdit_weights.keys()
    )  # no wrapper, no prefix, buffers included
    for k, v in stdit_weights.items():
        assert sd[k].dtype == torch.float32 and torch.equal(sd[k], v), k  # the EMA weights

    back = make(cfg)
    assert load_pretrained(back, run / "opensora.pth", strict_min_fraction=1.0).ok
    x, t, y, mask = (golden[f"input.{n}"] for n in ("x", "timestep", "y", "mask"))
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, y, mask=mask), golden["output.forward"], atol=ATOL, rtol=0)
        torch.testing.assert_close(back(x, t, y, mask=mask), src(x, t, y, mask=mask), atol=0, rtol=0)

    assert CliRunner().invoke(app, [str(run), "--no-ema", "-o", str(tmp_path / "raw.pth")]).exit_code == 0
    raw = torch.load(tmp_path / "raw.pth", weights_only=True)
    assert torch.count_nonzero(raw["final_layer.linear.weight"]) == 0
    bad = CliRunner().invoke(app, [str(tmp_path / "nope")])
    assert bad.exit_code == 1 and "error:" in bad.output and "Traceback" not in bad.output


def test_stdit_xl2_keys_follow_open_soras_layout():
    """STDiT-XL/2 has Open-Sora 1.0's key names: the golden tiny model's, with 28 blocks, and their shapes."""
    import re

    from models.stdit import build_stdit

    golden = [
        k
        for k in load_file(str(GOLDEN / "stdit_tiny.safetensors"))
        if not k.startswith(("input.", "output."))
    ]
    per_block = sorted({re.sub(r"^blocks\.\d+\.", "", k) for k in golden if k.startswith("blocks.")})
    want = {k for k in golden if not k.startswith("blocks.")} | {
        f"blocks.{i}.{k}" for i in range(28) for k in per_block
    }
    with torch.device("meta"):
        xl = build_stdit("STDiT-XL/2", input_size=(16, 32, 32), space_scale=0.5)
    sd = xl.state_dict()
    assert set(sd) == want
    assert sd["x_embedder.proj.weight"].shape == (1152, 4, 1, 2, 2) and sd["pos_embed"].shape == (
        1,
        256,
        1152,
    )
    assert sd["y_embedder.y_embedding"].shape == (120, 4096) and sd["final_layer.linear.weight"].shape == (
        32,
        1152,
    )


def test_checkpoint_module_knows_no_model_class():
    """models/stdit.py imports models/checkpoint.py, never the reverse (issue 15: no import circle)."""
    import subprocess
    import sys

    code = "import sys, models.checkpoint; assert 'models.stdit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    source = (Path(__file__).parents[1] / "models" / "checkpoint.py").read_text()
    assert "from .stdit" not in source and "models.stdit import" not in source
