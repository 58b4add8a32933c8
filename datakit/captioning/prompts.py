"""Versioned caption prompts: `NAME@vN` names version N of `manifests/prompts/NAME.toml`.

A prompt file holds one table per version (`[v1]`, `[v2]`, ...) with a `system` and a `user`
text; `{num_frames}` in either is replaced by the number of frames sent. A user's own file is
named by its path: `my_prompts.toml@v3`. Versions are never edited once used: the prompt id and a
hash of the text go into every caption's model key.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "manifests" / "prompts"


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    id: str  # "video@v1"
    system: str
    user: str

    def render(self, num_frames: int) -> tuple[str, str]:
        """(system, user) texts for a request with `num_frames` frames."""
        return self.system.format(num_frames=num_frames), self.user.format(num_frames=num_frames)

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.system}\0{self.user}".encode()).hexdigest()[:12]


def available(directory: Path = PROMPTS_DIR) -> list[str]:
    """Every shipped prompt id, e.g. ['short@v1', 'video@v1']."""
    out = []
    for path in sorted(directory.glob("*.toml")):
        out += [f"{path.stem}@{version}" for version in _read(path)]
    return out


def load_prompt(spec: str, directory: Path = PROMPTS_DIR) -> Prompt:
    """The prompt named `NAME@vN` (shipped) or `path/to/file.toml@vN`; a clear error otherwise."""
    name, sep, version = spec.rpartition("@")
    if not sep or not name or not version:
        raise PromptError(
            f"prompt {spec!r}: expected NAME@VERSION, e.g. video@v1 (shipped: {', '.join(available())})"
        )
    path = Path(name) if name.endswith(".toml") else directory / f"{name}.toml"
    if not path.is_file():
        raise PromptError(f"prompt {spec!r}: no file {path} (shipped: {', '.join(available())})")
    versions = _read(path)
    if version not in versions:
        raise PromptError(
            f"prompt {spec!r}: {path.name} has no [{version}] (versions: {', '.join(versions)})"
        )
    entry = versions[version]
    if not isinstance(entry, dict) or not isinstance(entry.get("user"), str):
        raise PromptError(f"prompt {spec!r}: [{version}] needs a `user` text (and optionally `system`)")
    prompt = Prompt(
        spec if path.parent != directory else f"{path.stem}@{version}", entry.get("system", ""), entry["user"]
    )
    try:
        prompt.render(1)
    except (KeyError, IndexError, ValueError) as exc:
        raise PromptError(f"prompt {spec!r}: bad placeholder {exc} (only {{num_frames}} is known)") from None
    return prompt


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PromptError(f"prompt file {path}: {exc}") from None
