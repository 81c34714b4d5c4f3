"""Point layouts and type prompts as the co-synthesis model sees them; targets and instances.

- :func:`point_map`: one pixel per nucleus holding its class index (1..K; 0 = no point);
- :func:`prompt_vector`: multi-hot vector of the nucleus types present;
- :func:`centroids`: the point layout of an instance map (one point per nucleus, at its centroid);
- :func:`training_targets`: semantic label and normalised distance map of an instance map;
- :func:`decode_instances`: nuclei instances from a generated label + distance map by
  marker-controlled watershed (:func:`~napari_histogen.core.instances.instances_from_distance`)
  with one marker per input point (:func:`~napari_histogen.core.instances.point_markers`), inside
  the generated label's foreground; each nucleus takes the class of its point, and nuclei the
  watershed found without a point (foreground pieces no point reached) take the majority class
  of the generated label under them.
"""

from __future__ import annotations

import numpy as np

from ..errors import HistogenInputError
from ..instances import classes_from_semantic, distance_map, instances_from_distance, point_markers

__all__ = ["point_map", "prompt_vector", "centroids", "training_targets", "decode_instances", "class_index", "pixel_of"]


def pixel_of(points_rc) -> np.ndarray:
    """Pixel ``(row, col)`` of each point: pixel centres lie at whole coordinates, as in napari."""
    return np.floor(np.asarray(points_rc, dtype=np.float64).reshape(-1, 2) + 0.5).astype(np.int64)


def class_index(point_classes, class_ids) -> np.ndarray:
    """Class ids -> indices 1..K into ``class_ids`` (raises on ids the model does not know)."""
    ids = [int(c) for c in class_ids]
    lookup = {c: i + 1 for i, c in enumerate(ids)}
    cls = np.asarray(point_classes, dtype=np.int64).reshape(-1)
    unknown = sorted({int(c) for c in cls if int(c) not in lookup})
    if unknown:
        raise HistogenInputError(f"Point classes {unknown} are not classes of this model ({ids}); give every point "
                                 "one of the model's classes.")
    return np.array([lookup[int(c)] for c in cls], dtype=np.int64)


def point_map(points_rc, point_classes, shape, class_ids) -> np.ndarray:
    """``(H, W)`` int64 map: class index (1..K) at each point's pixel, 0 elsewhere; points outside are left out."""
    height, width = (int(v) for v in shape)
    pts = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    idx = class_index(point_classes, class_ids)
    if len(idx) != len(pts):
        raise HistogenInputError(f"{len(pts)} points but {len(idx)} point classes; give one class per point.")
    rc = pixel_of(pts)
    keep = (rc[:, 0] >= 0) & (rc[:, 0] < height) & (rc[:, 1] >= 0) & (rc[:, 1] < width)
    out = np.zeros((height, width), np.int64)
    out[rc[keep, 0], rc[keep, 1]] = idx[keep]
    return out


def prompt_vector(present_classes, class_ids) -> np.ndarray:
    """Multi-hot ``(K,)`` float32 of the class ids in ``present_classes``."""
    out = np.zeros(len(class_ids), np.float32)
    idx = class_index(sorted({int(c) for c in present_classes}), class_ids)
    out[idx - 1] = 1.0
    return out


def centroids(instances, classes: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(points (N, 2) row/col, classes (N,))``: the centroid of each nucleus (0-class nuclei are left out)."""
    inst = np.asarray(instances)
    ids = np.unique(inst)
    ids = ids[ids != 0]
    ids = np.array([i for i in ids if int(classes.get(int(i), 0)) != 0], dtype=np.int64)
    if not len(ids):
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    rows, cols = np.indices(inst.shape)
    n = int(inst.max()) + 1
    flat = inst.ravel().astype(np.int64)
    count = np.bincount(flat, minlength=n)
    r = np.bincount(flat, weights=rows.ravel(), minlength=n)[ids] / count[ids]
    c = np.bincount(flat, weights=cols.ravel(), minlength=n)[ids] / count[ids]
    return np.stack([r, c], axis=1), np.array([int(classes[int(i)]) for i in ids], np.int64)


def training_targets(instances, classes: dict, class_ids) -> tuple[np.ndarray, np.ndarray]:
    """``(label (H, W) int64 0..K, distance (H, W) float32 in [0, 1])`` of an instance map."""
    inst = np.asarray(instances)
    lut = np.zeros(int(inst.max()) + 1, np.int64)
    lookup = {int(c): i + 1 for i, c in enumerate(class_ids)}
    for nid, cid in classes.items():
        if 0 < int(nid) < len(lut):
            lut[int(nid)] = lookup.get(int(cid), 0)
    label = lut[inst]
    return label, distance_map(inst)


def decode_instances(label, distance, points_rc, point_classes, class_ids, *, min_size: int = 4
                     ) -> tuple[np.ndarray, dict[int, int]]:
    """Instances and ``{nucleus id: class id}`` from a generated label and distance map (module docstring)."""
    label = np.asarray(label)
    dist = np.asarray(distance, dtype=np.float32)
    # point_markers floors; + 0.5 gives the pixel whose centre is nearest (napari's convention)
    markers = point_markers(np.asarray(points_rc, dtype=np.float64).reshape(-1, 2) + 0.5, label.shape)
    inst = instances_from_distance(dist, foreground=label > 0, markers=markers, min_size=min_size)
    cls = np.asarray(point_classes, dtype=np.int64).reshape(-1)
    ids = [int(c) for c in class_ids]
    sem_ids = np.zeros(label.shape, np.int64)
    nz = label > 0
    sem_ids[nz] = np.asarray(ids, np.int64)[label[nz] - 1]
    table = classes_from_semantic(inst, sem_ids, default=ids[0])
    # nuclei holding a point take the point's class (the user's word beats the model's)
    hit = markers > 0
    for nid, k in zip(inst[hit], markers[hit]):
        if nid:
            table[int(nid)] = int(cls[int(k) - 1])
    return inst, table
