"""The plugin as napari sees it: manifest, sample data, reader and writers in a real viewer."""

import numpy as np
import pytest

from napari_histogen import _layers
from napari_histogen.core.masks import NucleiMask

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytestmark = pytest.mark.gui


def test_manifest_is_found_and_valid():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-histogen")
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == {"Annotate nuclei and tissue", "NASDM synthesis", "Reader study",
                                                              "Appearance transfer"}
    assert {s.key for s in contributions.sample_data} == {"ihc", "nucls"}
    assert len(contributions.readers) == 1 and len(contributions.writers) == 3
    manifest.validate_imports()  # every python_name resolves


@pytest.mark.parametrize("key, kinds", [("ihc", {"image", "tissue", "nuclei"}), ("nucls", {"image", "nuclei", "points"})])
def test_open_sample(make_napari_viewer, key, kinds):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-histogen", key)
    assert {_layers.layer_kind(layer) for layer in viewer.layers} == kinds
    nuclei = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "nuclei")
    assert len(nuclei.features) > 10 and set(nuclei.features.columns) >= {"index", "class"}
    image = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "image")
    assert image.rgb and image.data.dtype == np.uint8
    assert tuple(nuclei.scale) == tuple(image.scale)


def test_dock_opens_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-histogen", "Annotate nuclei and tissue")
    from napari_histogen.widgets.annotate import AnnotateWidget

    assert isinstance(widget, AnnotateWidget) and widget.scroll_area.widget() is not None


def _nuclei_viewer(viewer):
    rng = np.random.default_rng(1)
    inst = np.zeros((40, 50), np.int32)
    inst[2:9, 3:10], inst[20:30, 20:26], inst[30:38, 40:48] = 4, 7, 12
    mask = NucleiMask.create(inst, {4: 1, 7: 3, 12: 2}, "consep", mpp=0.5)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    viewer.add_image(image, name="img", rgb=True, scale=(0.5, 0.5))
    data, kwargs, _ = _layers.nuclei_layer_data(mask, "nuc")
    return viewer.add_labels(data, **kwargs), mask, image


@pytest.mark.parametrize("suffix", [".ome.tif", ".geojson"])
def test_save_with_plugin_writer_then_open_with_plugin_reader(make_napari_viewer, tmp_path, suffix):
    viewer = make_napari_viewer()
    labels, mask, image = _nuclei_viewer(viewer)
    path = tmp_path / f"saved{suffix}"
    if suffix == ".ome.tif":
        viewer.layers.selection = {viewer.layers["img"], labels}
    else:
        viewer.layers.selection = {labels}
    written = viewer.layers.save(str(path), selected=True, plugin="napari-histogen")
    assert written and path.exists()
    viewer.layers.clear()
    viewer.open(str(path), plugin="napari-histogen")
    nuclei = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "nuclei")
    back = _layers.nuclei_mask_from_layer(nuclei)
    assert back.classes == mask.classes and back.scheme.name == "consep"
    np.testing.assert_array_equal(back.instances, mask.instances)
    if suffix == ".ome.tif":
        img = next(layer for layer in viewer.layers if _layers.layer_kind(layer) == "image")
        np.testing.assert_array_equal(img.data, image)
        assert back.mpp == pytest.approx(0.5)


def test_corrupt_file_gives_a_notification_not_a_traceback(make_napari_viewer, tmp_path, monkeypatch):
    shown = []
    import napari.utils.notifications as notifications

    monkeypatch.setattr(notifications, "show_error", shown.append)
    viewer = make_napari_viewer()
    bad = tmp_path / "labels.mat"
    bad.write_bytes(b"MATLAB 5.0 garbage" * 10)
    viewer.open(str(bad), plugin="napari-histogen")
    assert len(viewer.layers) == 0
    assert shown and "labels.mat" in shown[-1]
