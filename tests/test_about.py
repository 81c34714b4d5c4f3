"""LICENSE and NOTICE: present, shipped, and naming every bundled third-party folder."""

from __future__ import annotations

from pathlib import Path

import napari_histogen
from napari_histogen import _about

PACKAGE = Path(napari_histogen.__file__).resolve().parent


def test_licence_files_are_found():
    assert _about.licence_file("LICENSE") is not None
    assert "BSD 3-Clause" in _about.licence_file("LICENSE").read_text()
    assert _about.licence_file("NOTICE") is not None


def test_notice_names_every_bundled_data_and_model_folder():
    notice = _about.notice_text()
    bundled = [p for folder in ("data", "models") if (PACKAGE / folder).is_dir()
               for p in sorted((PACKAGE / folder).iterdir()) if p.is_dir() and not p.name.startswith("__")]
    assert bundled, "expected bundled data/model folders in the package"
    missing = [f"napari_histogen/{p.parent.name}/{p.name}/" for p in bundled
               if f"napari_histogen/{p.parent.name}/{p.name}/" not in notice]
    assert not missing, f"NOTICE does not list: {missing}"


def test_notice_gives_terms_of_each_bundled_source():
    notice = _about.notice_text()
    for terms in ("CC0", "research use only", "HoVer-Net", "MIT License", "Ollin Boer Bohan"):
        assert terms in notice


def test_about_text_names_licence_and_notice():
    text = _about.about_text()
    assert "BSD-3-Clause" in text and "NOTICE" in text


def test_pyproject_ships_licence_files_in_the_wheel():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"NOTICE" = "napari_histogen/NOTICE"' in text and '"LICENSE" = "napari_histogen/LICENSE"' in text
