"""How well a segmentation agrees with a mask: pixel Dice, AJI, recovered nuclei (HoVer-Net conventions)."""

from __future__ import annotations

import numpy as np

__all__ = ["pair_overlaps", "pixel_dice", "aggregated_jaccard", "recovered_fraction", "consistency_scores"]


def pair_overlaps(true_inst: np.ndarray, pred_inst: np.ndarray):
    """Areas and pairwise intersections of two instance maps.

    Returns
    -------
    true_ids, pred_ids : ndarray
        Non-zero ids.
    true_area, pred_area : ndarray
    inter : ndarray (len(true_ids), len(pred_ids))
        Intersection areas in pixels.
    """
    t = np.asarray(true_inst).ravel().astype(np.int64)
    p = np.asarray(pred_inst).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError("instance maps of different shapes")
    true_ids, t_idx = np.unique(t, return_inverse=True)
    pred_ids, p_idx = np.unique(p, return_inverse=True)
    table = np.zeros((len(true_ids), len(pred_ids)), np.int64)
    np.add.at(table, (t_idx, p_idx), 1)
    t_keep = true_ids != 0
    p_keep = pred_ids != 0
    return (true_ids[t_keep], pred_ids[p_keep], table[t_keep].sum(axis=1), table[:, p_keep].sum(axis=0),
            table[np.ix_(t_keep, p_keep)])


def pixel_dice(true_inst, pred_inst) -> float:
    """Dice of nuclei vs background (1.0 when both are empty)."""
    a = np.asarray(true_inst) > 0
    b = np.asarray(pred_inst) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def aggregated_jaccard(true_inst, pred_inst) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017), as HoVer-Net's ``get_fast_aji``.

    Each true nucleus is paired with the predicted one of highest IoU; intersections and
    unions of the pairs are summed, and unpaired predictions add their area to the union.
    """
    _, _, t_area, p_area, inter = pair_overlaps(true_inst, pred_inst)
    if len(t_area) == 0:
        return 1.0 if len(p_area) == 0 else 0.0
    if len(p_area) == 0:
        return 0.0
    union = t_area[:, None] + p_area[None, :] - inter
    iou = inter / np.maximum(union, 1)
    best = iou.argmax(axis=1)
    has = inter[np.arange(len(t_area)), best] > 0
    c = inter[np.arange(len(t_area)), best][has].sum()
    u = union[np.arange(len(t_area)), best][has].sum() + t_area[~has].sum()
    used = np.zeros(len(p_area), bool)
    used[best[has]] = True
    u += p_area[~used].sum()
    return float(c / u) if u else 1.0


def recovered_fraction(true_inst, pred_inst, *, iou: float = 0.5) -> float:
    """Fraction of true nuclei matched by a predicted one with IoU > ``iou`` (0.5: unique)."""
    _, _, t_area, p_area, inter = pair_overlaps(true_inst, pred_inst)
    if len(t_area) == 0:
        return float("nan")
    if len(p_area) == 0:
        return 0.0
    ious = inter / np.maximum(t_area[:, None] + p_area[None, :] - inter, 1)
    return float((ious.max(axis=1) > iou).mean())


def consistency_scores(true_inst, pred_inst) -> dict:
    """Dice, AJI and recovered fraction of one patch."""
    return {"dice": pixel_dice(true_inst, pred_inst), "aji": aggregated_jaccard(true_inst, pred_inst),
            "recovered": recovered_fraction(true_inst, pred_inst)}
