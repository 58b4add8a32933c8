"""Text -> video with STDiT + VAE + T5 + a diffusion sampler, and video / GIF / contact-sheet writers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .diffusion import IDDPM, DPMSolver, build_scheduler
from .text_encoder import DEFAULT_T5, T5Encoder
from .vae import DEFAULT_VAE, VideoAutoencoderKL

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA, float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    name = dtype.removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[name]


DEFAULT_STDIT = "STDiT-XL/2"


def load_stdit_config(model: str) -> tuple[str | None, dict[str, Any]]:
    """``model`` is a preset name (e.g. "STDiT-XL/2") or a JSON file of STDiT constructor args.

    A JSON file may hold the args at top level or under ``"constructor_args"`` (as the golden
    ``stdit_tiny.json``). Returns (preset name or None, args).
    """
    path = Path(model)
    if path.suffix == ".json" or path.is_file():
        cfg = json.loads(path.read_text())
        cfg = cfg.get("constructor_args", cfg)
        return None, dict(cfg)
    return model, {}


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 (Open-Sora's rounding: x*255 + 0.5, clamped)."""
    x = (video.float().clamp(-1, 1) + 1) / 2
    x = (x * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class TextToVideoPipeline:
    """Prompts -> uint8 videos (T, H, W, 3).

    ``stdit``: an :class:`~models.stdit.STDiT` built for the latent size of the videos;
    ``scheduler``: :class:`IDDPM` or :class:`DPMSolver` (both expose ``sample``).
    """

    def __init__(
        self,
        stdit: torch.nn.Module,
        vae: VideoAutoencoderKL,
        text_encoder: T5Encoder,
        scheduler: IDDPM | DPMSolver,
        device: torch.device | str = "cpu",
    ) -> None:
        self.stdit = stdit.eval()
        self.vae = vae
        self.text_encoder = text_encoder
        self.scheduler = scheduler
        self.device = torch.device(device)
        # The sampler's null caption is the STDiT's learned one (as in Open-Sora 1.0).
        self.text_encoder.y_embedder = stdit.y_embedder

    @property
    def latent_size(self) -> tuple[int, int, int]:
        return tuple(self.stdit.input_size)  # type: ignore[return-value]

    @property
    def video_size(self) -> tuple[int, int, int]:
        t, h, w = self.latent_size
        pt, ph, pw = self.vae.patch_size
        return t * pt, h * ph, w * pw

    @classmethod
    def from_paths(
        cls,
        ckpt: str | None,
        vae: str = DEFAULT_VAE,
        text_encoder: str = DEFAULT_T5,
        model: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        sampler: str = "iddpm",
        steps: int | None = None,
        cfg_scale: float = 7.0,
        cfg_channels: int | None = None,
        space_scale: float | None = None,
        time_scale: float | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        vae_micro_batch_size: int | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ) -> TextToVideoPipeline:
        """Build every part from hub ids / local paths and load the STDiT checkpoint.

        ``model``: an STDiT preset name or a JSON file of constructor args. ``None``: the config a
        checkpoint of ours carries (``config.json``, see ``models.checkpoint.save_weights``), else
        the STDiT-XL/2 preset (released Open-Sora files). ``input_size`` is set from (num_frames,
        height, width), which default to the checkpoint config's size, else 16x256x256; the
        caption width / token count follow the config (defaults: T5's d_model, 120).
        ``space_scale`` defaults to height/512 for presets (0.5 at 256px, as the 1.0 checkpoints
        were trained from PixArt-512) and ``time_scale`` to 1.0.
        ``ckpt=None`` keeps random weights (for smoke tests).
        """
        from .checkpoint import load_pretrained, read_model_config
        from .stdit import STDIT_PRESETS, STDiT, build_from_checkpoint

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        stored = read_model_config(ckpt) if model is None and ckpt is not None else None
        if stored is not None:
            preset, args = None, dict(stored)
        else:
            preset, args = load_stdit_config(model or DEFAULT_STDIT)
        if preset is not None and preset not in STDIT_PRESETS:
            raise ValueError(
                f"unknown model {model!r}: not a preset ({sorted(STDIT_PRESETS)}) nor a JSON file"
            )
        max_len = int(args.get("model_max_length", 120))

        t5 = T5Encoder(
            text_encoder,
            model_max_length=max_len,
            device=dev,
            dtype=torch.float32 if dt == torch.float16 else dt,  # T5 v1.1 overflows in fp16
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        video_vae = VideoAutoencoderKL(
            vae,
            micro_batch_size=vae_micro_batch_size,
            dtype=dt,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        ).to(dev)

        args = {k: v for k, v in args.items() if k != "dtype"}
        if stored is not None:  # the trained size, in pixels
            size = [n * p for n, p in zip(stored["input_size"], video_vae.patch_size, strict=True)]
        else:
            size = [16, 256, 256]
        num_frames, height, width = (g or d for g, d in zip((num_frames, height, width), size, strict=True))
        args["input_size"] = tuple(video_vae.get_latent_size((num_frames, height, width)))
        args.setdefault("caption_channels", t5.output_dim)
        args.setdefault("model_max_length", max_len)
        if preset is not None:
            args.update(STDIT_PRESETS[preset])
            args.setdefault("space_scale", height / 512)
            args.setdefault("time_scale", 1.0)
        if space_scale is not None:
            args["space_scale"] = space_scale
        if time_scale is not None:
            args["time_scale"] = time_scale
        if "patch_size" in args:
            args["patch_size"] = tuple(args["patch_size"])
        if args["caption_channels"] != t5.output_dim:
            raise ValueError(
                f"STDiT caption_channels={args['caption_channels']} but T5 d_model={t5.output_dim}"
            )

        if stored is not None:  # our checkpoint: every tensor must match its own config
            stdit = build_from_checkpoint(ckpt, **args)
        else:
            stdit = STDiT(**args)
            if ckpt is not None:
                load_pretrained(stdit, ckpt)
        stdit = stdit.to(dev, dt).eval()

        kwargs: dict[str, Any] = dict(cfg_scale=cfg_scale, cfg_channels=cfg_channels)
        scheduler = build_scheduler(sampler, steps, **kwargs)
        return cls(stdit, video_vae, t5, scheduler, device=dev)

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: Sequence[str],
        seed: int | None = None,
        progress: bool = True,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(n, 4, T, h, w) float32 latents for ``prompts`` (seeded through torch's global RNG, as 1.0)."""
        if seed is not None:
            torch.manual_seed(seed)
        return self.scheduler.sample(
            self.stdit,
            self.text_encoder,
            z_size=(self.vae.out_channels, *self.latent_size),
            prompts=list(prompts),
            device=self.device,
            progress=progress,
            z=z,
        )

    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[str] | str, seed: int | None = None, progress: bool = True
    ) -> list[np.ndarray]:
        """One (T, H, W, 3) uint8 video per prompt."""
        if isinstance(prompts, str):
            prompts = [prompts]
        latents = self.sample_latents(prompts, seed=seed, progress=progress)
        videos = self.vae.decode(latents.to(self.vae.dtype))
        return [to_uint8_frames(v) for v in videos]


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad H and W to even sizes (yuv420p needs them) by repeating the last row / column."""
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames


def save_mp4(frames: np.ndarray, path: str | Path, fps: float = 8) -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 (libx264; mpeg4 when unavailable), yuv420p."""
    import av

    from mediaio import av_open

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _even(np.ascontiguousarray(frames))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    from fractions import Fraction

    with av_open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_gif(frames: np.ndarray, path: str | Path, fps: float = 8) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
    return path


def save_contact_sheet(frames: np.ndarray, path: str | Path, cols: int | None = None, pad: int = 2) -> Path:
    """All frames on one PNG grid (``cols`` defaults to ~sqrt(T))."""
    from PIL import Image

    t, h, w, _ = frames.shape
    cols = cols or math.ceil(math.sqrt(t))
    rows = math.ceil(t / cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + h, x : x + w] = frame
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
