"""Remembered dock settings: the Qt-free store (core/settings.py) and the docks' use of it."""

import json

import pytest

from napari_histogen.core import settings as dock_settings


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_save_load_clear_keeps_docks_apart(home):
    assert dock_settings.load_dock_settings("nasdm") == {}
    dock_settings.save_dock_settings("nasdm", {"steps": 20, "guidance": 0.25, "model": "default"})
    dock_settings.save_dock_settings("transfer", {"seed": 3})
    assert dock_settings.settings_path() == home / "dock_settings.json"
    assert dock_settings.load_dock_settings("nasdm") == {"steps": 20, "guidance": 0.25, "model": "default"}
    dock_settings.clear_dock_settings("nasdm")
    assert dock_settings.load_dock_settings("nasdm") == {}
    assert dock_settings.load_dock_settings("transfer") == {"seed": 3}


def test_broken_file_reads_as_nothing_remembered(home):
    home.mkdir(parents=True)
    (home / "dock_settings.json").write_text("{not json")
    assert dock_settings.load_dock_settings("nasdm") == {}
    (home / "dock_settings.json").write_text(json.dumps({"nasdm": {"steps": [1, 2], "seed": 4}}))
    assert dock_settings.load_dock_settings("nasdm") == {"seed": 4}  # only plain values come back
    dock_settings.save_dock_settings("nasdm", {"seed": 5})  # and a good file replaces it
    assert dock_settings.load_dock_settings("nasdm") == {"seed": 5}


def test_only_plain_values_are_saved():
    with pytest.raises(TypeError, match="plain JSON"):
        dock_settings.save_dock_settings("nasdm", {"steps": object()})


@pytest.mark.gui
def test_nasdm_dock_remembers_its_settings_and_restores_defaults(make_napari_viewer, tiny_nasdm):
    pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
    from napari_histogen.widgets.nasdm import NasdmWidget

    viewer = make_napari_viewer()
    first = NasdmWidget(viewer)
    defaults = first.control_values()
    first.set_model(tiny_nasdm)
    first.steps_spin.setValue(17)
    first.guidance_spin.setValue(2.5)
    first.samples_spin.setValue(3)
    first.seed_spin.setValue(42)
    first.device_combo.setCurrentText("cpu")
    first.save_settings()  # a run saves them; no run needed to test the round trip
    first.close()

    second = NasdmWidget(viewer)  # the next session
    values = second.control_values()
    assert values["model"] == str(tiny_nasdm)
    assert (values["steps"], values["guidance"], values["samples"], values["seed"], values["device"]) == (
        17, 2.5, 3, 42, "cpu")
    second.restore_btn.click()
    assert second.control_values() == defaults
    assert dock_settings.load_dock_settings("nasdm") == {}
    third = NasdmWidget(viewer)
    assert third.control_values() == defaults


@pytest.mark.gui
def test_transfer_dock_remembers_its_settings(make_napari_viewer):
    pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
    from napari_histogen.widgets.transfer import TransferWidget

    viewer = make_napari_viewer()
    first = TransferWidget(viewer)
    defaults = first.control_values()
    first.outputs_spin.setValue(6)
    first.steps_spin.setValue(30)
    first.adain_combo.setCurrentText("global (baseline)")
    first.save_settings()
    second = TransferWidget(viewer)
    values = second.control_values()
    assert (values["outputs"], values["steps"], values["adain"]) == (6, 30, "global (baseline)")
    second.restore_defaults()
    assert second.control_values() == defaults
