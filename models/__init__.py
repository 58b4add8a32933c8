"""Open-Sora 1.0 models. Submodules are imported lazily: `from models.stdit import STDiT`."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "STDiT": "models.stdit",
    "STDIT_PRESETS": "models.stdit",
    "build_stdit": "models.stdit",
    "STDiT_XL_2": "models.stdit",
    "load_pretrained": "models.checkpoint",
    "LoadReport": "models.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
