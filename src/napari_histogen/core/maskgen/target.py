"""Nuclei masks <-> the tensor the mask-generation model learns, and the decoding back.

The target of one window of ``P x P`` px has ``K + 2`` channels, all in ``[-1, 1]``:

- channels ``0 .. K``: one-hot classes, channel 0 = background, channel ``1 + i`` = the
  scheme's ``class_ids[i]``, scaled ``2 x - 1``;
- channel ``K + 1``: the per-nucleus normalised distance map
  (:func:`napari_histogen.core.instances.distance_map`), scaled ``2 d - 1``; it is what
  separates touching nuclei, which a semantic map alone merges.

Decoding (:func:`decode_mask`): optionally resize the float channels (bilinear) to the
output scale, semantic map = argmax over the class channels, foreground = argmax not
background, instances = marker-controlled watershed of the distance channel inside the
foreground (:func:`~napari_histogen.core.instances.instances_from_distance`, markers =
distance above 0.5), class per nucleus = majority of the semantic map under it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import HistogenInputError
from ..instances import classes_from_semantic, distance_map, instances_from_distance
from ..masks import NucleiMask

__all__ = ["n_channels", "encode_mask", "type_vector", "decode_mask", "semantic_from_instances",
           "MARKER_THRESHOLD", "MIN_NUCLEUS_UM2", "SMOOTH_SIGMA_PX"]

#: distance above which a pixel belongs to a nucleus core (a watershed marker)
MARKER_THRESHOLD = 0.5
#: nuclei smaller than this (µm²) are dropped when decoding (2 px at 20x would be 1 µm²)
MIN_NUCLEUS_UM2 = 3.0
#: Gaussian smoothing (px at the model's scale) of the generated channels before decoding. Off:
#: on 8 validation patches (model at step 1000) sigma 1 or 1.5 px lowered the count and
#: touching distances a little but doubled or tripled the area and nearest-neighbour ones
#: (docs/mask_generation.md), so no smoothing by default
SMOOTH_SIGMA_PX = 0.0


def n_channels(class_ids: Sequence[int]) -> int:
    """Channels of the target for a scheme with these class ids: ``K + 1`` classes + distance."""
    return len(class_ids) + 2


def semantic_from_instances(instances: np.ndarray, classes: Mapping[int, int]) -> np.ndarray:
    """Class id per pixel (0 = background) of an instance map."""
    inst = np.asarray(instances)
    lut = np.zeros(int(inst.max()) + 1 if inst.size else 1, np.int64)
    for nid, cid in classes.items():
        if 0 < int(nid) < len(lut):
            lut[int(nid)] = int(cid)
    return lut[inst]


def encode_mask(instances, classes: Mapping[int, int], class_ids: Sequence[int]) -> np.ndarray:
    """The ``(K + 2, H, W)`` float32 target of an instance map (see the module docstring).

    Nuclei whose class is not in ``class_ids`` (e.g. unclassified) count as background.
    """
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise HistogenInputError(f"The instance map must be 2-D, not shape {inst.shape}.")
    sem = semantic_from_instances(inst, classes)
    index = np.zeros(sem.shape, np.int64)  # channel of each pixel, 0 = background
    for i, cid in enumerate(class_ids):
        index[sem == int(cid)] = i + 1
    kept = np.where(index > 0, inst, 0).astype(np.int32)
    out = np.empty((len(class_ids) + 2,) + inst.shape, np.float32)
    out[: len(class_ids) + 1] = np.eye(len(class_ids) + 1, dtype=np.float32)[index].transpose(2, 0, 1)
    out[-1] = distance_map(kept)
    return out * 2 - 1


def type_vector(classes: Mapping[int, int], class_ids: Sequence[int], instances=None) -> np.ndarray:
    """Multi-hot ``(K,)`` float32: 1 for each class of ``class_ids`` with a nucleus in ``instances``
    (all nuclei in ``classes`` when ``instances`` is None)."""
    present = set(int(v) for v in np.unique(instances)) if instances is not None else set(classes)
    kinds = {int(classes[n]) for n in present if n in classes}
    return np.array([1.0 if int(c) in kinds else 0.0 for c in class_ids], np.float32)


def decode_mask(channels, class_ids: Sequence[int], scheme, *, mpp: float, out_mpp: float | None = None,
                marker_threshold: float = MARKER_THRESHOLD, min_area_um2: float = MIN_NUCLEUS_UM2,
                smooth_sigma: float | None = None, metadata=None) -> NucleiMask:
    """A :class:`NucleiMask` from a generated ``(K + 2, H, W)`` array in [-1, 1].

    Parameters
    ----------
    channels : ndarray (K + 2, H, W)
        Model output (classes one-hot + distance, scaled to [-1, 1]).
    class_ids : sequence of int
        Class id of channel ``1 + i``.
    scheme : ClassScheme or str
        Scheme of ``class_ids``.
    mpp : float
        µm/px of ``channels``.
    out_mpp : float, optional
        µm/px of the mask returned: the channels are resized (bilinear) to that scale before
        the argmax and the watershed, so nuclei stay smooth at a finer scale.
    smooth_sigma : float, optional
        Gaussian smoothing of every channel, in px at ``mpp`` (None: :data:`SMOOTH_SIGMA_PX`;
        0: none).
    """
    from scipy import ndimage as ndi
    from skimage.transform import resize

    arr = np.asarray(channels, dtype=np.float32)
    k = len(class_ids)
    if arr.ndim != 3 or arr.shape[0] != k + 2:
        raise HistogenInputError(f"Expected a ({k + 2}, H, W) array for {k} classes, not shape {arr.shape}.")
    sigma = SMOOTH_SIGMA_PX if smooth_sigma is None else float(smooth_sigma)
    if sigma > 0:
        arr = ndi.gaussian_filter(arr, sigma=(0, sigma, sigma), mode="nearest")
    out_mpp = float(mpp if out_mpp is None else out_mpp)
    if out_mpp <= 0:
        raise HistogenInputError(f"Microns per pixel must be positive, not {out_mpp}.")
    if abs(out_mpp / float(mpp) - 1) > 1e-6:
        shape = tuple(max(1, int(round(s * float(mpp) / out_mpp))) for s in arr.shape[1:])
        arr = resize(arr.transpose(1, 2, 0), shape, order=1, preserve_range=True,
                     anti_aliasing=out_mpp > float(mpp)).transpose(2, 0, 1).astype(np.float32)
    index = arr[: k + 1].argmax(axis=0)
    lut = np.array([0] + [int(c) for c in class_ids], np.int64)
    semantic = lut[index]
    distance = (arr[k + 1] + 1) / 2
    min_size = max(1, int(round(min_area_um2 / out_mpp ** 2)))
    instances = instances_from_distance(distance, foreground=index > 0, marker_threshold=marker_threshold,
                                        min_size=min_size)
    classes = classes_from_semantic(instances, semantic, default=int(class_ids[0]))
    return NucleiMask.create(instances, classes, scheme, mpp=out_mpp, metadata=dict(metadata or {}))
