"""The appearance-transfer dock's example-based method in a real napari viewer (Xvfb), end to end, no model."""

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402
from napari_histogen.core.schemes import get_scheme  # noqa: E402
from conftest import capture_notifications, wait_idle  # noqa: E402
from napari_histogen.widgets import transfer as transfer_dock  # noqa: E402
from napari_histogen.widgets.transfer import TransferWidget  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]
EXAMPLE = next(k for k, v in transfer_dock.METHOD_CHOICES.items() if v == "example")


@pytest.fixture
def dock(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no Stable Diffusion anywhere: the method needs none
    viewer = make_napari_viewer()
    viewer.open_sample("napari-histogen", "ihc")
    tissue = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "tissue")
    target = np.roll(np.fliplr(np.asarray(tissue.data)), 150, axis=0)
    data, kwargs, _ = _layers.tissue_layer_data(target, get_scheme("tissue"), "target tissue", mpp=0.5)
    viewer.add_labels(data, **kwargs)
    widget = TransferWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Histogen: appearance transfer")
    return viewer, widget, capture_notifications(monkeypatch, transfer_dock)


def test_example_method_hides_sd_settings_and_runs_on_tissue_and_nuclei_masks(dock, qtbot):
    viewer, widget, messages = dock
    assert widget.method == "sd" and widget.sd_model_box.isVisibleTo(widget) and widget.example_expert.isHidden()
    widget.method_combo.setCurrentText(EXAMPLE)
    assert widget.method == "example"
    # (isHidden: the settings sit in the folded Advanced group)
    assert widget.sd_model_box.isHidden() and widget.sd_expert.isHidden() and not widget.example_expert.isHidden()
    nuclei_layer = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "nuclei")
    assert widget.target_combo.findText(nuclei_layer.name) >= 0  # nuclei masks are offered to this method
    widget.target_combo.setCurrentText("target tissue")
    assert "matched" in widget.classes_info.text()
    widget.outputs_spin.setValue(1)
    widget.seed_spin.setValue(3)
    widget.patch_spin.setValue(24)
    n_before = len(viewer.layers)
    widget.run()
    wait_idle(qtbot, widget)
    assert messages["error"] == []
    added = list(viewer.layers)[n_before:]
    image = next(layer for layer in added if layer.__class__.__name__ == "Image")
    mask = next(layer for layer in added if layer.__class__.__name__ == "Labels")
    prov = image.metadata["histogen"]["provenance"]["parameters"]
    assert image.name == "Example s3 of target tissue" and prov["engine"] == "exemplar"
    assert prov["settings"]["patch_px"] == 24 and image.data.shape == (512, 512, 3)
    assert np.array_equal(mask.data, np.asarray(viewer.layers["target tissue"].data))  # no flips: the target itself
    # nuclei: the IHC nuclei mirrored as target, the IHC nuclei as the source's mask
    source_nuclei = _layers.nuclei_mask_from_layer(nuclei_layer)
    mirrored = NucleiMask.create(np.ascontiguousarray(np.fliplr(source_nuclei.instances)), source_nuclei.classes,
                                 source_nuclei.scheme, mpp=source_nuclei.mpp)
    data, kwargs, _ = _layers.nuclei_layer_data(mirrored, "target nuclei")
    viewer.add_labels(data, **kwargs)
    widget.target_combo.setCurrentText("target nuclei")
    widget.source_mask_combo.setCurrentText(widget.source_mask_combo.itemText(0))  # none: refused with a reason
    widget.run()
    assert any("choose its tissue or nuclei mask" in m for m in messages["error"]) and not widget.running
    widget.source_mask_combo.setCurrentText(nuclei_layer.name)
    assert "nucleus classes" in widget.classes_info.text()
    n_before = len(viewer.layers)
    widget.run()
    wait_idle(qtbot, widget)
    assert len(messages["error"]) == 1
    added = list(viewer.layers)[n_before:]
    out = next(layer for layer in added if layer.__class__.__name__ == "Image")
    out_mask = next(layer for layer in added if layer.__class__.__name__ == "Labels")
    assert _layers.layer_kind(out_mask) == "nuclei" and np.array_equal(out_mask.data, mirrored.instances)
    assert out.metadata["histogen"]["provenance"]["parameters"]["details"]["nuclei_pasted"] == mirrored.n_nuclei
    # the method is remembered with the other settings
    assert widget.control_values()["method"] == EXAMPLE
