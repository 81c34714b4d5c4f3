"""The About text of the docks: version, licence, and where the bundled files' terms are.

The licence files live at the repository top (``LICENSE``, ``NOTICE``) and are copied into
the wheel next to this module (pyproject's ``force-include``); a source checkout run with
``PYTHONPATH=src`` finds them two folders up.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

__all__ = ["about_text", "licence_file", "notice_text"]

LICENCE = "BSD-3-Clause"


def licence_file(name: str) -> Path | None:
    """Path of ``LICENSE`` or ``NOTICE``: inside the installed package, else the source tree's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parents[1] / name):
        if candidate.is_file():
            return candidate
    return None


def notice_text() -> str:
    """The NOTICE file: every bundled third-party file and its terms."""
    path = licence_file("NOTICE")
    if path is None:
        return "NOTICE file not found: reinstall napari-histogen (it ships in the wheel)."
    return path.read_text(encoding="utf-8")


def _version() -> str:
    try:
        return metadata.version("napari-histogen")
    except metadata.PackageNotFoundError:
        return "(source tree)"


def about_text() -> str:
    """A few lines for a dock's About box."""
    notice = licence_file("NOTICE")
    where = str(notice) if notice is not None else "the NOTICE file of the package"
    return (f"napari-histogen {_version()}, {LICENCE} licence.\n"
            "Bundled files keep their own terms: the NuCLS sample (CC0), the embedded NASDM models "
            "(trained on CoNSeP: research use only, cite HoVer-Net) and the TAEF2 autoencoder (MIT).\n"
            f"Details: {where}")
