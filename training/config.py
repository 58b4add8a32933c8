"""Training configuration: typed sections, stage presets, config files and key=value overrides.

Resolution order (later wins): defaults < stage preset < tiny preset (`--preset tiny`) < `--config
FILE` (TOML or JSON, same sections) < `key=value` overrides (`optim.lr=1e-4`, `data.num_frames=[8]`).
Unknown keys are errors, so a typo never trains with a silent default.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.stage_names import STAGES


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    stdit: str = "STDiT-XL/2"  # a preset name of models.stdit, or a JSON file of constructor args
    stdit_args: dict[str, Any] = field(default_factory=dict)  # constructor overrides
    vae: str = "stabilityai/sd-vae-ft-ema"  # hub id or local diffusers directory
    text_encoder: str = "DeepFloyd/t5-v1_1-xxl"
    model_max_length: int = 120  # caption tokens
    space_scale: float | None = None  # None: smallest resolution / 512 (0.5 at 256 px, from PixArt-512)
    time_scale: float = 1.0
    grad_checkpointing: bool = True
    init_from: str | None = None  # PixArt-α / Open-Sora weights, or a previous run folder
    init_use_ema: bool = True  # take a run's EMA weights (its raw weights when false)
    vae_micro_batch_size: int | None = None
    local_files_only: bool = False
    tiny: bool = False  # build tiny RANDOM VAE/T5 locally (tests, demo); set by `--preset tiny`
    tiny_dir: str = "runs/tiny-random-models"


@dataclass
class DataConfig:
    num_frames: list[int] = field(
        default_factory=lambda: [16]
    )  # frame buckets (a clip takes the largest it fills)
    frame_interval: int = 3
    resolution: list[int] = field(default_factory=lambda: [256])  # short-side-equivalent sizes (area R*R)
    aspect_ratios: list[str] = field(default_factory=lambda: ["1:1", "4:3", "3:4", "16:9", "9:16"])
    batch_size: int = 8  # per process
    num_workers: int = 4  # loader processes per training process
    worker_start: str = "spawn"  # how loader processes start: spawn | forkserver | fork
    flip: bool = True
    prefer: str = "source"  # read spans from the source video ("source") or the cut file ("cut")
    source: str = "pixels"  # "pixels": decode + encode online; "features": `datakit features` cache
    val_fraction: float = 0.01  # held-out slice of the rows, chosen by clip id (stable across runs)
    val_max: int = 64
    val_min_rows: int = 8  # no held-out slice below this many rows
    max_failed_in_a_row: int = 50  # stop after this many steps in a row with no decodable clip


@dataclass
class OptimConfig:
    name: str = "auto"  # adamw | hybrid_adam | auto (hybrid_adam on CUDA, adamw on CPU)
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    plugin: str = "auto"  # ddp (TorchDDPPlugin) | zero2 (LowLevelZero stage 2) | auto (zero2 on CUDA)
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on CUDA); bf16 keeps fp32 master weights
    backend: str = "auto"  # process group: nccl on CUDA, gloo on CPU
    seed: int = 42
    max_steps: int | None = None  # optimizer steps; None: `epochs` bounds the run
    epochs: int | None = None
    ckpt_every: int = 1000
    keep_last: int = 3  # checkpoints kept (older ones are deleted)
    optim_shard_mb: int = 1024  # optimizer state is saved in files of at most this many MB
    max_nonfinite: int = 3  # a non-finite loss/grad norm skips the step; this many in a row stop the run
    compile: str = ""  # torch.compile backend for the STDiT ("inductor"; "" = off)
    val_every: int = 500
    val_timesteps: list[int] = field(default_factory=lambda: [50, 250, 500, 750, 950])
    caption_dropout: float = 0.1
    ema_decay: float = 0.9999
    progress: bool = True
    sample_every: int = 0  # write mp4 samples of `sample_prompts` every N steps (0: never)
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a dog running on a beach", "a city street at night, cars passing"]
    )
    sample_steps: int = 100  # IDDPM sampling steps
    sample_cfg_scale: float = 7.0
    clip_losses: bool = True  # at the end: each training clip's loss into the manifest's train_losses


@dataclass
class RunConfig:
    stage: str = "video"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ presets
# Open-Sora 1.0's recipe (its report and released configs): lr 2e-5, wd 0, no warmup, clip 1.0, EMA 0.9999, caption
# dropout 0.1, grad checkpointing; video 16 frames at interval 3, 256 px (80k steps); HQ 256 px
# (24k) or 512 px (20k, `data.resolution=[512]`). 1.0 had no image stage of its own (PixArt-α was
# it); ours trains 1-frame samples in the same model, with no step count from the recipe.
STAGE_PRESETS: dict[str, dict[str, Any]] = {
    "image": {"data": {"num_frames": [1], "frame_interval": 1, "batch_size": 64}, "train": {"epochs": 1}},
    "video": {
        "data": {"num_frames": [16], "frame_interval": 3, "batch_size": 8},
        "train": {"max_steps": 80_000},
    },
    "hq": {
        "data": {"num_frames": [16], "frame_interval": 3, "resolution": [256], "batch_size": 8},
        "train": {"max_steps": 24_000},
    },
}

# Tiny random models on CPU in seconds: the same three stages at toy sizes.
_TINY_COMMON: dict[str, Any] = {
    "model": {"tiny": True, "model_max_length": 16},
    "data": {"batch_size": 2, "num_workers": 1, "val_min_rows": 4, "val_fraction": 0.2, "val_max": 2},
    "optim": {"lr": 1e-3},
    "train": {"ckpt_every": 10, "val_every": 10, "ema_decay": 0.99, "max_steps": 20, "epochs": None},
}
TINY_PRESETS: dict[str, dict[str, Any]] = {
    "image": {"data": {"num_frames": [1], "frame_interval": 1, "resolution": [64]}},
    "video": {"data": {"num_frames": [4], "frame_interval": 2, "resolution": [64]}},
    "hq": {"data": {"num_frames": [4], "frame_interval": 2, "resolution": [96]}},
}


# ------------------------------------------------------------------------------------ merging
def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "stdit_args":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A command-line value: TOML/JSON literal (1e-4, true, [8, 16], "x") or else the plain string."""
    for parse in (lambda s: tomllib.loads(f"v = {s}")["v"], json.loads):
        try:
            return parse(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError):
            continue
    if text.lower() in ("none", "null"):
        return None
    return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["optim.lr=1e-4", "data.num_frames=[8]"] -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=1e-4)")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parse_value(value.strip())
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot parse {path}: {err}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against a dataclass field's type hint (ints become floats where floats are due)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list | tuple):
            value = [value]  # data.num_frames=16 means [16]
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/dict, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if isinstance(value, bool) and hint is not bool:
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{where}{k}' for k in unknown)}; known: {sorted(names)}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{f.name} must be a section, got {value!r}")
            kwargs[f.name] = _build(hints[f.name], value, f"{where}{f.name}.")
        else:
            kwargs[f.name] = _coerce(value, hints[f.name], f"{where}{f.name}")
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, data, "")
    validate(cfg)
    return cfg


def resolve_config(
    stage: str,
    *,
    tiny: bool = False,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < stage preset < tiny preset < config file < `extra` (CLI flags) < key=value overrides."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    data = deep_merge(RunConfig(stage=stage).to_dict(), STAGE_PRESETS[stage])
    if tiny:
        data = deep_merge(deep_merge(data, _TINY_COMMON), TINY_PRESETS[stage])
    if config_file is not None:
        data = deep_merge(data, read_config_file(config_file))
    data = deep_merge(data, extra or {})
    data = deep_merge(data, parse_overrides(overrides or []))
    if data.get("stage") != stage:
        raise ConfigError(f"the config says stage {data.get('stage')!r} but --stage is {stage!r}")
    return from_dict(data)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def validate(cfg: RunConfig) -> None:
    d, t, o = cfg.data, cfg.train, cfg.optim
    positive = {  # integer options that must be >= 1 when set
        "train.max_steps": t.max_steps,
        "train.epochs": t.epochs,
        "train.ckpt_every": t.ckpt_every,
        "train.keep_last": t.keep_last,
        "train.val_every": t.val_every,
        "train.sample_steps": t.sample_steps,
        "train.optim_shard_mb": t.optim_shard_mb,
        "train.max_nonfinite": t.max_nonfinite,
        "data.frame_interval": d.frame_interval,
        "data.batch_size": d.batch_size,
        "data.val_max": d.val_max,
        "data.max_failed_in_a_row": d.max_failed_in_a_row,
        "model.model_max_length": cfg.model.model_max_length,
    }
    for key, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key, value in {
        "data.num_workers": d.num_workers,
        "data.val_min_rows": d.val_min_rows,
        "train.sample_every": t.sample_every,
        "optim.warmup_steps": o.warmup_steps,
    }.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    checks = [
        (cfg.stage in STAGES, f"stage must be one of {STAGES}"),
        (bool(d.num_frames) and all(n >= 1 for n in d.num_frames), "data.num_frames: positive frame counts"),
        (bool(d.resolution) and all(r >= 16 for r in d.resolution), "data.resolution: sizes >= 16"),
        (d.prefer in ("source", "cut"), "data.prefer is 'source' or 'cut'"),
        (d.source in ("pixels", "features"), "data.source is 'pixels' or 'features'"),
        (d.worker_start in ("spawn", "forkserver", "fork"), "data.worker_start is spawn, forkserver or fork"),
        (_finite(d.val_fraction) and 0 <= d.val_fraction < 1, "data.val_fraction in [0, 1)"),
        (o.name in ("auto", "adamw", "hybrid_adam"), "optim.name is auto, adamw or hybrid_adam"),
        (_finite(o.lr) and o.lr > 0, f"optim.lr must be a finite number > 0, got {o.lr}"),
        (_finite(o.eps) and o.eps > 0, f"optim.eps must be a finite number > 0, got {o.eps}"),
        (_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay must be finite and >= 0"),
        (
            _finite(o.grad_clip) and o.grad_clip >= 0,
            "optim.grad_clip must be finite and >= 0 (0: no clipping)",
        ),
        (
            len(o.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in o.betas),
            "optim.betas: two values in [0, 1)",
        ),
        (t.plugin in ("auto", "ddp", "zero2"), "train.plugin is auto, ddp or zero2"),
        (t.precision in ("auto", "fp32", "bf16"), "train.precision is auto, fp32 or bf16"),
        (t.backend in ("auto", "gloo", "nccl"), "train.backend is auto, gloo or nccl"),
        (
            t.max_steps is not None or t.epochs is not None,
            "give train.max_steps (--max-steps) or train.epochs",
        ),
        (
            _finite(t.caption_dropout, t.ema_decay) and 0 <= t.caption_dropout <= 1 and 0 <= t.ema_decay <= 1,
            "caption_dropout and ema_decay in [0, 1]",
        ),
        (all(0 <= s < 1000 for s in t.val_timesteps), "train.val_timesteps in [0, 1000)"),
        (t.sample_every == 0 or bool(t.sample_prompts), "train.sample_every needs train.sample_prompts"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for ratio in d.aspect_ratios:
        parse_ratio(ratio)


def parse_ratio(text: str) -> float:
    """ "16:9" -> 16/9 (width / height)."""
    w, sep, h = str(text).partition(":")
    try:
        value = float(w) / float(h) if sep else float(w)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"aspect ratio {text!r} is not W:H (e.g. 16:9)") from None
    if value <= 0:
        raise ConfigError(f"aspect ratio {text!r} must be positive")
    return value
