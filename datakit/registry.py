"""The stage registry: every concrete `Stage` subclass defined in a module under `datakit/stages/`,
plus those of the `datakit.stages` entry-point group (installed plugins, and the training side's
`features` stage), plus the modules named in the DATAKIT_STAGES environment variable.

An entry point (or a DATAKIT_STAGES item) names a module (`pkg.mod`: its stage classes) or one
class (`pkg.mod:MyStage`). Nothing else needs to know about a stage: the schema, the `clips` view,
the CLI commands, the `datakit run` config and `status` are built from here. Stage modules import
heavy libraries (PyAV, OpenCV, torch) inside functions, so that listing stages stays cheap.

A stage module that fails to import is skipped and reported by name (`broken()`): the other
stages and commands keep working.
"""

from __future__ import annotations

import functools
import heapq
import importlib
import os
import pkgutil
import types
from pathlib import Path

from datakit.stage import Stage, describe
from datakit.tables import ClipColumns, Table

# Modules that declare tables without being a stage (ingest writes `sources` directly): module-level
# `TABLES` and, optionally, `CLIP_COLUMNS`.
TABLE_MODULES = ("datakit.ingest", "datakit.table_import", "datakit.train_losses")
STAGE_PACKAGE = "datakit.stages"
ENTRY_POINT_GROUP = "datakit.stages"
# Stage modules of your own project without packaging: DATAKIT_STAGES=my_pkg.stages.foo,other.mod:MyStage
PLUGIN_ENV = "DATAKIT_STAGES"


def entry_point_values() -> list[str]:
    """The `module:Class` values of the `datakit.stages` entry points.

    Scanning every installed distribution costs tens of milliseconds on each command, so the list
    is cached per interpreter, keyed by the modification times of the sys.path folders (installing
    or removing a package, an editable reinstall included, changes its folder's mtime)."""
    import hashlib
    import json
    import sys

    stamp = [(p, os.stat(p).st_mtime_ns) for p in sys.path if p and os.path.isdir(p)]
    key = hashlib.blake2b(json.dumps([sys.executable, stamp]).encode(), digest_size=8).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "datakit" / "entry-points.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return list(cached["values"])
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    from importlib.metadata import entry_points

    values = [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "values": values}))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: scan each time
    return values


def _sources() -> list[tuple[str, object]]:
    """(name, loader) of every place stages come from, in discovery order."""
    package = importlib.import_module(STAGE_PACKAGE)
    found = [
        (f"{STAGE_PACKAGE}.{i.name}", f"{STAGE_PACKAGE}.{i.name}")
        for i in pkgutil.iter_modules(package.__path__)
    ]
    found += [(value, value) for value in entry_point_values()]
    found += [(m.strip(), m.strip()) for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    return found


def _load(ref: str) -> object:
    module, _, attr = ref.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded


def is_concrete(obj: object) -> bool:
    """A stage class that can run: it has a name and a marker table (base classes have neither)."""
    if not issubclass(type(obj), type):  # type() reads no attribute: a lazily imported module stays unloaded
        return False
    return (
        issubclass(obj, Stage)
        and isinstance(getattr(obj, "name", None), str)
        and isinstance(getattr(obj, "marker_table", None), str)
    )


def _classes(loaded: object) -> list[type[Stage]]:
    if isinstance(loaded, types.ModuleType):
        return [v for v in vars(loaded).values() if is_concrete(v) and v.__module__ == loaded.__name__]
    if is_concrete(loaded):
        return [loaded]
    raise TypeError(f"{loaded!r} is neither a module nor a Stage subclass with a name and a marker_table")


@functools.cache
def _discover() -> tuple[dict[str, type[Stage]], dict[str, str]]:
    found: dict[str, type[Stage]] = {}
    broken: dict[str, str] = {}
    for source, ref in _sources():
        try:
            classes = _classes(_load(ref))
        except Exception as exc:  # noqa: BLE001 (one broken plugin must not take down the rest)
            broken[source] = describe(exc)
            continue
        for cls in classes:
            other = found.get(cls.name)
            if other is not None and other is not cls:
                raise RuntimeError(
                    f"two stages share the name {cls.name!r}: {other.__module__} and {cls.__module__}"
                )
            found[cls.name] = cls
    return run_order(found), broken


def run_order(found: dict[str, type[Stage]]) -> dict[str, type[Stage]]:
    """Stages sorted so that each comes after the stages in its `after` (ties: by name)."""
    deps = {name: {d for d in cls.after if d in found and d != name} for name, cls in found.items()}
    ready = [name for name, d in deps.items() if not d]
    heapq.heapify(ready)
    out: dict[str, type[Stage]] = {}
    while ready:
        name = heapq.heappop(ready)
        out[name] = found[name]
        for other, d in deps.items():
            if name in d:
                d.discard(name)
                if not d:
                    heapq.heappush(ready, other)
    if len(out) != len(found):
        raise RuntimeError(
            f"stages depend on each other in a circle: {', '.join(sorted(set(found) - set(out)))}"
        )
    return out


def stages() -> dict[str, type[Stage]]:
    """name -> stage class, in run order (modules that failed to import are left out: `broken()`)."""
    return _discover()[0]


def broken() -> dict[str, str]:
    """Stage modules (or entry points) that failed to import -> the one-line error."""
    return _discover()[1]


def broken_lines() -> list[str]:
    return [f"stage module {name} failed to import and is skipped: {err}" for name, err in broken().items()]


def stage_class(name: str) -> type[Stage]:
    try:
        return stages()[name]
    except KeyError:
        hint = f" ({'; '.join(broken_lines())})" if broken() else ""
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(stages())}{hint}") from None


def _table_modules() -> list[types.ModuleType]:
    return [importlib.import_module(m) for m in TABLE_MODULES]


@functools.cache
def tables() -> dict[str, Table]:
    """Every declared table, by name (ingest's first, then each stage's in run order)."""
    out: dict[str, Table] = {}
    declared = [(m.__name__, getattr(m, "TABLES", ())) for m in _table_modules()]
    declared += [(cls.__module__, cls.tables) for cls in stages().values()]
    for owner, group in declared:
        for table in group:
            if table.name in out and out[table.name] != table:
                raise RuntimeError(f"table {table.name} is declared twice ({owner})")
            out[table.name] = table
    return out


@functools.cache
def clip_columns() -> tuple[ClipColumns, ...]:
    """What each stage (and table module) adds to the `clips` view, in run order; a column twice is an error."""
    declared = [c for m in _table_modules() for c in getattr(m, "CLIP_COLUMNS", ())]
    declared += [c for cls in stages().values() for c in cls.clip_columns]
    seen: dict[str, str] = {}
    for c in declared:
        if c.table not in tables():
            raise RuntimeError(f"clips columns {c.columns} come from an undeclared table {c.table!r}")
        for col in c.columns:
            if col in seen:
                raise RuntimeError(f"clips column {col!r} is declared twice ({seen[col]} and {c.table})")
            seen[col] = c.table
    return tuple(declared)
