"""Imports run one way: entry points -> runs -> federation -> algorithms -> search space / models -> data.

A package may import from its own layer or any layer below it, never above: then no import cycle
can form, and each folder can be read knowing only the ones below it. Deferred imports (inside
functions) count too, since they hide a cycle rather than remove it.
"""

from __future__ import annotations

import ast

from helpers import ROOT

PACKAGE = ROOT / "src" / "federated_nas"

# top to bottom; modules of one layer may import each other
LAYERS = (
    ("cli", "runs"),
    ("federation",),
    ("tracking",),
    ("builders",),
    ("algorithms",),
    ("bench",),  # the tabular benchmark: below the loop and the methods, so a search can look itself up
    ("search_space", "models"),
    ("data",),
    ("compat", "config_checks", "errors"),
)


def layer_of(module: str) -> int:
    top = module.split(".")[1]
    return next(index for index, names in enumerate(LAYERS) if top in names)


def imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of the package by itself."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("federated_nas."):
                found.append((module, node.module))
            elif isinstance(node, ast.Import):
                found.extend((module, alias.name) for alias in node.names if alias.name.startswith("federated_nas."))
    return found


def test_every_package_has_a_layer():
    for path in PACKAGE.iterdir():
        if path.suffix == ".py" and path.stem != "__init__" or path.is_dir() and (path / "__init__.py").exists():
            layer_of(f"federated_nas.{path.stem}")  # StopIteration: a new package needs a place in LAYERS


def test_imports_only_point_down():
    upward = [f"{importer} imports {imported}" for importer, imported in imports()
              if layer_of(imported) < layer_of(importer)]
    assert upward == [], "\n".join(upward)


def test_algorithms_core_imports_no_method_and_the_two_method_folders_not_each_other():
    """algorithms/core is the contract and the shared rules; a method (nas/, baselines/) builds on it alone, so a
    new method is read knowing core, and neither folder's change can break the other."""
    allowed = {"core": {"core"}, "nas": {"core", "nas"}, "baselines": {"core", "baselines"}}
    crossing = []
    for importer, imported in imports():
        parts, target = importer.split("."), imported.split(".")
        if parts[1:2] == ["algorithms"] and target[1:2] == ["algorithms"] and len(parts) > 3 and len(target) > 2:
            if target[2] not in allowed[parts[2]]:
                crossing.append(f"{importer} imports {imported}")
    assert crossing == [], "\n".join(crossing)
