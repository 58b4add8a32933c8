"""Discrete-time Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021 "improved DDPM").

The schedule tables live in float64 NumPy arrays.  Whenever a table is applied to a tensor the
float64 entries are gathered first and then cast to float32, which is what Open-Sora 1.0 does
(our golden vectors depend on it).  Tensors are laid out as (B, C, ...) with any number of
trailing dims; every loss term is averaged over all non-batch dims.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

ModelFn = Callable[..., torch.Tensor]
# Noise source for the ancestral sampler: a callable step_index -> tensor, or a list of tensors.
NoiseSource = Callable[[int, torch.Tensor], torch.Tensor] | Sequence[torch.Tensor] | None


class MeanType(enum.Enum):
    """What the network predicts for the mean."""

    EPSILON = "epsilon"
    START_X = "start_x"
    PREVIOUS_X = "previous_x"


class VarType(enum.Enum):
    """How the reverse-process variance is chosen."""

    FIXED_SMALL = "fixed_small"  # posterior variance (beta tilde)
    FIXED_LARGE = "fixed_large"  # beta
    LEARNED = "learned"  # network outputs log-variance
    LEARNED_RANGE = "learned_range"  # network outputs v in [-1, 1] interpolating the two


class LossType(enum.Enum):
    MSE = "mse"  # MSE on the mean target (+ VB when the variance is learned)
    RESCALED_MSE = "rescaled_mse"  # same, VB scaled by num_timesteps / 1000
    KL = "kl"  # the variational bound only
    RESCALED_KL = "rescaled_kl"  # the variational bound times num_timesteps


# ---------------------------------------------------------------------------------------------
# Beta schedules
# ---------------------------------------------------------------------------------------------


def betas_from_alpha_bar(
    num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Betas such that prod(1 - beta) follows ``alpha_bar(t)`` for t in [0, 1]."""
    betas = []
    for i in range(num_steps):
        t1, t2 = i / num_steps, (i + 1) / num_steps
        betas.append(min(1.0 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """float64 betas for ``"linear"`` (1e-4 -> 0.02 at 1000 steps, scaled) or ``"cosine"``."""
    if name == "linear":
        scale = 1000.0 / num_steps  # keeps the schedule comparable for other step counts
        return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    if name in ("cosine", "squaredcos_cap_v2"):
        return betas_from_alpha_bar(num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ValueError(f"unknown beta schedule: {name!r}")


# ---------------------------------------------------------------------------------------------
# Small math helpers
# ---------------------------------------------------------------------------------------------


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim except the batch dim."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF (as used by GELU-tanh)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under N(means, exp(log_scales)^2).

    The outermost bins extend to +-infinity.  Logs are clamped at 1e-12.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    half_bin = 1.0 / 255.0
    cdf_upper = approx_standard_normal_cdf(inv_std * (centered + half_bin))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centered - half_bin))
    log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_survival_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, log_bin))


def extract(table: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``table[t]`` (float64), cast to float32 and reshape to (B, 1, ..., 1) with ``ndim`` dims."""
    values = torch.from_numpy(table).to(t.device)[t].float()
    return values.reshape(-1, *([1] * (ndim - 1)))


# ---------------------------------------------------------------------------------------------
# The diffusion process
# ---------------------------------------------------------------------------------------------


class GaussianDiffusion:
    """Forward process tables, training losses and the ancestral sampler for a beta schedule.

    ``model`` arguments are callables ``model(x_t, t, **model_kwargs)`` returning the network
    output (with variance channels appended when the variance is learned).  ``t`` here is the
    index into *this* diffusion's tables; subclasses may map it before calling the network
    (see :meth:`_model_timesteps`).
    """

    def __init__(
        self,
        betas: np.ndarray,
        mean_type: MeanType = MeanType.EPSILON,
        var_type: VarType = VarType.LEARNED_RANGE,
        loss_type: LossType = LossType.MSE,
    ) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
        self.num_timesteps = len(betas)

        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0, so its log is taken with entry 0 replaced by entry 1.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    # -- the network's view of time ---------------------------------------------------------

    def _model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps handed to the network for table indices ``t`` (identity here)."""
        return t

    # -- forward process ---------------------------------------------------------------------

    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        n = x_start.ndim
        mean = extract(self.sqrt_alphas_cumprod, t, n) * x_start
        var = extract(1.0 - self.alphas_cumprod, t, n).expand_as(x_start)
        log_var = extract(self.log_one_minus_alphas_cumprod, t, n).expand_as(x_start)
        return mean, var, log_var

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        if noise is None:
            noise = torch.randn_like(x_start)
        n = x_start.ndim
        return (
            extract(self.sqrt_alphas_cumprod, t, n) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        n = x_t.ndim
        mean = (
            extract(self.posterior_mean_coef1, t, n) * x_start
            + extract(self.posterior_mean_coef2, t, n) * x_t
        )
        var = extract(self.posterior_variance, t, n).expand_as(x_t)
        log_var = extract(self.posterior_log_variance_clipped, t, n).expand_as(x_t)
        return mean, var, log_var

    # -- reverse process ---------------------------------------------------------------------

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n = x_t.ndim
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps
        )

    def predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        n = x_t.ndim
        return (extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t - pred_xstart) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, n
        )

    def _xstart_from_prev(self, x_t: torch.Tensor, t: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        n = x_t.ndim
        return (
            extract(1.0 / self.posterior_mean_coef1, t, n) * x_prev
            - extract(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, n) * x_t
        )

    def p_mean_variance(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        model_output: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): mean, variance, log-variance and the predicted x_0.

        ``model_output`` may be given to skip the network call (used by the loss and by replay tests).
        """
        if model_output is None:
            model_output = model(x, self._model_timesteps(t), **(model_kwargs or {}))
        n, channels = x.ndim, x.shape[1]

        if self.var_type in (VarType.LEARNED, VarType.LEARNED_RANGE):
            if model_output.shape[1] != 2 * channels:
                raise ValueError(f"expected {2 * channels} output channels, got {model_output.shape[1]}")
            model_output, var_values = model_output[:, :channels], model_output[:, channels:]
            if self.var_type == VarType.LEARNED:
                log_var = var_values
            else:
                min_log = extract(self.posterior_log_variance_clipped, t, n)
                max_log = extract(np.log(self.betas), t, n)
                frac = (var_values + 1) / 2
                log_var = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_var)
        else:
            if self.var_type == VarType.FIXED_LARGE:
                # Use beta_t, except posterior variance at t=0 for a better decoder likelihood.
                var_table = np.append(self.posterior_variance[1], self.betas[1:])
                log_table = np.log(var_table)
            else:
                var_table, log_table = self.posterior_variance, self.posterior_log_variance_clipped
            variance = extract(var_table, t, n).expand_as(x)
            log_var = extract(log_table, t, n).expand_as(x)

        def process_xstart(x0: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.mean_type == MeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._xstart_from_prev(x, t, model_output))
            mean = model_output
        else:
            if self.mean_type == MeanType.START_X:
                pred_xstart = process_xstart(model_output)
            else:
                pred_xstart = process_xstart(self.predict_xstart_from_eps(x, t, model_output))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_var, "pred_xstart": pred_xstart}

    def p_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
        model_output: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1}. The noise is drawn *after* the network call."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs, model_output)
        if noise is None:
            noise = torch.randn_like(x)
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))  # no noise at the last step
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {
            "sample": sample,
            "pred_xstart": out["pred_xstart"],
            "mean": out["mean"],
            "log_variance": out["log_variance"],
        }

    def p_sample_loop_progressive(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        step_noise: NoiseSource = None,
        frame_mask: torch.Tensor | None = None,
        x_cond: torch.Tensor | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield every step's output, from t = T-1 down to 0.

        ``noise``: the starting x_T (drawn with ``torch.randn`` when None).
        ``step_noise``: the per-step noise, as a list indexed by step (0 = first step) or a callable
        ``(step, x) -> noise``; None draws ``torch.randn_like`` (Open-Sora's RNG order).
        ``frame_mask`` (B, T) with ``x_cond`` (B, C, T, H, W): frames whose mask is 0 are kept equal
        to ``x_cond`` noised to the current level (simple replacement conditioning).
        """
        if device is None:
            device = noise.device if noise is not None else "cpu"
        x = noise.to(device) if noise is not None else torch.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        iterator: Sequence[int] | Any = indices
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(indices, desc="sampling")
        for step, i in enumerate(iterator):
            t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
            if frame_mask is not None and x_cond is not None:
                x = self._replace_known_frames(x, t, frame_mask, x_cond)
            eps = None
            if step_noise is not None:
                eps = step_noise(step, x) if callable(step_noise) else step_noise[step].to(device)
            with torch.no_grad():
                out = self.p_sample(model, x, t, clip_denoised, denoised_fn, model_kwargs, noise=eps)
            yield out
            x = out["sample"]
        if frame_mask is not None and x_cond is not None:
            out["sample"] = self._replace_known_frames(x, None, frame_mask, x_cond)

    def _replace_known_frames(
        self, x: torch.Tensor, t: torch.Tensor | None, frame_mask: torch.Tensor, x_cond: torch.Tensor
    ) -> torch.Tensor:
        """Overwrite the frames whose mask is 0 with ``x_cond`` (noised to level ``t`` unless t is None)."""
        reps = x.shape[0] // x_cond.shape[0]
        x_cond = x_cond.to(x).repeat(reps, *([1] * (x.ndim - 1)))
        keep = (frame_mask == 0).to(x.dtype).repeat(reps, 1)[:, None, :, None, None]
        known = x_cond if t is None else self.q_sample(x_cond, t)
        return x * (1 - keep) + known * keep

    def p_sample_loop(self, model: ModelFn, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
        """Run the whole ancestral chain and return the final x_0 sample (see the progressive variant)."""
        final = None
        for out in self.p_sample_loop_progressive(model, shape, **kwargs):
            final = out
        assert final is not None
        return final["sample"]

    # -- training ----------------------------------------------------------------------------

    def _vb_terms_bpd(
        self,
        model_output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One term of the variational bound, in bits per dim.

        t > 0: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)); t = 0: the decoder NLL of x_0.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(None, x_t, t, clip_denoised=clip_denoised, model_output=model_output)  # type: ignore[arg-type]
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        nll = mean_flat(nll) / math.log(2.0)
        return {"output": torch.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample loss terms: ``loss`` and, depending on the loss type, ``mse`` and ``vb``.

        With a learned variance, loss = mse + vb where the vb term sees the mean prediction with
        its gradient stopped, so it only trains the variance (Nichol & Dhariwal's hybrid loss).
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        model_output = model(x_t, self._model_timesteps(t), **(model_kwargs or {}))
        terms: dict[str, torch.Tensor] = {}

        if self.loss_type in (LossType.KL, LossType.RESCALED_KL):
            terms["loss"] = self._vb_terms_bpd(model_output, x_start, x_t, t)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        channels = x_t.shape[1]
        if self.var_type in (VarType.LEARNED, VarType.LEARNED_RANGE):
            mean_out, var_values = model_output[:, :channels], model_output[:, channels:]
            frozen = torch.cat([mean_out.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(frozen, x_start, x_t, t)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
            model_output = mean_out

        if self.mean_type == MeanType.EPSILON:
            target = noise
        elif self.mean_type == MeanType.START_X:
            target = x_start
        else:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
