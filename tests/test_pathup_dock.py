"""A large mask through the NASDM dock (Xvfb): the IHC sample's full 512 px nuclei mask, one seamless canvas."""

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytest.importorskip("torch")

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.sample import ihc_sample  # noqa: E402
from conftest import capture_notifications, save_tiny_nasdm, wait_idle  # noqa: E402
from napari_histogen.widgets import nasdm as nasdm_dock  # noqa: E402
from napari_histogen.widgets.nasdm import NasdmWidget  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_ihc_sample_full_mask_synthesizes_in_the_dock(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    messages = capture_notifications(monkeypatch, nasdm_dock)
    viewer = make_napari_viewer()
    widget = NasdmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Histogen: NASDM")
    # a tiny model with 128 px patches at 0.5 µm/px: the 512 px mask is one canvas of 7 x 7 tiles
    widget.set_model(save_tiny_nasdm(tmp_path / "model", image_size=128))
    sample = ihc_sample()
    data, kwargs, _ = _layers.nuclei_layer_data(sample.nuclei, "IHC nuclei")
    mask_layer = viewer.add_labels(data, **kwargs)
    widget.steps_spin.setValue(2)
    widget.samples_spin.setValue(1)
    widget.device_combo.setCurrentText("cpu")
    n_before = len(viewer.layers)
    widget.run()
    wait_idle(qtbot, widget, timeout=300000)
    assert messages["error"] == []
    added = list(viewer.layers)[n_before:]
    images = [layer for layer in added if layer.__class__.__name__ == "Image"]
    assert len(images) == 1
    image = np.asarray(images[0].data)
    assert image.shape[:2] == sample.nuclei.shape == (512, 512)  # at the mask's scale, pixel for pixel
    assert tuple(images[0].scale) == tuple(mask_layer.scale)
    assert images[0].translate[0] == mask_layer.translate[0]
    prov = images[0].metadata["histogen"]["provenance"]["parameters"]
    assert any("overlapping tiles" in note for note in prov["notes"])
    assert image.std() > 0  # a drawn image, not a blank canvas
    assert widget.progress_bar.value() == widget.progress_bar.maximum() > 2  # tiles x steps
