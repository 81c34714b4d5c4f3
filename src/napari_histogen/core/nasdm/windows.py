"""NASDM training data, step 3 and 5: tissue, the window grid, the split by source image.

Pure numpy: :func:`tissue_mask` / :func:`tissue_fraction` (the optical-density rule),
:func:`window_fractions` (a summed-area table), :func:`patch_grid` (overlapping windows that
cover an image) and :func:`split_sources` (train/validation by source id, never by patch).
"""

from __future__ import annotations

import numpy as np

from ..errors import HistogenInputError

__all__ = ["TISSUE_MAX_VALUE", "tissue_mask", "tissue_fraction", "window_fractions", "patch_grid", "split_sources"]

#: A pixel is tissue when its darkest channel is at most this value, i.e. its optical
#: density ``-log((v + 1) / 256)`` is >= 0.15 in some channel (the stain module's threshold).
TISSUE_MAX_VALUE = 219


# -- tissue and windows ------------------------------------------------------------------------


def _check_rgb(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise HistogenInputError(f"Expected an RGB image (H, W, 3), not an array of shape {arr.shape}.")
    return arr


def tissue_mask(image) -> np.ndarray:
    """Boolean map of tissue pixels: darkest channel <= :data:`TISSUE_MAX_VALUE` (219).

    That is an optical density of at least 0.15 in some channel: stained tissue,
    nuclei, and dark debris count; white glass and the bright background of a scan do
    not. ``image`` is RGB uint8 (floats are taken as 0..255).
    """
    return _check_rgb(image).min(axis=-1) <= TISSUE_MAX_VALUE


def tissue_fraction(image) -> float:
    """Fraction of the image's pixels that are tissue (see :func:`tissue_mask`)."""
    return float(tissue_mask(image).mean())


def window_fractions(mask, windows, size: int) -> np.ndarray:
    """Fraction of true pixels of ``mask`` in each ``size``-px window ``(row, col)``.

    Uses a summed-area table: one pass over the mask for any number of windows.
    """
    m = np.asarray(mask, dtype=bool)
    table = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(m, axis=0), axis=1, out=table[1:, 1:])
    if not len(windows):
        return np.zeros(0)
    rc = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    r0, c0, r1, c1 = rc[:, 0], rc[:, 1], rc[:, 0] + size, rc[:, 1] + size
    total = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return total / float(size * size)


def _check_window(size, overlap) -> tuple[int, float]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise HistogenInputError(f"The patch size must be a positive whole number of pixels, not {size!r}.")
    try:
        overlap = float(overlap)
    except (TypeError, ValueError):
        overlap = float("nan")
    if not 0.0 <= overlap < 1.0:
        raise HistogenInputError(f"The patch overlap must be a fraction from 0 up to (not including) 1, not {overlap}.")
    return int(size), overlap


def patch_grid(shape, size: int = 128, overlap: float = 0.5) -> list[tuple[int, int]]:
    """Top-left corners of the windows that tile an image.

    Parameters
    ----------
    shape : tuple
        ``(H, W, ...)`` of the image.
    size : int
        Window side in pixels.
    overlap : float
        Fraction of a window shared with the next one, in ``[0, 1)``; the stride is
        ``round(size * (1 - overlap))`` (at least 1).

    Returns
    -------
    list of (row, col)
        Row-major. Along each axis the windows start at 0, step by the stride, and a
        last window is shifted back to end exactly at the border when the stride does
        not land there, so every pixel is covered. An image smaller than ``size`` along
        an axis gives no windows (it is not padded: padding would teach the model
        blank borders).
    """
    size, overlap = _check_window(size, overlap)
    if len(shape) < 2:
        raise HistogenInputError(f"An image shape needs two axes, not {tuple(shape)}.")
    stride = max(1, int(np.floor(size * (1.0 - overlap) + 0.5)))

    def starts(length: int) -> list[int]:
        if length < size:
            return []
        out = list(range(0, length - size + 1, stride))
        if out[-1] != length - size:
            out.append(length - size)
        return out

    return [(r, c) for r in starts(int(shape[0])) for c in starts(int(shape[1]))]


def split_sources(source_ids, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split source ids into training and validation ids.

    Parameters
    ----------
    source_ids : iterable of str
        Ids of the sources (repeats are fine: the unique ids are split).
    val_fraction : float
        Fraction of the *sources* held out, in ``[0, 1)``; rounded, and at least one
        source on each side when there are two or more sources and the fraction is
        positive. A single source goes to training.
    seed : int
        Seed of the shuffle; the result depends only on the set of ids and the seed.

    Returns
    -------
    train_ids, val_ids : list of str
        Sorted, disjoint.
    """
    try:
        val_fraction = float(val_fraction)
    except (TypeError, ValueError):
        val_fraction = float("nan")
    if not 0.0 <= val_fraction < 1.0:
        raise HistogenInputError(f"The validation fraction must be from 0 up to (not including) 1, not {val_fraction}.")
    ids = sorted({str(s) for s in source_ids})
    n = len(ids)
    n_val = int(np.floor(n * val_fraction + 0.5))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    order = np.random.default_rng(int(seed)).permutation(n)
    val = sorted(ids[i] for i in order[:n_val])
    val_set = set(val)
    return [s for s in ids if s not in val_set], val
