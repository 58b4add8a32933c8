"""What every captioning engine takes and returns.

An engine turns requests (the frames of one clip, in order, as JPEG bytes: every engine sees the
same pixels) into generations (text, why it stopped, token counts). A request that fails alone comes back as its exception, so that one bad
clip costs only its own row; a failure of the whole engine (server gone) raises.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from datakit.captioning.prompts import Prompt


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop" (end of text) or "length" (hit max_tokens)
    prompt_tokens: int | None
    output_tokens: int | None


class Engine(Protocol):
    name: str  # "vllm", "openai", "transformers"
    model: str  # readable model identity stored in each row

    def generate(
        self, clips: list[list[bytes]], prompt: Prompt, sampling: Sampling
    ) -> list[Generation | Exception]:
        """One generation (or the exception that stopped it) per clip, in order."""
        ...

    def close(self) -> None: ...


def encode_jpeg(frame: np.ndarray, quality: int = 92) -> bytes:
    """An RGB uint8 HxWx3 frame as JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def chat_messages(frames: list[bytes], prompt: Prompt) -> list[dict]:
    """OpenAI-style chat messages: the system text, then the frames (JPEG data URLs) and the user text."""
    system, user = prompt.render(len(frames))
    images = [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(f).decode()}}
        for f in frames
    ]
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": [*images, {"type": "text", "text": user}]}]
