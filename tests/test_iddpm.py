"""IDDPM parity with Open-Sora 1.0 golden vectors, plus DPM-Solver checks on an analytic case."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.diffusion import IDDPM, DPMSolver, combine_cfg, space_timesteps

GOLDEN = Path(__file__).parent / "golden" / "opensora-v1.0"
TABLES = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]


@pytest.fixture(scope="module")
def gold() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "iddpm_tiny.safetensors"))


@pytest.fixture(scope="module")
def train_sched() -> IDDPM:
    return IDDPM(timestep_respacing="")


@pytest.fixture(scope="module")
def sample_sched() -> IDDPM:
    return IDDPM(num_sampling_steps=5, cfg_scale=7.0, cfg_channels=3)


def load_tiny_stdit():
    """The golden tiny STDiT (eval mode) built from stdit_tiny.json with the stored weights."""
    import json

    from models.stdit import STDiT

    cfg = json.loads((GOLDEN / "stdit_tiny.json").read_text())["constructor_args"]
    cfg = {k: v for k, v in cfg.items() if k != "dtype"}
    cfg["input_size"] = tuple(cfg["input_size"])
    cfg["patch_size"] = tuple(cfg["patch_size"])
    model = STDiT(**cfg)
    state = {
        k: v
        for k, v in load_file(str(GOLDEN / "stdit_tiny.safetensors")).items()
        if not k.startswith(("input.", "output."))
    }
    model.load_state_dict(state, strict=True)
    return model.eval()


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """|actual - expected| <= rel * max|expected| elementwise."""
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"max err {err:.3e} > {rel:.1e} * {scale:.3e}"


# ---------------------------------------------------------------------------------------------
# Schedules and respacing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TABLES)
def test_schedule_tables(gold, train_sched, sample_sched, name):
    for prefix, sched, n in (("train", train_sched, 1000), ("sample5", sample_sched, 5)):
        ours = getattr(sched, name)
        ref = gold[f"{prefix}.{name}"].numpy()
        assert ours.dtype == np.float64 and ours.shape == (n,)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)


def test_timestep_map(gold, train_sched, sample_sched):
    assert (
        sample_sched.timestep_map.tolist() == gold["sample5.timestep_map"].tolist() == [0, 250, 500, 749, 999]
    )
    assert train_sched.timestep_map.tolist() == list(range(1000))
    assert sample_sched.num_timesteps == 5 and train_sched.num_timesteps == 1000


def test_space_timesteps_variants():
    assert sorted(space_timesteps(1000, "5")) == [0, 250, 500, 749, 999]
    assert sorted(space_timesteps(1000, [5])) == [0, 250, 500, 749, 999]
    assert space_timesteps(1000, "ddim10") == set(range(0, 1000, 100))
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    # Sections: 2 steps from the first half, 4 from the second.
    assert sorted(space_timesteps(100, "2,4")) == [0, 49, 50, 66, 83, 99]
    assert len(space_timesteps(1000, "100")) == 100
    assert sorted(space_timesteps(10, "1")) == [0]
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim600")  # no stride gives exactly 600 steps
    with pytest.raises(ValueError):
        space_timesteps(10, "11")
    with pytest.raises(ValueError):
        IDDPM(num_sampling_steps=5, timestep_respacing="10")


def test_respaced_betas_keep_cumprod():
    full = IDDPM()
    for respacing in ("7", "ddim25", "10,20,5"):
        sched = IDDPM(timestep_respacing=respacing)
        np.testing.assert_allclose(sched.alphas_cumprod, full.alphas_cumprod[sched.timestep_map], rtol=1e-12)


def test_cosine_schedule_sane():
    sched = IDDPM(noise_schedule="cosine", timestep_respacing="")
    assert sched.betas.max() <= 0.999 and sched.alphas_cumprod[-1] < 1e-3
    with pytest.raises(ValueError):
        IDDPM(noise_schedule="nope")


# ---------------------------------------------------------------------------------------------
# q_sample and training losses
# ---------------------------------------------------------------------------------------------


def test_q_sample(gold, train_sched):
    x_t = train_sched.q_sample(gold["q.x_start"], gold["q.t"], noise=gold["q.noise"])
    assert x_t.dtype == torch.float32
    torch.testing.assert_close(x_t, gold["q.x_t"], rtol=1e-5, atol=1e-6)


def _loss_fixed(sched, gold, dtype):
    out = gold["loss_fixed.model_output"].to(dtype)
    seen = {}

    def model(x, t, **kwargs):
        seen["t"] = t
        return out

    terms = sched.training_losses(
        model, gold["q.x_start"].to(dtype), gold["q.t"], model_kwargs={}, noise=gold["q.noise"].to(dtype)
    )
    assert seen["t"].tolist() == gold["q.t"].tolist()
    return terms


def test_loss_fixed_float32(gold, train_sched):
    terms = _loss_fixed(train_sched, gold, torch.float32)
    for key in ("mse", "vb", "loss"):
        ours, ref = terms[key], gold[f"loss_fixed.{key}"]
        assert ours.shape == (4,) and ours.dtype == torch.float32
        # Element 0 is t = 0: the discretised decoder NLL, ill-conditioned in float32.
        torch.testing.assert_close(ours[1:], ref[1:], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours[:1], ref[:1], rtol=0, atol=2e-2)


def test_loss_fixed_float64(gold, train_sched):
    terms = _loss_fixed(train_sched, gold, torch.float64)
    for key in ("mse", "vb", "loss"):
        ours, ref = terms[key], gold[f"loss_fixed_f64ref.{key}"]
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_vb_stops_gradient_on_mean(gold, train_sched):
    out = gold["loss_fixed.model_output"].clone().requires_grad_(True)
    terms = train_sched.training_losses(
        lambda x, t, **kw: out, gold["q.x_start"], gold["q.t"], noise=gold["q.noise"]
    )
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert grad_vb[:, :4].abs().max() == 0 and grad_vb[:, 4:].abs().max() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert grad_mse[:, 4:].abs().max() == 0 and grad_mse[:, :4].abs().max() > 0


def test_other_loss_types_run(gold):
    x0, noise, t = gold["q.x_start"], gold["q.noise"], gold["q.t"]
    eps_only = gold["loss_fixed.model_output"][:, :4]
    fixed = IDDPM(timestep_respacing="", learn_sigma=False)
    terms = fixed.training_losses(lambda x, t, **kw: eps_only, x0, t, noise=noise)
    assert set(terms) == {"mse", "loss"}
    torch.testing.assert_close(terms["loss"], gold["loss_fixed.mse"], rtol=1e-5, atol=1e-6)
    kl = IDDPM(timestep_respacing="", use_kl=True).training_losses(
        lambda x, t, **kw: gold["loss_fixed.model_output"], x0, t, noise=noise
    )
    torch.testing.assert_close(kl["loss"][1:], gold["loss_fixed.vb"][1:] * 1000, rtol=1e-5, atol=1e-3)
    resc = IDDPM(timestep_respacing="", rescale_learned_sigmas=True).training_losses(
        lambda x, t, **kw: gold["loss_fixed.model_output"], x0, t, noise=noise
    )
    torch.testing.assert_close(resc["vb"], gold["loss_fixed.vb"], rtol=1e-5, atol=2e-2)


def test_loss_stdit(gold):
    model = load_tiny_stdit()
    sched = IDDPM(timestep_respacing="")
    kwargs = dict(y=gold["loss_stdit.y"], mask=gold["loss_stdit.mask"])
    x_t = sched.q_sample(gold["loss_stdit.x_start"], gold["loss_stdit.t"], noise=gold["loss_stdit.noise"])
    torch.testing.assert_close(x_t, gold["loss_stdit.x_t"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        terms = sched.training_losses(
            model, gold["loss_stdit.x_start"], gold["loss_stdit.t"], kwargs, gold["loss_stdit.noise"]
        )
    for key in ("mse", "vb", "loss"):
        torch.testing.assert_close(terms[key], gold[f"loss_stdit.{key}"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Sampling trace
# ---------------------------------------------------------------------------------------------


def test_combine_cfg_quirk_and_default():
    raw = torch.randn(4, 8, 2, 3, 3)
    out3 = combine_cfg(raw, 7.0, eps_channels=4, cfg_channels=3)
    guided = raw[2:, :3] + 7.0 * (raw[:2, :3] - raw[2:, :3])
    torch.testing.assert_close(out3[:2, :3], guided)
    torch.testing.assert_close(out3[2:, :3], guided)
    torch.testing.assert_close(out3[:, 3:], raw[:, 3:])  # channel 3 and the variance untouched
    out_all = combine_cfg(raw, 7.0, eps_channels=4)
    torch.testing.assert_close(out_all[:2, :4], raw[2:, :4] + 7.0 * (raw[:2, :4] - raw[2:, :4]))
    torch.testing.assert_close(out_all[:, 4:], raw[:, 4:])


def test_sampling_steps_from_stored_inputs(gold, sample_sched):
    """Every step replayed from the stored x_in, raw network output and noise."""
    for i in range(5):
        p = f"sample.step{i}."
        t = gold[p + "t_index"]
        assert t.tolist() == [4 - i] * 4
        assert sample_sched._model_timesteps(t).tolist() == gold[p + "t_model"].tolist()
        guided = combine_cfg(gold[p + "model_output_raw"], 7.0, eps_channels=4, cfg_channels=3)
        out = sample_sched.p_sample(None, gold[p + "x_in"], t, noise=gold[p + "noise"], model_output=guided)
        assert_close_rel(out["pred_xstart"], gold[p + "pred_xstart"], 1e-5)
        assert_close_rel(out["sample"], gold[p + "x_out"], 1e-5)


def test_sampling_chain_with_stored_outputs(gold, sample_sched):
    """The full 5-step loop (through IDDPM.sample) with a stand-in network replaying the raw outputs."""
    calls = []

    class Replay(torch.nn.Module):
        def forward(self, x, timestep, y, mask=None):
            i = len(calls)
            calls.append(timestep.clone())
            torch.testing.assert_close(x, gold[f"sample.step{i}.model_input_x"], rtol=1e-5, atol=1e-5 * 700)
            torch.testing.assert_close(y, torch.cat([gold["sample.y"], gold["sample.y_null"]]))
            return gold[f"sample.step{i}.model_output_raw"]

    encoder = StoredText(gold)
    noises = [gold[f"sample.step{i}.noise"] for i in range(5)]
    out = sample_sched.sample(
        Replay(),
        encoder,
        (4, 4, 8, 8),
        ["a", "b"],
        "cpu",
        progress=False,
        z=gold["sample.z"],
        step_noise=noises,
    )
    assert [c.tolist() for c in calls] == [gold[f"sample.step{i}.t_model"].tolist() for i in range(5)]
    assert_close_rel(out, gold["sample.final"], 1e-5)


class StoredText:
    """Text encoder stand-in returning the stored caption embeddings (as the golden run did)."""

    def __init__(self, gold):
        self.gold = gold

    def encode(self, prompts):
        return dict(y=self.gold["sample.y"], mask=self.gold["sample.mask"])

    def null(self, n):
        return self.gold["sample.y_null"][:n]


def test_sample_end_to_end_with_stdit(gold, sample_sched):
    model = load_tiny_stdit()
    noises = [gold[f"sample.step{i}.noise"] for i in range(5)]
    out = sample_sched.sample(
        model,
        StoredText(gold),
        (4, 4, 8, 8),
        ["a", "b"],
        "cpu",
        progress=False,
        z=gold["sample.z"],
        step_noise=noises,
    )
    assert_close_rel(out, gold["sample.final"], 1e-5)
    # The same by seed: the RNG is consumed in Open-Sora's order.
    torch.manual_seed(2024)
    out_seed = sample_sched.sample(model, StoredText(gold), (4, 4, 8, 8), ["a", "b"], "cpu", progress=False)
    assert_close_rel(out_seed, gold["sample.final"], 1e-5)


# ---------------------------------------------------------------------------------------------
# Analytic checks: Gaussian data with an oracle eps model
# ---------------------------------------------------------------------------------------------


class GaussianOracle(torch.nn.Module):
    """Exact eps-prediction for data x0 ~ N(mu, s^2) elementwise (s = 0: a point mass at mu).

    For x_t = a x0 + sigma eps, E[eps | x_t] = sigma (x_t - a mu) / (a^2 s^2 + sigma^2).  Outputs
    8 channels (eps + variance value ``v``) like STDiT, and ignores the caption.
    """

    def __init__(self, mu: torch.Tensor, s: float, v: float = -1.0) -> None:
        super().__init__()
        self.mu, self.s, self.v = mu, s, v
        abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
        self.abar = torch.from_numpy(abar)

    def forward(self, x, timestep, y, mask=None):
        abar = self.abar[timestep.long()].reshape(-1, 1, 1, 1, 1)
        a, sigma = abar.sqrt(), (1 - abar).sqrt()
        eps = sigma * (x.double() - a * self.mu) / (abar * self.s**2 + sigma**2)
        return torch.cat([eps.float(), torch.full_like(x, self.v)], dim=1)


class ZeroText:
    def encode(self, prompts):
        return dict(y=torch.zeros(len(prompts), 1, 4, 8), mask=torch.ones(len(prompts), 4, dtype=torch.long))

    def null(self, n):
        return torch.zeros(n, 1, 4, 8)


ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


def _exact_dpm_target(z: torch.Tensor, mu: torch.Tensor, s: float, t_last: int) -> torch.Tensor:
    """Exact probability-flow ODE from x_T = z down to t_last, then the exact E[x_0 | x_t_last].

    For Gaussian data the ODE keeps the standardised value w = (x_t - a_t mu) / sqrt(a_t^2 s^2 + sigma_t^2);
    DPM-Solver's last step (to sigma = 0) returns the data prediction at t_last.
    """
    a_T2 = ABAR[-1]
    w = (z.double() - math.sqrt(a_T2) * mu) / math.sqrt(a_T2 * s**2 + 1 - a_T2)
    a_l2 = ABAR[t_last]
    return mu + math.sqrt(a_l2) * s**2 * w / math.sqrt(a_l2 * s**2 + 1 - a_l2)


@pytest.mark.parametrize("s", [0.0, 0.5, 1.0])
def test_dpm_solver_matches_exact_ode(s):
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 4, 2, 4, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(3, 4, 2, 4, 4, generator=gen)
    errors = {}
    for steps in (20, 100):
        solver = DPMSolver(num_sampling_steps=steps, cfg_scale=4.0)
        t_last = int(solver.make_scheduler().timesteps[-1])
        out = solver.sample(
            GaussianOracle(mu, s), ZeroText(), (4, 2, 4, 4), ["a", "b", "c"], "cpu", progress=False, z=z
        )
        assert out.shape == z.shape and out.dtype == torch.float32
        errors[steps] = (out.double() - _exact_dpm_target(z, mu, s, t_last)).abs().max().item()
    if s == 0.0:  # a point mass: lands exactly on the known x0
        assert errors[20] < 1e-4
    else:  # second-order solver: ~1e-2 of |x| at 20 steps, much closer at 100
        assert errors[20] < 0.1 and errors[100] < 0.02, errors


def test_dpm_solver_and_ancestral_agree_in_distribution():
    """20 DPM-Solver steps and 100 ancestral IDDPM steps both recover N(mu, s^2)."""
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(1, 4, 1, 1, 1, generator=gen, dtype=torch.float64) * 0.5
    s = 0.5
    z = torch.randn(8, 4, 4, 16, 16, generator=gen)
    prompts = ["p"] * 8
    dpm = DPMSolver(num_sampling_steps=20).sample(
        GaussianOracle(mu, s), ZeroText(), z.shape[1:], prompts, "cpu", progress=False, z=z
    )
    torch.manual_seed(0)
    anc = IDDPM(num_sampling_steps=100, cfg_scale=4.0).sample(
        GaussianOracle(mu, s, v=-1.0), ZeroText(), z.shape[1:], prompts, "cpu", progress=False, z=z
    )
    # Both slightly under-disperse at these step counts: DPM-Solver's final jump to sigma = 0 returns
    # E[x0 | x_50] (~6% narrower here), and ancestral steps with the posterior variance (v = -1)
    # leave out Var[x0 | x_t] (~7% narrower at 100 steps).
    for out, std_tol in ((dpm, 0.05), (anc, 0.05)):
        per_channel = out.double().transpose(0, 1).reshape(4, -1)
        torch.testing.assert_close(per_channel.mean(1), mu.flatten(), atol=0.03, rtol=0)
        torch.testing.assert_close(
            per_channel.std(1), torch.full((4,), s, dtype=torch.float64), atol=std_tol, rtol=0
        )


def test_frame_mask_keeps_conditioning_frames():
    gen = torch.Generator().manual_seed(2)
    mu = torch.zeros(1, 4, 1, 1, 1, dtype=torch.float64)
    x_cond = torch.randn(2, 4, 3, 4, 4, generator=gen)
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    torch.manual_seed(0)
    out = IDDPM(num_sampling_steps=10).sample(
        GaussianOracle(mu, 1.0),
        ZeroText(),
        (4, 3, 4, 4),
        ["a", "b"],
        "cpu",
        progress=False,
        mask=mask,
        x_cond=x_cond,
    )
    torch.testing.assert_close(out[0, :, 0], x_cond[0, :, 0])
    torch.testing.assert_close(out[1, :, 2], x_cond[1, :, 2])
    assert not torch.allclose(out[0, :, 1], x_cond[0, :, 1])
