"""Floors: mediaio < datakit (and its schema) < models < training < demo and the CLIs.

Every module's imports are read with `ast` (function-level and `importlib.import_module` /
`lazy_import` calls with a literal name included): no package imports one on a higher floor.
Plugins reach datakit through the `datakit.stages` entry point instead (training's features stage).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

FLOORS = {"mediaio": 1, "datakit": 2, "models": 3, "training": 4, "demo": 5, "cli": 5}
LOADERS = {"import_module", "lazy_import", "__import__"}


def imported_names(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(), str(path))
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.append((node.lineno, base))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in LOADERS and node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    out.append((node.lineno, node.args[0].value))
    return out


def modules() -> list[Path]:
    files = [ROOT / "cli.py"]
    for package in FLOORS:
        if (ROOT / package).is_dir():
            files += sorted((ROOT / package).rglob("*.py"))
    return files


def upward_imports() -> list[str]:
    bad = []
    for path in modules():
        rel = path.relative_to(ROOT)
        floor = FLOORS[rel.parts[0].removesuffix(".py")]
        for line, name in imported_names(path):
            top = name.split(".")[0]
            if FLOORS.get(top, 0) > floor:
                bad.append(f"{rel}:{line} imports {name} (floor {FLOORS[top]} > {floor})")
    return bad


def test_no_package_imports_a_higher_floor():
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_walk_sees_lazy_imports(tmp_path):
    """Function-level, relative and import_module imports are all found (the walk is not blind)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from training import run\n    from ..models import vae\n"
        "    import importlib\n    importlib.import_module('demo.run')\n"
    )
    names = [n for _, n in imported_names(probe, "datakit.stages")]
    assert names == ["training", "datakit.models", "importlib", "demo.run"]


def test_datakit_names_the_same_t5_as_models():
    from datakit.export import DEFAULT_T5_TOKENIZER
    from models.defaults import DEFAULT_T5

    assert DEFAULT_T5_TOKENIZER == DEFAULT_T5
