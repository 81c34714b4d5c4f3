"""A learned mask-consistency check: segment images with a trained segmenter, score against their masks.

The papers' check (NASDM, co-synthesis): a segmenter trained on real data only, applied to
synthetic patches, scored against the masks the patches were made from. The same numbers on
real validation patches (against their annotations) are the reference: synthetic patches
that follow their masks score about as well as real ones.
"""

from __future__ import annotations

import numpy as np

from .metrics import score_set

__all__ = ["learned_consistency"]


def learned_consistency(model, images, masks, *, class_names=None) -> dict:
    """Dice, AJI, PQ and per-type recall of ``model``'s nuclei against the conditioning masks.

    Parameters
    ----------
    model : NucleiUNet
        A trained segmenter (:func:`~napari_histogen.core.segment.model.load_segmenter`).
    images : sequence of ndarray (H, W, 3) uint8
        At the segmenter's scale (``model.config.mpp``).
    masks : sequence of (instances, {id: class id}) or NucleiMask
        The mask each image was made from (or its annotation).
    class_names : sequence of str, optional
        Names of ``model.config.class_ids`` for the per-type keys.

    Returns
    -------
    dict
        :func:`~napari_histogen.core.segment.metrics.score_set`'s scores (``recall`` per type:
        the fraction of the mask's nuclei of that type found with IoU > 0.5 *and* given that type).
    """
    from .train import segment_batch

    truths = []
    for mask in masks:
        if hasattr(mask, "instances"):
            truths.append((np.asarray(mask.instances), dict(mask.classes)))
        else:
            inst, classes = mask
            truths.append((np.asarray(inst), dict(classes)))
    predictions = segment_batch(model, list(images))
    return score_set(truths, predictions, model.config.class_ids, class_names)
