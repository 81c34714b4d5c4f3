"""The NASDM dock in a real napari viewer (Xvfb) with a tiny checkpoint, end to end."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytest.importorskip("torch")

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402
from conftest import capture_notifications, wait_idle  # noqa: E402
from napari_histogen.widgets import nasdm as nasdm_dock  # noqa: E402
from napari_histogen.widgets.nasdm import NasdmWidget  # noqa: E402

pytestmark = pytest.mark.gui
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture
def messages(monkeypatch):
    return capture_notifications(monkeypatch, nasdm_dock)


@pytest.fixture
def dock(make_napari_viewer, tiny_nasdm, tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1400, 900)
    widget = NasdmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Histogen: NASDM")
    widget.set_model(tiny_nasdm)
    return viewer, widget


def _add_mask(viewer, scheme="consep", name="painted nuclei"):
    inst = np.zeros((32, 32), np.int32)
    inst[3:10, 3:10] = 1
    inst[12:18, 15:24] = 2
    inst[20:27, 4:10] = 3
    nuclei = NucleiMask.create(inst, {1: 3, 2: 2, 3: 4}, scheme, mpp=0.5)
    data, kwargs, _ = _layers.nuclei_layer_data(nuclei, name)
    return viewer.add_labels(data, **kwargs)


def test_dock_synthesizes_next_to_the_mask_with_outlines(dock, qtbot, messages):
    viewer, widget = dock
    mask_layer = _add_mask(viewer)
    assert widget.mask_combo.currentText() == "painted nuclei"
    assert "consep" in widget.model_info.text()
    widget.steps_spin.setValue(8)
    widget.samples_spin.setValue(2)
    widget.seed_spin.setValue(3)
    widget.device_combo.setCurrentText("cpu")
    n_before = len(viewer.layers)
    widget.run()
    assert widget.running and widget.cancel_btn.isEnabled() and not widget.run_btn.isEnabled()
    wait_idle(qtbot, widget)
    assert messages["error"] == []
    added = list(viewer.layers)[n_before:]
    images = [layer for layer in added if layer.__class__.__name__ == "Image"]
    outlines = [layer for layer in added if layer.__class__.__name__ == "Labels"]
    assert [layer.name for layer in images] == ["NASDM s3 of painted nuclei", "NASDM s4 of painted nuclei"]
    # one outline layer for the run's row: the mask once under each result
    assert len(outlines) == 1 and outlines[0].contour == 1
    assert outlines[0].name == "NASDM s3-s4 of painted nuclei outlines"
    assert tuple(outlines[0].translate) == tuple(images[0].translate)
    # aligned with the mask: same scale, same rows, placed to its right
    for k, layer in enumerate(images):
        assert tuple(layer.scale) == (0.5, 0.5)
        assert layer.translate[0] == mask_layer.translate[0]
        assert layer.translate[1] == pytest.approx(mask_layer.translate[1] + (k + 1) * (32 + 8) * 0.5)
        assert np.array_equal(outlines[0].data[:, k * 40: k * 40 + 32], mask_layer.data)
        prov = layer.metadata["histogen"]["provenance"]["parameters"]
        assert prov["seed"] == 3 + k and prov["engine"] == "nasdm"
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 8
    widget.outline_check.setChecked(False)
    assert not any(o.visible for o in outlines)
    widget.outline_check.setChecked(True)
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.reset_view()
    viewer.window.screenshot(str(SCREENSHOTS / "nasdm_dock.png"), canvas_only=False)


def test_cancel_adds_nothing(dock, qtbot, messages, monkeypatch):
    viewer, widget = dock
    _add_mask(viewer)
    widget.steps_spin.setValue(1000)
    widget.device_combo.setCurrentText("cpu")
    n_before = len(viewer.layers)
    seen = []
    widget._relay.progress.connect(lambda i, n: (seen.append(i), widget.cancel() if i == 2 else None))
    widget.run()
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == n_before
    assert seen and max(seen) < 1000
    assert any("cancelled" in m for m in messages["info"])
    assert "nothing was added" in widget.status.text()


def test_scheme_mismatch_and_empty_mask_messages(dock, qtbot, messages):
    viewer, widget = dock
    _add_mask(viewer, scheme="lizard", name="lizard mask")
    widget.device_combo.setCurrentText("cpu")
    widget.steps_spin.setValue(2)
    widget.run()
    wait_idle(qtbot, widget)
    assert any("trained on 'consep'" in m for m in messages["error"])
    # the whole reason, in the dock's own status line too
    shown = next(m for m in messages["error"] if "trained on 'consep'" in m)
    assert shown in widget.status.text() and widget.status.wordWrap()
    viewer.add_labels(np.zeros((32, 32), np.int32), name="empty")
    widget.mask_combo.setCurrentText("empty")
    widget.run()
    assert any("empty" in m for m in messages["error"])
    assert not widget.running


def _run_once(widget, qtbot, *, samples=1, seed=0):
    widget.steps_spin.setValue(2)
    widget.samples_spin.setValue(samples)
    widget.seed_spin.setValue(seed)
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    wait_idle(qtbot, widget)


def test_runs_fill_a_grid_and_clear_removes_only_this_docks_results(dock, qtbot, messages):
    viewer, widget = dock
    mask_layer = _add_mask(viewer)
    other = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="user image", rgb=True, scale=(0.5, 0.5),
                             units=("µm", "µm"))
    _run_once(widget, qtbot, samples=2, seed=7)
    _run_once(widget, qtbot, samples=1, seed=9)
    assert messages["error"] == []
    images = {layer.name: layer for layer in viewer.layers
              if layer.__class__.__name__ == "Image" and "histogen_result" in layer.metadata}
    assert set(images) == {"NASDM s7 of painted nuclei", "NASDM s8 of painted nuclei", "NASDM s9 of painted nuclei"}
    cell = (32 + 8) * 0.5
    y0, x0 = mask_layer.translate
    # first run: the mask's row, columns 1 and 2; second run: the next row down, column 1 (not on top)
    assert tuple(images["NASDM s7 of painted nuclei"].translate) == pytest.approx((y0, x0 + cell))
    assert tuple(images["NASDM s8 of painted nuclei"].translate) == pytest.approx((y0, x0 + 2 * cell))
    assert tuple(images["NASDM s9 of painted nuclei"].translate) == pytest.approx((y0 + cell, x0 + cell))
    # one unit for every layer: napari's "Inconsistent units" warning needs extent.units to be None
    assert viewer.layers.extent.units is not None
    n_results = len(widget.results.layers())
    assert n_results == 5  # 3 images + one outline layer per run
    assert widget.clear_results() == n_results
    assert [layer.name for layer in viewer.layers] == ["painted nuclei", "user image"]
    assert other in viewer.layers and mask_layer in viewer.layers
    # the grid's first row is free again
    _run_once(widget, qtbot, samples=1, seed=11)
    assert tuple(viewer.layers["NASDM s11 of painted nuclei"].translate) == pytest.approx((y0, x0 + cell))




def test_unload_button_frees_the_model(dock, qtbot):
    viewer, widget = dock
    _add_mask(viewer)
    _run_once(widget, qtbot)
    assert len(widget.engines) == 1
    widget.unload_btn.click()
    assert len(widget.engines) == 0 and "unloaded" in widget.status.text()
    widget.unload_btn.click()
    assert "No model is loaded" in widget.status.text()


def test_removing_the_dock_releases_the_model(dock, qtbot):
    viewer, widget = dock
    _add_mask(viewer)
    _run_once(widget, qtbot)
    engine = next(iter(widget.engines._engines.values()))
    assert engine.loaded is not None
    viewer.window.remove_dock_widget(widget)
    assert len(widget.engines) == 0 and engine.loaded is None


def test_closing_the_viewer_releases_the_model(make_napari_viewer, tiny_nasdm, tmp_path, monkeypatch, qtbot):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer(show=True)
    widget = NasdmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NASDM synthesis")
    widget.set_model(tiny_nasdm)
    _add_mask(viewer)
    _run_once(widget, qtbot)
    engines = widget.engines
    engine = next(iter(engines._engines.values()))
    del widget
    viewer.close()
    qtbot.waitUntil(lambda: len(engines) == 0, timeout=5000)
    assert engine.loaded is None


def test_closing_the_dock_widget_releases_the_model(dock, qtbot):
    viewer, widget = dock
    _add_mask(viewer)
    _run_once(widget, qtbot)
    widget.close()
    assert len(widget.engines) == 0


def test_dock_scrolls_and_folds_the_advanced_settings(dock):
    viewer, widget = dock
    assert widget.scroll_area.widget().isAncestorOf(widget.run_btn)
    assert widget.minimumSizeHint().height() < 300  # the content scrolls: the dock never forces a tall window
    assert not widget.advanced.expanded and widget.advanced.content.isAncestorOf(widget.device_combo)
    widget.advanced.toggle.click()
    assert widget.advanced.expanded
    widget.about_btn.click()
    assert "BSD-3-Clause" in widget.about_label.text() and widget.about_label.isVisibleTo(widget)


def test_opening_the_dock_imports_no_torch():
    """Opening the dock must not import torch on the GUI thread (seconds of freeze on a cold start)."""
    import subprocess
    import sys

    code = ("import sys, napari; from napari_histogen.widgets.nasdm import NasdmWidget; "
            "v = napari.Viewer(show=False); w = NasdmWidget(v); "
            "print('TORCH', 'torch' in sys.modules, w.steps_spin.text()); v.close()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    line = next(line for line in out.stdout.splitlines() if line.startswith("TORCH"))
    assert line.startswith("TORCH False"), out.stdout + out.stderr
