"""The longest functions of the package (lines from ``def`` to the last line of the body).

``python scripts/longest_functions.py [N] [SRC_DIR]``: the ``N`` (default 5) longest, for the
size budget in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def longest(src: Path, n: int = 5) -> list[tuple[int, str]]:
    rows = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                rows.append((node.end_lineno - start + 1, f"{path.relative_to(src)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)[:n]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 5
    src = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "src"
    for lines, where in longest(src, n):
        print(f"{lines:5d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
