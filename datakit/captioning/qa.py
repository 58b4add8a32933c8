"""Caption cleaning and quality checks.

`clean_caption` removes what says nothing about the content ("The video shows ...", a leading
"Caption:", quotes, runs of whitespace). `check_caption` finds what a training set must not
silently keep: an empty caption, one cut off at the token limit, a refusal, or a degenerate
repetition loop. The stage stores the first problem as `caption_status` and all of them in
`qa_reason`; it never drops the caption, so the thresholds stay with the SQL recipes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Openings that describe the medium instead of the content, e.g. "In this video, ...".
_MEDIUM = r"(?:video|clip|footage|scene|images?|frames?|sequence|animation|shot)"
_FILLER = re.compile(
    rf"^(?:(?:caption|description)\s*:\s*)?"
    rf"(?:(?:in|throughout)\s+(?:this|the)\s+{_MEDIUM},?\s+"
    rf"|(?:this|the|these)\s+(?:(?:short|brief|video)\s+)?{_MEDIUM}\s+"
    rf"(?:shows?|showcases?|depicts?|features?|captures?|presents?|displays?|is\s+showing)(?:\s+that)?:?\s+)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^(?:caption|description)\s*:\s*", re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:[’']m|am)\s+(?:sorry|unable|not able)|i\s+(?:cannot|can[’']t|can\s*not|won[’']t)\b"
    r"|as an ai\b|i\s+do\s+not\s+have\s+(?:access|the ability)"
    r"|(?:no|cannot see any|there (?:is|are) no)\s+(?:video|images?|frames?)\s+(?:provided|attached|available|shown))",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)
_CHAR_LOOP = re.compile(r"(\S{1,40}?)\1{7,}")  # a short unit repeated 8+ times without a space


@dataclass(frozen=True)
class QAResult:
    status: str  # "ok" or the first problem: "empty", "refusal", "repetition", "truncated"
    reasons: tuple[str, ...]  # every problem found, "<status>: <readable detail>"

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) or None


def clean_caption(text: str) -> str:
    """Whitespace collapsed, quotes and "The video shows ..." style openings removed."""
    text = " ".join(text.split())
    for _ in range(2):  # "Caption: The video shows ..." needs two passes
        text = text.strip().strip("\"'“”‘’`").strip()
        stripped = _FILLER.sub("", text, count=1)
        stripped = _LABEL.sub("", stripped, count=1)
        if stripped == text:
            break
        text = stripped
    if text[:1].islower():
        text = text[0].upper() + text[1:]
    return text


def _word_loop(words: list[str], max_n: int = 8, min_repeats: int = 4) -> tuple[str, int] | None:
    """(unit, repeats) of the first word n-gram repeated `min_repeats`+ times in a row."""
    for n in range(1, max_n + 1):
        for i in range(len(words) - n * min_repeats + 1):
            unit = words[i : i + n]
            repeats = 1
            while words[i + repeats * n : i + (repeats + 1) * n] == unit:
                repeats += 1
            if repeats >= min_repeats:
                return " ".join(unit), repeats
    return None


def repetition_problem(text: str, *, min_words: int = 12, min_unique_ratio: float = 0.3) -> str | None:
    """A description of a degenerate loop in `text`, or None."""
    words = [w.lower() for w in _WORD.findall(text)]
    loop = _word_loop(words)
    if loop:
        return f"{loop[0][:40]!r} {loop[1]} times in a row"
    chars = _CHAR_LOOP.search(text)  # loops without word boundaries ("!!!!", unspaced scripts)
    if chars:
        return f"{chars.group(1)[:40]!r} {len(chars.group(0)) // len(chars.group(1))} times in a row"
    if len(words) >= min_words:
        trigrams = list(zip(words, words[1:], words[2:], strict=False))
        ratio = len(set(trigrams)) / len(trigrams)
        if ratio < min_unique_ratio:
            return f"only {ratio:.0%} of word trigrams are distinct"
    return None


def check_caption(text: str, finish_reason: str | None, *, max_tokens: int | None = None) -> QAResult:
    """QA of a cleaned caption given how generation stopped ('stop' or 'length')."""
    problems: list[tuple[str, str]] = []
    if not _WORD.search(text):
        problems.append(("empty", "empty caption" if not text else f"no words in caption {text[:40]!r}"))
    refusal = _REFUSAL.search(text)
    if refusal:
        problems.append(("refusal", f"refusal-like text {refusal.group(0)!r}"))
    loop = repetition_problem(text)
    if loop:
        problems.append(("repetition", loop))
    if finish_reason == "length":
        limit = f" ({max_tokens} tokens)" if max_tokens else ""
        problems.append(("truncated", f"stopped at the token limit{limit}"))
    if not problems:
        return QAResult("ok", ())
    return QAResult(problems[0][0], tuple(f"{status}: {reason}" for status, reason in problems))
