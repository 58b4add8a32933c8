"""The stage registry: every module under `datakit/stages/` that defines `STAGE` is a stage
(plus the modules named in the DATAKIT_STAGES environment variable: stages of your own project).

A stage module declares `TABLES` (its tables) and `STAGE` (its class); nothing else needs to
know about it: the schema, the CLI commands, the `datakit run` config and `status` are built
from here. Stage modules import heavy libraries (PyAV, OpenCV, torch) inside functions, so that
listing stages stays cheap.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil

from datakit.stage import Stage
from datakit.tables import Table

# Modules that declare tables without being a stage (ingest writes `sources` directly).
TABLE_MODULES = ("datakit.ingest",)
STAGE_PACKAGE = "datakit.stages"
# Stage modules of your own project, outside this package: DATAKIT_STAGES=my_pkg.stages.foo,other.mod
PLUGIN_ENV = "DATAKIT_STAGES"


def _stage_modules() -> list[str]:
    package = importlib.import_module(STAGE_PACKAGE)
    names = [f"{STAGE_PACKAGE}.{info.name}" for info in pkgutil.iter_modules(package.__path__)]
    return names + [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]


@functools.cache
def stages() -> dict[str, type[Stage]]:
    """name -> stage class, in run order."""
    found: list[type[Stage]] = []
    for name in _stage_modules():
        module = importlib.import_module(name)
        cls = getattr(module, "STAGE", None)
        if cls is not None:
            found.append(cls)
    found.sort(key=lambda c: (c.order, c.name))
    names = [c.name for c in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two stages share a name: {names}")
    return {c.name: c for c in found}


def stage_class(name: str) -> type[Stage]:
    try:
        return stages()[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(stages())}") from None


@functools.cache
def tables() -> dict[str, Table]:
    """Every declared table, by name (ingest's first, then each stage's in run order)."""
    out: dict[str, Table] = {}
    modules = [importlib.import_module(m) for m in TABLE_MODULES]
    modules += [importlib.import_module(cls.__module__) for cls in stages().values()]
    for module in modules:
        for table in getattr(module, "TABLES", ()):
            if table.name in out and out[table.name] is not table:
                raise RuntimeError(f"table {table.name} is declared twice ({module.__name__})")
            out[table.name] = table
    return out
