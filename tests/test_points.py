"""Growing nuclei from typed points: determinism, one nucleus per point, gaps, sizes."""


import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_histogen.core.errors import HistogenInputError, UnknownClassError
from napari_histogen.core.masks import nuclei_from_type_map, type_map_from_nuclei
from napari_histogen.core.points import grow_nuclei_from_points, point_pixels
from napari_histogen.core.schemes import get_scheme


def _random_layout(n, size, seed=1, classes=(1, 2, 3, 4)):
    """``n`` random points in distinct pixels of a ``size`` x ``size`` image."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(size * size, n, replace=False)
    points = np.stack(np.divmod(flat, size), 1) + rng.uniform(-0.45, 0.45, (n, 2))
    point_classes = rng.choice(classes, n)
    return points, point_classes


def _grid(n_side, spacing, offset=30.0):
    r, c = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], 1) * spacing + offset


def _touching_pairs(instances):
    """Number of 8-adjacent pixel pairs that belong to two different nuclei."""
    padded = np.pad(instances, 1)
    h, w = instances.shape
    count = 0
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        other = padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        count += int(np.sum((instances > 0) & (other > 0) & (instances != other)))
    return count


# -- determinism ----------------------------------------------------------------------------


def test_same_seed_same_mask_different_seed_different_mask():
    points, classes = _random_layout(200, 256)
    a = grow_nuclei_from_points(points, classes, (256, 256), "consep", seed=7)
    b = grow_nuclei_from_points(points, classes, (256, 256), "consep", seed=7)
    c = grow_nuclei_from_points(points, classes, (256, 256), "consep", seed=8)
    assert np.array_equal(a.instances, b.instances)
    assert a.classes == b.classes
    assert not np.array_equal(a.instances, c.instances)


def test_appending_points_keeps_earlier_shapes():
    points = _grid(3, 60)
    classes = np.array([3, 4, 2, 1, 3, 4, 2, 1, 3])
    a = grow_nuclei_from_points(points, classes, (256, 256), "consep", seed=5)
    more = np.vstack([points, [[220.0, 220.0]]])
    b = grow_nuclei_from_points(more, np.append(classes, 2), (256, 256), "consep", seed=5)
    for i in range(1, 10):
        assert np.array_equal(a.instances == i, b.instances == i)


# -- one nucleus per point --------------------------------------------------------------------


def test_one_nucleus_per_point_containing_its_centroid():
    points, classes = _random_layout(300, 256, seed=3)
    mask = grow_nuclei_from_points(points, classes, (256, 256), "consep", seed=0)
    pix = point_pixels(points)
    # the layout has no two points in one pixel, so every point has its nucleus
    assert len({tuple(p) for p in pix}) == len(points)
    assert mask.metadata["points_without_nucleus"] == []
    assert mask.n_nuclei == len(points)
    assert np.array_equal(mask.instances[pix[:, 0], pix[:, 1]], np.arange(1, len(points) + 1))
    assert mask.classes == {i + 1: int(c) for i, c in enumerate(classes)}
    assert mask.instances.dtype == np.int32 and mask.shape == (256, 256)
    assert mask.mpp == 0.25 and mask.scheme.name == "consep"
    # every nucleus is one 4-connected piece
    for i in range(1, len(points) + 1):
        assert ndi.label(mask.instances == i)[1] == 1


def test_very_close_points_each_keep_their_pixel():
    # a small nucleus right next to a large one: by distance the large one would win
    points = np.array([[50.0, 50.0], [50.0, 53.0], [50.0, 52.0]])
    classes = np.array([3, 2, 2])
    mask = grow_nuclei_from_points(points, classes, (100, 100), "consep", seed=0)
    assert mask.instances[50, 50] == 1 and mask.instances[50, 53] == 2 and mask.instances[50, 52] == 3
    assert mask.n_nuclei == 3


def test_points_in_the_same_pixel_share_one_nucleus():
    points = np.array([[20.2, 20.1], [19.8, 19.9], [60.0, 60.0]])
    mask = grow_nuclei_from_points(points, [2, 3, 2], (100, 100), "consep")
    assert mask.metadata["points_without_nucleus"] == [1]
    assert sorted(mask.classes) == [1, 3]
    assert mask.instances[20, 20] == 1 and mask.instances[60, 60] == 3


def test_tiny_nuclei_still_get_their_centre_pixel():
    mask = grow_nuclei_from_points([[10.4, 10.4], [12.4, 11.6]], [2, 2], (30, 30), "consep",
                                   mpp=5.0, size_jitter=0)
    assert mask.instances[10, 10] == 1 and mask.instances[12, 12] == 2


# -- separation ---------------------------------------------------------------------------------


def test_touching_nuclei_are_separated_by_a_gap():
    # a dense cluster of one class: ellipses overlap everywhere
    points = _grid(8, 7.0, offset=20.0)
    classes = np.full(len(points), 3)
    mask = grow_nuclei_from_points(points, classes, (100, 100), "consep", seed=2)
    assert mask.n_nuclei == len(points)
    assert _touching_pairs(mask.instances) == 0
    for connectivity in (1, 2):
        inst, cls = nuclei_from_type_map(type_map_from_nuclei(mask.instances, mask.classes),
                                         connectivity=connectivity)
        assert len(cls) == len(points)


def test_without_gap_touching_nuclei_merge_in_a_type_map():
    points = _grid(8, 7.0, offset=20.0)
    classes = np.full(len(points), 3)
    mask = grow_nuclei_from_points(points, classes, (100, 100), "consep", seed=2, gap=0)
    assert _touching_pairs(mask.instances) > 0
    inst, cls = nuclei_from_type_map(type_map_from_nuclei(mask.instances, mask.classes))
    assert len(cls) < len(points)


def test_wider_gap():
    points = _grid(6, 9.0, offset=20.0)
    mask = grow_nuclei_from_points(points, np.full(len(points), 3), (100, 100), "consep", seed=2, gap=2)
    # no two different nuclei within Chebyshev distance 2
    grown = ndi.grey_dilation(mask.instances, size=(5, 5))
    other = ndi.grey_erosion(np.where(mask.instances > 0, mask.instances, 10**6), size=(5, 5))
    inside = mask.instances > 0
    assert np.all(grown[inside] == mask.instances[inside])
    assert np.all(other[inside] == mask.instances[inside])


# -- sizes and shapes ------------------------------------------------------------------------------


def _mean_area(class_id, *, mpp=0.25, size_scale=1.0, n_side=6, spacing=60.0):
    points = _grid(n_side, spacing)
    shape = (int(points.max()) + 40,) * 2
    mask = grow_nuclei_from_points(points, np.full(len(points), class_id), shape, "consep",
                                   mpp=mpp, size_scale=size_scale, seed=11)
    areas = np.bincount(mask.instances.ravel())[1:]
    return areas.mean(), mask


def test_class_typical_sizes():
    scheme = get_scheme("consep")
    mpp = 0.25
    jitter_mean = np.exp(0.2**2 / 2)  # mean of the log-normal factor with sigma 0.2
    large, _ = _mean_area(3, mpp=mpp)  # epithelial, 22 µm²
    small, _ = _mean_area(2, mpp=mpp)  # inflammatory, 11 µm²
    assert large > 1.6 * small
    for area, cls in ((large, 3), (small, 2)):
        expected = scheme[cls].area_um2 / mpp**2 * jitter_mean
        assert abs(area - expected) / expected < 0.15, (cls, area, expected)


def test_size_scale_and_mpp_scale_areas():
    base, _ = _mean_area(3)
    doubled, _ = _mean_area(3, size_scale=2.0)
    half_res, _ = _mean_area(3, mpp=0.5)
    assert 1.8 < doubled / base < 2.2
    assert 0.2 < half_res / base < 0.3


def test_spindles_are_elongated_and_round_classes_round():
    from skimage.measure import regionprops

    def median_aspect(class_id):
        _, mask = _mean_area(class_id)
        props = regionprops(mask.instances)
        return np.median([p.axis_major_length / max(p.axis_minor_length, 1e-9) for p in props])

    assert median_aspect(4) > 2.0  # spindle, aspect 2.5
    assert median_aspect(2) < 1.4  # inflammatory, aspect 1.1


def test_unclassified_points_get_the_median_class_size():
    scheme = get_scheme("consep")
    area, mask = _mean_area(0)
    expected = np.median([c.area_um2 for c in scheme.classes]) / 0.25**2
    assert abs(area - expected) / expected < 0.15
    assert set(mask.classes.values()) == {0}


def test_no_jitter_gives_equal_sizes():
    points = _grid(4, 60.0)
    mask = grow_nuclei_from_points(points, np.full(16, 3), (260, 260), "consep", size_jitter=0, aspect_jitter=0)
    areas = np.bincount(mask.instances.ravel())[1:]
    assert areas.max() - areas.min() <= 0.1 * areas.mean()


# -- bad and edge-case input ----------------------------------------------------------------


def test_points_outside_are_refused_by_default():
    points = np.array([[10.0, 10.0], [-3.0, 5.0], [5.0, 120.0]])
    with pytest.raises(HistogenInputError, match="outside"):
        grow_nuclei_from_points(points, [1, 1, 1], (100, 100), "consep")


def test_points_outside_can_be_dropped_and_are_reported():
    points = np.array([[10.0, 10.0], [-3.0, 5.0], [50.0, 50.0], [5.0, 120.0]])
    mask = grow_nuclei_from_points(points, [1, 2, 3, 4], (100, 100), "consep", outside="drop")
    assert mask.metadata["points_without_nucleus"] == [1, 3]
    assert mask.classes == {1: 1, 3: 3}  # ids keep meaning "point index + 1"
    assert mask.instances[10, 10] == 1 and mask.instances[50, 50] == 3


def test_points_on_the_pixel_edge():
    # pixel 99 covers [98.5, 99.5): 99.4 is inside, 99.5 is not
    mask = grow_nuclei_from_points([[99.4, 0.0]], [1], (100, 100), "consep")
    assert mask.instances[99, 0] == 1
    with pytest.raises(HistogenInputError):
        grow_nuclei_from_points([[99.5, 0.0]], [1], (100, 100), "consep")


def test_empty_points_give_an_empty_mask():
    for points, classes in ((np.zeros((0, 2)), np.zeros(0, int)), ([], []), ([], None)):
        mask = grow_nuclei_from_points(points, classes, (64, 80), "consep")
        assert mask.shape == (64, 80) and mask.n_nuclei == 0 and not mask.instances.any()
        assert mask.instances.dtype == np.int32


def test_unknown_classes_are_refused():
    with pytest.raises(UnknownClassError):
        grow_nuclei_from_points([[5.0, 5.0], [20.0, 20.0]], [1, 9], (50, 50), "consep")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"points": [[1.0, 2.0, 3.0]]},
        {"points": [[np.nan, 2.0]]},
        {"point_classes": [1, 2]},
        {"point_classes": [1.5]},
        {"shape": (0, 10)},
        {"shape": "big"},
        {"scheme": "tissue"},
        {"mpp": 0},
        {"size_scale": -1},
        {"size_jitter": -0.1},
        {"gap": 1.5},
        {"gap": 9},
        {"outside": "clip"},
        {"seed": None},
        {"seed": 1.5},
    ],
)
def test_bad_input_is_refused_with_a_message(kwargs):
    args = {"points": [[5.0, 5.0]], "point_classes": [1], "shape": (50, 50), "scheme": "consep"}
    args.update(kwargs)
    with pytest.raises(HistogenInputError):
        grow_nuclei_from_points(args.pop("points"), args.pop("point_classes"), args.pop("shape"),
                                args.pop("scheme"), **args)


def test_inputs_are_not_modified():
    points, classes = _random_layout(50, 128)
    points_before, classes_before = points.copy(), classes.copy()
    points.setflags(write=False)  # would raise if the function wrote into it
    grow_nuclei_from_points(points, classes, (128, 128), "consep", outside="drop")
    assert np.array_equal(points, points_before) and np.array_equal(classes, classes_before)


def test_provenance_records_the_parameters():
    mask = grow_nuclei_from_points([[5.0, 5.0]], [1], (50, 50), "consep", seed=4, size_scale=1.5)
    params = mask.metadata["provenance"]["parameters"]
    assert params["seed"] == 4 and params["size_scale"] == 1.5 and params["scheme"] == "consep"


def test_2000_points_on_1024_pixels():
    """Dense layouts keep (nearly) every point (their speed: benchmarks/annotation_io.py)."""
    points, classes = _random_layout(2000, 1024, seed=1)
    mask = grow_nuclei_from_points(points, classes, (1024, 1024), "consep")
    assert mask.n_nuclei >= 1990
