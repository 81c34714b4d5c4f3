"""The appearance-transfer dock in a real napari viewer (Xvfb) with a tiny Stable Diffusion, end to end."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.schemes import get_scheme  # noqa: E402
from conftest import capture_notifications, wait_idle  # noqa: E402
from napari_histogen.widgets import transfer as transfer_dock  # noqa: E402
from napari_histogen.widgets.transfer import TransferWidget  # noqa: E402

pytestmark = pytest.mark.gui
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture
def messages(monkeypatch):
    return capture_notifications(monkeypatch, transfer_dock)


@pytest.fixture
def dock(make_napari_viewer, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-histogen", "ihc")
    image = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "image")
    tissue = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "tissue")
    target = np.roll(np.fliplr(np.asarray(tissue.data)), 150, axis=0)  # another arrangement of real glands
    target[400:470, 30:110] = 3  # a class the source lacks
    data, kwargs, _ = _layers.tissue_layer_data(target, get_scheme("tissue"), "target tissue", mpp=0.5)
    kwargs["translate"] = (0, 0)
    viewer.add_labels(data, **kwargs)
    widget = TransferWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Histogen: appearance transfer")
    widget.set_model(tiny_sd)
    widget.steps_spin.setValue(20)
    widget.skip_spin.setValue(4)
    widget.device_combo.setCurrentText("cpu")
    return viewer, widget, image, tissue


def test_dock_makes_labelled_images_next_to_the_masks(dock, qtbot, messages):
    viewer, widget, image, tissue = dock
    assert widget.image_combo.currentText() == image.name
    assert widget.source_mask_combo.currentText() == tissue.name
    assert widget.target_combo.currentText() == "target tissue"
    assert "not in the source mask: 3" in widget.classes_info.text()
    assert str(widget.model_info.text()).startswith("folder:")
    widget.outputs_spin.setValue(2)
    widget.seed_spin.setValue(5)
    n_before = len(viewer.layers)
    widget.run()
    assert widget.running and widget.cancel_btn.isEnabled() and not widget.run_btn.isEnabled()
    wait_idle(qtbot, widget)
    assert messages["error"] == []
    added = list(viewer.layers)[n_before:]
    images = [layer for layer in added if layer.__class__.__name__ == "Image"]
    masks = [layer for layer in added if layer.__class__.__name__ == "Labels"]
    assert [layer.name for layer in images] == ["Transfer s5 of target tissue", "Transfer s6 of target tissue"]
    assert [layer.name for layer in masks] == ["Transfer s5 of target tissue mask", "Transfer s6 of target tissue mask"]
    target = viewer.layers["target tissue"]
    for k, (img, mask) in enumerate(zip(images, masks)):
        prov = img.metadata["histogen"]["provenance"]["parameters"]
        assert prov["engine"] == "transfer" and prov["seed"] == 5 + k and prov["classes_unmatched"] == [3]
        assert img.data.shape == (512, 512, 3) and tuple(img.scale) == (0.5, 0.5)
        # the mask is the target flipped/rotated as recorded, below its image, in a column right of the inputs
        from napari_histogen.core.transfer.render import augment

        assert np.array_equal(mask.data, augment(np.asarray(target.data), prov["augmentation"]))
        assert img.translate[1] == pytest.approx((512 + 8) * 0.5 * (k + 1))
        assert mask.translate[1] == img.translate[1] and mask.translate[0] == pytest.approx((512 + 8) * 0.5)
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 16 + 2 * (16 + 16)  # source; 2 x (structure, transfer)
    assert "not in the source mask" in widget.status.text()
    # the results are not offered as inputs
    assert all(widget.target_combo.findText(m.name) < 0 for m in masks)
    assert all(widget.image_combo.findText(i.name) < 0 for i in images)
    for layer in viewer.layers:  # the picture: the IHC source under the target mask, the outputs with their masks
        if _layers.layer_kind(layer) == "nuclei" or layer is tissue:
            layer.visible = False
    viewer.reset_view()
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window.screenshot(str(SCREENSHOTS / "transfer_dock.png"), canvas_only=False)
    # docs/images/transfer_dock.png is a copy of this screenshot, made by hand (tests never write docs/)


def test_cancel_adds_nothing(dock, qtbot, messages):
    viewer, widget, _, _ = dock
    widget.steps_spin.setValue(500)
    widget.skip_spin.setValue(0)
    widget.outputs_spin.setValue(1)
    widget.inversion_combo.setCurrentText("DDIM")
    n_before = len(viewer.layers)
    seen = []
    widget._relay.progress.connect(lambda i, n: (seen.append(i), widget.cancel() if i == 2 else None))
    widget.run()
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == n_before
    assert seen and max(seen) <= 3
    assert any("cancelled" in m for m in messages["info"])
    assert "nothing was added" in widget.status.text()


def test_missing_model_and_missing_source_mask_messages(dock, qtbot, messages, tmp_path, monkeypatch):
    viewer, widget, _, _ = dock
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    widget.set_model("sd15")
    assert "histogen models fetch" in widget.model_info.text()
    widget.run()
    wait_idle(qtbot, widget)
    assert any("histogen models fetch" in m for m in messages["error"])
    # the whole reason is in the dock's status line, not only in a (truncated) notification
    assert "histogen models fetch" in widget.status.text() and widget.status.wordWrap()
    widget.source_mask_combo.setCurrentText(transfer_dock.NO_MASK)
    # the default AdaIN ("auto") runs without the appearance image's mask: global AdaIN
    assert widget.settings().adain == "global" and widget.request().source_mask is None
    widget.adain_combo.setCurrentText("per class (paper)")
    widget.run()
    assert any("needs the appearance image's mask" in m for m in messages["error"])
    assert "needs the appearance image's mask" in widget.status.text()
    assert not widget.running


def test_defaults_pick_per_class_adain_with_a_source_mask(dock):
    _viewer, widget, _, _ = dock
    assert widget.source_mask_combo.currentText() != transfer_dock.NO_MASK
    assert widget.settings().adain == "masked"
    assert not widget.advanced.expanded  # the chain's expert settings start folded
    assert widget.scroll_area.widget().isAncestorOf(widget.run_btn) and widget.minimumSizeHint().height() < 300
