"""Crops and tiles of masks and images: one rectangle, or a grid of model-size tiles.

A *box* is ``(row0, col0, row1, col1)`` in pixels of the array, half-open like a slice
(``array[row0:row1, col0:col1]``). Every crop records where it came from (``crop_offset``:
``[row0, col0]``) so a result can be put back in place (napari ``translate``) or mapped back
to the full image. No function here modifies its inputs.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import HistogenInputError
from .masks import NucleiMask

__all__ = ["Box", "box_from_corners", "box_around", "tile_boxes", "crop_array", "crop_nuclei"]

Box = tuple[int, int, int, int]


def _check_shape(shape) -> tuple[int, int]:
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise HistogenInputError(f"Cannot crop an empty array (shape {tuple(shape)}).")
    return h, w


def box_from_corners(points, shape) -> Box:
    """The pixel box covering the rectangle through ``points``, clipped to ``shape``.

    Parameters
    ----------
    points : array_like (N, 2)
        ``(row, col)`` points in the array's pixel coordinates (a napari rectangle's four
        corners mapped to the layer's data coordinates, where pixel ``(r, c)`` is centred on
        ``(r, c)``). The box runs from the rounded low corner to the rounded high corner of
        the bounding box, so a rectangle drawn from 0 to 256 crops 256 pixels.
    shape : (int, int)
        ``(height, width)`` of the array to crop.

    Raises
    ------
    HistogenInputError
        A rectangle that covers no pixel of the array (drawn outside it).
    """
    h, w = _check_shape(shape)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, np.asarray(points).shape[-1])[:, -2:]
    if pts.size == 0 or not np.all(np.isfinite(pts)):
        raise HistogenInputError("The rectangle has no corners; draw one with the rectangle tool first.")
    (r_lo, c_lo), (r_hi, c_hi) = pts.min(axis=0), pts.max(axis=0)
    row0, col0 = max(0, math.ceil(r_lo - 0.5)), max(0, math.ceil(c_lo - 0.5))
    row1, col1 = min(h, math.floor(r_hi + 0.5)), min(w, math.floor(c_hi + 0.5))
    if row1 <= row0 or col1 <= col0:
        raise HistogenInputError(
            f"The rectangle (rows {r_lo:.0f}-{r_hi:.0f}, columns {c_lo:.0f}-{c_hi:.0f}) covers no pixel of the "
            f"{w}x{h} px mask; draw it over the mask."
        )
    return int(row0), int(col0), int(row1), int(col1)


def box_around(centre, size, shape) -> Box:
    """A ``size`` box centred on ``centre`` (row, col), moved inside ``shape`` and clipped to it.

    ``size`` is one int (a square) or ``(height, width)``. Where the array is smaller than the
    box, the box is the whole array along that side.
    """
    h, w = _check_shape(shape)
    sh, sw = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    if sh < 1 or sw < 1:
        raise HistogenInputError(f"A crop size must be positive, not {size}.")
    sh, sw = min(sh, h), min(sw, w)
    r, c = float(centre[0]), float(centre[1])
    if not (math.isfinite(r) and math.isfinite(c)):
        raise HistogenInputError(f"The crop centre {tuple(centre)} is not a point.")
    row0 = int(min(max(0, round(r - sh / 2)), h - sh))
    col0 = int(min(max(0, round(c - sw / 2)), w - sw))
    return row0, col0, row0 + sh, col0 + sw


def tile_boxes(shape, size) -> list[Box]:
    """Boxes of ``size`` (one int or ``(height, width)``) that tile an array of ``shape``.

    Tiles start every ``size`` pixels; where the last one would run past the edge it is moved
    back inside (overlapping its neighbour), so every tile has the full size and the tiles
    cover the array. A side shorter than the tile gives one tile of that side's length.
    Ordered row by row.
    """
    h, w = _check_shape(shape)
    sh, sw = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    if sh < 1 or sw < 1:
        raise HistogenInputError(f"A tile size must be positive, not {size}.")

    def starts(length: int, step: int) -> list[int]:
        if length <= step:
            return [0]
        out = list(range(0, length - step + 1, step))
        if out[-1] + step < length:
            out.append(length - step)
        return out

    th, tw = min(sh, h), min(sw, w)
    return [(r, c, r + th, c + tw) for r in starts(h, sh) for c in starts(w, sw)]


def _check_box(box, shape) -> Box:
    h, w = _check_shape(shape)
    try:
        row0, col0, row1, col1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise HistogenInputError(f"A crop box is (row0, col0, row1, col1), not {box!r}.") from None
    if not (0 <= row0 < row1 <= h and 0 <= col0 < col1 <= w):
        raise HistogenInputError(f"The crop box {(row0, col0, row1, col1)} is not inside the {w}x{h} px array.")
    return row0, col0, row1, col1


def crop_array(array, box) -> np.ndarray:
    """A copy of ``array[row0:row1, col0:col1]`` (any trailing channel axes kept)."""
    arr = np.asarray(array)
    if arr.ndim < 2:
        raise HistogenInputError(f"Cannot crop an array of shape {arr.shape}; it needs rows and columns.")
    row0, col0, row1, col1 = _check_box(box, arr.shape[:2])
    return np.array(arr[row0:row1, col0:col1], copy=True)


def crop_nuclei(nuclei: NucleiMask, box) -> NucleiMask:
    """The nuclei inside ``box``: cut nuclei keep their part, nuclei outside leave the class table.

    Returns a new mask at the same scale and scheme; ``metadata['crop_offset']`` is
    ``[row0, col0]`` added to any offset the mask already had (a crop of a crop still knows
    its place in the first image); a slide offset (``metadata['offset_xy']``, ``[x, y]``)
    moves with the crop.
    """
    if not isinstance(nuclei, NucleiMask):
        raise HistogenInputError(f"Expected a NucleiMask, not {type(nuclei).__name__}.")
    row0, col0, row1, col1 = _check_box(box, nuclei.shape)
    metadata = dict(nuclei.metadata)
    before = metadata.get("crop_offset") or [0, 0]
    metadata["crop_offset"] = [int(before[0]) + row0, int(before[1]) + col0]
    if metadata.get("offset_xy") is not None:  # cut from a whole-slide annotation: the slide position moves too
        x0, y0 = metadata["offset_xy"]
        metadata["offset_xy"] = [int(x0) + col0, int(y0) + row0]
    return NucleiMask.create(nuclei.instances[row0:row1, col0:col1], nuclei.classes, nuclei.scheme,
                             mpp=nuclei.mpp, metadata=metadata, name="cropped nuclei mask")
