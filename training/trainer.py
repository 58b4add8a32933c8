"""The training loop, top to bottom.

1. VAE, T5 and STDiT (tiny random ones for `--preset tiny`), initialised from `model.init_from`;
2. the run's inputs (`inputs.py`: decoded pixels, or the feature cache) and its data (`build_data`):
   the frozen rows split into training clips and a held-out validation slice, each in buckets;
3. the ColossalAI Booster: TorchDDP (+ AdamW, fp32 or bf16 autocast) or LowLevelZero stage 2
   (+ HybridAdam, bf16 working weights with fp32 masters), a warmup LR schedule, an fp32 EMA;
4. `--resume`: weights, EMA, optimizer, scheduler, data position and RNG from the last checkpoint;
5. per step: decode → VAE latents and T5 embeddings (online, as 1.0; or read from the feature
   cache with `data.source=features`) → IDDPM loss at random timesteps with caption dropout →
   backward, clip, step, EMA → metrics; validation loss at fixed timesteps every `val_every` steps;
   mp4 samples of fixed prompts every `sample_every` steps; an atomic checkpoint every `ckpt_every`.
All randomness of a step comes from (seed, step, rank), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from models.diffusion import IDDPM

from . import checkpoint as ckpt_io
from .bucket_sampler import BucketBatchSampler
from .build import Models, build_models, load_encoders, set_latent_shape
from .config import RunConfig
from .data import collate, worker_init
from .dist import DistContext, all_mean, all_true, barrier
from .errors import RunError
from .inputs import Inputs, inputs_for
from .metrics import MetricsWriter
from .selection import split_validation
from .weights import WeightView, fp32_snapshot, grads_finite, start_from

log = logging.getLogger("training")
MAX_CLIP_WARNINGS = 20  # clips that fail to decode are logged up to this many per launch, then counted


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # sampler steps consumed in this epoch (including skipped ones)
    failed_clips: int = 0  # clips that could not be decoded, summed over ranks
    skipped_steps: int = 0  # steps where some rank had no decodable clip
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient
    nonfinite_in_a_row: int = 0


def step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_loader(
    dataset: Dataset,
    sampler: BucketBatchSampler,
    tensors: tuple[str, ...],
    workers: int,
    pin: bool,
    start: str = "spawn",
) -> DataLoader:
    """Loader processes start fresh (`spawn`) by default: a worker forked from a process that has
    run threaded decoders or OpenCV (the demo, a notebook) can crash in inherited thread state."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(collate, tensors=tensors),
        num_workers=workers,
        worker_init_fn=worker_init,
        multiprocessing_context=start if workers > 0 else None,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        pin_memory=pin,
    )


@dataclass
class Data:
    """The training loader and its sampler, and the validation loader (None without a held-out slice)."""

    train_set: Dataset
    sampler: BucketBatchSampler
    loader: DataLoader
    val_loader: DataLoader | None


def build_data(cfg: RunConfig, ctx: DistContext, inputs: Inputs, rows: list[dict[str, Any]]) -> Data:
    """The frozen rows split into training clips and the held-out slice, each in its buckets."""
    d, seed, pin = cfg.data, cfg.train.seed, ctx.device.type == "cuda"
    train_rows, val_rows = split_validation(rows, d)
    train_set = inputs.dataset(train_rows, train=True)
    sampler = BucketBatchSampler(
        train_set.buckets, d.batch_size, world_size=ctx.world_size, rank=ctx.rank, seed=seed
    )
    if sampler.steps_per_epoch() == 0:
        raise RunError(
            f"none of the {len(train_rows)} training clips is long enough for "
            f"{min(d.num_frames)} frames at interval {d.frame_interval}"
        )
    loader = make_loader(train_set, sampler, inputs.tensors, d.num_workers, pin, d.worker_start)
    val_loader = None
    if val_rows:
        val_set = inputs.dataset(val_rows, train=False)
        val_sampler = BucketBatchSampler(
            val_set.buckets, d.batch_size, world_size=ctx.world_size, rank=ctx.rank, shuffle=False
        )
        if val_sampler.steps_per_epoch():
            val_loader = make_loader(val_set, val_sampler, inputs.tensors, 0, pin)
    log.info(
        "%d training clips in buckets (frames x height x width: clips) %s; %d left out (%s); %d held "
        "out for validation; %d steps per epoch",
        len(train_rows) - sampler.excluded,
        sampler.buckets_used(),
        sampler.excluded,
        inputs.left_out,
        len(val_rows),
        sampler.steps_per_epoch(),
    )
    inputs.log_left_out(train_set)
    return Data(train_set, sampler, loader, val_loader)


def import_colossalai() -> tuple[Any, Any, Any]:
    """Booster and plugins, without the import-time notes about optional kernels (apex, tensornvme,
    bitsandbytes' CPU kernels) that this trainer does not use."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from colossalai.booster import Booster
        from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin
    return Booster, LowLevelZeroPlugin, TorchDDPPlugin


def hybrid_adam_unavailable(err: BaseException) -> str:
    """One line: why HybridAdam failed, whether nvcc and ninja (which build its kernels) are here."""
    import shutil

    tools = ", ".join(f"{t} {'found' if shutil.which(t) else 'NOT found'}" for t in ("nvcc", "ninja"))
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return (
        f"HybridAdam is unavailable here ({type(err).__name__}: {first}); ColossalAI builds its kernels "
        f"on first use with nvcc and ninja ({tools}; CUDA {'available' if torch.cuda.is_available() else 'absent'}). "
        "Install the CUDA toolkit and ninja, or use optim.name=adamw"
    )


def make_booster(cfg: RunConfig, models: Models) -> tuple[Any, Any, Any, Any]:
    """(booster, model, optimizer, scheduler) for the configured plugin and optimizer."""
    Booster, LowLevelZeroPlugin, TorchDDPPlugin = import_colossalai()

    o, t = cfg.optim, cfg.train
    params = [p for p in models.stdit.parameters() if p.requires_grad]
    kwargs = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "hybrid_adam":
        from colossalai.nn.optimizer import HybridAdam

        try:
            optimizer = HybridAdam(params, adamw_mode=True, **kwargs)
        except Exception as err:  # its kernels are built on first use (CUDA: nvcc and ninja)
            raise RunError(hybrid_adam_unavailable(err)) from err
    else:
        fused = all(p.is_cuda for p in params)  # torch's fused CUDA AdamW kernel when on GPU
        optimizer = torch.optim.AdamW(params, fused=fused or None, **kwargs)
    warmup = o.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )
    if t.plugin == "zero2":
        plugin = LowLevelZeroPlugin(stage=2, precision=t.precision, initial_scale=2**16, max_norm=o.grad_clip)
    else:
        plugin = TorchDDPPlugin(broadcast_buffers=False)  # buffers are sin-cos tables and the null caption
    booster = Booster(plugin=plugin)
    model, optimizer, _, _, scheduler = booster.boost(models.stdit, optimizer, lr_scheduler=scheduler)
    return booster, model, optimizer, scheduler


class Trainer:
    def __init__(
        self, cfg: RunConfig, run_dir: Path, ctx: DistContext, rows: list[dict[str, Any]], resume: bool
    ):
        self.cfg, self.run_dir, self.ctx = cfg, Path(run_dir), ctx
        self.zero = cfg.train.plugin == "zero2"
        self.autocast_bf16 = cfg.train.precision == "bf16" and not self.zero
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.compute_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        self.resume_from = ckpt_io.latest_checkpoint(self.run_dir) if resume else None

        source = inputs_for(cfg)
        self.models = self._build_models(encoders=source.encoders_in_step)
        self.diffusion = IDDPM(timestep_respacing="")
        self.inputs = source(cfg, self.run_dir, self.models, ctx.device)
        self.data = build_data(cfg, ctx, self.inputs, rows)
        self.booster, self.model, self.optimizer, self.scheduler, self.weights, self.ema = self._boost()

        self.state = TrainState()
        self.last_ckpt: Path | None = None
        self.first_error: str | None = None  # the first clip that failed to decode in this launch
        if self.resume_from is not None:
            self._resume(self.resume_from)
        elif resume:
            log.info("--resume: no checkpoint in %s yet, starting from step 0", self.run_dir)
        self.metrics = (
            MetricsWriter(self.run_dir, self.state.step if resume else None) if ctx.is_main else None
        )

    # ------------------------------------------------------------------------------ building
    def _build_models(self, encoders: bool) -> Models:
        """VAE, T5 and STDiT; a resumed run rebuilds the STDiT its checkpoint describes. With the
        feature cache the VAE and T5 are only built when sampling needs them."""
        resume_args = None
        if self.resume_from is not None:
            from models.checkpoint import read_model_config

            resume_args = read_model_config(self.resume_from)
        return build_models(self.cfg, self.ctx.device, self.compute_dtype, resume_args, encoders=encoders)

    def _boost(self) -> tuple[Any, Any, Any, Any, WeightView, Any]:
        """torch.compile if asked, then the Booster; the EMA starts from the fp32 weights."""
        stdit, backend = self.models.stdit, self.cfg.train.compile
        if backend:  # in place (nn.Module.compile): the Booster wraps the compiled module
            if not self.zero:  # dynamo's DDP bucketing cannot split the checkpointed blocks' graphs
                torch._dynamo.config.optimize_ddp = False
            stdit.compile(backend=backend)
            log.info("STDiT compiled with torch.compile(backend=%r)", backend)
        fp32 = fp32_snapshot(stdit) if self.zero else None  # before boosting casts to bf16
        booster, model, optimizer, scheduler = make_booster(self.cfg, self.models)
        weights = WeightView(stdit, optimizer, zero=self.zero)
        ema = start_from(weights, fp32 if fp32 is not None else fp32_snapshot(stdit))
        return booster, model, optimizer, scheduler, weights, ema

    # ------------------------------------------------------------------------------ resume
    def _resume(self, ckpt: Path) -> None:
        saved = ckpt_io.read_state(ckpt)
        if saved["world_size"] != self.ctx.world_size:
            raise RunError(
                f"{ckpt} was written by {saved['world_size']} processes; resume with the same number "
                f"(now {self.ctx.world_size}) so the data order and position mean the same"
            )
        weights = ckpt_io.load_weights(ckpt, "model")
        self.weights.load_full(weights)
        for name, buffer in self.models.stdit.named_buffers():  # the null caption
            if name in weights:
                buffer.copy_(weights[name])
        self.ema.load_full(ckpt_io.load_weights(ckpt, "ema"), self.weights)
        ckpt_io.load_optimizer(self.booster, self.optimizer, ckpt)
        with warnings.catch_warnings():  # the Booster's torch.load of its own files warns about pickles
            warnings.simplefilter("ignore", FutureWarning)
            self.booster.load_lr_scheduler(self.scheduler, str(ckpt / "scheduler.bin"))
        rng = ckpt_io.load_rng(ckpt, self.ctx.rank)
        if rng is not None:
            ckpt_io.set_rng_state(rng)
        fields = (
            "step",
            "epoch",
            "position",
            "failed_clips",
            "skipped_steps",
            "nonfinite_steps",
            "nonfinite_in_a_row",
        )
        self.state = TrainState(**{k: saved.get(k, 0) for k in fields})
        self.last_ckpt = ckpt
        log.info(
            "resumed from %s (step %d, epoch %d, batch %d of the epoch)",
            ckpt,
            *(saved[k] for k in fields[:3]),
        )

    def save(self) -> Path:
        s = self.state
        model_full = self.weights.gather(self.weights.shards())
        ema_full = self.weights.gather(self.ema.shadow)
        buffers = {
            k: v.detach().float().cpu()
            for k, v in self.models.stdit.named_buffers()
            if k not in ("pos_embed", "pos_embed_temporal")  # recomputed from the config on load
        }
        self.last_ckpt = ckpt_io.save_checkpoint(
            self.run_dir,
            s.step,
            self.ctx,
            booster=self.booster,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            model_weights={**model_full, **buffers},
            ema_weights={**ema_full, **buffers},
            stdit_args=self.models.stdit_args,
            keep_last=self.cfg.train.keep_last,
            optim_shard_mb=self.cfg.train.optim_shard_mb,
            state={
                "epoch": s.epoch,
                "position": s.position,
                "failed_clips": s.failed_clips,
                "skipped_steps": s.skipped_steps,
                "nonfinite_steps": s.nonfinite_steps,
                "nonfinite_in_a_row": s.nonfinite_in_a_row,
            },
        )
        log.info("checkpoint %s", self.last_ckpt)
        return self.last_ckpt

    # ------------------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_bf16:
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batch: dict[str, Any]) -> tuple[float, float, float] | None:
        """One optimizer step. Returns (loss, grad norm, lr used), or None when a non-finite loss
        or gradient (on any rank) made every rank skip it; checked before the optimizer steps."""
        c, dev = self.cfg, self.ctx.device
        gen = torch.Generator(dev).manual_seed(step_seed(c.train.seed, self.state.step, self.ctx.rank))
        x0, cond = self.inputs.encode(batch, gen)
        n = x0.shape[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (n,), generator=gen, device=dev)
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        drop = (torch.rand(n, generator=gen, device=dev) < c.train.caption_dropout).long()
        set_latent_shape(self.models.stdit, tuple(x0.shape[2:]))
        with self._autocast():
            terms = self.diffusion.training_losses(
                self.model, x0, t, model_kwargs={**cond, "force_drop_ids": drop}, noise=noise
            )
        loss = terms["loss"].mean()
        if not all_true(bool(torch.isfinite(loss)), self.ctx):
            return self._skip("loss", loss.item())
        lr = self.scheduler.get_last_lr()[0]
        self.booster.backward(loss, self.optimizer)
        if self.zero:  # ZeRO clips inside step() (plugin max_norm) and reports the norm after it
            if not all_true(grads_finite(self.optimizer), self.ctx):
                self.optimizer.zero_grad()
                return self._skip("gradient", math.nan)
            self.optimizer.step()
            grad_norm = float(self.optimizer.get_grad_norm())
        else:
            max_norm = c.optim.grad_clip if c.optim.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.models.stdit.parameters(), max_norm))
            if not all_true(math.isfinite(grad_norm), self.ctx):
                self.optimizer.zero_grad()
                return self._skip("gradient norm", grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.ema.update(self.weights.shards(), c.train.ema_decay)
        self.state.nonfinite_in_a_row = 0
        return loss.item(), grad_norm, lr

    def _skip(self, what: str, value: float) -> None:
        """A non-finite step: nothing is applied; `train.max_nonfinite` of them in a row stop the run."""
        s, limit = self.state, self.cfg.train.max_nonfinite
        s.nonfinite_steps += 1
        s.nonfinite_in_a_row += 1
        if s.nonfinite_in_a_row >= limit:
            raise RunError(self._nonfinite(what, value))
        log.warning(
            "non-finite %s (%s) at step %d: step skipped (%d in a row; the run stops at %d, train.max_nonfinite)",
            what,
            value,
            s.step + 1,
            s.nonfinite_in_a_row,
            limit,
        )
        return None

    def write_samples(self) -> None:
        """mp4 samples of `train.sample_prompts` from the current weights (rank 0; the global RNG
        is restored afterwards, so sampling never changes what training does)."""
        if not self.ctx.is_main:
            return
        from .samples import write_samples

        load_encoders(self.models, self.cfg, self.ctx.device, self.compute_dtype)
        with self._autocast():
            paths = write_samples(self.models, self.cfg, self.run_dir, self.state.step, self.ctx.device)
        log.info("samples at step %d: %s", self.state.step, ", ".join(str(p) for p in paths))

    def _undecodable(self, what: str) -> str:
        n = len(self.data.train_set)
        return (
            f"no usable batch: {what} no clip that decodes; {self.state.failed_clips} clip decodes "
            f"failed so far ({n} training clips); first error: {self.first_error or '?'}. "
            f"Check the media files of the selection (datakit probe)"
        )

    def _nonfinite(self, what: str, value: float) -> str:
        kept = (
            f"the last good checkpoint is {self.last_ckpt}"
            if self.last_ckpt
            else "no checkpoint was written yet"
        )
        n = self.state.nonfinite_in_a_row
        return (
            f"non-finite {what} ({value}) at step {self.state.step + 1}: stopping after {n} non-finite "
            f"step(s) in a row (train.max_nonfinite); {kept}. Lower optim.lr, check the data, or resume "
            f"from that checkpoint."
        )

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean loss over the held-out slice at fixed timesteps and fixed noise (comparable across runs)."""
        if self.data.val_loader is None:
            return None
        stdit, dev = self.models.stdit, self.ctx.device
        stdit.eval()
        total, count = 0.0, 0
        for i, batch in enumerate(self.data.val_loader):
            if not batch["clip_id"]:
                continue
            x0, cond = self.inputs.encode(batch, None)
            set_latent_shape(stdit, tuple(x0.shape[2:]))
            gen = torch.Generator(dev).manual_seed(step_seed(self.cfg.train.seed, 10**6 + i))
            keep = torch.zeros(x0.shape[0], dtype=torch.long, device=dev)
            for ts in self.cfg.train.val_timesteps:
                t = torch.full((x0.shape[0],), ts, device=dev, dtype=torch.long)
                noise = torch.randn(x0.shape, generator=gen, device=dev)
                with self._autocast():
                    terms = self.diffusion.training_losses(
                        stdit, x0, t, model_kwargs={**cond, "force_drop_ids": keep}, noise=noise
                    )
                total += float(terms["loss"].sum())
                count += x0.shape[0]
        stdit.train()
        total, count = (v * self.ctx.world_size for v in all_mean([total, float(count)], self.ctx))
        return total / count if count else None

    # ------------------------------------------------------------------------------ the loop
    def _batches(self):
        """(batch, seconds waited for it) until the epoch's plan runs out."""
        batches = iter(self.data.loader)
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            yield batch, time.perf_counter() - tick

    def done(self) -> bool:
        t, s = self.cfg.train, self.state
        return (t.max_steps is not None and s.step >= t.max_steps) or (
            t.epochs is not None and s.epoch >= t.epochs
        )

    def fit(self) -> Path:
        from datakit.progress import Progress

        c, s, ctx = self.cfg, self.state, self.ctx
        total = c.train.max_steps or (c.train.epochs or 1) * self.data.sampler.steps_per_epoch()
        bar = Progress(
            f"train {c.stage}", total, initial=s.step, unit="steps", enabled=ctx.is_main and c.train.progress
        ).__enter__()  # rich on a TTY, plain lines off it
        self.models.stdit.train()
        saved_at = s.step if self.last_ckpt else None
        in_a_row = warned = 0  # steps in a row with no decodable clip; skipped clips logged
        while not self.done():
            self.data.sampler.set_epoch(s.epoch, s.position)
            seen = used = 0  # sampler steps of this epoch in this launch, and those trained on
            for batch, wait in self._batches():
                s.position += 1
                seen += 1
                for clip_id, error in batch["failed"]:
                    warned += 1
                    if warned <= MAX_CLIP_WARNINGS:
                        log.warning("skipped clip %s: %s", clip_id, error)
                    if warned == MAX_CLIP_WARNINGS:
                        log.warning("further clips that fail to decode are only counted (failed_clips)")
                    self.first_error = self.first_error or f"{clip_id}: {error}"
                if not all_true(bool(batch["clip_id"]), ctx):  # every rank skips together
                    s.failed_clips += round(all_mean([len(batch["failed"])], ctx)[0] * ctx.world_size)
                    s.skipped_steps += 1
                    in_a_row += 1
                    if in_a_row >= c.data.max_failed_in_a_row:
                        raise RunError(self._undecodable(f"{in_a_row} steps in a row had"))
                    continue
                in_a_row, used = 0, used + 1
                tick = time.perf_counter()
                result = self.train_step(batch)
                if result is None:  # non-finite: skipped on every rank, logged
                    continue
                loss, grad_norm, lr = result
                elapsed = time.perf_counter() - tick + wait
                loss, n, wait, elapsed, failed = all_mean(
                    [loss, len(batch["caption"]), wait, elapsed, len(batch["failed"])], ctx
                )
                s.step += 1
                s.failed_clips += round(failed * ctx.world_size)
                record = {
                    "step": s.step,
                    "epoch": s.epoch,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": n * ctx.world_size / elapsed,
                    "data_wait": wait / elapsed,
                    "step_time": elapsed,
                    "bucket": batch["bucket"],
                    "failed_clips": s.failed_clips,
                    "nonfinite_steps": s.nonfinite_steps,
                }
                if ctx.device.type == "cuda":
                    record["peak_mem_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
                if s.step % c.train.val_every == 0 or self.done():
                    record["val_loss"] = self.validate()
                if self.metrics:
                    self.metrics.write(record)
                bar.advance(loss=f"{loss:.4f}")
                if c.train.sample_every and s.step % c.train.sample_every == 0:
                    self.write_samples()
                if s.step % c.train.ckpt_every == 0 or self.done():
                    self.save()
                    saved_at = s.step
                if self.done():
                    break
            else:  # the epoch ran out
                if seen and not all_true(used > 0, ctx):
                    raise RunError(self._undecodable(f"epoch {s.epoch} ({seen} steps) had"))
                s.epoch, s.position = s.epoch + 1, 0
        if saved_at != s.step:
            self.save()
        bar.close()
        if self.metrics:
            self.metrics.close()
        log.info(
            "done: step %d, epoch %d; %d clips failed to decode, %d steps skipped; last checkpoint %s",
            s.step,
            s.epoch,
            s.failed_clips,
            s.skipped_steps,
            self.last_ckpt,
        )
        barrier(ctx)
        return self.run_dir
