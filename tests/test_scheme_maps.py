"""Scheme conversion, QuPath class maps and crops/tiles (core, no GUI)."""

import json

import numpy as np
import pytest

from napari_histogen.core.crops import box_around, box_from_corners, crop_array, crop_nuclei, tile_boxes
from napari_histogen.core.errors import HistogenInputError, UnknownClassError
from napari_histogen.core.io.geojson import geojson_class_names, read_geojson
from napari_histogen.core.masks import NucleiMask
from napari_histogen.core.sample import nucls_sample
from napari_histogen.core.scheme_maps import (
    KNOWN_EQUIVALENCES,
    check_class_map,
    convert_nuclei_scheme,
    map_schemes,
    parse_class_map,
    suggest_class_map,
)
from napari_histogen.core.schemes import get_scheme


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))


def write_qupath_geojson(path, cells):
    """A QuPath-style export: detections with ``classification: {name, color}``, no histogen member.

    ``cells`` is a list of ``(class name or None, x, y, size)`` squares in pixel corners.
    """
    qupath_colours = {c.name: list(c.color) for c in get_scheme("qupath").classes}
    features = []
    for name, x, y, s in cells:
        props = {"objectType": "detection", "isLocked": False}
        if name is not None:
            props["classification"] = {"name": name, "color": qupath_colours.get(name, [120, 120, 120])}
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        features.append({"type": "Feature", "id": f"{len(features):08x}-0000-0000-0000-000000000000",
                         "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_qupath_scheme_has_qupaths_default_classes_and_colours():
    qupath = get_scheme("qupath")
    assert qupath.kind == "nuclei"
    assert dict(zip(qupath.names, (c.color for c in qupath.classes))) == {
        "Tumor": (200, 0, 0), "Stroma": (150, 200, 150), "Immune cells": (160, 90, 160), "Necrosis": (50, 50, 50),
        "Other": (255, 200, 0), "Positive": (200, 50, 50), "Negative": (90, 90, 180)}
    assert "Region*" not in qupath.names and "Ignore*" not in qupath.names  # area classes, not nuclei


def test_qupath_export_reads_with_the_qupath_scheme(tmp_path):
    path = write_qupath_geojson(tmp_path / "cells.geojson", [
        ("Tumor", 10, 10, 6), ("Stroma", 30, 10, 6), ("Immune cells", 10, 30, 5), ("Tumor", 30, 30, 6),
        (None, 50, 50, 4)])
    assert geojson_class_names(path) == ["Immune cells", "Stroma", "Tumor"]
    item = read_geojson(path)
    assert item.nuclei.scheme.name == "qupath"
    counts = item.nuclei.counts()
    assert (counts["Tumor"], counts["Stroma"], counts["Immune cells"], counts["unclassified"]) == (2, 1, 1, 1)
    # every square of s x s corners fills s*s pixels
    assert sorted(np.unique(item.nuclei.instances, return_counts=True)[1][1:].tolist()) == [16, 25, 36, 36, 36]


def test_class_map_reads_unknown_classes_into_the_chosen_scheme(tmp_path):
    path = write_qupath_geojson(tmp_path / "cells.geojson", [
        ("Tumor", 10, 10, 6), ("Stroma", 30, 10, 6), ("Immune cells", 10, 30, 5), ("Positive", 30, 30, 6)])
    with pytest.raises(UnknownClassError, match="--class-map"):
        read_geojson(path, scheme="consep")
    class_map = parse_class_map("tumor=epithelial, Stroma=spindle,Immune cells=inflammatory,Positive=unclassified")
    item = read_geojson(path, scheme="consep", class_map=class_map)
    consep = get_scheme("consep")
    by_pixel = {int(item.nuclei.instances[r, c]): cls for (r, c), cls in
                (((12, 12), "epithelial"), ((12, 32), "spindle"), ((32, 12), "inflammatory"), ((32, 32), None))}
    for inst, cls in by_pixel.items():
        expected = 0 if cls is None else consep.id_of(cls)
        assert item.nuclei.classes[inst] == expected
    assert item.provenance["class_map"]["tumor"] == "epithelial"
    # a map onto a class the scheme lacks names the choices
    with pytest.raises(UnknownClassError, match="consep"):
        read_geojson(path, scheme="consep", class_map={"Tumor": "tumour"})


def test_class_map_from_json_and_yaml_files_and_bad_specs(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"Tumor": "epithelial", "Stroma": "spindle"}))
    (tmp_path / "map.yaml").write_text("Tumor: epithelial\nImmune cells: inflammatory\n")
    assert parse_class_map(str(tmp_path / "map.json")) == {"Tumor": "epithelial", "Stroma": "spindle"}
    assert parse_class_map(tmp_path / "map.yaml") == {"Tumor": "epithelial", "Immune cells": "inflammatory"}
    for bad in ("Tumor", "Tumor=a=b", "=epithelial"):
        with pytest.raises(HistogenInputError):
            parse_class_map(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(HistogenInputError, match="flat mapping"):
        parse_class_map(str(tmp_path / "list.json"))
    assert check_class_map({"Tumor": "Epithelial"}, "consep") == {"tumor": 3}


def test_known_equivalences_name_real_classes():
    for (src, dst), table in KNOWN_EQUIVALENCES.items():
        source, target = get_scheme(src), get_scheme(dst)
        for a, b in table.items():
            assert a in source.names and b in target.names, (src, dst, a, b)


def test_nucls_lizard_pannuke_convert_to_consep():
    nucls = map_schemes("nucls", "consep")
    assert nucls.names() == {"tumor_any": "epithelial", "nonTIL_stromal": "spindle", "sTIL": "inflammatory",
                             "other_nucleus": "other"}
    assert map_schemes("lizard", "consep").unmapped == ()
    assert map_schemes("pannuke", "consep").names()["neoplastic"] == "epithelial"
    assert map_schemes("qupath", "consep").unmapped == ("Positive", "Negative")
    assert suggest_class_map(["Tumor", "Ki67 positive"], "consep") == {"Tumor": "epithelial", "Ki67 positive": None}


def test_convert_the_nucls_sample_to_consep_keeps_instances_and_maps_every_class():
    sample = nucls_sample().nuclei
    converted = convert_nuclei_scheme(sample, "consep")
    assert converted.scheme.name == "consep"
    np.testing.assert_array_equal(converted.instances, sample.instances)
    nucls, consep = get_scheme("nucls"), get_scheme("consep")
    table = {"tumor_any": "epithelial", "nonTIL_stromal": "spindle", "sTIL": "inflammatory", "other_nucleus": "other"}
    for nid, cls in sample.classes.items():
        expected = 0 if cls == 0 else consep.id_of(table[nucls.name_of(cls)])
        assert converted.classes[nid] == expected
    assert converted.metadata["scheme_conversion"]["from"] == "nucls"
    assert sample.scheme.name == "nucls"  # the input is untouched


def test_conversion_refuses_unmapped_classes_until_mapped():
    inst = np.zeros((20, 20), np.int32)
    inst[2:6, 2:6], inst[10:14, 10:14] = 1, 2
    mask = NucleiMask.create(inst, {1: 1, 2: 6}, "qupath")  # Tumor, Positive
    with pytest.raises(UnknownClassError, match="'Positive'"):
        convert_nuclei_scheme(mask, "consep")
    out = convert_nuclei_scheme(mask, "consep", {"Positive": "epithelial"})
    assert out.classes == {1: 3, 2: 3}
    with pytest.raises(UnknownClassError, match="does not have"):
        convert_nuclei_scheme(mask, "consep", {"Nonexistent": "epithelial"})
    # a class the mask does not use needs no mapping
    only_tumor = NucleiMask.create(inst, {1: 1, 2: 1}, "qupath")
    assert convert_nuclei_scheme(only_tumor, "consep").classes == {1: 3, 2: 3}


def test_boxes_tiles_and_crops():
    assert box_from_corners([[10.2, 20.0], [10.2, 60.0], [49.6, 60.0], [49.6, 20.0]], (100, 100)) == (10, 20, 50, 60)
    assert box_from_corners([[-30, -30], [20, 20]], (100, 100)) == (0, 0, 20, 20)
    with pytest.raises(HistogenInputError, match="covers no pixel"):
        box_from_corners([[200, 200], [300, 300]], (100, 100))
    assert box_around((50, 50), 32, (512, 512)) == (34, 34, 66, 66)
    assert box_around((5, 500), 64, (512, 512)) == (0, 448, 64, 512)  # moved inside
    assert box_around((10, 10), 256, (100, 80)) == (0, 0, 100, 80)  # clipped to a small array
    assert tile_boxes((512, 512), 256) == [(0, 0, 256, 256), (0, 256, 256, 512), (256, 0, 512, 256),
                                           (256, 256, 512, 512)]
    assert tile_boxes((300, 100), 256) == [(0, 0, 256, 100), (44, 0, 300, 100)]

    inst = np.zeros((40, 40), np.int32)
    inst[2:8, 2:8], inst[18:26, 18:26], inst[30:38, 30:38] = 1, 2, 3
    mask = NucleiMask.create(inst, {1: 1, 2: 2, 3: 3}, "consep", mpp=0.5, metadata={"crop_offset": [100, 7]})
    crop = crop_nuclei(mask, (16, 16, 32, 32))
    assert crop.shape == (16, 16) and crop.classes == {2: 2, 3: 3}  # nucleus 3 cut, 1 gone
    assert crop.metadata["crop_offset"] == [116, 23] and crop.mpp == 0.5
    image = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    np.testing.assert_array_equal(crop_array(image, (16, 16, 32, 32)), image[16:32, 16:32])
    with pytest.raises(HistogenInputError, match="not inside"):
        crop_array(image, (0, 0, 50, 10))


def test_cli_convert_scheme_and_class_map(tmp_path, capsys):
    from napari_histogen.cli import main
    from napari_histogen.core.io.dispatch import read_annotated

    # NuCLS sample -> CoNSeP, unclassified nuclei given 'other'
    from napari_histogen.core.io.bundle import write_annotated_bundle

    sample = nucls_sample()
    files = write_annotated_bundle(sample, tmp_path / "nucls")
    out = tmp_path / "consep"
    assert main(["convert-scheme", str(files["ome_tiff"]), "--to", "consep", "--unclassified", "other",
                 "--out", str(out)]) == 0
    assert "tumor_any -> epithelial" in capsys.readouterr().out
    back = read_annotated(next(out.glob("*.ome.tif")))
    assert back.nuclei.scheme.name == "consep" and 0 not in back.nuclei.classes.values()
    assert back.nuclei.n_nuclei == sample.nuclei.n_nuclei

    # a QuPath export with a class of its own: refused with how to map it, then mapped
    qp = write_qupath_geojson(tmp_path / "qp.geojson", [("Tumor", 10, 10, 6), ("Ki67 positive", 30, 10, 6)])
    assert main(["convert-scheme", str(qp), "--to", "consep", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "'Ki67 positive'" in err and "--class-map" in err and "\n" not in err.strip()
    assert main(["convert-scheme", str(qp), "--to", "consep", "--class-map", "Ki67 positive=epithelial",
                 "--out", str(tmp_path / "b")]) == 0
    mapped = read_annotated(next((tmp_path / "b").glob("*.geojson")))
    assert sorted(mapped.nuclei.classes.values()) == [3, 3]

    # histogen convert reads it into a scheme with --class-map (a YAML file here)
    (tmp_path / "map.yaml").write_text("Tumor: epithelial\nKi67 positive: inflammatory\n")
    assert main(["convert", str(qp), "--scheme", "consep", "--class-map", str(tmp_path / "map.yaml"),
                 "--out", str(tmp_path / "c")]) == 0
    converted = read_annotated(next((tmp_path / "c").glob("*.geojson")))
    assert sorted(converted.nuclei.classes.values()) == [2, 3]
    # a class map on a format without class names is refused plainly
    assert main(["convert", str(files["ome_tiff"]), "--class-map", "a=b", "--out", str(tmp_path / "d")]) == 2
    assert "GeoJSON" in capsys.readouterr().err
