"""Readers of Lizard, CoNSeP, PanNuke, CoNIC and image + mask pairs, on generated files and real data."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import tifffile
from skimage.io import imsave

from napari_histogen.core.errors import CorruptFileError, HistogenInputError, UnknownClassError
from napari_histogen.core.io.consep import read_consep_mat
from napari_histogen.core.io.dispatch import read_annotated
from napari_histogen.core.io.lizard import read_lizard_mat
from napari_histogen.core.io.npy_datasets import read_conic, read_npy_dataset, read_pannuke
from napari_histogen.core.io.pairs import read_image_mask_pair, read_points_csv

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _instances(rng, shape=(32, 40), n=5):
    inst = np.zeros(shape, np.int32)
    ids = rng.choice(np.arange(3, 500), n, replace=False)
    for k, i in enumerate(ids):
        r, c = 2 + (k % 3) * 10, 2 + (k // 3) * 12
        inst[r:r + 6, c:c + 7] = i
    return inst, sorted(int(i) for i in ids)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _image(rng, shape):
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_lizard_mat_with_image_found_in_images_folder(tmp_path, rng):
    inst, ids = _instances(rng)
    classes = [1, 2, 3, 6, 5]
    labels = tmp_path / "Lizard_Labels" / "Labels"
    labels.mkdir(parents=True)
    images = tmp_path / "Lizard_Images1"
    images.mkdir()
    img = _image(rng, inst.shape)
    imsave(images / "crag_1.png", img, check_contrast=False)
    sio.savemat(labels / "crag_1.mat", {"inst_map": inst.astype(np.float64), "id": np.array(ids)[:, None],
                                        "class": np.array(classes)[:, None], "bbox": np.zeros((5, 4)),
                                        "centroid": np.zeros((5, 2))})
    item = read_lizard_mat(labels / "crag_1.mat")
    assert item.nuclei.scheme.name == "lizard" and item.mpp == 0.5
    assert item.nuclei.classes == dict(zip(ids, classes))
    np.testing.assert_array_equal(item.nuclei.instances, inst)
    np.testing.assert_array_equal(item.image, img)
    assert item.provenance["image_source"] == "crag_1.png"
    # through the dispatcher too, and without the image
    assert read_annotated(labels / "crag_1.mat").nuclei.classes == item.nuclei.classes
    (images / "crag_1.png").unlink()
    alone = read_lizard_mat(labels / "crag_1.mat")
    assert alone.image is None and "mask only" in alone.provenance["notes"][0]


def test_lizard_unknown_class_is_refused(tmp_path, rng):
    inst, ids = _instances(rng)
    sio.savemat(tmp_path / "x.mat", {"inst_map": inst, "id": np.array(ids)[:, None], "class": np.full((5, 1), 9)})
    with pytest.raises(UnknownClassError, match=r"\[9\]"):
        read_lizard_mat(tmp_path / "x.mat")


def test_consep_original_layout_merges_seven_types(tmp_path, rng):
    inst, ids = _instances(rng)
    types7 = np.array([1, 2, 4, 6, 7])
    (tmp_path / "Labels").mkdir()
    (tmp_path / "Images").mkdir()
    img = _image(rng, inst.shape)
    imsave(tmp_path / "Images" / "train_3.png", img, check_contrast=False)
    sio.savemat(tmp_path / "Labels" / "train_3.mat", {"inst_map": inst.astype(np.float64), "type_map": inst * 0,
                                                      "inst_type": types7[:, None].astype(float),
                                                      "inst_centroid": np.zeros((5, 2))})
    item = read_annotated(tmp_path / "Labels" / "train_3.mat")
    assert item.nuclei.scheme.name == "consep" and item.mpp == 0.25
    assert item.nuclei.classes == dict(zip(ids, [1, 2, 3, 4, 4]))
    assert item.provenance["merged_7_to_4"] is True
    np.testing.assert_array_equal(item.image, img)


def test_consep_patch_layout_and_mismatch(tmp_path, rng):
    inst, ids = _instances(rng)
    for sub in ("type_mat/train", "inst/train", "images/train"):
        (tmp_path / sub).mkdir(parents=True)
    sio.savemat(tmp_path / "type_mat/train/train_1_000.mat", {"inst_type": np.array([[1], [2], [3], [4], [2]]),
                                                              "inst_centroid": np.zeros((5, 2))})
    with gzip.open(tmp_path / "inst/train/train_1_000.npy.gz", "wb") as handle:
        np.save(handle, inst)
    imsave(tmp_path / "images/train/train_1_000.jpg", _image(rng, inst.shape), check_contrast=False)
    item = read_consep_mat(tmp_path / "type_mat/train/train_1_000.mat")
    assert item.nuclei.classes == dict(zip(ids, [1, 2, 3, 4, 2]))
    assert item.provenance["layout"] == "patches" and item.image.shape == (*inst.shape, 3)
    sio.savemat(tmp_path / "type_mat/train/train_1_000.mat", {"inst_type": np.array([[1], [2]])})
    with pytest.raises(CorruptFileError, match="do not belong together"):
        read_consep_mat(tmp_path / "type_mat/train/train_1_000.mat")
    (tmp_path / "inst/train/train_1_000.npy.gz").unlink()
    with pytest.raises(HistogenInputError, match="instance map"):
        read_consep_mat(tmp_path / "type_mat/train/train_1_000.mat")


def _pannuke_fold(folder, rng, n=3):
    folder.mkdir()
    images = rng.uniform(0, 255, (n, 16, 16, 3))
    masks = np.zeros((n, 16, 16, 6))
    masks[:, 1:4, 1:4, 0] = 7     # neoplastic nucleus 7
    masks[:, 8:12, 8:12, 2] = 7   # connective nucleus also numbered 7: ids repeat across channels
    masks[2, 12:15, 1:3, 4] = 3   # an epithelial nucleus only in patch 2
    np.save(folder / "images.npy", images)
    np.save(folder / "masks.npy", masks)
    return images, masks


def test_pannuke_index_syntax_and_unique_ids(tmp_path, rng):
    images, _ = _pannuke_fold(tmp_path / "fold1", rng)
    item = read_annotated(str(tmp_path / "fold1" / "masks.npy") + "::2")
    assert item.name == "pannuke[2]" and item.nuclei.scheme.name == "pannuke"
    assert sorted(item.nuclei.classes.values()) == [1, 3, 5]
    assert item.nuclei.n_nuclei == 3  # the two nuclei numbered 7 stay apart
    np.testing.assert_array_equal(item.image, np.clip(np.rint(images[2]), 0, 255).astype(np.uint8))
    assert read_npy_dataset(tmp_path / "fold1", index=0).nuclei.n_nuclei == 2
    with pytest.raises(HistogenInputError, match=r"0\.\.2"):
        read_pannuke(tmp_path / "fold1/images.npy", tmp_path / "fold1/masks.npy", 3)
    with pytest.raises(HistogenInputError, match="patch index"):
        read_annotated(str(tmp_path / "fold1" / "masks.npy") + "::two")


def test_conic_majority_class(tmp_path, rng):
    folder = tmp_path / "conic"
    folder.mkdir()
    labels = np.zeros((2, 16, 16, 2), np.int32)
    labels[1, 2:6, 2:6, 0] = 4
    labels[1, 2:6, 2:6, 1] = 3
    labels[1, 2, 2, 1] = 1  # one stray pixel does not change the majority
    labels[1, 9:12, 9:12, 0] = 5
    labels[1, 9:12, 9:12, 1] = 6
    np.save(folder / "images.npy", rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", labels)
    item = read_annotated(folder / "labels.npy", index=1)
    assert item.nuclei.scheme.name == "lizard" and item.mpp == 0.5
    assert item.nuclei.classes == {4: 3, 5: 6}
    assert read_conic(folder / "images.npy", folder / "labels.npy", 0).nuclei.n_nuclei == 0


def test_image_mask_pairs_npz_and_tif(tmp_path, rng):
    inst, ids = _instances(rng)
    types = np.zeros_like(inst)
    for i, c in zip(ids, [1, 2, 3, 4, 1]):
        types[inst == i] = c
    img = _image(rng, inst.shape)
    imsave(tmp_path / "a.png", img, check_contrast=False)
    np.savez(tmp_path / "a_mask.npz", inst_map=inst, type_map=types)
    with pytest.raises(HistogenInputError, match="scheme"):
        read_image_mask_pair(tmp_path / "a.png")  # a type map needs its scheme
    item = read_image_mask_pair(tmp_path / "a.png", scheme="consep", mpp=0.5)
    assert item.nuclei.classes == dict(zip(ids, [1, 2, 3, 4, 1])) and item.mpp == 0.5
    np.testing.assert_array_equal(item.image, img)
    tifffile.imwrite(tmp_path / "b_mask.tif", np.stack([inst, types]))
    imsave(tmp_path / "b.png", img, check_contrast=False)
    assert read_image_mask_pair(tmp_path / "b.png", scheme="consep").nuclei.classes == item.nuclei.classes
    np.savez(tmp_path / "c.npz", inst_map=inst)  # no types: unclassified, said in provenance
    imsave(tmp_path / "c.png", img, check_contrast=False)
    plain = read_annotated(tmp_path / "c.npz")
    assert set(plain.nuclei.classes.values()) == {0} and plain.provenance["notes"]


def test_bad_pairs(tmp_path, rng):
    inst, _ = _instances(rng)
    imsave(tmp_path / "a.png", _image(rng, (10, 10)), check_contrast=False)
    np.savez(tmp_path / "a.npz", inst_map=inst)
    with pytest.raises(HistogenInputError, match="must match"):
        read_image_mask_pair(tmp_path / "a.png")
    np.savez(tmp_path / "a.npz", inst_map=-np.ones((10, 10), int))
    with pytest.raises(HistogenInputError, match="negative"):
        read_image_mask_pair(tmp_path / "a.png")
    np.savez(tmp_path / "a.npz", inst_map=np.full((10, 10), 0.5))
    with pytest.raises(HistogenInputError, match="non-integer"):
        read_image_mask_pair(tmp_path / "a.png")
    imsave(tmp_path / "lonely.png", _image(rng, (10, 10)), check_contrast=False)
    with pytest.raises(HistogenInputError, match="No mask found"):
        read_image_mask_pair(tmp_path / "lonely.png")


@pytest.mark.parametrize("name", ["x.mat", "masks.npy", "x.npz", "x.geojson", "x.ome.tif"])
def test_corrupt_files_are_refused_clearly(tmp_path, rng, name):
    path = tmp_path / name
    path.write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    if name == "masks.npy":
        np.save(tmp_path / "images.npy", np.zeros((1, 4, 4, 3)))
    if name == "x.npz":
        imsave(tmp_path / "x.png", _image(rng, (4, 4)), check_contrast=False)
    with pytest.raises(CorruptFileError):
        read_annotated(path)


def test_points_csv_formats(tmp_path):
    nucls = tmp_path / "p.csv"
    nucls.write_text("5,10,0\n7,3,3\n")
    pts, cls = read_points_csv(nucls)
    np.testing.assert_array_equal(pts, [[10, 5], [3, 7]])
    assert cls.tolist() == [1, 4]
    own = tmp_path / "own.csv"
    own.write_text("row,col,class_id,class_name\n10.0,5.0,1,tumor_any\n3,7,4,other_nucleus\n")
    pts2, cls2 = read_points_csv(own)
    np.testing.assert_array_equal(pts2, pts)
    assert cls2.tolist() == cls.tolist()
    nucls.write_text("5,10,7\n")
    with pytest.raises(UnknownClassError):
        read_points_csv(nucls)
    nucls.write_text("x,y\n")
    with pytest.raises(CorruptFileError):
        read_points_csv(nucls)


def test_lizard_image_beside_labels_explicit_image_and_wrong_keys(tmp_path, rng):
    inst, ids = _instances(rng)
    sio.savemat(tmp_path / "glas_2.mat", {"inst_map": inst, "id": np.array(ids)[:, None],
                                          "class": np.array([[2], [2], [3], [4], [0]])})
    img = _image(rng, inst.shape)
    imsave(tmp_path / "glas_2.png", img, check_contrast=False)
    item = read_lizard_mat(tmp_path / "glas_2.mat")
    np.testing.assert_array_equal(item.image, img)
    assert item.nuclei.classes[ids[4]] == 0 and item.provenance["source"] == "glas_2.mat"
    imsave(tmp_path / "small.png", _image(rng, (8, 8)), check_contrast=False)
    with pytest.raises(HistogenInputError, match="must match"):
        read_lizard_mat(tmp_path / "glas_2.mat", image_path=tmp_path / "small.png")
    sio.savemat(tmp_path / "consep.mat", {"inst_map": inst, "inst_type": np.ones((5, 1))})
    with pytest.raises(CorruptFileError, match=r"'id'"):
        read_lizard_mat(tmp_path / "consep.mat")


def test_consep_seven_types_seen_in_type_map_only(tmp_path, rng):
    inst, ids = _instances(rng)
    types = np.array([[1], [2], [4], [4], [3]])
    four = {"inst_map": inst.astype(float), "type_map": np.minimum(inst, 4), "inst_type": types}
    sio.savemat(tmp_path / "four.mat", four)
    item = read_consep_mat(tmp_path / "four.mat")
    assert item.nuclei.classes == dict(zip(ids, [1, 2, 4, 4, 3])) and item.provenance["merged_7_to_4"] is False
    assert item.image is None and "mask only" in item.provenance["notes"][0]
    seven = dict(four, type_map=np.where(inst > 0, 6, 0))  # a 5..7 type only in the type map
    sio.savemat(tmp_path / "seven.mat", seven)
    item = read_consep_mat(tmp_path / "seven.mat")
    assert item.nuclei.classes == dict(zip(ids, [1, 2, 3, 3, 3])) and item.provenance["merged_7_to_4"] is True
    sio.savemat(tmp_path / "eight.mat", dict(four, inst_type=types + 5))
    with pytest.raises(HistogenInputError, match="0..7"):
        read_consep_mat(tmp_path / "eight.mat")


def test_pannuke_negative_index_dark_patch_and_mismatched_files(tmp_path, rng):
    images, _ = _pannuke_fold(tmp_path / "fold2", rng)
    images[1] = 1.0  # an almost black patch: 0..255 float, not 0..1
    np.save(tmp_path / "fold2" / "images.npy", images)
    item = read_npy_dataset(str(tmp_path / "fold2" / "images.npy") + "::-2")
    assert item.name == "pannuke[1]" and item.provenance["index"] == 1
    assert item.image.max() == 1
    np.save(tmp_path / "fold2" / "images.npy", images[:2])
    with pytest.raises(CorruptFileError, match="same fold"):
        read_pannuke(tmp_path / "fold2/images.npy", tmp_path / "fold2/masks.npy", 0)
    np.save(tmp_path / "fold2" / "masks.npy", np.zeros((3, 16, 16, 2)))
    with pytest.raises(CorruptFileError, match="6 channels"):
        read_pannuke(tmp_path / "fold2/images.npy", tmp_path / "fold2/masks.npy", 0)


def test_pair_npz_with_stored_scheme_classes_mpp_and_tif_layouts(tmp_path, rng):
    inst, ids = _instances(rng)
    img = _image(rng, inst.shape)
    imsave(tmp_path / "own.png", img, check_contrast=False)
    table = np.array([[i, c] for i, c in zip(ids, [6, 5, 4, 3, 2])])
    np.savez(tmp_path / "own.npz", instances=inst, types=np.ones_like(inst), classes=table,
             scheme=np.array("lizard"), mpp=np.array(0.5))
    item = read_image_mask_pair(tmp_path / "own.png")
    assert item.nuclei.scheme.name == "lizard" and item.mpp == 0.5
    assert item.nuclei.classes == dict(zip(ids, [6, 5, 4, 3, 2]))  # the class table beats the type map
    with pytest.raises(UnknownClassError):
        read_image_mask_pair(tmp_path / "own.png", scheme="consep")  # 5 and 6 are not CoNSeP classes
    types = np.where(inst > 0, 2, 0)
    tifffile.imwrite(tmp_path / "hwc_mask.tif", np.stack([inst, types], axis=-1))
    imsave(tmp_path / "hwc.png", img, check_contrast=False)
    assert set(read_image_mask_pair(tmp_path / "hwc.png", scheme="pannuke").nuclei.classes.values()) == {2}
    tifffile.imwrite(tmp_path / "flat_mask.tif", inst.astype(np.uint16))
    imsave(tmp_path / "flat.png", img, check_contrast=False)
    flat = read_image_mask_pair(tmp_path / "flat.png")
    assert flat.nuclei.scheme.name == "consep" and sorted(flat.nuclei.classes) == ids


def test_pair_nucls_layout_classes_come_from_points(tmp_path, rng):
    inst, ids = _instances(rng)
    for sub in ("images", "labels", "points"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    imsave(tmp_path / "train/images/s.png", _image(rng, inst.shape), check_contrast=False)
    np.savez(tmp_path / "train/labels/s.npz", inst_map=inst, type_map=np.where(inst > 0, 2, 0))
    # the nucleus at rows 2..7, cols 2..8 holds two sTIL points and one tumour point; the one
    # at rows 12..17 one stromal point; the last point lies on background
    (tmp_path / "train/points/s.csv").write_text("3,3,2\n5,4,2\n6,6,0\n4,14,1\n39,31,3\n")
    first, second = int(inst[3, 3]), int(inst[14, 4])
    item = read_image_mask_pair(tmp_path / "train/images/s.png")
    assert item.nuclei.scheme.name == "nucls" and item.point_scheme.name == "nucls"
    expected = {i: 0 for i in ids} | {first: 3, second: 2}
    assert item.nuclei.classes == expected
    np.testing.assert_array_equal(item.points[0], [3, 3])
    assert item.point_classes.tolist() == [3, 3, 1, 2, 4]
    assert any("points" in note for note in item.provenance["notes"])
    typed = read_image_mask_pair(tmp_path / "train/images/s.png", scheme="consep")  # points only for nucls
    assert typed.points is None and set(typed.nuclei.classes.values()) == {2}
    (tmp_path / "train/points/s.csv").write_bytes(b"\x00\xff\x12garbage")
    with pytest.raises(HistogenInputError, match="scheme"):
        read_image_mask_pair(tmp_path / "train/images/s.png")  # bad points: back to needing a scheme
    skipped = read_image_mask_pair(tmp_path / "train/images/s.png", scheme="nucls")
    assert skipped.points is None and "skipped" in skipped.provenance["notes"][0]


# -- real data (research-only copies beside the repository; never shipped) -----------------
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


@needs_shared
def test_real_consep_patch_classes_match_its_type_map():
    root = SHARED_DATA / "consep_patches256"
    item = read_annotated(root / "type_mat" / "train" / "train_1_000.mat")
    from skimage.io import imread

    from napari_histogen.core.masks import classes_from_type_map

    seg = imread(root / "seg_mask" / "train" / "train_1_000.png")
    assert item.image.shape == (256, 256, 3) and item.nuclei.n_nuclei > 10
    assert classes_from_type_map(item.nuclei.instances, seg) == item.nuclei.classes


@needs_shared
def test_real_nucls_pair_with_points():
    item = read_annotated(SHARED_DATA / "nucls_sample" / "test" / "images" / "test_2.png", scheme="nucls")
    assert item.points is not None and len(item.points) == 54
    assert item.nuclei.scheme.name == "nucls" and item.nuclei.n_nuclei == 46
    assert sum(1 for c in item.nuclei.classes.values() if c) >= 40


def test_can_read_claims_only_dataset_arrays(tmp_path):
    from napari_histogen.core.io.dispatch import can_read

    np.save(tmp_path / "stack.npy", np.zeros((2, 2)))
    assert not can_read(tmp_path / "stack.npy")
    np.save(tmp_path / "images.npy", np.zeros((1, 2, 2, 3)))
    assert can_read(tmp_path / "stack.npy") and can_read(tmp_path / "images.npy")
    assert can_read(tmp_path / "x.mat") and can_read(tmp_path / "x.ome.tif") and not can_read(tmp_path / "x.png")
