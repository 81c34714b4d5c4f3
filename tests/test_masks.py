import numpy as np
import pytest

from napari_histogen.core.errors import HistogenInputError, UnknownClassError
from napari_histogen.core.masks import (
    NucleiMask,
    as_label_image,
    check_same_shape,
    class_counts,
    classes_from_type_map,
    merge_nuclei,
    next_free_id,
    nuclei_from_type_map,
    nuclei_to_points,
    relabel_sequential,
    sync_classes,
    type_map_from_nuclei,
)


@pytest.fixture
def mask():
    inst = np.zeros((10, 12), np.int32)
    inst[1:4, 1:4] = 5      # epithelial
    inst[1:4, 4:7] = 9      # touching 5, inflammatory
    inst[6:9, 8:11] = 2     # spindle
    return inst, {5: 3, 9: 2, 2: 4}


def test_label_image_validation():
    assert as_label_image(np.array([[True, False]])).dtype == np.int32
    assert as_label_image(np.array([[1.0, 2.0]])).tolist() == [[1, 2]]
    with pytest.raises(HistogenInputError, match="non-integer"):
        as_label_image(np.array([[1.5, 2.0]]))
    with pytest.raises(HistogenInputError, match="negative"):
        as_label_image(np.array([[-1, 2]]))
    with pytest.raises(HistogenInputError, match="2-D"):
        as_label_image(np.zeros((2, 2, 2), int))
    with pytest.raises(HistogenInputError, match="int32"):
        as_label_image(np.array([[2**40]], np.int64))
    with pytest.raises(HistogenInputError, match="must match"):
        check_same_shape((10, 10, 3), (10, 11))


def test_create_syncs_and_checks(mask):
    inst, classes = mask
    m = NucleiMask.create(inst, {**classes, 77: 1}, "consep", mpp=0.25)
    assert m.classes == classes  # 77 not in the map: dropped
    assert m.n_nuclei == 3 and m.shape == (10, 12)
    m2 = NucleiMask.create(inst, {5: 3}, "consep")
    assert m2.classes == {2: 0, 5: 3, 9: 0}  # missing -> unclassified
    with pytest.raises(UnknownClassError):
        NucleiMask.create(inst, {5: 8}, "consep")
    with pytest.raises(HistogenInputError, match="tissue scheme"):
        NucleiMask.create(inst, {}, "tissue")
    with pytest.raises(HistogenInputError, match="positive"):
        NucleiMask.create(inst, classes, "consep", mpp=0)


def test_inputs_are_not_modified(mask):
    inst, classes = mask
    before, before_cls = inst.copy(), dict(classes)
    NucleiMask.create(inst, classes, "consep")
    type_map_from_nuclei(inst, classes)
    merge_nuclei(inst, classes, [5, 9])
    relabel_sequential(inst, classes)
    nuclei_to_points(inst, classes)
    np.testing.assert_array_equal(inst, before)
    assert classes == before_cls


def test_type_map_round_trip_keeps_classes_and_counts(mask):
    inst, classes = mask
    tmap = type_map_from_nuclei(inst, classes)
    assert tmap[2, 2] == 3 and tmap[2, 5] == 2 and tmap[7, 9] == 4 and tmap[0, 0] == 0
    inst2, classes2 = nuclei_from_type_map(tmap)
    # touching nuclei of different classes stay apart; each nucleus keeps its class
    assert sorted(classes2.values()) == sorted(classes.values())
    for old_id, cls in classes.items():
        new_ids = np.unique(inst2[inst == old_id])
        assert len(new_ids) == 1 and classes2[int(new_ids[0])] == cls


def test_type_map_same_class_touching_merge_documented():
    tmap = np.zeros((5, 5), int)
    tmap[1:3, 0:2] = 2
    tmap[1:3, 2:4] = 2
    inst, classes = nuclei_from_type_map(tmap)
    assert len(classes) == 1
    tmap[1:3, 2] = 0  # a background gap keeps them apart
    assert len(nuclei_from_type_map(tmap)[1]) == 2
    diag = np.array([[2, 0], [0, 2]])
    assert len(nuclei_from_type_map(diag, connectivity=1)[1]) == 2
    assert len(nuclei_from_type_map(diag, connectivity=2)[1]) == 1


def test_majority_class_per_instance():
    inst = np.array([[1, 1, 1, 2, 2], [1, 1, 0, 3, 3]])
    tmap = np.array([[3, 3, 2, 0, 0], [3, 0, 0, 4, 4]])
    assert classes_from_type_map(inst, tmap) == {1: 3, 2: 0, 3: 4}


def test_points_ids_counts_merge(mask):
    inst, classes = mask
    pts, pcls, ids = nuclei_to_points(inst, classes)
    assert ids.tolist() == [2, 5, 9]
    np.testing.assert_allclose(pts[1], [2.0, 2.0])
    assert pcls.tolist() == [4, 3, 2]
    assert next_free_id(inst) == 10
    assert next_free_id(inst, {42: 1}) == 43
    assert class_counts(classes, "consep") == {"other": 0, "inflammatory": 1, "epithelial": 1, "spindle": 1}
    merged, mcls = merge_nuclei(inst, classes, [5, 9])
    assert set(np.unique(merged)) == {0, 2, 5} and mcls == {5: 3, 2: 4}
    seq, scls = relabel_sequential(inst, classes)
    assert set(np.unique(seq)) == {0, 1, 2, 3} and scls == {1: 4, 2: 3, 3: 2}
    erased = inst.copy()
    erased[inst == 9] = 0
    erased[0, 0] = 11
    assert sync_classes(erased, classes, default_class=1) == {2: 4, 5: 3, 11: 1}


def test_empty_mask():
    empty = np.zeros((4, 4), np.int32)
    m = NucleiMask.create(empty, {}, "lizard")
    assert m.n_nuclei == 0 and m.type_map().sum() == 0
    assert nuclei_to_points(empty, {})[0].shape == (0, 2)
    assert nuclei_from_type_map(empty)[1] == {}
