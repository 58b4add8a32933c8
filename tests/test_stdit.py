"""STDiT parity with the Open-Sora 1.0 golden tensors, plus the options we add (meta device,
gradient checkpointing, bf16, CPU caption dropout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import load_pretrained
from models.stdit import STDIT_PRESETS, STDiT, STDiT_XL_2, build_stdit, parse_dtype

GOLDEN = Path(__file__).parent / "golden" / "opensora-v1.0"
ATOL = 1e-5  # golden README: network outputs atol 1e-5


@pytest.fixture(scope="module")
def cfg() -> dict:
    return json.loads((GOLDEN / "stdit_tiny.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "stdit_tiny.safetensors"))


def weights(golden: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in golden.items() if not k.startswith(("input.", "output."))}


def tiny(cfg: dict, **overrides) -> STDiT:
    return STDiT(**{**cfg["constructor_args"], **overrides})


@pytest.fixture()
def model(cfg, golden) -> STDiT:
    m = tiny(cfg)
    m.load_state_dict(weights(golden), strict=True)
    return m.eval()


def run(m: STDiT, g: dict[str, torch.Tensor], mask: bool = True, **kw) -> torch.Tensor:
    return m(g["input.x"], g["input.timestep"], g["input.y"], mask=g["input.mask"] if mask else None, **kw)


# ---------------------------------------------------------------------------- layout


def test_state_dict_keys_and_shapes_exact(cfg, golden):
    m = tiny(cfg)
    sd = m.state_dict()
    ref = weights(golden)
    assert len(sd) == 56
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert m.out_channels == cfg["derived"]["out_channels"]
    assert m.num_patches == cfg["derived"]["num_patches"]
    assert {n for n, _ in m.named_buffers()} == {"pos_embed", "pos_embed_temporal", "y_embedder.y_embedding"}


def test_pos_embeds_recomputed_exactly(cfg, golden):
    m = tiny(cfg)
    assert torch.equal(m.pos_embed, golden["pos_embed"])
    assert torch.equal(m.pos_embed_temporal, golden["pos_embed_temporal"])


def test_init_zeros_like_original(cfg):
    m = tiny(cfg)
    zero = {n for n, p in m.named_parameters() if torch.count_nonzero(p) == 0}
    assert zero == set(cfg["init"]["params_exactly_zero_after_init"])


def test_xl2_parameter_count_on_meta():
    with torch.device("meta"):
        m = build_stdit("STDiT-XL/2", caption_channels=4096, model_max_length=120, input_size=(16, 32, 32))
    assert sum(p.numel() for p in m.parameters()) == 759_620_768
    assert len(m.state_dict()) == 550
    assert all(p.is_meta for p in m.parameters())
    assert STDIT_PRESETS["STDiT-XL/2"]["hidden_size"] == 1152
    with torch.device("meta"):
        assert STDiT_XL_2(depth=1).depth == 1
    with pytest.raises(KeyError, match="unknown STDiT preset"):
        build_stdit("STDiT-XXL/3")


def test_dtype_argument_forms(cfg):
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(torch.float32) is torch.float32
    assert tiny(cfg, dtype="bf16").dtype_hint is torch.bfloat16
    with pytest.raises(ValueError):
        parse_dtype("int3")


# ---------------------------------------------------------------------------- golden outputs


@torch.no_grad()
def test_forward_with_mask_matches_golden(model, golden):
    torch.testing.assert_close(run(model, golden), golden["output.forward"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_forward_without_mask_matches_golden(model, golden):
    torch.testing.assert_close(
        run(model, golden, mask=False), golden["output.forward_nomask"], atol=ATOL, rtol=0
    )


@torch.no_grad()
def test_forward_with_cfg_v1_quirk_matches_golden(model, golden):
    y_null = model.null_caption(2)
    torch.testing.assert_close(torch.cat([golden["input.y"], y_null]), golden["input.cfg.y"], atol=0, rtol=0)
    out = model.forward_with_cfg(
        golden["input.cfg.x"],
        golden["input.cfg.timestep"],
        golden["input.cfg.y"],
        4.0,
        mask=golden["input.mask"],
        cfg_channels=3,
    )
    torch.testing.assert_close(out, golden["output.forward_with_cfg"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_forward_with_cfg_default_guides_all_eps_channels(model, golden):
    x, t, y = golden["input.cfg.x"], golden["input.cfg.timestep"], golden["input.cfg.y"]
    raw = model(torch.cat([x[:2], x[:2]]), t, y, mask=golden["input.mask"])
    out = model.forward_with_cfg(x, t, y, 4.0, mask=golden["input.mask"])
    guided = raw[2:, :4] + 4.0 * (raw[:2, :4] - raw[2:, :4])
    torch.testing.assert_close(out[:2, :4], guided)
    torch.testing.assert_close(out[2:, :4], guided)
    torch.testing.assert_close(out[:, 4:], raw[:, 4:])  # variance values: per half, unguided
    # the 1.0 quirk differs exactly on channel 3
    quirk = model.forward_with_cfg(x, t, y, 4.0, mask=golden["input.mask"], cfg_channels=3)
    torch.testing.assert_close(quirk[:, :3], out[:, :3])
    assert not torch.allclose(quirk[:, 3], out[:, 3])


# ---------------------------------------------------------------------------- caption masking


@torch.no_grad()
def test_masked_caption_tokens_are_excluded(model, golden):
    y = golden["input.y"].clone()
    y[0, :, 5:] = 1e4 * torch.randn_like(y[0, :, 5:])  # sample 0 has 5 valid tokens
    torch.testing.assert_close(
        run(model, {**golden, "input.y": y}), golden["output.forward"], atol=ATOL, rtol=0
    )


@torch.no_grad()
def test_all_masked_sample_is_finite_and_independent_of_caption(model, golden):
    mask = golden["input.mask"].clone()
    mask[0] = 0
    out = model(golden["input.x"], golden["input.timestep"], golden["input.y"], mask=mask)
    assert torch.isfinite(out).all()
    # sample 1 is unaffected; sample 0 ignores its caption entirely
    torch.testing.assert_close(out[1], golden["output.forward"][1], atol=ATOL, rtol=0)
    y = golden["input.y"].clone()
    y[0] = torch.randn_like(y[0])
    out2 = model(golden["input.x"], golden["input.timestep"], y, mask=mask)
    torch.testing.assert_close(out2, out)


# ---------------------------------------------------------------------------- training options


def test_caption_dropout_force_drop_ids_uses_null_caption(model, golden):
    model.train()
    drop = torch.tensor([1, 0])
    with torch.no_grad():
        out = run(model, golden, force_drop_ids=drop)
        y = golden["input.y"].clone()
        y[0] = model.y_embedder.y_embedding
        model.eval()
        ref = model(golden["input.x"], golden["input.timestep"], y, mask=golden["input.mask"])
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], golden["output.forward"][1], atol=ATOL, rtol=0)


def test_random_caption_dropout_runs_on_cpu(cfg, golden):
    m = tiny(cfg, class_dropout_prob=1.0)
    m.load_state_dict(weights(golden))
    m.train()
    with torch.no_grad():
        out = run(m, golden)
        m.eval()
        ref = run(m, golden, force_drop_ids=torch.ones(2))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_gradient_checkpointing_same_loss_and_grads(cfg, golden):
    torch.manual_seed(0)
    losses, grads = [], []
    for ckpt in (False, True):
        m = tiny(cfg, class_dropout_prob=0.0, grad_checkpointing=ckpt)
        m.load_state_dict(weights(golden))
        m.train()
        loss = run(m, golden).square().mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert tiny(cfg).gradient_checkpointing is False
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)
    assert all(g.abs().sum() > 0 for g in grads[0].values())


def test_enable_gradient_checkpointing_uses_checkpoint(cfg, golden, monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    m = tiny(cfg, class_dropout_prob=0.0)
    m.enable_gradient_checkpointing()
    m.train()
    run(m, golden).sum().backward()
    assert calls == [False, False]  # one per block, non-reentrant
    m.disable_gradient_checkpointing()
    run(m, golden).sum().backward()
    assert len(calls) == 2


@torch.no_grad()
def test_bf16_forward_is_finite_and_close(model, golden):
    ref = run(model, golden)
    out = run(model.to(torch.bfloat16), golden)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < 5e-2 * ref.abs().max()
    model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, golden)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < 5e-2 * ref.abs().max()


def test_freeze_not_temporal(cfg):
    m = tiny(cfg, freeze="not_temporal")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".attn_temp." in n for n in trainable)
    assert len(trainable) == 8
    m = tiny(cfg, freeze="text")
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert len(frozen) == 12 and all(".cross_attn." in n for n in frozen)
    with pytest.raises(ValueError):
        tiny(cfg, freeze="everything")


@torch.no_grad()
def test_fresh_temporal_branch_is_identity(cfg):
    """attn_temp.proj is zero-initialised, so a fresh STDiT treats frames independently
    (a PixArt-initialised model at step 0 behaves like PixArt-α per frame)."""
    torch.manual_seed(0)
    m = tiny(cfg).eval()
    for n, p in m.named_parameters():
        if "attn_temp.proj" not in n:
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(1, 4, 4, 8, 8)
    t, y = torch.tensor([300.0]), torch.randn(1, 1, 8, 32)
    x2 = x.clone()
    x2[:, :, 1:] = torch.randn_like(x2[:, :, 1:])
    torch.testing.assert_close(m(x, t, y)[:, :, 0], m(x2, t, y)[:, :, 0])


# ---------------------------------------------------------------------------- meta device


@torch.no_grad()
def test_meta_construction_then_load_matches(cfg, golden):
    with torch.device("meta"):
        m = tiny(cfg)
    assert m.pos_embed.is_meta and m.x_embedder.proj.weight.is_meta
    report = load_pretrained(m, weights(golden), assign=True)
    assert not any(t.is_meta for t in m.state_dict().values())
    assert report.initialized == []
    assert all(p.requires_grad for p in m.parameters())
    torch.testing.assert_close(run(m.eval(), golden), golden["output.forward"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_meta_to_empty_then_load_matches(cfg, golden):
    with torch.device("meta"):
        m = tiny(cfg)
    m.to_empty(device="cpu")
    m.reset_pos_embeds()
    torch.testing.assert_close(m.pos_embed, golden["pos_embed"], atol=0, rtol=0)
    m.load_state_dict(weights(golden))
    torch.testing.assert_close(run(m.eval(), golden), golden["output.forward"], atol=ATOL, rtol=0)
