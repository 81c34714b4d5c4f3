"""Whole-slide annotations: a GeoJSON in slide coordinates is cut to its bounding box, and the
offset travels through crops, resampling, synthesis and export back to the slide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_histogen import _layers
from napari_histogen.core.crops import crop_nuclei
from napari_histogen.core.io.geojson import read_geojson, write_geojson
from napari_histogen.core.masks import NucleiMask, resample_nuclei

SLIDE_X, SLIDE_Y = 52_000, 31_000


def _square(x, y, size=6):
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


def _qupath_slide_export(path):
    """Three detections far from the slide origin, as QuPath exports them."""
    features = []
    for k, (x, y, cls) in enumerate(((10, 12, "Tumor"), (40, 20, "Stroma"), (25, 50, "Immune cells"))):
        features.append({"type": "Feature", "id": f"d{k}",
                         "geometry": {"type": "Polygon", "coordinates": [_square(SLIDE_X + x, SLIDE_Y + y)]},
                         "properties": {"objectType": "detection", "classification": {"name": cls}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _outline_min_xy(path):
    data = json.loads(path.read_text())
    points = np.array([pt for f in data["features"] for ring in f["geometry"]["coordinates"] for pt in ring])
    return points.min(axis=0)


def test_slide_export_is_cut_to_its_box_and_written_back_in_slide_coordinates(tmp_path):
    annotated = read_geojson(_qupath_slide_export(tmp_path / "slide.geojson"), scheme="qupath")
    nuclei = annotated.nuclei
    assert nuclei.metadata["offset_xy"] == [SLIDE_X + 10, SLIDE_Y + 12]
    assert nuclei.shape[0] < 100 and nuclei.shape[1] < 100 and nuclei.n_nuclei == 3
    assert annotated.provenance["offset_xy"] == [SLIDE_X + 10, SLIDE_Y + 12]

    out = write_geojson(tmp_path / "back.geojson", nuclei)
    assert tuple(_outline_min_xy(out)) == (SLIDE_X + 10, SLIDE_Y + 12)  # where QuPath drew them

    again = read_geojson(out).nuclei  # the written file reads back onto the same grid
    np.testing.assert_array_equal(again.instances, nuclei.instances)
    assert again.metadata["offset_xy"] == nuclei.metadata["offset_xy"]


def test_offset_moves_with_a_crop_and_scales_with_resampling():
    inst = np.zeros((40, 40), np.int32)
    inst[10:16, 20:26] = 1
    nuclei = NucleiMask.create(inst, {1: 1}, "consep", mpp=0.5, metadata={"offset_xy": [1000, 2000]})
    cropped = crop_nuclei(nuclei, (8, 18, 24, 34))  # row0, col0, row1, col1
    assert cropped.metadata["offset_xy"] == [1018, 2008]
    assert nuclei.metadata["offset_xy"] == [1000, 2000]  # the input is not changed
    finer = resample_nuclei(nuclei, 0.25)
    assert finer.metadata["offset_xy"] == [2000, 4000]


def test_layer_round_trip_keeps_the_offset():
    inst = np.zeros((20, 20), np.int32)
    inst[5:9, 5:9] = 1
    nuclei = NucleiMask.create(inst, {1: 2}, "consep", mpp=0.5, metadata={"offset_xy": [7, 9]})
    data, kwargs, _ = _layers.nuclei_layer_data(nuclei, "n", provenance={"offset_xy": [7, 9]})
    back = _layers.nuclei_mask_from_parts(data, kwargs["features"], kwargs["metadata"], None)
    assert back.metadata["offset_xy"] == [7, 9]


def test_synthesis_result_keeps_the_slide_position(tmp_path, tiny_nasdm):
    pytest.importorskip("torch")
    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest

    inst = np.zeros((32, 32), np.int32)
    inst[4:10, 4:10] = 1
    inst[18:25, 12:20] = 2
    nuclei = NucleiMask.create(inst, {1: 2, 2: 3}, "consep", mpp=0.5, metadata={"offset_xy": [SLIDE_X, SLIDE_Y]})
    result = NasdmEngine(str(tiny_nasdm), device="cpu").run(NasdmRequest(nuclei=nuclei, steps=2, seed=1))[0]
    assert result.provenance["parameters"]["offset_xy"] == [SLIDE_X, SLIDE_Y]
    out = write_geojson(tmp_path / "synthetic.geojson", result.mask, provenance=result.provenance)
    assert tuple(_outline_min_xy(out)) == (SLIDE_X + 4, SLIDE_Y + 4)
