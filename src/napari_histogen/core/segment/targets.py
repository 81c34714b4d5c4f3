"""Training targets of the segmenter from an instance mask: foreground, type and HoVer maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["hover_maps", "type_map", "make_targets"]


def hover_maps(instances: np.ndarray) -> np.ndarray:
    """HoVer-Net's horizontal and vertical maps of an instance mask.

    For each nucleus, the column (horizontal) and row (vertical) offsets of its pixels from
    its centre of mass, each side of the centre scaled to ``[-1, 0]`` and ``[0, 1]``
    separately (as HoVer-Net's ``gen_instance_hv_map``); 0 on the background.

    Parameters
    ----------
    instances : ndarray (H, W) int
        0 = background.

    Returns
    -------
    ndarray (2, H, W) float32
        Channel 0 horizontal, channel 1 vertical.
    """
    inst = np.asarray(instances)
    out = np.zeros((2,) + inst.shape, np.float32)
    for index, box in enumerate(ndi.find_objects(inst), start=1):
        if box is None:
            continue
        region = inst[box] == index
        rows, cols = np.nonzero(region)
        offsets = (cols - cols.mean(), rows - rows.mean())
        for channel, offset in enumerate(offsets):
            scaled = offset.astype(np.float32)
            neg, pos = scaled < 0, scaled > 0
            if neg.any():
                scaled[neg] /= -scaled[neg].min()
            if pos.any():
                scaled[pos] /= scaled[pos].max()
            view = out[channel][box]
            view[rows, cols] = scaled
    return out


def type_map(instances: np.ndarray, classes: dict, class_ids) -> np.ndarray:
    """Per-pixel type index: 0 background, ``k + 1`` for a nucleus of ``class_ids[k]``.

    A nucleus whose class is not in ``class_ids`` counts as the first type (it is still a
    nucleus for the foreground and the HoVer maps).
    """
    inst = np.asarray(instances)
    lookup = {int(c): k + 1 for k, c in enumerate(class_ids)}
    top = int(inst.max()) if inst.size else 0
    table = np.zeros(top + 1, np.int64)
    for nid in range(1, top + 1):
        table[nid] = lookup.get(int(classes.get(nid, class_ids[0])), 1)
    return table[inst]


def make_targets(instances: np.ndarray, classes: dict, class_ids) -> dict:
    """``{'foreground' (H, W) float32, 'types' (H, W) int64, 'hover' (2, H, W) float32}``.

    ``instances`` is relabelled to consecutive ids first (input untouched), so ids may be sparse.
    """
    inst = np.asarray(instances)
    ids = np.unique(inst)
    ids = ids[ids != 0]
    consecutive = np.zeros(inst.shape, np.int32)
    remapped = {}
    if len(ids):
        consecutive = (np.searchsorted(ids, inst) + 1).astype(np.int32) * (inst != 0)
        remapped = {k + 1: classes.get(int(i), class_ids[0]) for k, i in enumerate(ids)}
    return {"foreground": (consecutive > 0).astype(np.float32),
            "types": type_map(consecutive, remapped, class_ids),
            "hover": hover_maps(consecutive)}
