"""Nuclei instances from distance maps: the target generative models learn, and the way back.

A generated semantic label map merges touching nuclei into one blob; models that generate
masks (mask generation, co-synthesis) therefore also generate a **distance map** that tells
nuclei apart, as the co-synthesis paper does (``../shared/papers/003_*``): each nucleus
carries the Euclidean distance of its pixels to its own border, divided by that nucleus's
largest distance, so every nucleus peaks at 1 near its centre and falls towards 0 at its
border, whatever its size, and background is 0.

Instances come back by a **marker-controlled watershed** of the negated distance map inside
the foreground:

1. foreground = distance above ``foreground_threshold`` (or a foreground mask given, e.g.
   the non-background pixels of a generated semantic map);
2. markers = given (e.g. one per point of a point layout: :func:`point_markers`), or the
   connected components of distance above ``marker_threshold`` (the cores of nuclei: a
   normalised distance separates two touching nuclei at any threshold above the value on
   their shared border, which is 0 in the target);
3. watershed of ``-distance`` from the markers, restricted to the foreground;
4. foreground components that hold no marker become nuclei of their own (so no painted
   pixel is lost); objects smaller than ``min_size`` pixels are dropped.

Classes per nucleus come from a semantic map by majority vote (:func:`classes_from_semantic`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import HistogenInputError

__all__ = ["distance_map", "instances_from_distance", "point_markers", "classes_from_semantic"]


def _check_2d(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise HistogenInputError(f"The {name} must be a 2-D (H, W) array, not shape {arr.shape}.")
    if arr.size == 0:
        raise HistogenInputError(f"The {name} is empty (shape {arr.shape}).")
    return arr


def distance_map(instances) -> np.ndarray:
    """Per-nucleus normalised distance map of an instance map.

    Parameters
    ----------
    instances : ndarray (H, W) int
        Instance map, 0 = background.

    Returns
    -------
    ndarray (H, W) float32
        0 on background; inside each nucleus the Euclidean distance to the nearest pixel
        outside that nucleus (touching nuclei count as outside), divided by the nucleus's
        maximum, so each nucleus peaks at exactly 1.
    """
    inst = _check_2d(instances, "instance map")
    if not np.issubdtype(inst.dtype, np.integer):
        raise HistogenInputError(f"The instance map must hold whole numbers, not {inst.dtype}.")
    if (inst < 0).any():
        raise HistogenInputError("Instance ids must be non-negative.")
    # padding makes the image border count as outside, and every grown box fit
    padded = np.pad(inst, 1, constant_values=0)
    out = np.zeros(padded.shape, np.float32)
    for label, box in enumerate(ndi.find_objects(padded), start=1):
        if box is None:
            continue
        grown = tuple(slice(s.start - 1, s.stop + 1) for s in box)
        inside = padded[grown] == label
        dist = ndi.distance_transform_edt(inside)
        peak = float(dist.max())
        if peak > 0:
            view = out[grown]
            view[inside] = dist[inside] / peak
    out = out[1:-1, 1:-1]
    return out


def point_markers(points_rc, shape) -> np.ndarray:
    """Watershed markers from points: marker ``k + 1`` at the pixel of point ``k``.

    Parameters
    ----------
    points_rc : array-like (N, 2)
        Point coordinates, row then column (napari order), in pixels.
    shape : tuple of int
        ``(H, W)`` of the marker image.

    Returns
    -------
    ndarray (H, W) int32
        Points outside the image are left out (their label is never used); two points on one
        pixel keep the later one.
    """
    height, width = (int(v) for v in shape)
    if height <= 0 or width <= 0:
        raise HistogenInputError(f"Marker image shape must be positive, not {tuple(shape)}.")
    pts = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2) if len(points_rc) else np.zeros((0, 2))
    if not np.all(np.isfinite(pts)):
        raise HistogenInputError("Point coordinates must be finite numbers.")
    rc = np.floor(pts).astype(np.int64)
    markers = np.zeros((height, width), np.int32)
    keep = (rc[:, 0] >= 0) & (rc[:, 0] < height) & (rc[:, 1] >= 0) & (rc[:, 1] < width)
    idx = np.nonzero(keep)[0]
    markers[rc[idx, 0], rc[idx, 1]] = (idx + 1).astype(np.int32)
    return markers


def instances_from_distance(distance, *, foreground=None, markers=None, foreground_threshold: float = 0.05,
                            marker_threshold: float = 0.5, min_size: int = 4) -> np.ndarray:
    """Nuclei instances from a (generated) normalised distance map by marker-controlled watershed.

    Parameters
    ----------
    distance : ndarray (H, W) float
        Distance map as :func:`distance_map` makes it (values outside [0, 1] are clipped).
    foreground : ndarray (H, W) bool, optional
        Nucleus pixels; default ``distance > foreground_threshold``.
    markers : ndarray (H, W) int, optional
        One label per nucleus seed (e.g. :func:`point_markers`); default: connected
        components of ``distance > marker_threshold`` inside the foreground. Markers outside
        the foreground are ignored.
    foreground_threshold, marker_threshold : float
        See above.
    min_size : int
        Nuclei (and foreground components) under this many pixels are dropped.

    Returns
    -------
    ndarray (H, W) int32
        0 = background, nuclei 1..N (consecutive). With ``markers`` given, nucleus ids are
        not the marker labels; use the marker image to relate them.
    """
    from skimage.segmentation import watershed

    dist = np.clip(np.asarray(_check_2d(distance, "distance map"), dtype=np.float64), 0.0, 1.0)
    if foreground is None:
        fg = dist > float(foreground_threshold)
    else:
        fg = _check_2d(foreground, "foreground mask").astype(bool)
        if fg.shape != dist.shape:
            raise HistogenInputError(f"Foreground mask shape {fg.shape} differs from the distance map's {dist.shape}.")
    if markers is None:
        seeds = ndi.label(fg & (dist > float(marker_threshold)))[0]
    else:
        seeds = _check_2d(markers, "marker image").astype(np.int64)
        if seeds.shape != dist.shape:
            raise HistogenInputError(f"Marker image shape {seeds.shape} differs from the distance map's {dist.shape}.")
        seeds = np.where(fg, seeds, 0)
    if not fg.any():
        return np.zeros(dist.shape, np.int32)
    labels = watershed(-dist, markers=seeds, mask=fg) if seeds.any() else np.zeros(dist.shape, np.int64)
    # foreground pieces the watershed did not reach (no marker in them) are nuclei of their own
    orphans, n_orphans = ndi.label(fg & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + int(labels.max()), labels)
    if min_size > 1 and labels.any():
        sizes = np.bincount(labels.ravel())
        small = sizes < int(min_size)
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    out = np.zeros(dist.shape, np.int32)
    if len(ids):
        out = ((np.searchsorted(ids, labels) + 1) * (labels != 0)).astype(np.int32)
    return out


def classes_from_semantic(instances, semantic, *, default: int = 0) -> dict[int, int]:
    """``{nucleus id: class id}``: each nucleus takes the most frequent non-zero class under it.

    Parameters
    ----------
    instances : ndarray (H, W) int
        Instance map.
    semantic : ndarray (H, W) int
        Class id per pixel, 0 = background/none.
    default : int
        Class of a nucleus lying wholly on class 0 pixels.
    """
    inst = _check_2d(instances, "instance map")
    sem = _check_2d(semantic, "semantic map")
    if inst.shape != sem.shape:
        raise HistogenInputError(f"Instance map shape {inst.shape} differs from the semantic map's {sem.shape}.")
    sem = sem.astype(np.int64)
    if (sem < 0).any():
        raise HistogenInputError("Semantic class ids must be non-negative.")
    out: dict[int, int] = {}
    flat_inst = inst.ravel()
    flat_sem = sem.ravel()
    nuclei = flat_inst != 0
    if not nuclei.any():
        return out
    n_classes = int(flat_sem.max()) + 1
    pairs = np.bincount(flat_inst[nuclei].astype(np.int64) * n_classes + flat_sem[nuclei],
                        minlength=(int(flat_inst.max()) + 1) * n_classes).reshape(-1, n_classes)
    for nid in np.unique(flat_inst[nuclei]):
        votes = pairs[int(nid), 1:]
        out[int(nid)] = int(votes.argmax()) + 1 if votes.any() else int(default)
    return out
