"""core/ must never import napari, qtpy or magicgui (docs/ARCHITECTURE.md): checked statically and at run time."""

import ast
import subprocess
import sys
from pathlib import Path

import napari_histogen

CORE = Path(napari_histogen.__file__).parent / "core"
FORBIDDEN = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def test_core_sources_import_no_gui_package():
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
    assert len(list(CORE.rglob("*.py"))) > 5  # the walk really saw the package


def test_importing_all_of_core_loads_no_gui_module():
    modules = sorted(
        "napari_histogen.core." + ".".join(p.relative_to(CORE).with_suffix("").parts)
        for p in CORE.rglob("*.py")
        if p.name != "__init__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
