"""The annotate dock driven in a real napari viewer (Xvfb via pytest-xvfb), with screenshots."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402
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


def _table_counts(widget):
    return {widget.count_table.item(r, 0).text(): int(widget.count_table.item(r, 1).text())
            for r in range(widget.count_table.rowCount())}


def test_undo_and_redo_keep_classes_and_counts_right(dock, qtbot, errors):
    """Paint A, erase it, undo (key binding and layer API), paint B: A keeps its class and colour."""
    viewer, widget = dock
    viewer.add_image(np.zeros((96, 96, 3), np.uint8), name="img", rgb=True)
    widget.image_combo.setCurrentText("img")
    widget.scheme_combo.setCurrentText("consep")
    layer = widget.new_nuclei_mask()
    consep = get_scheme("consep")

    qtbot.mouseClick(widget.class_buttons[3], Qt.LeftButton)  # epithelial
    a = layer.selected_label
    _paint_disc(layer, (30, 30), a)
    assert _table_counts(widget)["epithelial"] == 1

    # undo the paint stroke: A leaves the table and the counts (no paint/data event from napari)
    layer.undo()
    qtbot.waitUntil(lambda: _table_counts(widget)["epithelial"] == 0, timeout=2000)
    assert a not in _layers.classes_from_features(layer.features)
    layer.redo()
    qtbot.waitUntil(lambda: _table_counts(widget)["epithelial"] == 1, timeout=2000)
    assert _layers.classes_from_features(layer.features)[a] == 3

    # erase A, then undo with the key binding the layer really has (Ctrl+Z runs layer.undo)
    _paint_disc(layer, (30, 30), 0, radius=12)
    assert a not in _layers.classes_from_features(layer.features)
    assert _table_counts(widget)["epithelial"] == 0
    qtbot.mouseClick(widget.class_buttons[2], Qt.LeftButton)  # the palette now paints inflammatory
    undo_binding = next(fn for key, fn in type(layer).class_keymap.items() if "Z" in str(key) and "Shift" not in str(key))
    undo_binding(layer)
    qtbot.waitUntil(lambda: _table_counts(widget)["epithelial"] == 1, timeout=2000)
    assert (layer.data == a).any()

    # paint a new nucleus B: A keeps epithelial (not the palette's inflammatory), both counted
    b = layer.selected_label
    assert b != a
    _paint_disc(layer, (70, 70), b)
    classes = _layers.classes_from_features(layer.features)
    assert classes[a] == 3 and classes[b] == 2
    assert _colour_of(layer, a) == consep.color(3) and _colour_of(layer, b) == consep.color(2)
    counts = _table_counts(widget)
    assert counts["epithelial"] == 1 and counts["inflammatory"] == 1 and sum(counts.values()) == 2
    # and a new nucleus never reuses an erased id
    _paint_disc(layer, (70, 70), 0, radius=12)
    assert widget.next_nucleus(layer) not in (a, b)
    # a removed layer's memory goes with it
    viewer.layers.remove(layer)
    assert id(layer) not in widget._class_memory and id(layer) not in widget._connected
    assert errors == []


def test_convert_the_nucls_sample_to_consep_in_two_clicks(dock, qtbot, errors):
    viewer, widget = dock
    item = nucls_sample()
    for data, kwargs, kind in _layers.annotated_to_layer_data(item):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    nuclei = viewer.layers[f"{item.name} nuclei"]
    widget.target_combo.setCurrentText(nuclei.name)
    widget.to_scheme_combo.setCurrentText("consep")
    assert widget.unclassified_combo.currentText() == "other"  # NASDM needs a class for every nucleus
    qtbot.mouseClick(widget.convert_scheme_btn, Qt.LeftButton)
    converted = viewer.layers[f"{nuclei.name} → consep"]
    assert _layers.layer_scheme(converted).name == "consep"
    np.testing.assert_array_equal(np.asarray(converted.data), np.asarray(nuclei.data))
    nucls, consep = get_scheme("nucls"), get_scheme("consep")
    table = {"tumor_any": "epithelial", "nonTIL_stromal": "spindle", "sTIL": "inflammatory", "other_nucleus": "other"}
    new_classes = _layers.classes_from_features(converted.features)
    assert 0 in item.nuclei.classes.values()  # the sample has unclassified nuclei: they became 'other'
    for nid, cls in item.nuclei.classes.items():
        assert new_classes[nid] == consep.id_of("other" if cls == 0 else table[nucls.name_of(cls)])
    assert "unclassified nuclei → other" in widget.status.text()
    some = next(i for i, c in new_classes.items() if c)
    assert _colour_of(converted, some) == consep.color(new_classes[some])
    # the mask the NASDM engine reads now passes its checks against the default model (scheme, classes,
    # size, scale), where the NuCLS mask was refused
    from napari_histogen.core.engines.nasdm import prepare_mask, read_model_config

    config = read_model_config(None)
    if config is not None:
        with pytest.raises(HistogenInputError, match="Convert the mask"):
            prepare_mask(_layers.nuclei_mask_from_layer(nuclei), config)
        prepared, _ = prepare_mask(_layers.nuclei_mask_from_layer(converted), config)
        assert prepared.scheme.name == "consep"
    # keep: unclassified nuclei stay so
    kept = widget.convert_scheme(nuclei, "consep")
    assert 0 in _layers.classes_from_features(kept.features).values()
    # points convert too
    points = viewer.layers[f"{item.name} points"]
    conv_points = widget.convert_scheme(points, "consep")
    assert _layers.layer_scheme(conv_points).name == "consep"
    assert set(conv_points.features["class"]) <= set(consep.ids) | {0}
    assert errors == []


def test_conversion_without_known_equivalent_asks_in_the_class_table(dock, errors):
    viewer, widget = dock
    inst = np.zeros((40, 40), np.int32)
    inst[2:8, 2:8], inst[20:28, 20:28] = 1, 2
    mask = NucleiMask.create(inst, {1: 1, 2: 6}, "qupath", mpp=0.25)  # Tumor, Positive
    data, kwargs, _ = _layers.nuclei_layer_data(mask, "qp nuclei")
    layer = viewer.add_labels(data, **kwargs)
    widget._refresh_layer_lists()
    assert widget.convert_scheme(layer, "consep") is None  # waits for the table
    assert widget.class_map_box.isVisibleTo(widget)
    assert widget.class_map_choice() == {"Tumor": "epithelial"}  # known equivalent filled in
    assert widget.apply_class_map() is None and "Positive" in errors[-1]  # not chosen yet
    widget.set_class_map_choice("Positive", "inflammatory")
    new = widget.apply_class_map()
    assert new is not None and not widget.class_map_box.isVisibleTo(widget)
    assert _layers.classes_from_features(new.features) == {1: 3, 2: 2}


def test_qupath_geojson_opens_with_qupath_classes_or_a_class_map(dock, tmp_path, errors):
    from test_scheme_maps import write_qupath_geojson

    viewer, widget = dock
    standard = write_qupath_geojson(tmp_path / "standard.geojson", [
        ("Tumor", 10, 10, 6), ("Immune cells", 30, 10, 5), ("Stroma", 10, 30, 6)])
    layers = widget.open_annotated(standard)
    qupath = get_scheme("qupath")
    assert _layers.layer_scheme(layers[0]).name == "qupath"
    tumour_id = int(layers[0].data[12, 12])
    assert _colour_of(layers[0], tumour_id) == qupath.color(qupath.id_of("Tumor")) == (200, 0, 0)

    custom = write_qupath_geojson(tmp_path / "custom.geojson", [
        ("Tumor", 10, 10, 6), ("Lymphocyte (CD3+)", 30, 10, 5), ("Fibroblast", 10, 30, 6)])
    widget.scheme_combo.setCurrentText("consep")
    assert widget.open_annotated(custom) is None  # the class table opens instead
    assert widget.class_map_box.isVisibleTo(widget)
    assert widget.class_map_choice() == {"Tumor": "epithelial"}
    widget.set_class_map_choice("Lymphocyte (CD3+)", "inflammatory")
    widget.set_class_map_choice("Fibroblast", "spindle")
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window.screenshot(str(SCREENSHOTS / "annotate_class_map.png"), canvas_only=False)
    opened = widget.apply_class_map()
    nuclei = opened[0]
    consep = get_scheme("consep")
    classes = _layers.classes_from_features(nuclei.features)
    assert classes[int(nuclei.data[12, 12])] == consep.id_of("epithelial")
    assert classes[int(nuclei.data[12, 32])] == consep.id_of("inflammatory")
    assert classes[int(nuclei.data[32, 12])] == consep.id_of("spindle")
    assert errors == []


def test_crop_the_ihc_sample_to_a_rectangle_and_tile_it(dock, errors):
    viewer, widget = dock
    item = ihc_sample()
    for data, kwargs, kind in _layers.annotated_to_layer_data(item):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    nuclei = viewer.layers[f"{item.name} nuclei"]
    widget.target_combo.setCurrentText(nuclei.name)
    widget.image_combo.setCurrentText(item.name)

    # a rectangle drawn in world coordinates (µm: the layers' scale is 0.5 µm/px)
    shapes = widget.draw_crop_rectangle()
    assert shapes.mode == "add_rectangle"
    shapes.add_rectangles(np.array([[20.0, 30.0], [84.0, 94.0]]))  # rows 40-168, cols 60-188 px
    crop = widget.crop()
    assert crop is not None and crop.data.shape == (128, 128)
    np.testing.assert_allclose(crop.translate[-2:], np.asarray(nuclei.translate[-2:]) + 0.5 * np.array([40, 60]))
    expected = NucleiMask.create(np.asarray(nuclei.data)[40:168, 60:188], _layers.classes_from_features(nuclei.features),
                                 "consep")
    assert _layers.classes_from_features(crop.features) == expected.classes
    image_crop = viewer.layers[f"{item.name} [40:168, 60:188]"]
    np.testing.assert_array_equal(image_crop.data, item.image[40:168, 60:188])
    prov = crop.metadata["histogen"]["provenance"]
    assert prov["operation"] == "crop" and prov["parameters"]["crop_offset"] == [40, 60]

    # without a rectangle: the size around the view's centre
    viewer.layers.remove(shapes)
    widget.crop_size_spin.setValue(100)
    widget.target_combo.setCurrentText(nuclei.name)
    centred = widget.crop(nuclei)
    assert centred.data.shape == (100, 100)
    # 'model patch': the default model's patch at the mask's scale, which the NASDM engine takes
    from napari_histogen.core.engines.nasdm import prepare_mask, read_model_config

    config = read_model_config(None)
    if config is not None:
        widget.crop_size_spin.setValue(0)
        patch = widget.crop(nuclei)
        side = round(config.image_size * config.mpp / item.mpp)
        assert patch.data.shape == (side, side)
        prepared, _ = prepare_mask(_layers.nuclei_mask_from_layer(patch), config)
        assert prepared.shape == (config.image_size, config.image_size)

    # tiles of 256 px cover the 512 px sample in four tiles (mask and image each)
    tiles = widget.tile(nuclei, 256)
    assert len(tiles) == 4 and all(t.data.shape == (256, 256) for t in tiles)
    offsets = sorted(tuple(np.round((np.asarray(t.translate[-2:]) - nuclei.translate[-2:]) / 0.5).astype(int))
                     for t in tiles)
    assert offsets == [(0, 0), (0, 256), (256, 0), (256, 256)]
    assert errors == []


def test_result_outlines_of_a_synthesis_dock_are_not_offered_for_annotation(dock):
    viewer, widget = dock
    inst = np.zeros((16, 16), np.int32)
    inst[2:6, 2:6] = 1
    nuclei = NucleiMask.create(inst, {1: 2}, "consep", mpp=0.5)
    data, kwargs, _ = _layers.nuclei_layer_data(nuclei, "painted")
    viewer.add_labels(data, **kwargs)
    data, kwargs, _ = _layers.nuclei_layer_data(nuclei, "NASDM s0 of painted outlines")
    kwargs["metadata"] = {**kwargs["metadata"], "histogen_outline": True}
    viewer.add_labels(data, **kwargs)  # the newest layer is the active one
    names = [widget.target_combo.itemText(i) for i in range(widget.target_combo.count())]
    assert "painted" in names and "NASDM s0 of painted outlines" not in names
    assert widget.target_combo.currentText() == "painted"
