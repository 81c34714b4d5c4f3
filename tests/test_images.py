import numpy as np
import pytest

from napari_histogen.core.errors import HistogenInputError
from napari_histogen.core.images import to_rgb_uint8


def test_rgb_uint8_is_copied_unchanged():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out, img)
    out[0, 0] = 0
    assert not np.shares_memory(out, img)


def test_grey_rgba_16bit_float():
    grey = np.array([[0, 128], [255, 64]], np.uint8)
    assert to_rgb_uint8(grey)[0, 1].tolist() == [128, 128, 128]
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent -> white slide background
    assert to_rgb_uint8(rgba).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    u16 = np.full((2, 2, 3), 65535, np.uint16)
    u16[0, 0] = 0
    out = to_rgb_uint8(u16)
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    assert to_rgb_uint8(np.full((2, 2), 0.5))[0, 0, 0] == 128
    assert to_rgb_uint8(np.full((2, 2, 3), 200.0))[0, 0, 0] == 200


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 10, 10), np.uint8), "channel-first"),
        (np.zeros((6, 6, 5), np.uint8), "expected HxW"),
        (np.zeros((2, 3, 4, 3), np.uint8), "expected HxW"),
        (np.full((2, 2), -1.0), "negative"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.full((2, 2), 1000.0), "maximum"),
        (np.zeros((0, 3)), "empty"),
        (np.full((2, 2), 300, np.int32), "0..255"),
    ],
)
def test_bad_images_are_refused_clearly(bad, match):
    with pytest.raises(HistogenInputError, match=match):
        to_rgb_uint8(bad)
