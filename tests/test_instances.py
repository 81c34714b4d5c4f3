"""Distance maps and the marker-controlled watershed that turns them back into nuclei."""

import numpy as np
import pytest

from napari_histogen.core.errors import HistogenInputError
from napari_histogen.core.instances import classes_from_semantic, distance_map, instances_from_distance, point_markers


def _touching_nuclei():
    inst = np.zeros((24, 32), np.int32)
    inst[2:9, 2:9] = 1
    inst[2:9, 9:16] = 2  # touches nucleus 1
    inst[12:20, 18:30] = 3
    inst[0:3, 27:32] = 4  # on the image border
    return inst


def test_distance_map_peaks_at_one_per_nucleus_and_is_zero_outside():
    inst = _touching_nuclei()
    dist = distance_map(inst)
    assert dist.dtype == np.float32
    assert np.all(dist[inst == 0] == 0)
    for k in range(1, 5):
        assert dist[inst == k].max() == pytest.approx(1.0)
        assert dist[inst == k].min() > 0
    # the shared border of nuclei 1 and 2 is low on both sides
    assert dist[5, 8] < 0.5 and dist[5, 9] < 0.5
    # the input is not changed
    assert np.array_equal(inst, _touching_nuclei())


def test_watershed_separates_touching_nuclei_from_their_distance_map():
    inst = _touching_nuclei()
    found = instances_from_distance(distance_map(inst), foreground=inst > 0, min_size=1)
    assert found.max() == 4
    # each true nucleus maps onto exactly one found nucleus, covering it wholly
    for k in range(1, 5):
        ids = np.unique(found[inst == k])
        assert len(ids) == 1 and ids[0] != 0
        assert np.array_equal(found == ids[0], inst == k)


def test_point_markers_give_one_instance_per_point():
    inst = _touching_nuclei()
    points = [[5, 5], [5, 12], [16, 24], [1, 29], [100, 100]]
    markers = point_markers(points, inst.shape)
    assert markers.max() == 4 and (markers > 0).sum() == 4
    found = instances_from_distance(distance_map(inst), foreground=inst > 0, markers=markers, min_size=1)
    assert found.max() == 4
    for r, c in points[:4]:
        assert found[r, c] != 0
    assert len({found[r, c] for r, c in points[:4]}) == 4


def test_foreground_without_a_marker_is_kept_as_its_own_nucleus():
    inst = _touching_nuclei()
    markers = point_markers([[5, 5]], inst.shape)
    found = instances_from_distance(distance_map(inst), foreground=inst > 0, markers=markers, min_size=1)
    assert np.array_equal(found > 0, inst > 0)
    assert found.max() == 3  # 1+2 joined by the watershed from one marker, 3 and 4 orphans


def test_small_objects_dropped_and_empty_map():
    dist = np.zeros((10, 10), np.float32)
    assert instances_from_distance(dist).max() == 0
    dist[4, 4] = 1.0
    assert instances_from_distance(dist, min_size=2).max() == 0
    assert instances_from_distance(dist, min_size=1).max() == 1


def test_classes_by_majority_vote():
    inst = _touching_nuclei()
    sem = np.zeros_like(inst)
    sem[inst == 1] = 2
    sem[3, 3] = 1  # one dissenting pixel
    sem[inst == 2] = 3
    assert classes_from_semantic(inst, sem, default=0) == {1: 2, 2: 3, 3: 0, 4: 0}


@pytest.mark.parametrize("call", [
    lambda: distance_map(np.zeros((3, 3, 3), np.int32)),
    lambda: distance_map(np.zeros((4, 4), np.float32)),
    lambda: instances_from_distance(np.zeros((4, 4)), foreground=np.zeros((5, 4), bool)),
    lambda: point_markers([[np.nan, 1]], (4, 4)),
    lambda: classes_from_semantic(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32)),
])
def test_bad_input_is_one_clear_error(call):
    with pytest.raises(HistogenInputError):
        call()
