"""The layering rule: model/ and loop/ never import the GUI stack; model/ never imports loop/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUI = {"napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "labeler"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ["model", "loop"])
def test_core_packages_are_gui_free(package):
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & GUI) for p in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_model_does_not_depend_on_loop():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "model").rglob("*.py") if "loop" in imported_roots(p)]
    assert not offenders


def test_the_rule_catches_a_gui_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qtpy.QtWidgets import QWidget\n")
    assert imported_roots(bad) & GUI == {"qtpy"}
