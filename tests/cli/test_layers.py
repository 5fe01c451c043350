"""The import graph points down only: base, schemas, write model, read side, rewards and audit, CLI."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Each package may import itself and the packages of lower layers, never a higher or a sibling one.
LAYERS: dict[str, int] = {
    "crm_ledger": 0,  # the shared base: errors, settings, progress, Kafka helpers, the KPI list
    "schemas": 1,
    "ledger": 2,
    "importers": 3,
    "projections": 3,
    "replay": 4,
    "engines": 4,  # the read models on Apache Spark (beside replay, never importing it)
    "rewards": 5,
    "audit": 6,  # checks every copy and every statement
    "web": 7,  # read-only pages over the read models
    "crm_cli": 9,  # the command line: imported by nothing
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
    return found


def test_imports_point_down_only() -> None:
    upward = []
    for package, layer in LAYERS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, imported in _imports(path):
                target = LAYERS.get(imported)
                if target is None or imported == package:
                    continue
                if target >= layer:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {imported} (layer {target} >= {layer})")
    assert not upward, "\n".join(upward)


def test_every_package_is_in_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_public_error_classes_live_in_their_package_errors_module() -> None:
    misplaced = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "errors.py":
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and not node.name.startswith("_"):
                    misplaced.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not misplaced, misplaced
