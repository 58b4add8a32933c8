"""Modules imported on first attribute access (stdlib `importlib.util.LazyLoader`)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """Return module `name`, executing it only when one of its attributes is first used."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


class _NoPandasFinder:
    """Makes `import pandas` fail while it is on sys.meta_path."""

    def find_spec(self, name: str, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not imported for pyarrow's look (datakit.lazy)")


def pyarrow_skips_pandas() -> None:
    """Spare a command pandas' import (about 0.15 s of a one-video `datakit scenes`).

    pyarrow's first conversion of a Python list imports pandas only to ask whether the list is a
    pandas object; that look happens once per process, and pandas is made unavailable to it here.
    Explicit conversions (`to_pandas`, `from_pandas`) import pandas as usual, after which pyarrow
    recognises pandas objects again. Nothing is done when pandas is already imported.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    finder = _NoPandasFinder()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)
