"""Round trips of the OME-TIFF and GeoJSON writers through their readers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
from skimage.draw import polygon as draw_polygon

from napari_histogen.core.errors import CorruptFileError, HistogenInputError, UnknownClassError
from napari_histogen.core.io import ome_tiff
from napari_histogen.core.io.geojson import nuclei_to_geojson, read_geojson, write_geojson
from napari_histogen.core.io.ome_tiff import HISTOGEN_NAMESPACE, read_ome_tiff, write_ome_tiff
from napari_histogen.core.masks import NucleiMask
from napari_histogen.core.schemes import ClassInfo, ClassScheme, get_scheme

PROVENANCE = {
    "software": "napari-histogen",
    "operation": "test",
    "parameters": {"seed": 7, "sigma": 1.5, "names": ["a", "é"], "nested": {"ok": True, "none": None}},
}


# ---------------------------------------------------------------------------------------
# generated masks
# ---------------------------------------------------------------------------------------
def _special_mask(shape=(64, 80)) -> tuple[np.ndarray, dict[int, int]]:
    """Every awkward case in one map, with sparse, non-contiguous ids."""
    inst = np.zeros(shape, np.int32)
    # touching nuclei (share an edge)
    inst[5:15, 5:12] = 3
    inst[5:15, 12:20] = 4
    # nucleus with a hole, and another nucleus inside the hole
    inst[20:34, 5:19] = 10
    inst[24:30, 9:15] = 0
    inst[26:28, 11:13] = 11
    # nucleus of two parts, one more touching it only at a corner
    inst[40:46, 5:10] = 20
    inst[50:55, 12:18] = 20
    inst[46:48, 10:12] = 21
    # nuclei on every border
    inst[0:4, 30:40] = 30
    inst[-3:, 30:40] = 31
    inst[40:50, 0:2] = 32
    inst[10:20, -2:] = 33
    inst[-2:, -2:] = 34
    # 1-pixel nuclei, one of them in the corner
    inst[0, 0] = 40
    inst[30, 50] = 41
    inst[31, 51] = 2**31 - 1  # diagonal to 41, largest id
    # ring touching itself at a corner (a pocket joined by a diagonal only)
    inst[40:45, 40:45] = 50
    inst[41:44, 41:44] = 0
    inst[44, 44] = 0  # the hole (43, 43) now meets the outside (44, 44) at a corner only
    classes = {3: 1, 4: 2, 10: 3, 11: 4, 20: 2, 21: 0, 30: 1, 31: 2, 32: 3, 33: 4, 34: 1,
               40: 0, 41: 2, 2**31 - 1: 3, 50: 4}
    return inst, classes


def _random_mask(rng, shape, n_labels, density=0.5) -> np.ndarray:
    """Noise labels: maximal topological mess (diagonal contacts, holes, islands)."""
    inst = rng.integers(1, n_labels + 1, shape).astype(np.int32)
    inst[rng.random(shape) > density] = 0
    return inst


def _blob_mask(rng, shape=(1024, 1024), n=2000) -> np.ndarray:
    """Realistic touching nuclei: watershed of random seeds, capped radius."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    markers = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape[0], (n, 2))
    markers[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
    dist = ndi.distance_transform_edt(markers == 0)
    return watershed(dist, markers, mask=dist < 9).astype(np.int32)


@pytest.fixture
def special():
    inst, classes = _special_mask()
    return NucleiMask.create(inst, classes, "consep", mpp=0.2467, metadata={"source": "unit test"})


# ---------------------------------------------------------------------------------------
# OME-TIFF
# ---------------------------------------------------------------------------------------
def test_ome_tiff_round_trip_all_items(tmp_path, special):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*special.shape, 3)).astype(np.uint8)
    tissue = np.zeros(special.shape, np.int32)
    tissue[:, :40] = 1
    tissue[:, 40:] = 2
    inputs = (image.copy(), special.instances.copy(), dict(special.classes), tissue.copy())

    path = write_ome_tiff(tmp_path / "all.ome.tif", image, special, tissue=tissue,
                          tissue_scheme="tissue", provenance=PROVENANCE)
    result = read_ome_tiff(path)

    # inputs untouched
    assert np.array_equal(image, inputs[0]) and np.array_equal(special.instances, inputs[1])
    assert special.classes == inputs[2] and np.array_equal(tissue, inputs[3])
    assert result.name == "all"
    assert result.image.dtype == np.uint8 and np.array_equal(result.image, image)
    assert result.nuclei.instances.dtype == np.int32
    assert np.array_equal(result.nuclei.instances, special.instances)
    assert result.nuclei.classes == special.classes
    assert result.nuclei.scheme == special.scheme
    assert result.nuclei.scheme.to_dict() == special.scheme.to_dict()
    assert result.nuclei.mpp == special.mpp == result.mpp
    assert result.nuclei.metadata == {"source": "unit test"}
    assert result.tissue.dtype == np.int32 and np.array_equal(result.tissue, tissue)
    assert result.tissue_scheme == get_scheme("tissue")
    assert result.provenance == PROVENANCE


def test_ome_tiff_is_valid_ome_with_named_series_and_scale(tmp_path, special):
    image = np.full((*special.shape, 3), 200, np.uint8)
    path = write_ome_tiff(tmp_path / "x.ome.tif", image, special, tissue=np.ones(special.shape, np.int32),
                          tissue_scheme="tissue")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert [s.name for s in tif.series] == ["image", "nuclei_instances", "nuclei_types", "tissue"]
        assert tif.series[0].axes == "YXS" and tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        assert tif.series[1].dtype == np.int32 and tif.series[2].dtype == np.int32
        assert tif.pages[0].compression in (tifffile.COMPRESSION.ADOBE_DEFLATE, tifffile.COMPRESSION.DEFLATE)
        # the type map is what other software sees: class per nucleus pixel
        assert np.array_equal(tif.series[2].asarray(), special.type_map())
        xml = tif.ome_metadata
    root = ET.fromstring(xml)
    ns = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
    pixels = root.findall("ome:Image/ome:Pixels", ns)
    assert len(pixels) == 4
    for px in pixels:
        assert float(px.get("PhysicalSizeX")) == pytest.approx(0.2467)
        assert float(px.get("PhysicalSizeY")) == pytest.approx(0.2467)
        assert px.get("PhysicalSizeXUnit") == "µm" and px.get("PhysicalSizeYUnit") == "µm"
    comments = root.findall("ome:StructuredAnnotations/ome:CommentAnnotation", ns)
    ours = [c for c in comments if c.get("Namespace") == HISTOGEN_NAMESPACE]
    assert len(ours) == 1
    meta = json.loads(ours[0].find("ome:Value", ns).text)
    assert meta["nuclei"]["scheme"]["name"] == "consep"
    # the annotation is referenced from an image, as OME requires
    refs = root.findall("ome:Image/ome:AnnotationRef", ns)
    assert [r.get("ID") for r in refs] == [ours[0].get("ID")]


@pytest.mark.parametrize("items", ["image", "nuclei", "tissue", "nuclei+tissue"])
def test_ome_tiff_subsets(tmp_path, special, items):
    image = np.zeros((*special.shape, 3), np.uint8) if "image" in items else None
    nuclei = special if "nuclei" in items else None
    tissue = np.full(special.shape, 2, np.int32) if "tissue" in items else None
    path = write_ome_tiff(tmp_path / "s.ome.tif", image, nuclei, tissue=tissue, mpp=0.2467)
    result = read_ome_tiff(path)
    assert (result.image is not None) == (image is not None)
    assert (result.nuclei is not None) == (nuclei is not None)
    assert (result.tissue is not None) == (tissue is not None)
    assert result.tissue_scheme is None  # none was given
    assert result.mpp == pytest.approx(0.2467)
    if nuclei is not None:
        assert np.array_equal(result.nuclei.instances, special.instances)
        assert result.nuclei.classes == special.classes


@pytest.mark.parametrize("seed", range(3))
def test_ome_tiff_random_masks_identical(tmp_path, seed):
    rng = np.random.default_rng(seed)
    inst = _random_mask(rng, (97, 131), 300) * 7
    classes = {int(i): int(rng.integers(0, 5)) for i in np.unique(inst) if i}
    nuclei = NucleiMask.create(inst, classes, "lizard" if seed else "pannuke")
    result = read_ome_tiff(write_ome_tiff(tmp_path / "r.ome.tif", None, nuclei))
    assert np.array_equal(result.nuclei.instances, inst)
    assert result.nuclei.classes == nuclei.classes
    assert result.nuclei.scheme == nuclei.scheme
    assert result.mpp is None and result.nuclei.mpp is None


def test_ome_tiff_empty_mask_and_custom_schemes(tmp_path):
    scheme = ClassScheme("mine", (ClassInfo(5, "Tumour cell", (1, 2, 3), 20.0, 1.7),), description="ünïcode")
    tissue_scheme = ClassScheme("zones", (ClassInfo(1, "a", (9, 9, 9)), ClassInfo(3, "b", (8, 8, 8))), kind="tissue")
    nuclei = NucleiMask.create(np.zeros((30, 20), np.int32), {}, scheme, mpp=0.5)
    tissue = np.zeros((30, 20), np.int32)
    tissue[10:] = 3
    result = read_ome_tiff(write_ome_tiff(tmp_path / "e.ome.tif", nuclei=nuclei, tissue=tissue,
                                          tissue_scheme=tissue_scheme))
    assert result.nuclei.n_nuclei == 0 and not result.nuclei.instances.any()
    assert result.nuclei.scheme == scheme and result.tissue_scheme == tissue_scheme
    assert np.array_equal(result.tissue, tissue)
    assert result.provenance["format"].startswith("OME-TIFF")  # none stored: says where it came from


@pytest.mark.slow
def test_ome_tiff_converts_grey_image_and_large_image(tmp_path):
    grey = (np.arange(3000 * 2500) % 251).astype(np.uint8).reshape(3000, 2500)
    inst = np.zeros(grey.shape, np.int32)
    inst[2990:, 2490:] = 9
    nuclei = NucleiMask.create(inst, {9: 2}, "consep")
    result = read_ome_tiff(write_ome_tiff(tmp_path / "g.ome.tif", grey, nuclei))
    assert result.image.shape == (3000, 2500, 3)
    assert np.array_equal(result.image[..., 1], grey)
    assert np.array_equal(result.nuclei.instances, inst)


def test_ome_tiff_refuses_bad_input(tmp_path, special):
    with pytest.raises(HistogenInputError, match="Nothing to write"):
        write_ome_tiff(tmp_path / "n.ome.tif")
    with pytest.raises(HistogenInputError, match="must match pixel for pixel"):
        write_ome_tiff(tmp_path / "n.ome.tif", np.zeros((10, 10, 3), np.uint8), special)
    with pytest.raises(HistogenInputError, match="tissue scheme"):
        write_ome_tiff(tmp_path / "n.ome.tif", tissue=np.ones((4, 4), np.int32), tissue_scheme="consep")
    with pytest.raises(UnknownClassError):
        write_ome_tiff(tmp_path / "n.ome.tif", tissue=np.full((4, 4), 7, np.int32), tissue_scheme="tissue")
    with pytest.raises(HistogenInputError, match="disagrees"):
        write_ome_tiff(tmp_path / "n.ome.tif", nuclei=special, mpp=0.5)
    with pytest.raises(HistogenInputError, match="NucleiMask"):
        write_ome_tiff(tmp_path / "n.ome.tif", nuclei=special.instances)
    assert not (tmp_path / "n.ome.tif").exists()


def test_ome_tiff_reads_plain_tiffs(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    # plain RGB TIFF with a per-centimetre resolution: 0.5 µm/px
    tifffile.imwrite(tmp_path / "plain.tif", rgb, photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    result = read_ome_tiff(tmp_path / "plain.tif")
    assert np.array_equal(result.image, rgb) and result.nuclei is None
    assert result.mpp == pytest.approx(0.5)
    assert result.provenance["format"] == "TIFF"
    # per-inch (72 dpi) resolutions are screen defaults, not a scale
    tifffile.imwrite(tmp_path / "dpi.tif", rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert read_ome_tiff(tmp_path / "dpi.tif").mpp is None
    # OME-TIFF from other software: 16-bit grey, size in nm
    grey = rng.integers(0, 65536, (30, 20)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "other.ome.tif", grey, ome=True,
                     metadata={"PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm"})
    result = read_ome_tiff(tmp_path / "other.ome.tif")
    assert result.name == "other" and result.mpp == pytest.approx(0.25)
    assert result.image.shape == (30, 20, 3) and result.provenance["format"] == "OME-TIFF"
    assert np.array_equal(result.image[..., 0], np.rint(grey / 65535 * 255).astype(np.uint8))
    # OME-TIFF with channels stored first (planar RGB)
    tifffile.imwrite(tmp_path / "planar.ome.tif", np.moveaxis(rgb, -1, 0), ome=True, photometric="rgb",
                     planarconfig="separate", metadata={"PhysicalSizeX": 0.3})
    result = read_ome_tiff(tmp_path / "planar.ome.tif")
    assert np.array_equal(result.image, rgb) and result.mpp == pytest.approx(0.3)


def test_ome_tiff_corrupt_files(tmp_path, special):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (*special.shape, 3)).astype(np.uint8)
    path = write_ome_tiff(tmp_path / "ok.ome.tif", image, special, provenance=PROVENANCE)
    data = path.read_bytes()
    bad = tmp_path / "bad.ome.tif"
    # truncated anywhere: in the header, the data, the OME-XML at the end
    for cut in sorted({4, 100, 1000, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 20, len(data) - 1}):
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError):
            read_ome_tiff(bad)
    bad.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(CorruptFileError):
        read_ome_tiff(bad)
    bad.write_bytes(b"")
    with pytest.raises(CorruptFileError):
        read_ome_tiff(bad)
    with pytest.raises(HistogenInputError, match="No file"):
        read_ome_tiff(tmp_path / "missing.ome.tif")


def test_ome_tiff_checksum_catches_damaged_uncompressed_data(tmp_path, special, monkeypatch):
    # uncompressed data has no codec check of its own: the stored sha256 must catch it
    monkeypatch.setattr(ome_tiff, "_COMPRESSION", [None])
    path = write_ome_tiff(tmp_path / "u.ome.tif", nuclei=special)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[1].compression == tifffile.COMPRESSION.NONE
        offset = tif.pages[0].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="checksum"):
        read_ome_tiff(path)


# ---------------------------------------------------------------------------------------
# GeoJSON
# ---------------------------------------------------------------------------------------
def _rasterize_independently(geometry, shape, value, out):
    """skimage's point-in-polygon on pixel centres (shift by half a pixel), even-odd rings."""
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    for poly in polys:
        part = np.zeros(shape, bool)
        for ring in poly:
            xy = np.asarray(ring, float)
            rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
            ring_mask = np.zeros(shape, bool)
            ring_mask[rr, cc] = True
            part ^= ring_mask
        out[part] = value


def test_geojson_round_trip_special_cases(tmp_path, special):
    before = special.instances.copy()
    path = write_geojson(tmp_path / "n.geojson", special, provenance=PROVENANCE)
    assert np.array_equal(special.instances, before)
    result = read_geojson(path)
    assert result.name == "n" and result.image is None
    assert np.array_equal(result.nuclei.instances, special.instances)  # pixel exact
    assert result.nuclei.classes == special.classes
    assert result.nuclei.scheme == special.scheme
    assert result.nuclei.mpp == special.mpp == result.mpp
    assert result.nuclei.metadata == special.metadata
    assert result.provenance == PROVENANCE


def test_geojson_features_follow_qupath_conventions(special):
    fc = nuclei_to_geojson(special)
    json.dumps(fc, allow_nan=False)  # plain JSON
    assert fc["type"] == "FeatureCollection"
    by_id = {f["properties"]["histogen_id"]: f for f in fc["features"]}
    assert sorted(by_id) == sorted(special.classes)
    scheme = special.scheme
    for inst_id, feature in by_id.items():
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["histogen_class_id"] == special.classes[inst_id]
        if special.classes[inst_id] == 0:
            assert "classification" not in props
        else:
            assert props["classification"] == {"name": scheme.name_of(special.classes[inst_id]),
                                               "color": list(scheme.color(special.classes[inst_id]))}
    # 1-pixel nucleus at (row 30, col 50): the unit square x 50..51, y 30..31
    assert by_id[41]["geometry"] == {"type": "Polygon",
                                     "coordinates": [[[50, 30], [51, 30], [51, 31], [50, 31], [50, 30]]]}
    # corner pixel
    assert by_id[40]["geometry"]["coordinates"] == [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]
    # a hole is an interior ring, two parts a MultiPolygon
    assert by_id[10]["geometry"]["type"] == "Polygon" and len(by_id[10]["geometry"]["coordinates"]) == 2
    assert by_id[20]["geometry"]["type"] == "MultiPolygon" and len(by_id[20]["geometry"]["coordinates"]) == 2
    # the pocket joined by a diagonal becomes a hole touching the exterior, every ring simple
    assert len(by_id[50]["geometry"]["coordinates"]) == 2
    # rings closed, simple, exterior positive / holes negative in the shoelace sum (RFC 7946)
    for feature in fc["features"]:
        geometry = feature["geometry"]
        polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        for poly in polys:
            for k, ring in enumerate(poly):
                assert ring[0] == ring[-1] and len(ring) >= 5
                corners = [tuple(p) for p in ring[:-1]]
                assert len(set(corners)) == len(corners)
                xy = np.asarray(ring, float)
                area2 = np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1])
                assert (area2 > 0) == (k == 0)
    # stored metadata for our reader, under one foreign member
    assert fc["histogen"]["shape"] == list(special.shape)
    assert fc["histogen"]["scheme"] == special.scheme.to_dict()


@pytest.mark.parametrize("seed", range(40))
def test_geojson_random_masks_pixel_exact(tmp_path, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 40, 2))
    inst = _random_mask(rng, shape, int(rng.integers(1, 8)), density=float(rng.uniform(0.2, 0.9)))
    inst = inst * int(rng.integers(1, 1000))
    classes = {int(i): int(rng.integers(0, 7)) for i in np.unique(inst) if i}
    nuclei = NucleiMask.create(inst, classes, "lizard")
    fc = nuclei_to_geojson(nuclei)
    # independent check of the outlines: skimage fills exactly the traced pixels
    check = np.zeros(shape, np.int32)
    for feature in fc["features"]:
        _rasterize_independently(feature["geometry"], shape, feature["properties"]["histogen_id"], check)
    assert np.array_equal(check, inst)
    # and our own reader
    result = read_geojson(write_geojson(tmp_path / "r.geojson", nuclei))
    assert np.array_equal(result.nuclei.instances, inst)
    assert result.nuclei.classes == nuclei.classes


def test_geojson_empty_mask(tmp_path):
    nuclei = NucleiMask.create(np.zeros((12, 34), np.int32), {}, "pannuke", mpp=0.5)
    fc = nuclei_to_geojson(nuclei)
    assert fc["features"] == []
    result = read_geojson(write_geojson(tmp_path / "e.geojson", nuclei))
    assert result.nuclei.shape == (12, 34) and result.nuclei.n_nuclei == 0
    assert result.nuclei.scheme.name == "pannuke" and result.mpp == 0.5
    assert result.provenance["format"] == "GeoJSON"


@pytest.mark.slow
def test_geojson_2000_nuclei_exact(tmp_path):
    """2000 nuclei round-trip exactly (their speed: benchmarks/annotation_io.py)."""
    rng = np.random.default_rng(11)
    inst = _blob_mask(rng)
    assert np.unique(inst).size > 1900
    classes = {int(i): int(rng.integers(0, 5)) for i in np.unique(inst) if i}
    nuclei = NucleiMask.create(inst, classes, "consep")
    path = write_geojson(tmp_path / "big.geojson", nuclei)
    result = read_geojson(path)
    assert np.array_equal(result.nuclei.instances, inst)
    assert result.nuclei.classes == nuclei.classes


def _qupath_export():
    """A file as QuPath 0.4 exports it: float coordinates, uuid ids, no histogen members."""
    def square(x0, y0, x1, y1):
        return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]

    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": "0e1c6f3a-1b2c-4d5e-8f90-123456789abc",
             "geometry": {"type": "Polygon", "coordinates": square(0.0, 0.0, 40.0, 30.0)},
             "properties": {"objectType": "annotation", "classification": {"name": "Region*", "color": [0, 0, 0]}}},
            {"type": "Feature", "id": "1e1c6f3a-1b2c-4d5e-8f90-123456789abc",
             "geometry": {"type": "Polygon", "coordinates": square(2.7, 3.7, 6.7, 5.9)},
             "properties": {"objectType": "detection", "isLocked": False,
                            "classification": {"name": "Epithelial", "color": [220, 20, 60]}}},
            {"type": "Feature", "id": "2e1c6f3a-1b2c-4d5e-8f90-123456789abc",
             "geometry": {"type": "Polygon", "coordinates": square(10, 10, 30, 25)},
             "nucleusGeometry": {"type": "Polygon", "coordinates": square(14.0, 12.0, 17.0, 14.0)},
             "properties": {"objectType": "cell", "classification": {"name": "spindle", "colorRGB": -16711936}}},
            {"type": "Feature", "id": "3e1c6f3a-1b2c-4d5e-8f90-123456789abc",
             "geometry": {"type": "Point", "coordinates": [5, 5]},
             "properties": {"objectType": "detection"}},
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square(33, 20, 35, 21)},
             "properties": {"objectType": "detection"}},
        ],
    }


def test_geojson_reads_qupath_export_with_given_scheme(tmp_path):
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(_qupath_export()), encoding="utf-8")
    result = read_geojson(path, shape=(30, 40), scheme="consep")
    inst = result.nuclei.instances
    assert inst.shape == (30, 40)
    # the annotation (the region the detections were made in) is not a nucleus;
    # ids 1..N in file order over the polygon features read
    assert result.nuclei.classes == {1: 3, 2: 4, 3: 0}
    expected = np.zeros((30, 40), np.int32)
    expected[4:6, 3:7] = 1  # centres y 4.5, 5.5 in (3.7, 5.9); x 3.5..6.5 in (2.7, 6.7)
    expected[12:14, 14:17] = 2  # the nucleus, not the cell outline
    expected[20:21, 33:35] = 3
    assert np.array_equal(inst, expected)
    assert result.mpp is None and result.provenance == {"file": str(path), "format": "GeoJSON"}


def test_geojson_qupath_variants(tmp_path):
    export = _qupath_export()
    detections = [f for f in export["features"] if f["properties"]["objectType"] != "annotation"]
    # a bare list of features, shape from the bounding box, scheme found by the class names
    path = tmp_path / "list.geojson"
    path.write_text(json.dumps(detections), encoding="utf-8")
    result = read_geojson(path)
    assert result.nuclei.scheme.name == "consep"  # the one known scheme with epithelial + spindle
    assert result.nuclei.shape == (21, 35)
    # a single Feature, legacy QuPath object type in its id
    single = dict(detections[0], id="PathDetectionObject")
    single["properties"] = {"classification": {"name": "epithelial"}}
    path.write_text(json.dumps(single), encoding="utf-8")
    result = read_geojson(path, scheme="consep")
    assert result.nuclei.classes == {1: 3}
    # only annotations: they are the nuclei
    annotations = {"type": "FeatureCollection", "features": [dict(detections[0], properties={"objectType": "annotation"})]}
    path.write_text(json.dumps(annotations), encoding="utf-8")
    assert read_geojson(path).nuclei.n_nuclei == 1


def test_geojson_unknown_class_names_listed(tmp_path):
    path = tmp_path / "q.geojson"
    path.write_text(json.dumps(_qupath_export()), encoding="utf-8")
    with pytest.raises(UnknownClassError, match=r"Epithelial, spindle.*lizard"):
        read_geojson(path, scheme="lizard")
    features = _qupath_export()["features"]
    features[1]["properties"]["classification"]["name"] = "Tumor"
    path.write_text(json.dumps(features), encoding="utf-8")
    with pytest.raises(UnknownClassError, match="Tumor"):
        read_geojson(path)


def test_geojson_stored_scheme_wins_and_ids(tmp_path, special):
    path = write_geojson(tmp_path / "s.geojson", special)
    # a different scheme argument does not override the stored one
    assert read_geojson(path, scheme="lizard").nuclei.scheme.name == "consep"
    with pytest.raises(HistogenInputError, match="written for"):
        read_geojson(path, shape=(10, 10))
    # features added without histogen_id (e.g. drawn in QuPath) are numbered after the largest id
    data = json.loads(path.read_text(encoding="utf-8"))
    extra = {"type": "Feature", "properties": {"objectType": "detection", "classification": {"name": "spindle"}},
             "geometry": {"type": "Polygon", "coordinates": [[[60, 60], [62, 60], [62, 62], [60, 62], [60, 60]]]}}
    data["features"].append(extra)
    duplicate = json.loads(json.dumps(data["features"][0]))
    duplicate["geometry"]["coordinates"] = [[[70, 60], [71, 60], [71, 61], [70, 61], [70, 60]]]
    data["features"].append(duplicate)
    path.write_text(json.dumps(data), encoding="utf-8")
    result = read_geojson(path)
    # the largest id is the int32 limit, so the smallest free ids (1, 2) are used
    assert max(special.classes) == 2**31 - 1 and 1 not in special.classes and 2 not in special.classes
    assert result.nuclei.classes[1] == 4
    assert np.all(result.nuclei.instances[60:62, 60:62] == 1)
    assert result.nuclei.instances[60, 70] == 2
    # with room above the largest id, new ids follow it
    for feature in data["features"]:
        if feature["properties"].get("histogen_id") == 2**31 - 1:
            feature["properties"]["histogen_id"] = 100
    path.write_text(json.dumps(data), encoding="utf-8")
    result = read_geojson(path)
    assert result.nuclei.classes[101] == 4 and result.nuclei.instances[60, 70] == 102
    assert result.nuclei.instances[31, 51] == 100


def test_geojson_corrupt_files(tmp_path, special):
    good = write_geojson(tmp_path / "g.geojson", special).read_text(encoding="utf-8")
    bad = tmp_path / "bad.geojson"
    cases = [
        good[: len(good) // 2],  # truncated
        "",
        "{not json",
        json.dumps({"hello": "world"}),
        json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                    "geometry": {"type": "Polygon", "coordinates": [[["a", "b"], [1, 2], [3, 4]]]}}]}),
        json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                    "geometry": {"type": "Polygon"}}]}),
        json.dumps([1, 2, 3]),
    ]
    for text in cases:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(CorruptFileError):
            read_geojson(bad, shape=special.shape)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptFileError):
        read_geojson(bad)
    with pytest.raises(HistogenInputError, match="No file"):
        read_geojson(tmp_path / "missing.geojson")


def test_geojson_no_nuclei_needs_shape(tmp_path):
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}), encoding="utf-8")
    with pytest.raises(HistogenInputError, match="shape"):
        read_geojson(path)
    result = read_geojson(path, shape=(5, 6))
    assert result.nuclei.shape == (5, 6) and result.nuclei.n_nuclei == 0


@pytest.mark.parametrize("seed", range(5))
def test_geojson_float_polygons_fill_pixel_centres(tmp_path, seed):
    # foreign outlines (any angle, float corners, self-intersecting) fill the pixels whose
    # centres are inside by the even-odd rule, as skimage's point-in-polygon does
    rng = np.random.default_rng(seed)
    shape = (40, 50)
    path = tmp_path / "f.geojson"
    for _ in range(10):
        n = int(rng.integers(3, 9))
        xy = np.column_stack([rng.uniform(-5, 55, n), rng.uniform(-5, 45, n)])
        ring = xy.tolist() + [xy[0].tolist()]
        feature = {"type": "Feature", "properties": {"objectType": "detection"},
                   "geometry": {"type": "Polygon", "coordinates": [ring]}}
        path.write_text(json.dumps(feature), encoding="utf-8")
        expected = np.zeros(shape, np.int32)
        _rasterize_independently(feature["geometry"], shape, 1, expected)
        got = read_geojson(path, shape=shape).nuclei
        assert np.array_equal(got.instances, expected)
