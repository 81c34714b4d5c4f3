"""resample_to_mpp (core/nasdm/sources.py) keeps the numbers it had before it shared core.images.resize_image."""

import numpy as np
import pytest

from napari_histogen.core.io.annotated import AnnotatedImage
from napari_histogen.core.masks import NucleiMask
from napari_histogen.core.nasdm.sources import resample_to_mpp


def _item(shape, mpp=0.25, seed=0):
    rng = np.random.default_rng(seed)
    inst = rng.integers(0, 20, shape).astype(np.int32)
    nuclei = NucleiMask.create(inst, {i: 1 + i % 4 for i in range(1, 20)}, "consep", mpp=mpp)
    return AnnotatedImage(name="x", image=rng.integers(0, 256, (*shape, 3), dtype=np.uint8), nuclei=nuclei, mpp=mpp)


def _reference(image, size, shrink):
    """The formula resample_to_mpp used before: skimage's bilinear resize, anti-aliased when shrinking."""
    from skimage.transform import resize

    out = resize(image, (*size, 3), order=1, mode="reflect", anti_aliasing=shrink, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape, target", [((37, 53), 0.6), ((101, 77), 0.37), ((18, 200), 0.26), ((64, 64), 0.2)])
def test_non_integer_resampling_matches_the_bilinear_formula(shape, target):
    item = _item(shape)
    out = resample_to_mpp(item, target)
    assert np.array_equal(out.image, _reference(item.image, out.image.shape[:2], 0.25 / target < 1))
    assert out.nuclei.shape == out.image.shape[:2]


def test_a_size_that_rounds_to_its_own_still_gives_a_new_array():
    item = _item((10, 10))
    out = resample_to_mpp(item, 0.26)  # 10 * 0.25 / 0.26 = 9.6 -> 10 px
    assert out.image.shape == item.image.shape and out.image is not item.image
    assert np.array_equal(out.image, _reference(item.image, (10, 10), True))
