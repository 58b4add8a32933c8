"""``python cli.py sample``: text -> video with an Open-Sora 1.0 STDiT checkpoint.

Registered by ``cli.py`` as ``app.command("sample")(sample)``. No ``from __future__ import
annotations`` here: typer reads the annotations at runtime.
"""

import json
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from .defaults import DEFAULT_T5, DEFAULT_VAE


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "sample"


def _models_of_run(ckpt: str | None, vae: str | None, t5: str | None, local: bool) -> tuple[str, str, bool]:
    """VAE and T5 not given: the ones a training run recorded (RUN/models.json, local folders
    need no hub), else the 1.0 defaults. A recorded model that is gone exits with one line."""
    from .run_models import MissingModelError, run_models

    try:
        recorded = run_models(ckpt) if ckpt is not None and Path(ckpt).is_dir() else None
    except MissingModelError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if recorded is None:
        return vae or DEFAULT_VAE, t5 or DEFAULT_T5, local
    both_recorded = vae is None and t5 is None and recorded["local"]
    return vae or recorded["vae"], t5 or recorded["text_encoder"], local or both_recorded


def _missing_model_line(err: Exception, vae: str, t5: str) -> str | None:
    """One line for a model that cannot be found or fetched (instead of a hub traceback)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    for name, value in (("VAE", vae), ("text encoder", t5)):
        if value in str(err):
            return f"error: cannot load the {name} {value!r}: {text}"
    return f"error: cannot load a model ({type(err).__name__}: {text})"


def _pipeline(cls, ckpt, vae, text_encoder, opts: dict):
    keys = (
        "model",
        "num_frames",
        "height",
        "width",
        "sampler",
        "steps",
        "cfg_scale",
        "cfg_channels",
        "space_scale",
        "time_scale",
        "device",
        "dtype",
        "vae_micro_batch_size",
        "local_files_only",
    )
    return cls.from_paths(ckpt, vae=vae, text_encoder=text_encoder, **{k: opts[k] for k in keys})


def sample(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="Prompt; repeat for several videos.")
    ] = None,
    prompt_file: Annotated[
        Path | None, typer.Option(help="Text file with one prompt per line (added after --prompt).")
    ] = None,
    ckpt: Annotated[
        str | None,
        typer.Option(
            help="STDiT checkpoint: .pth/.pt/.safetensors file or a checkpoint directory. "
            "Ours carry their model config (config.json), so --model is not needed."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("samples"),
    vae: Annotated[
        str | None,
        typer.Option(
            help=f"VAE: hub id or local diffusers AutoencoderKL directory (default: the run's, else {DEFAULT_VAE})."
        ),
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option(
            help=f"T5: hub id or local directory, tokenizer + encoder (default: the run's, else {DEFAULT_T5})."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="STDiT preset name (STDiT-XL/2) or a JSON file of constructor args. "
            "Default: the checkpoint's config.json, else STDiT-XL/2."
        ),
    ] = None,
    num_frames: Annotated[
        int | None, typer.Option(help="Frames per video (default: the checkpoint config's, else 16).")
    ] = None,
    height: Annotated[
        int | None,
        typer.Option(
            help="Video height in pixels, a multiple of 8 x patch (default: checkpoint's, else 256)."
        ),
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Video width in pixels (default: the checkpoint config's, else 256).")
    ] = None,
    sampler: Annotated[
        str, typer.Option(help="iddpm (ancestral, 1.0 default) or dpm-solver (fast ODE).")
    ] = "iddpm",
    steps: Annotated[
        int | None, typer.Option(help="Sampling steps (default 100 for iddpm, 20 for dpm-solver).")
    ] = None,
    cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.0,
    cfg_channels: Annotated[
        int | None,
        typer.Option(
            help="Guide only the first N latent channels; 3 reproduces Open-Sora 1.0 samples exactly."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (torch global RNG, as Open-Sora).")] = 42,
    fps: Annotated[float, typer.Option(help="Frame rate of the written videos.")] = 8.0,
    batch_size: Annotated[int, typer.Option(help="Prompts sampled together.")] = 1,
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    space_scale: Annotated[
        float | None, typer.Option(help="STDiT spatial position scale (default height/512 for presets).")
    ] = None,
    time_scale: Annotated[
        float | None, typer.Option(help="STDiT temporal position scale (1.0; 2/3 for 64 frames).")
    ] = None,
    vae_micro_batch_size: Annotated[
        int | None, typer.Option(help="Frames per VAE call (saves memory).")
    ] = None,
    gif: Annotated[bool, typer.Option(help="Also write an animated GIF per video.")] = True,
    contact_sheet: Annotated[
        bool, typer.Option(help="Also write a PNG grid of all frames per video.")
    ] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while sampling.")] = True,
    local_files_only: Annotated[bool, typer.Option(help="Never download from the Hugging Face hub.")] = False,
) -> None:
    """Sample videos from text prompts and write them as MP4 (+ GIF and contact sheet)."""
    from .pipeline import TextToVideoPipeline, save_contact_sheet, save_gif, save_mp4

    prompts = list(prompt or [])
    if prompt_file is not None:
        prompts += [line.strip() for line in prompt_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise typer.BadParameter("give at least one --prompt or a --prompt-file")
    if ckpt is None:
        typer.echo("warning: no --ckpt given, sampling with random STDiT weights", err=True)
    vae, text_encoder, local_files_only = _models_of_run(ckpt, vae, text_encoder, local_files_only)

    try:
        pipe = _pipeline(TextToVideoPipeline, ckpt, vae, text_encoder, locals())
    except (OSError, ValueError) as err:  # hub errors are OSErrors (no network, unknown id, gated)
        typer.echo(_missing_model_line(err, vae, text_encoder), err=True)
        raise typer.Exit(1) from None
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        t0 = time.perf_counter()
        videos = pipe(batch, seed=seed + start, progress=progress)
        elapsed = time.perf_counter() - t0
        for offset, (text, frames) in enumerate(zip(batch, videos, strict=True)):
            stem = f"{start + offset:04d}_{_slug(text)}"
            files = {"mp4": str(save_mp4(frames, out / f"{stem}.mp4", fps=fps))}
            if gif:
                files["gif"] = str(save_gif(frames, out / f"{stem}.gif", fps=fps))
            if contact_sheet:
                files["contact_sheet"] = str(save_contact_sheet(frames, out / f"{stem}.png"))
            records.append({"prompt": text, "seed": seed + start, "frames": list(frames.shape), **files})
            typer.echo(
                f"{files['mp4']}  ({frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, {elapsed:.1f}s)"
            )
    num_frames, height, width = pipe.video_size
    settings = dict(
        ckpt=ckpt,
        model=model,
        stdit_config=pipe.stdit.config,
        vae=vae,
        text_encoder=text_encoder,
        sampler=sampler,
        steps=steps,
        cfg_scale=cfg_scale,
        cfg_channels=cfg_channels,
        num_frames=num_frames,
        height=height,
        width=width,
        fps=fps,
        dtype=dtype,
    )
    (out / "samples.json").write_text(json.dumps({"settings": settings, "samples": records}, indent=2))
