"""T5 text encoder (DeepFloyd's T5 v1.1 XXL in Open-Sora 1.0) and caption cleaning."""

from __future__ import annotations

import html
import re
import urllib.parse
from typing import Any

import torch

from .defaults import DEFAULT_T5

# ---------------------------------------------------------------------------------------------
# Caption cleaning (the behaviour of DeepFloyd-IF / PixArt-α's ``clean_caption``, our own code)
# ---------------------------------------------------------------------------------------------

_URL = re.compile(r"\b(?:https?://|www\.)\S+|\b[\w.-]+\.(?:com|net|org|io|co|ru|de|uk|info|biz)(?:/\S*)?\b")
_TAG = re.compile(r"<[^<>]{0,200}>")
_MENTION = re.compile(r"@[\w]+")
# CJK strokes / radicals / kana / unified ideographs and compatibility blocks.
_CJK = re.compile(r"[\u2e80-\u2eff\u2f00-\u2fdf\u3040-\u31ff\u3200-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_DASHES = re.compile(r"[\u2010-\u2015\u2212\u2e3a\u2e3b\ufe58\ufe63\uff0d\u00ad-]+")
_DOUBLE_QUOTES = re.compile(r"[`´«»“”„‟¨]")
_SINGLE_QUOTES = re.compile(r"[‘’‚‛]")
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_FILENAME = re.compile(r"\b[\w-]+\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|mp4|avi|mov|mkv|webm|pdf|docx?|zip)\b")
_SIZE = re.compile(r"\b\d+(?:\.\d+)?\s*[x×х]\s*\d+(?:\.\d+)?\b")
_BAD_PUNCT = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+")
_LONG_NUMBER = re.compile(r"\b\d{6,}\b|#\d+\b")
_BOILERPLATE = re.compile(
    r"\b(?:free shipping|click (?:here|for|on)\b[^.]*|download(?:able)?|shipping|stock photo|"
    r"royalty[- ]free|page \d+)\b"
)
_EDGE_PUNCT = "-_,.;:!?* "


def clean_caption(caption: str) -> str:
    """Normalise a caption for T5: lowercase, no URLs / HTML / @mentions / CJK / file names / IPs,
    unified dashes and quotes, repaired mojibake (ftfy when installed), collapsed whitespace."""
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = text.replace("<person>", "person")
    text = _URL.sub(" ", text)
    text = html.unescape(html.unescape(text))
    text = _TAG.sub(" ", text)
    text = _MENTION.sub(" ", text)
    text = _CJK.sub(" ", text)
    text = _DASHES.sub("-", text)
    text = _DOUBLE_QUOTES.sub('"', text)
    text = _SINGLE_QUOTES.sub("'", text)
    text = text.replace("\\n", " ")
    text = _IP.sub(" ", text)
    text = _FILENAME.sub(" ", text)
    text = _SIZE.sub(" ", text)
    text = _LONG_NUMBER.sub(" ", text)
    text = re.sub(r"[\"']{2,}", '"', text)
    text = re.sub(r"\.{2,}", " ", text)
    text = _BAD_PUNCT.sub(" ", text)
    if len(re.findall(r"[-_]", text)) > 3:  # slug-like "a-b-c-d-e": the separators are spaces
        text = re.sub(r"[-_]", " ", text)
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # optional
        pass
    text = _BOILERPLATE.sub(" ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip(_EDGE_PUNCT)
    return text.strip()


def text_preprocessing(text: str, use_text_preprocessing: bool = True) -> str:
    """Open-Sora's preprocessing: clean twice (cleaning can expose more to clean), else lower/strip."""
    if use_text_preprocessing:
        return clean_caption(clean_caption(text))
    return text.lower().strip()


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class T5Encoder:
    """Tokenise to ``model_max_length`` tokens (pad / truncate) and run a T5 encoder.

    ``from_pretrained``: hub id (default DeepFloyd/t5-v1_1-xxl) or a local directory with the
    tokenizer files and a ``T5EncoderModel`` (or full T5) checkpoint.  ``encode`` returns
    ``y`` (B, 1, L, d_model) and ``mask`` (B, L).  ``null(n)`` needs the STDiT's null caption:
    set ``encoder.y_embedder = model.y_embedder`` (as Open-Sora does) or pass ``null_embedding``.
    """

    def __init__(
        self,
        from_pretrained: str = DEFAULT_T5,
        model_max_length: int = 120,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        use_text_preprocessing: bool = True,
        null_embedding: torch.Tensor | None = None,
        subfolder: str | None = None,
    ) -> None:
        from transformers import AutoTokenizer, T5EncoderModel

        kwargs: dict[str, Any] = dict(cache_dir=cache_dir, local_files_only=local_files_only)
        tok_kwargs = dict(kwargs, subfolder=subfolder) if subfolder else kwargs
        self.tokenizer = AutoTokenizer.from_pretrained(from_pretrained, **tok_kwargs)
        model_kwargs = dict(tok_kwargs, torch_dtype=dtype)
        self.model = T5EncoderModel.from_pretrained(from_pretrained, **model_kwargs).eval().to(device)
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model_max_length = model_max_length
        self.use_text_preprocessing = use_text_preprocessing
        self.output_dim = self.model.config.d_model
        self.y_embedder: Any = None
        self.null_embedding = null_embedding

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [text_preprocessing(p, self.use_text_preprocessing) for p in prompts]
        return self.tokenizer(
            texts,
            max_length=self.model_max_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            add_special_tokens=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenize(list(prompts))
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask)["last_hidden_state"]
        return {"y": hidden[:, None], "mask": mask}

    def null(self, n: int) -> torch.Tensor:
        """(n, 1, L, C) copies of the model's learned null caption."""
        emb = self.null_embedding
        if emb is None and self.y_embedder is not None:
            emb = self.y_embedder.y_embedding
        if emb is None:
            raise RuntimeError(
                "no null caption: set encoder.y_embedder = stdit.y_embedder (or null_embedding)"
            )
        return emb[None].repeat(n, 1, 1)[:, None].to(self.device)
