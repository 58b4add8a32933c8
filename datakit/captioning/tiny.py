"""A tiny random Qwen2-VL captioner, built locally (nothing is downloaded).

Tests, benchmarks and the demo use it to run the real captioning code paths (transformers,
vLLM, an OpenAI-compatible server) on a machine without model weights. Its output is random
text: caption QA flags most of it, as it should. The folder it writes has the same layout as a
released checkpoint (config, safetensors weights, tokenizer, processor, chat template), so every
engine loads it exactly as it loads real weights.

The sizes respect what vLLM's CPU backend accepts: head_dim 32 (16 is refused) and an M-RoPE
section that adds up to head_dim / 2.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat format: system turn, user turn with one vision block per image, assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Image sizes the processor allows (pixels): small, so that a frame costs a few vision tokens.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def _corpus() -> list[str]:
    """Caption-like sentences to train the tokenizer on (words only matter for its merges)."""
    subjects = ["a dog", "a woman", "two children", "a red car", "the camera", "a bird", "waves", "a man"]
    verbs = ["runs across", "walks along", "pans over", "flies above", "crashes onto", "drives down"]
    places = ["a sunny beach", "a busy street", "green hills", "a quiet kitchen", "the snowy forest"]
    return [
        f"{s} {v} {p}, slowly and then quickly. The light is soft."
        for s in subjects
        for v in verbs
        for p in places
    ]


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer with Qwen2-VL's special tokens, trained on a small corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen2vl(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a random Qwen2-VL checkpoint (about 1.5 MB) to `out_dir`; returns the folder."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)  # no padding rows: a random model can only emit real tokens
    config = Qwen2VLConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        torch_dtype="float32",
        initializer_range=0.2,
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "Random weights (datakit.captioning.tiny): captions are noise, for tests only.\n"
    )
    _mark_random(out)
    return out


def _mark_random(out: Path) -> None:
    """Record in config.json that the weights are random, so outputs can say so."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    config["datakit_random_weights"] = True
    path.write_text(json.dumps(config, indent=2) + "\n")
