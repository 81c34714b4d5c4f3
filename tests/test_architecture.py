"""The layers of docs/ARCHITECTURE.md hold: no upward import, no import cycle, core free of GUI packages.

The layer table and the graph code live in ``scripts/import_graph.py`` (also a command that
prints the counts); every import counts, function-local ones included.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    modules, edges, externals = module.collect(ROOT / "src")
    return module, modules, edges, externals


def test_every_module_has_a_layer(graph):
    module, modules, _, _ = graph
    for name in modules:
        module.layer_of(name)  # raises KeyError naming the module otherwise
    assert len(modules) > 50  # the walk really saw the package


def test_no_import_points_up(graph):
    module, _, edges, _ = graph
    assert module.upward(edges) == []


def test_no_import_cycles(graph):
    module, _, edges, _ = graph
    assert module.cycles(edges) == []


def test_core_imports_no_gui_package(graph):
    module, _, _, externals = graph
    assert module.gui_in_core(externals) == []


def test_architecture_document_names_every_layer(graph):
    module, _, _, _ = graph
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for name, _prefixes in module.LAYERS:
        assert name in text
    assert "Add an engine" in text
