"""A whole 512 px mask (the IHC sample's nuclei) synthesized from the NASDM dock as one PathUp canvas."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytest.importorskip("torch")

from conftest import capture_notifications, save_tiny_nasdm, wait_idle  # noqa: E402
from napari_histogen import _layers  # noqa: E402
from napari_histogen.widgets import nasdm as nasdm_dock  # noqa: E402
from napari_histogen.widgets.nasdm import NasdmWidget  # noqa: E402

pytestmark = pytest.mark.gui


def test_ihc_sample_512px_mask_runs_as_one_canvas(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    messages = capture_notifications(monkeypatch, nasdm_dock)
    # A tiny 32 px model at 4 µm/px: the 512 px mask at 0.5 µm/px becomes a 64 px canvas of
    # 3 x 3 overlapping tiles, so the whole path (resample, tiles, recombination, back to the
    # mask's scale and position) runs in seconds.
    model = save_tiny_nasdm(tmp_path / "model", image_size=32, mpp=4.0)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-histogen", "ihc")
    nuclei_layer = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "nuclei")
    assert nuclei_layer.data.shape == (512, 512)
    widget = NasdmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NASDM")
    widget.set_model(model)
    widget.mask_combo.setCurrentText(nuclei_layer.name)
    widget.steps_spin.setValue(2)
    widget.samples_spin.setValue(1)
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    wait_idle(qtbot, widget, timeout=120_000)
    qtbot.waitUntil(lambda: widget.results.pending == 0, timeout=10_000)
    assert messages["error"] == []
    images = [layer for layer in widget.results.layers() if layer.__class__.__name__ == "Image"]
    assert len(images) == 1
    image = images[0]
    # made at the model's 4 µm/px (a coarser model's image is not blown up): 64 px covering
    # exactly the mask's 512 px at 0.5 µm/px
    assert image.data.shape == (64, 64, 3)
    np.testing.assert_allclose(np.asarray(image.scale) * 64, np.asarray(nuclei_layer.scale) * 512)
    assert image.data.std() > 0
    parameters = image.metadata["histogen"]["provenance"]["parameters"]
    assert parameters["mask_shape"] == [64, 64]  # two model patches a side: a 3 x 3-tile canvas
    assert any("resampled from 0.5 to 4" in note for note in parameters["notes"])
    assert widget.progress_bar.maximum() == 2 * 9  # progress counts steps x tiles
