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
    assert len(outlines) == 2 and all(o.contour == 1 for o in outlines)
    # aligned with the mask: same scale, same rows, placed to its right
    for k, layer in enumerate(images):
        assert tuple(layer.scale) == (0.5, 0.5)
        assert layer.translate[0] == mask_layer.translate[0]
        assert layer.translate[1] == pytest.approx(mask_layer.translate[1] + (k + 1) * (32 + 8) * 0.5)
        assert np.array_equal(outlines[k].data, mask_layer.data)
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
    viewer.add_labels(np.zeros((32, 32), np.int32), name="empty")
    widget.mask_combo.setCurrentText("empty")
    widget.run()
    assert any("empty" in m for m in messages["error"])
    assert not widget.running
