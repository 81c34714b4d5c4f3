"""The NASDM condition: one-hot nucleus types plus the instance-edge map.

For a model whose class scheme has ``K`` classes the condition has ``K + 2`` channels:

- channel 0: background (no nucleus),
- channel ``1 + k``: nuclei of the scheme's ``k``-th class (classes in ascending id order),
- channel ``K + 1``: instance edges: a pixel is an edge when any 4-neighbour has a
  different instance id (both sides of a boundary, as SDM/NASDM build it), so two touching
  nuclei of the same class stay two nuclei for the model.

The *null* condition of classifier-free guidance is the all-zero tensor.
Pure numpy: the dataset, the engine and the tests share it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import HistogenInputError, UnknownClassError
from ..schemes import UNCLASSIFIED

__all__ = ["instance_edges", "condition_channels", "make_condition", "type_map_from_condition"]


def instance_edges(instances: np.ndarray) -> np.ndarray:
    """Boolean map of pixels whose 4-neighbourhood holds another instance id.

    Parameters
    ----------
    instances : ndarray (H, W) int
        Instance map, 0 = background.

    Returns
    -------
    edges : ndarray (H, W) bool
    """
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise HistogenInputError(f"An instance map must be 2-D, not of shape {inst.shape}.")
    edges = np.zeros(inst.shape, dtype=bool)
    dv = inst[1:, :] != inst[:-1, :]
    dh = inst[:, 1:] != inst[:, :-1]
    edges[1:, :] |= dv
    edges[:-1, :] |= dv
    edges[:, 1:] |= dh
    edges[:, :-1] |= dh
    return edges


def condition_channels(class_ids: Sequence[int]) -> int:
    """Number of condition channels for a model with these class ids (``K + 2``)."""
    return len(class_ids) + 2


def make_condition(instances: np.ndarray, classes: Mapping[int, int], class_ids: Sequence[int],
                   *, dtype=np.float32) -> np.ndarray:
    """Build the ``(K + 2, H, W)`` condition array for one nuclei mask.

    Parameters
    ----------
    instances : ndarray (H, W) int
        Instance map, 0 = background.
    classes : mapping
        Instance id -> class id. Every instance in the map needs a class of ``class_ids``.
    class_ids : sequence of int
        The model's class ids, in channel order (ascending).
    dtype : numpy dtype
        Output dtype.

    Returns
    -------
    condition : ndarray (K + 2, H, W)

    Raises
    ------
    HistogenInputError
        If nuclei are unclassified.
    UnknownClassError
        If a nucleus has a class the model does not know.
    """
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise HistogenInputError(f"A nuclei mask must be 2-D, not of shape {inst.shape}.")
    class_ids = [int(c) for c in class_ids]
    channel_of = {cid: 1 + k for k, cid in enumerate(class_ids)}
    ids = np.unique(inst)
    ids = ids[ids != 0]
    lut_size = int(ids.max()) + 1 if ids.size else 1
    if ids.size and (ids.min() < 0 or lut_size > 50_000_000):
        raise HistogenInputError("Instance ids must be non-negative and below 50 million; relabel the mask.")
    lut = np.zeros(lut_size, dtype=np.int64)  # instance id -> channel (0 = background)
    unclassified, unknown = [], set()
    for i in ids.tolist():
        cid = int(classes.get(i, UNCLASSIFIED))
        if cid == UNCLASSIFIED:
            unclassified.append(i)
        elif cid not in channel_of:
            unknown.add(cid)
        else:
            lut[i] = channel_of[cid]
    if unknown:
        raise UnknownClassError(
            f"The mask has nuclei of class ids {sorted(unknown)}, which the model does not know "
            f"(its classes are {class_ids}); map them to the model's scheme first.")
    if unclassified:
        raise HistogenInputError(
            f"{len(unclassified)} nuclei have no class (e.g. id {unclassified[0]}); give every nucleus a "
            "class with the palette (or reclassify) before synthesis.")
    channel = lut[np.where(inst > 0, inst, 0)]
    k = len(class_ids)
    cond = np.zeros((k + 2,) + inst.shape, dtype=dtype)
    np.put_along_axis(cond[: k + 1], channel[None], 1, axis=0)
    cond[k + 1] = instance_edges(inst)
    return cond


def type_map_from_condition(condition: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Inverse of the one-hot part: the type map (class id per pixel) of a condition."""
    cond = np.asarray(condition)
    k = len(class_ids)
    lut = np.array([0] + [int(c) for c in class_ids], dtype=np.int32)
    return lut[np.argmax(cond[: k + 1], axis=0)]
