"""The annotate dock driven in a real napari viewer (Xvfb via pytest-xvfb), with screenshots."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.sample import ihc_sample, nucls_sample  # noqa: E402
from napari_histogen.core.schemes import get_scheme  # noqa: E402
from napari_histogen.widgets import _guard  # noqa: E402
from napari_histogen.widgets.annotate import AnnotateWidget  # noqa: E402

pytestmark = pytest.mark.gui
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture
def errors(monkeypatch):
    """Messages the dock showed as error notifications."""
    shown = []
    monkeypatch.setattr(_guard, "notify_error", shown.append)
    return shown


@pytest.fixture
def dock(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1400, 1000)  # room for the canvas next to the dock in screenshots
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Histogen: annotate")
    return viewer, widget


def _colour_of(layer, label):
    return tuple(np.round(layer.colormap.map(np.array([label]))[0][:3] * 255).astype(int))


def _paint_disc(layer, centre, label, radius=4):
    layer.brush_size = 2 * radius
    layer.paint(centre, label)  # the same history + paint event as a mouse stroke
    QApplication.processEvents()


def test_paint_typed_nuclei_reclassify_erase_and_screenshot(dock, qtbot, errors):
    viewer, widget = dock
    sample = ihc_sample()
    viewer.add_image(sample.image, name="ihc", rgb=True)
    widget.image_combo.setCurrentText("ihc")
    widget.scheme_combo.setCurrentText("consep")
    layer = widget.new_nuclei_mask()
    assert layer is not None and _layers.layer_kind(layer) == "nuclei"
    consep = get_scheme("consep")

    # one click on a palette button starts a new nucleus of that class
    qtbot.mouseClick(widget.class_buttons[3], Qt.LeftButton)
    epi = layer.selected_label
    _paint_disc(layer, (100, 100), epi)
    assert _layers.classes_from_features(layer.features)[epi] == 3
    assert _colour_of(layer, epi) == consep.color(3)

    # "next nucleus, same class": the N key on the layer, then paint it
    layer.keymap  # the binding lives on the layer
    new = widget.next_nucleus(layer)
    assert new == epi + 1 and layer.selected_label == new
    _paint_disc(layer, (100, 130), new)
    qtbot.mouseClick(widget.class_buttons[2], Qt.LeftButton)
    infl = layer.selected_label
    _paint_disc(layer, (160, 160), infl)
    qtbot.mouseClick(widget.class_buttons[4], Qt.LeftButton)
    spindle = layer.selected_label
    _paint_disc(layer, (60, 200), spindle)
    classes = _layers.classes_from_features(layer.features)
    assert {classes[epi], classes[new], classes[infl], classes[spindle]} == {3, 2, 4}
    assert classes[new] == 3
    assert dict(widget.class_count_rows())["epithelial"] == 2

    # reclassify: pick a nucleus, choose a class, click
    layer.selected_label = infl
    widget.reclass_combo.setCurrentIndex(widget.reclass_combo.findData(1))
    qtbot.mouseClick(widget.reclass_btn, Qt.LeftButton)
    assert _layers.classes_from_features(layer.features)[infl] == 1
    assert _colour_of(layer, infl) == consep.color(1)

    # erase a nucleus: it leaves the class table and the counts
    _paint_disc(layer, (60, 200), 0, radius=20)
    assert spindle not in _layers.classes_from_features(layer.features)
    assert dict(widget.class_count_rows())["spindle"] == 0

    # merge by painting one nucleus over another: one id left, colour kept
    _paint_disc(layer, (100, 115), epi, radius=20)
    classes = _layers.classes_from_features(layer.features)
    assert new not in classes and classes[epi] == 3

    # the table widget shows the counts
    table = {widget.count_table.item(r, 0).text(): int(widget.count_table.item(r, 1).text())
             for r in range(widget.count_table.rowCount())}
    assert table["epithelial"] == 1 and table["other"] == 1

    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window.screenshot(str(SCREENSHOTS / "annotate_paint.png"), canvas_only=False)
    assert errors == []


def test_sample_in_viewer_and_points_to_nuclei_screenshot(dock, errors):
    viewer, widget = dock
    item = nucls_sample()
    for data, kwargs, kind in _layers.annotated_to_layer_data(item):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    nuclei = viewer.layers[f"{item.name} nuclei"]
    points = viewer.layers[f"{item.name} points"]
    assert len(nuclei.features) == item.nuclei.n_nuclei
    # class colours on screen = scheme colours
    some_id, some_class = next((i, c) for i, c in item.nuclei.classes.items() if c)
    assert _colour_of(nuclei, some_id) == item.nuclei.scheme.color(some_class)

    # a new point takes the selected class and its colour
    widget.target_combo.setCurrentText(points.name)
    widget.select_class(3, points)
    n_before = len(points.data)
    points.add([[10.0, 10.0]])
    assert points.features["class"].iloc[-1] == 3
    np.testing.assert_allclose(points.face_color[-1][:3], np.array(get_scheme("nucls").color(3)) / 255, atol=1e-3)

    # points -> nuclei: one nucleus per point, classes carried over
    widget.image_combo.setCurrentText(item.name)
    grown = widget.points_to_nuclei(points)
    assert grown is not None
    grown_classes = _layers.classes_from_features(grown.features)
    assert len(grown_classes) == n_before + 1
    assert sorted(grown_classes.values()) == sorted(points.features["class"].tolist())
    # nuclei -> points: a centroid per nucleus
    back = widget.nuclei_to_points(grown)
    assert len(back.data) == len(grown_classes)
    # nuclei -> type map -> nuclei keeps the count (nuclei are grown with a gap)
    types = widget.nuclei_to_type_map(grown)
    again = widget.type_map_to_nuclei(types, scheme="nucls")
    assert len(again.features) == len(grown_classes)

    for name in (back.name, types.name, again.name):
        viewer.layers[name].visible = False
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window.screenshot(str(SCREENSHOTS / "annotate_points.png"), canvas_only=False)
    assert errors == []


def test_tissue_mask_palette(dock, errors):
    viewer, widget = dock
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="blank", rgb=True)
    widget.image_combo.setCurrentText("blank")
    widget.scheme_combo.setCurrentText("tissue")
    tissue = widget.new_tissue_mask()
    widget.select_class(2, tissue)
    assert tissue.selected_label == 2 and tissue.mode == "paint"
    _paint_disc(tissue, (30, 30), tissue.selected_label, radius=5)
    rows = dict(widget.class_count_rows(tissue))
    assert rows["stroma (px)"] > 0 and rows["epithelium (px)"] == 0
    assert errors == []


def test_bad_input_gives_messages_not_tracebacks(dock, errors, tmp_path):
    viewer, widget = dock
    assert widget.new_nuclei_mask() is None  # no image open
    assert "Open an image first" in errors[-1]
    assert widget.nuclei_to_points() is None
    assert "nuclei mask" in errors[-1]
    viewer.add_labels(np.full((8, 8), 9, np.int32), name="painted types")
    assert widget.type_map_to_nuclei(viewer.layers["painted types"], scheme="consep") is None
    assert "[9]" in errors[-1]  # unknown class ids are named
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert widget.load_scheme_file(bad) is None
    assert "cannot be parsed" in errors[-1]
    assert len(errors) == 4


def test_user_scheme_appears_in_the_dock(dock, tmp_path, errors):
    viewer, widget = dock
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nkind: nuclei\nclasses:\n  - {id: 1, name: tumour, color: '#ff0000'}\n"
                    "  - {id: 2, name: immune, color: '#0000ff'}\n")
    assert widget.load_scheme_file(path) is not None
    assert widget.scheme_combo.currentText() == "mine"
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="img", rgb=True)
    widget.image_combo.setCurrentText("img")
    layer = widget.new_nuclei_mask()
    assert list(widget.class_buttons) == [1, 2]
    assert _layers.layer_scheme(layer).name == "mine"
    assert errors == []


def test_open_dataset_patch_by_index(dock, tmp_path, errors):
    viewer, widget = dock
    masks = np.zeros((3, 16, 16, 6))
    masks[1, 2:6, 2:6, 1] = 1
    masks[1, 9:12, 9:12, 4] = 2
    np.save(tmp_path / "images.npy", np.full((3, 16, 16, 3), 128.0))
    np.save(tmp_path / "masks.npy", masks)
    layers = widget.open_annotated(tmp_path / "masks.npy", 1)
    assert [layer.name for layer in layers] == ["pannuke[1]", "pannuke[1] nuclei"]
    assert sorted(_layers.classes_from_features(layers[1].features).values()) == [2, 5]
    assert widget.open_annotated(tmp_path / "masks.npy", 7) is None
    assert "0..2" in errors[-1]
