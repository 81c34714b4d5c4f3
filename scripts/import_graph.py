"""The package's import graph, checked against the layers of docs/ARCHITECTURE.md.

Run ``python scripts/import_graph.py [SRC_DIR]`` for counts (module import arrows, upward
arrows, cycles) and the offending arrows; ``tests/test_architecture.py`` runs the same
checks. Every import counts, also those inside functions: a function-local import is for
heavy packages, never a way around the layers.

The layers, lowest first (a module may import its own layer and the ones below it):

=====  ============  ===================================================================
 0     foundation    the package roots, core.errors, core.progress, core.provenance, core.devices, core.schemes,
                     core.settings, core.distributed
 1     domain        core.images, core.masks, core.points, core.render, core.scheme_maps, core.crops
 2     io            core.io
 3     models        core.diffusion, core.nasdm, core.latent, core.transfer, core.models,
                     core.metrics, core.segment, core.exemplar (model code and its numerics; one package
                     per family)
 4     engines       core.engines (the contract, the registry, one module per engine, batch runs)
 5     workflows     core.sample, core.demo, core.study, core.downstream (products built on engines and io)
 6     front ends    cli*, widgets, _layers, _reader, _writer, _sample_data (napari / command line)
=====  ============  ===================================================================

Within the models layer the families are independent: the NASDM family (``core.nasdm``,
``core.latent``), ``core.transfer``, the nuclei segmenter ``core.segment`` and example-based transfer
``core.exemplar`` do not import each other (``core.diffusion``,
``core.models`` and ``core.metrics`` are shared by them and import none of them).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = "napari_histogen"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # "" and "core": the package roots (the version string; no imports)
    ("foundation", ("", "_about", "core", "core.errors", "core.progress", "core.provenance", "core.devices", "core.schemes",
                    "core.settings", "core.distributed")),
    ("domain", ("core.images", "core.masks", "core.points", "core.render", "core.scheme_maps", "core.crops",
                "core.instances")),
    ("io", ("core.io",)),
    ("models", ("core.diffusion", "core.nasdm", "core.latent", "core.transfer", "core.models", "core.metrics",
                "core.segment", "core.maskgen", "core.cosyn", "core.exemplar")),
    ("engines", ("core.engines",)),
    ("workflows", ("core.sample", "core.demo", "core.study", "core.downstream", "core.generate")),
    ("front ends", ("cli", "cli_common", "cli_cosyn", "cli_evaluate", "cli_generate", "cli_nasdm", "cli_study", "cli_transfer", "widgets", "_layers", "_reader", "_writer",
                    "_sample_data")),
]
#: model families that must not import each other (one tuple per family: the latent NASDM,
#: NASDM++ mask generation and co-synthesis share the NASDM training data, checkpoint and TAEF2
#: code, so they are one family)
FAMILIES = (("core.nasdm", "core.latent", "core.maskgen", "core.cosyn"), ("core.transfer",), ("core.segment",),
            ("core.exemplar",))
INDEPENDENT = tuple(p for family in FAMILIES for p in family)
#: shared model-layer packages: they may not import a family
SHARED_MODEL_CODE = ("core.diffusion", "core.models", "core.metrics")
GUI_PACKAGES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def default_src() -> Path:
    return Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def collect(src: Path | None = None):
    """``(modules, edges, externals)``: module names, ``{(importer, imported)}`` within the
    package, and ``{module: {top-level external package}}``."""
    src = Path(src or default_src())
    files = {_module_name(p, src): p for p in (src / PACKAGE).rglob("*.py")}
    modules = set(files)
    edges: set[tuple[str, str]] = set()
    externals: dict[str, set[str]] = defaultdict(set)

    def resolve(name: str) -> str | None:
        # the longest prefix of `name` that is a module of the package
        parts = name.split(".")
        while parts:
            cand = ".".join(parts)
            if cand in modules:
                return cand
            parts.pop()
        return None

    for mod, path in files.items():
        pkg = mod if _is_package(path) else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        targets.append(alias.name)
                    else:
                        externals[mod].add(alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    base = node.module or ""
                    if base.split(".")[0] != PACKAGE:
                        externals[mod].add(base.split(".")[0])
                        continue
                else:
                    anchor = pkg.split(".")
                    if node.level > 1:
                        anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:  # `from . import x` may name a submodule
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                found = resolve(target)
                if found is not None and found != mod:
                    edges.add((mod, found))
    return modules, edges, externals


def layer_of(module: str) -> tuple[int, str]:
    """``(layer index, the unit it belongs to)``: the longest matching prefix in :data:`LAYERS`."""
    rel = module[len(PACKAGE) + 1:] if module.startswith(PACKAGE + ".") else ""
    best = (-1, -1, "")
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if rel == prefix or (prefix and rel.startswith(prefix + ".")) or (prefix == "" and rel == ""):
                if len(prefix) > best[1]:
                    best = (index, len(prefix), prefix)
    if best[0] < 0:
        raise KeyError(f"{module} is in no layer of scripts/import_graph.py: add it to LAYERS")
    return best[0], best[2]


def _family(unit: str) -> int:
    return next(i for i, family in enumerate(FAMILIES) if unit in family)


def upward(edges) -> list[tuple[str, str]]:
    """Arrows from a lower layer to a higher one, and arrows between independent model families."""
    bad = []
    for a, b in sorted(edges):
        (la, ua), (lb, ub) = layer_of(a), layer_of(b)
        if lb > la:
            bad.append((a, b))
        elif ua != ub and ((ua in INDEPENDENT and ub in INDEPENDENT and _family(ua) != _family(ub))
                           or (ua in SHARED_MODEL_CODE and ub in INDEPENDENT)):
            bad.append((a, b))
    return bad


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = defaultdict(list)
    for a, b in edges:
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(set(graph)):
        if v not in index:
            visit(v)
    return out


def gui_in_core(externals) -> list[tuple[str, str]]:
    return sorted((m, e) for m, ext in externals.items() for e in ext
                  if m.startswith(PACKAGE + ".core") and e in GUI_PACKAGES)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0]) if argv else default_src()
    modules, edges, externals = collect(src)
    # parent packages (`napari_histogen`, `napari_histogen.core`) are not arrows worth counting
    up = upward(edges)
    cyc = cycles(edges)
    print(f"modules {len(modules)}  import arrows {len(edges)}  upward arrows {len(up)}  cycles {len(cyc)}  "
          f"gui imports in core {len(gui_in_core(externals))}")
    for a, b in up:
        print(f"  upward: {a} -> {b}  ({LAYERS[layer_of(a)[0]][0]} -> {LAYERS[layer_of(b)[0]][0]})")
    for comp in cyc:
        print(f"  cycle: {' <-> '.join(comp)}")
    return 1 if (up or cyc) else 0


if __name__ == "__main__":
    sys.exit(main())
