"""Grow a nuclei mask from a typed point layout (one procedural nucleus per centroid).

A pathologist who clicks nucleus centres and classes gets a mask that the synthesis
models can condition on: each point becomes an ellipse whose size and shape are typical
for its class (:attr:`ClassInfo.area_um2`, :attr:`ClassInfo.aspect`), jittered so the
mask does not look stamped, and kept apart from its neighbours so that the instances
survive a round trip through a type map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtr

from .errors import HistogenInputError
from .images import MAX_IMAGE_PIXELS
from .masks import NucleiMask
from .provenance import make_provenance
from .schemes import UNCLASSIFIED, get_scheme

__all__ = ["grow_nuclei_from_points", "point_pixels"]

# Label of a pixel no nucleus has claimed yet; its normalised distance is +inf.
_FREE = 0
# Normalised distance given to each point's own centre pixel: below every real distance
# (>= 0), so no neighbour can take it and the gap step never removes it.
_PINNED = -1.0


def point_pixels(points) -> np.ndarray:
    """The pixel ``(row, col)`` each point falls in, as int64.

    Pixel ``(r, c)`` covers ``[r - 0.5, r + 0.5) x [c - 0.5, c + 0.5)`` (napari's
    convention: integer coordinates are pixel centres), so a point is rounded half up.
    ``np.round`` is not used because it rounds halves to even, which would send points
    at ``x.5`` to different sides depending on ``x``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.floor(pts + 0.5).astype(np.int64)


def grow_nuclei_from_points(
    points,
    point_classes,
    shape,
    scheme,
    *,
    mpp: float = 0.25,
    seed: int = 0,
    size_scale: float = 1.0,
    size_jitter: float = 0.2,
    aspect_jitter: float = 0.15,
    gap: int = 1,
    outside: str = "error",
) -> NucleiMask:
    """Grow one elliptic nucleus at each point, sized and shaped by its class.

    Parameters
    ----------
    points : array_like, shape (N, 2)
        ``(row, col)`` nucleus centres in pixels (napari's order). ``N`` may be 0.
    point_classes : array_like of int, shape (N,), or None
        Class id of each point in ``scheme``; 0 (or None for all points) means
        unclassified. Unclassified points get the median area and aspect ratio of the
        scheme's classes, so they look like an average nucleus of that tissue.
    shape : tuple of int
        ``(H, W)`` of the image the mask must cover (``(H, W, 3)`` is accepted too).
    scheme : ClassScheme or str
        A nuclei scheme; its classes' ``area_um2`` and ``aspect`` set the sizes.
    mpp : float, optional
        Microns per pixel of the image; converts ``area_um2`` to pixels. Default 0.25
        (40x scans, the scale of CoNSeP, PanNuke and NuCLS that the typical areas were
        measured at).
    seed : int, optional
        Whole number >= 0: seed of the one random generator behind every size, aspect and orientation:
        the same points, classes, parameters and seed always give the same mask.
        Default 0.
    size_scale : float, optional
        Factor on every class area (1 = the scheme's typical areas). Use it to match
        nuclei that look larger or smaller than typical. Default 1.
    size_jitter : float, optional
        Standard deviation of the natural log of the area (log-normal jitter, median =
        the class area). 0.2 gives about +-20 % between nuclei of one class, the spread
        of nuclear areas within a cell type in CoNSeP; 0 gives identical sizes.
    aspect_jitter : float, optional
        Standard deviation of the natural log of the aspect ratio (long / short axis).
        0.15 keeps round classes round-ish and spindles clearly elongated. An aspect
        below 1 after jitter is inverted (the ellipse turns by 90°), so it never goes
        below 1.
    gap : int, optional
        Width in pixels of the background line kept between different nuclei (in the
        8-neighbourhood, so they do not touch even diagonally). With 1 (default) a type
        map made from the mask splits back into the same nuclei
        (:func:`~napari_histogen.core.masks.nuclei_from_type_map`, either
        connectivity). 0 lets neighbours touch. At most 5.
    outside : {'error', 'drop'}, optional
        What to do with points whose pixel is outside the image: ``'error'`` (default)
        refuses them with :class:`HistogenInputError`; ``'drop'`` grows no nucleus for
        them and lists them in ``metadata['points_without_nucleus']``.

    Returns
    -------
    NucleiMask
        Instance map ``HxW int32`` in which point ``i`` (0-based, in input order) is
        nucleus ``i + 1`` with class ``point_classes[i]``, ``mpp`` as given. Points with
        no nucleus leave their id unused (ids are not renumbered, so id ``i + 1``
        always means point ``i``). ``metadata`` holds ``'points_without_nucleus'``
        (sorted 0-based indices) and ``'provenance'``.

    Raises
    ------
    HistogenInputError
        Points not shaped ``(N, 2)`` or not finite, classes of another length, a shape
        that is not 2-D or too large, non-positive ``mpp`` or ``size_scale``, negative
        jitter, a gap outside 0..5, or (with ``outside='error'``) points outside the image.
    UnknownClassError
        Point classes that ``scheme`` does not define.

    Notes
    -----
    - **Contested pixels.** Where ellipses overlap, a pixel goes to the nucleus for
      which it is *relatively* nearest: the smallest normalised elliptic distance
      ``(u / a)² + (v / b)²`` (``a``, ``b`` the semi-axes). A large nucleus therefore
      does not swallow a small neighbour, and the boundary runs where both are equally
      "full". Ties go to the earlier point.
    - **Every point keeps its own pixel.** The pixel a point falls in always belongs to
      that point's nucleus, even when a neighbour is nearer in normalised terms, so each
      point inside the image has a nucleus of at least 1 px containing its centroid
      pixel. Exceptions, listed in ``metadata['points_without_nucleus']``: a point in
      the same pixel as an earlier point (that earlier point's nucleus stands for both)
      and dropped points outside the image.
    - **The gap** removes, for every pair of pixels of different nuclei closer than
      ``gap + 1`` px (Chebyshev distance), the one that lies relatively farther from
      its own centre. Centre pixels are never removed, so two points whose pixels are
      themselves closer than ``gap + 1`` px keep touching there; click such points at
      least ``gap + 1`` px apart.
    - Each nucleus is then reduced to the 4-connected piece that holds its centre pixel
      (overlaps of unequal ellipses can otherwise leave detached slivers), so every
      nucleus is one connected region.
    - The per-nucleus parameters are drawn as one ``(N, 3)`` block of standard normals,
      row ``i`` for point ``i``: adding points at the end of the list does not change
      the size, shape or orientation of the earlier nuclei (only which pixels they win).
    - Work is done in each ellipse's bounding box, plus a few whole-image passes for the
      gap; 2000 points on a 1024x1024 image take well under a second.
    """
    scheme = get_scheme(scheme)
    if scheme.kind != "nuclei":
        raise HistogenInputError(
            f"Scheme '{scheme.name}' is a {scheme.kind} scheme; growing nuclei needs a nuclei scheme."
        )
    pts = _check_points(points)
    n = len(pts)
    cls = _check_classes(point_classes, n, scheme)
    height, width = _check_shape(shape)
    _check_parameters(mpp, size_scale, size_jitter, aspect_jitter, gap, outside, seed)
    gap = int(gap)

    pix = point_pixels(pts)
    inside = _inside(pts, pix, height, width, outside)
    semi_major, semi_minor, theta = _draw_ellipses(cls, scheme, mpp, seed, size_scale, size_jitter, aspect_jitter)
    grow, without = _one_point_per_pixel(pix, inside)
    owner = _paint_nuclei(pts, pix, grow, (height, width), semi_major, semi_minor, theta, gap)

    classes = {int(i) + 1: int(cls[i]) for i in np.flatnonzero(grow)}
    provenance = make_provenance(
        "grow nuclei from points",
        n_points=n,
        shape=[height, width],
        scheme=scheme.name,
        mpp=float(mpp),
        seed=int(seed),
        size_scale=float(size_scale),
        size_jitter=float(size_jitter),
        aspect_jitter=float(aspect_jitter),
        gap=gap,
        outside=outside,
    )
    return NucleiMask.create(
        owner,
        classes,
        scheme,
        mpp=mpp,
        metadata={"points_without_nucleus": sorted(without), "provenance": provenance},
        name="grown nuclei mask",
    )


# -- the steps of grow_nuclei_from_points ---------------------------------------------


def _inside(pts: np.ndarray, pix: np.ndarray, height: int, width: int, outside: str) -> np.ndarray:
    """Which points fall in the image; points outside are an error unless ``outside='drop'``."""
    n = len(pts)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < height) & (pix[:, 1] >= 0) & (pix[:, 1] < width)
    if not inside.all() and outside == "error":
        bad = np.flatnonzero(~inside)
        first = ", ".join(f"#{i} ({pts[i, 0]:g}, {pts[i, 1]:g})" for i in bad[:3])
        raise HistogenInputError(
            f"{bad.size} of {n} points lie outside the {width}x{height} px image (row, col: {first}"
            f"{', ...' if bad.size > 3 else ''}). Delete or move them, check that the points belong to "
            "this image (same scale, (row, col) order), or pass outside='drop' to skip them."
        )
    return inside


def _draw_ellipses(cls: np.ndarray, scheme, mpp, seed, size_scale, size_jitter, aspect_jitter):
    """``(semi_major, semi_minor, theta)`` in pixels and radians, one per point.

    One generator, one block of draws, row i for point i (see the Notes of
    :func:`grow_nuclei_from_points`).
    """
    n = len(cls)
    rng = np.random.default_rng(seed)
    normals = rng.standard_normal((n, 3)) if n else np.zeros((0, 3))
    area_um2, aspect = _class_geometry(cls, scheme)
    area_px = area_um2 / float(mpp) ** 2 * float(size_scale) * np.exp(float(size_jitter) * normals[:, 0])
    aspect = aspect * np.exp(float(aspect_jitter) * normals[:, 1])
    aspect = np.maximum(aspect, 1.0 / aspect)  # an aspect < 1 is the same ellipse turned by 90°
    theta = np.pi * ndtr(normals[:, 2])  # uniform orientation in [0, pi) from the third normal
    semi_major = np.sqrt(area_px * aspect / np.pi)
    semi_minor = np.sqrt(area_px / (aspect * np.pi))
    return semi_major, semi_minor, theta


def _one_point_per_pixel(pix: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, set[int]]:
    """``(grow, without)``: the points that grow a nucleus, and those that do not.

    Points sharing a pixel with an earlier point do not: the earlier one stands for both.
    """
    without = set(np.flatnonzero(~inside).tolist())
    grow = np.zeros(len(pix), bool)
    seen: set[tuple[int, int]] = set()
    for i in np.flatnonzero(inside):
        key = (int(pix[i, 0]), int(pix[i, 1]))
        if key in seen:
            without.add(int(i))
        else:
            seen.add(key)
            grow[i] = True
    return grow, without


def _paint_nuclei(pts, pix, grow, shape, semi_major, semi_minor, theta, gap: int) -> np.ndarray:
    """The instance map: ellipses by relative distance, centre pixels pinned, gaps cut, one piece each."""
    height, width = shape
    owner = np.full((height, width), _FREE, np.int32)
    best = np.full((height, width), np.inf, np.float32)
    boxes = {}
    for i in np.flatnonzero(grow):
        box = _paint_ellipse(owner, best, i + 1, pts[i], semi_major[i], semi_minor[i], theta[i])
        boxes[i] = box
    # Centre pixels last, so they override whatever neighbour won them by distance.
    centre_r, centre_c = pix[grow, 0], pix[grow, 1]
    owner[centre_r, centre_c] = np.flatnonzero(grow).astype(np.int32) + 1
    best[centre_r, centre_c] = _PINNED

    if gap > 0:
        _cut_gaps(owner, best, gap)
    for i, box in boxes.items():
        _keep_centre_piece(owner, i + 1, box, pix[i])
    return owner


# -- validation ----------------------------------------------------------------------


def _check_points(points) -> np.ndarray:
    try:
        pts = np.array(points, dtype=np.float64)  # np.array copies: the caller's array is never touched
    except (TypeError, ValueError):
        raise HistogenInputError("The points are not numeric; give an (N, 2) array of (row, col) pixels.") from None
    if pts.size == 0:
        return np.zeros((0, 2), np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise HistogenInputError(
            f"The points have shape {pts.shape}; expected (N, 2) (row, col) pixel coordinates. "
            "For 3-D points, keep the last two columns of the plane the image shows."
        )
    if not np.all(np.isfinite(pts)):
        raise HistogenInputError("Some points have NaN or infinite coordinates; delete them first.")
    return pts


def _check_classes(point_classes, n: int, scheme) -> np.ndarray:
    if point_classes is None:
        return np.full(n, UNCLASSIFIED, np.int64)
    arr = np.asarray(point_classes)
    if arr.size == 0 and n == 0:
        return np.zeros(0, np.int64)
    arr = arr.reshape(-1)
    if arr.size != n:
        raise HistogenInputError(
            f"There are {n} points but {arr.size} point classes; give one class id per point (0 = unclassified)."
        )
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise HistogenInputError(
            f"Point classes must be integer class ids of scheme '{scheme.name}', not {arr.dtype} values."
        )
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr))
    ):
        raise HistogenInputError("Point classes must be whole numbers (class ids); some are fractional or NaN.")
    out = arr.astype(np.int64)
    scheme.check_ids(np.unique(out), what="point layout")
    return out


def _check_shape(shape) -> tuple[int, int]:
    try:
        dims = tuple(int(s) for s in tuple(shape)[:2])
    except (TypeError, ValueError):
        raise HistogenInputError(f"The image shape {shape!r} is not a pair of integers (height, width).") from None
    if len(dims) != 2 or min(dims) <= 0:
        raise HistogenInputError(f"The image shape {shape!r} is not a positive (height, width).")
    if dims[0] * dims[1] > MAX_IMAGE_PIXELS:
        raise HistogenInputError(
            f"The image is {dims[1]}x{dims[0]} px, above the limit of {MAX_IMAGE_PIXELS} pixels; crop or tile it first."
        )
    return dims


def _check_parameters(mpp, size_scale, size_jitter, aspect_jitter, gap, outside, seed) -> None:
    checks = [
        (mpp, "Microns per pixel (mpp)", lambda v: v > 0, "must be positive (0.25 for 40x, 0.5 for 20x scans)"),
        (size_scale, "The size scale", lambda v: v > 0, "must be positive (1 = typical sizes)"),
        (size_jitter, "The size jitter", lambda v: v >= 0, "must be 0 or more"),
        (aspect_jitter, "The aspect jitter", lambda v: v >= 0, "must be 0 or more"),
    ]
    for value, what, ok, rule in checks:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise HistogenInputError(f"{what} {value!r} is not a number; it {rule}.") from None
        if not np.isfinite(v) or not ok(v):
            raise HistogenInputError(f"{what} is {value!r}; it {rule}.")
    if isinstance(gap, bool) or not float(gap).is_integer() or not 0 <= int(gap) <= 5:
        raise HistogenInputError(f"The gap is {gap!r}; give a whole number of pixels from 0 to 5 (1 is usual).")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise HistogenInputError(f"The seed is {seed!r}; give a whole number >= 0 (the same seed gives the same mask).")
    if outside not in ("error", "drop"):
        raise HistogenInputError(f"outside={outside!r}; use 'error' (refuse such points) or 'drop' (skip them).")


# -- geometry --------------------------------------------------------------------------


def _class_geometry(cls: np.ndarray, scheme) -> tuple[np.ndarray, np.ndarray]:
    """Typical area (µm²) and aspect of each point's class; scheme medians for class 0."""
    areas = {c.id: c.area_um2 for c in scheme.classes}
    aspects = {c.id: c.aspect for c in scheme.classes}
    # The median class is a better guess for an unknown nucleus than a fixed number,
    # because schemes of large-nucleus tissues shift all their classes together.
    areas[UNCLASSIFIED] = float(np.median(list(areas.values())))
    aspects[UNCLASSIFIED] = float(np.median(list(aspects.values())))
    area = np.array([areas[int(c)] for c in cls], np.float64)
    aspect = np.array([aspects[int(c)] for c in cls], np.float64)
    # A user scheme may carry an area of 0 or an aspect below 1; a tiny positive area
    # and a round shape keep the ellipse defined (the centre-pixel rule still gives such
    # a nucleus its one pixel).
    return np.maximum(area, 1e-6), np.maximum(aspect, 1.0)


def _paint_ellipse(owner, best, label, centre, a, b, theta):
    """Claim the pixels of one ellipse that it is relatively nearest to; return its box."""
    height, width = owner.shape
    cy, cx = float(centre[0]), float(centre[1])
    cos, sin = np.cos(theta), np.sin(theta)
    # Half extents of the rotated ellipse along rows and columns (theta from the column axis).
    half_r = np.sqrt((a * sin) ** 2 + (b * cos) ** 2)
    half_c = np.sqrt((a * cos) ** 2 + (b * sin) ** 2)
    r0, r1 = max(int(np.floor(cy - half_r)), 0), min(int(np.ceil(cy + half_r)) + 1, height)
    c0, c1 = max(int(np.floor(cx - half_c)), 0), min(int(np.ceil(cx + half_c)) + 1, width)
    if r0 >= r1 or c0 >= c1:
        return (r0, r1, c0, c1)
    dy = np.arange(r0, r1, dtype=np.float64)[:, None] - cy
    dx = np.arange(c0, c1, dtype=np.float64)[None, :] - cx
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    dist = ((u / a) ** 2 + (v / b) ** 2).astype(np.float32)
    sub_best = best[r0:r1, c0:c1]
    win = (dist <= 1.0) & (dist < sub_best)  # strict: ties stay with the earlier point
    sub_best[win] = dist[win]
    owner[r0:r1, c0:c1][win] = label
    return (r0, r1, c0, c1)


def _cut_gaps(owner, best, gap: int) -> None:
    """Remove, of each pair of differently owned pixels within ``gap`` px, the outer one.

    "Outer" = larger normalised distance to its own centre (ties: the lower label), so
    the line is cut on the side where the nucleus is thinner relative to its size.
    Removing one pixel of every such pair is enough: whatever remains has no pair left.
    Pinned centre pixels are never removed.
    """
    height, width = owner.shape
    remove = np.zeros(owner.shape, bool)
    # Pad so that every shift reads background (label 0) beyond the image edge.
    pad_owner = np.pad(owner, gap, constant_values=_FREE)
    pad_best = np.pad(best, gap, constant_values=np.inf)
    labelled = owner != _FREE
    for dr in range(-gap, gap + 1):
        for dc in range(-gap, gap + 1):
            if dr == 0 and dc == 0:
                continue
            other = pad_owner[gap + dr : gap + dr + height, gap + dc : gap + dc + width]
            other_best = pad_best[gap + dr : gap + dr + height, gap + dc : gap + dc + width]
            conflict = labelled & (other != _FREE) & (other != owner)
            outer = (best > other_best) | ((best == other_best) & (owner < other))
            remove |= conflict & outer
    remove &= best != _PINNED
    owner[remove] = _FREE
    best[remove] = np.inf


def _keep_centre_piece(owner, label: int, box, centre_pixel) -> None:
    """Drop the pixels of ``label`` that are not 4-connected to its centre pixel."""
    r0, r1, c0, c1 = box
    # The box of the ellipse may not hold the centre pixel's neighbourhood when the
    # ellipse is tiny; widen it to include the centre pixel.
    r, c = int(centre_pixel[0]), int(centre_pixel[1])
    r0, r1, c0, c1 = min(r0, r), max(r1, r + 1), min(c0, c), max(c1, c + 1)
    sub = owner[r0:r1, c0:c1]
    mine = sub == label
    pieces, count = ndi.label(mine)
    if count <= 1:
        return
    keep = pieces[r - r0, c - c0]
    sub[mine & (pieces != keep)] = _FREE
