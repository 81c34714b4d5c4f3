"""ResultLayers adds result layers over two event-loop turns with a prepared controls panel (real viewer, Xvfb)."""

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")

from napari_histogen.widgets import _results  # noqa: E402
from napari_histogen.widgets._results import RESULT_KEY, ResultLayers  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_and_results(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    anchor = viewer.add_labels(np.zeros((16, 16), np.int32), name="mask")
    return viewer, anchor, ResultLayers(viewer, "test")


def _items(results, anchor, row):
    image_kwargs = results.tag({"name": f"image r{row}", "rgb": True, "translate": (0, 24)}, anchor.name, row)
    labels_kwargs = results.tag({"name": f"labels r{row}", "translate": (24, 0)}, anchor.name, row)
    seen = []
    return seen, [
        (np.full((16, 16, 3), 200, np.uint8), image_kwargs, "image", seen.append),
        (np.ones((16, 16), np.int32), labels_kwargs, "labels", seen.append),
    ]


def test_each_layer_gets_one_prepared_controls_panel_and_is_not_selected(viewer_and_results, qtbot):
    viewer, anchor, results = viewer_and_results
    container = viewer.window._qt_viewer.controls
    assert _results._controls_container(viewer) is container  # the fast path is available with this napari
    panels_before = container.count()
    seen, items = _items(results, anchor, 0)
    finished = []
    results.add_later(items, on_added=lambda: finished.append(True))
    assert results.pending == 2
    assert results.next_row("mask") == 1  # queued rows count as taken
    qtbot.waitUntil(lambda: bool(finished), timeout=5000)
    added = results.layers()
    assert [layer.name for layer in added] == ["image r0", "labels r0"]
    assert seen == added  # after(layer) ran for each
    # one panel per layer: napari did not build a second one on insertion
    assert container.count() == panels_before + 2
    assert set(container.widgets) == {anchor, *added}
    assert viewer.layers.selection.active is anchor  # the results were not selected
    viewer.layers.selection.active = added[1]
    assert container.currentWidget() is container.widgets[added[1]]
    assert added[0].metadata[RESULT_KEY] == {"dock": "test", "anchor": "mask", "row": 0}
    # the labels layer's canvas overlays (brush and polygon outlines), hidden while it was
    # inserted, are shown again and napari built their visuals
    overlays = [added[1]._overlays[name] for name in ("polygon", "brush_stroke")]
    assert all(overlay.visible for overlay in overlays)
    built = viewer.window._qt_viewer.canvas._layer_overlay_to_visual[added[1]]
    assert set(overlays) <= set(built)


def test_clearing_while_a_layer_is_prepared_adds_nothing_later(viewer_and_results, qtbot):
    viewer, anchor, results = viewer_and_results
    _seen, items = _items(results, anchor, 0)
    results.add_later(items)
    qtbot.waitUntil(lambda: results._prepared is not None, timeout=5000)  # first layer built, not inserted
    assert results.clear() == 0
    assert results.pending == 0
    qtbot.wait(3 * _results.ADD_PAUSE_MS + 50)
    assert results.layers() == []
    assert [layer.name for layer in viewer.layers] == ["mask"]


def test_without_napari_internals_layers_are_added_the_plain_way(viewer_and_results, qtbot, monkeypatch):
    viewer, anchor, results = viewer_and_results
    monkeypatch.setattr(_results, "_controls_container", lambda viewer: None)
    container = viewer.window._qt_viewer.controls
    panels_before = container.count()
    finished = []
    _seen, items = _items(results, anchor, 0)
    results.add_later(items, on_added=lambda: finished.append(True))
    qtbot.waitUntil(lambda: bool(finished), timeout=5000)
    assert [layer.name for layer in results.layers()] == ["image r0", "labels r0"]
    assert container.count() == panels_before + 2  # napari built them itself
