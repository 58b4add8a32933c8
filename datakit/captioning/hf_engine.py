"""Captions in-process with transformers (small runs, no server): any image-text-to-text model
whose processor has a chat template (Qwen2-VL, Qwen2.5-VL, LLaVA...).

A batch of clips is one left-padded `generate` call. bf16 on a GPU, float32 on the CPU.
"""

from __future__ import annotations

import io

from datakit.captioning.base import Generation, Sampling
from datakit.captioning.prompts import Prompt


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: str, device: str = "cpu"):
        import torch
        import transformers
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.device = device
        self.processor = AutoProcessor.from_pretrained(model, use_fast=True)
        self.processor.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.net = AutoModelForImageTextToText.from_pretrained(model, torch_dtype=dtype).to(device).eval()
        self.model = f"{model} (transformers {transformers.__version__})"
        tok = self.processor.tokenizer
        eos = self.net.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_ids))

    def _chat_text(self, num_frames: int, prompt: Prompt) -> str:
        system, user = prompt.render(num_frames)
        content = [{"type": "image"} for _ in range(num_frames)] + [{"type": "text", "text": user}]
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": content}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(
        self, clips: list[list[bytes]], prompt: Prompt, sampling: Sampling
    ) -> list[Generation | Exception]:
        from PIL import Image

        texts = [self._chat_text(len(frames), prompt) for frames in clips]
        images = [Image.open(io.BytesIO(f)).convert("RGB") for frames in clips for f in frames]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
        kwargs = {"do_sample": False}
        if sampling.temperature > 0:
            self.torch.manual_seed(sampling.seed)
            kwargs = {"do_sample": True, "temperature": sampling.temperature}
        with self.torch.inference_mode():
            out = self.net.generate(
                **inputs,
                max_new_tokens=sampling.max_tokens,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                **kwargs,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        results: list[Generation | Exception] = []
        for tokens, n_prompt in zip(new_tokens, prompt_lengths, strict=True):
            end = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
            kept = tokens if end is None else tokens[: end + 1]  # the end-of-text token counts, as in vLLM
            text = self.processor.tokenizer.decode(kept, skip_special_tokens=True)
            results.append(Generation(text, "length" if end is None else "stop", int(n_prompt), len(kept)))
        return results

    def close(self) -> None:
        self.net = None
