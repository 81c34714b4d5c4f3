"""ruff (the whole tree) and mypy (core) as configured in pyproject.toml; part of `make test` and `.ci/run`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with the 'test' extra: pip install '.[test]')")
    return found


def test_ruff_passes():
    out = subprocess.run([_tool("ruff"), "check", "--no-cache", "src", "tests", "scripts", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_passes_on_core(tmp_path_factory):
    cache = tmp_path_factory.mktemp("mypy_cache")
    out = subprocess.run([_tool("mypy"), "--cache-dir", str(cache)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
