"""Scores of a predicted nuclei segmentation against the truth: Dice, AJI, PQ, per-type F1 and recall.

Dice and AJI come from :mod:`napari_histogen.core.metrics.consistency` (HoVer-Net's
conventions). Panoptic quality (Kirillov et al. 2019, as HoVer-Net's ``get_fast_pq``) pairs
true and predicted nuclei with IoU > 0.5 (a unique match); per-type F1 and recall count a
true nucleus as found *with its type* when it is paired and the prediction has its class.
Over a set of patches, :func:`score_set` averages Dice and AJI per patch and sums the PQ and
per-type counts over all patches (one score for the set, as CoNIC's PQ), so a patch with
two nuclei weighs as much as its nuclei, not as a whole patch.
"""

from __future__ import annotations

import numpy as np

from ..metrics.consistency import aggregated_jaccard, pair_overlaps, pixel_dice

__all__ = ["match_instances", "patch_counts", "score_set", "panoptic_quality"]


def match_instances(true_inst, pred_inst, *, iou: float = 0.5):
    """Pairs of true and predicted nuclei with IoU above ``iou`` (0.5 makes them unique).

    Returns
    -------
    pairs : list of (true id, predicted id, IoU)
    true_ids, pred_ids : ndarray
        All non-zero ids of each map.
    """
    true_ids, pred_ids, t_area, p_area, inter = pair_overlaps(true_inst, pred_inst)
    if len(true_ids) == 0 or len(pred_ids) == 0:
        return [], true_ids, pred_ids
    ious = inter / np.maximum(t_area[:, None] + p_area[None, :] - inter, 1)
    pairs = []
    taken = set()
    for ti in range(len(true_ids)):
        pj = int(ious[ti].argmax())
        if ious[ti, pj] > iou and pj not in taken:
            taken.add(pj)
            pairs.append((int(true_ids[ti]), int(pred_ids[pj]), float(ious[ti, pj])))
    return pairs, true_ids, pred_ids


def patch_counts(true_inst, true_classes: dict, pred_inst, pred_classes: dict, class_ids, *,
                 iou: float = 0.5) -> dict:
    """Counts of one patch, to be summed over a set.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``iou_sum`` (detection, for PQ) and per class id
        ``typed[c] = {'tp', 'fp', 'fn', 'n_true'}`` where a true positive is a pair with the
        same class, a false positive a prediction of class ``c`` unpaired or paired with
        another class, a false negative a true nucleus of class ``c`` not found with its class.
    """
    pairs, true_ids, pred_ids = match_instances(true_inst, pred_inst, iou=iou)
    typed = {int(c): {"tp": 0, "fp": 0, "fn": 0, "n_true": 0} for c in class_ids}
    paired_true = {t: p for t, p, _ in pairs}
    paired_pred = {p: t for t, p, _ in pairs}
    for t in true_ids:
        c = int(true_classes.get(int(t), -1))
        if c not in typed:
            continue
        typed[c]["n_true"] += 1
        p = paired_true.get(int(t))
        if p is not None and int(pred_classes.get(p, -1)) == c:
            typed[c]["tp"] += 1
        else:
            typed[c]["fn"] += 1
    for p in pred_ids:
        c = int(pred_classes.get(int(p), -1))
        if c not in typed:
            continue
        t = paired_pred.get(int(p))
        if t is None or int(true_classes.get(t, -1)) != c:
            typed[c]["fp"] += 1
    return {"tp": len(pairs), "fp": len(pred_ids) - len(pairs), "fn": len(true_ids) - len(pairs),
            "iou_sum": float(sum(i for _, _, i in pairs)), "typed": typed}


def panoptic_quality(tp: int, fp: int, fn: int, iou_sum: float) -> dict:
    """``{'dq', 'sq', 'pq'}`` from detection counts (1.0 each when there is nothing to find or found)."""
    if tp + fp + fn == 0:
        return {"dq": 1.0, "sq": 1.0, "pq": 1.0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return {"dq": float(dq), "sq": float(sq), "pq": float(dq * sq)}


def score_set(truths, predictions, class_ids, class_names=None) -> dict:
    """Scores of predicted nuclei over a set of patches.

    Parameters
    ----------
    truths, predictions : sequence of (instances, classes)
        Instance maps ``(H, W)`` and ``{id: class id}``, patch by patch.
    class_ids : sequence of int
    class_names : sequence of str, optional
        Names for the per-type keys (default: the ids).

    Returns
    -------
    dict
        ``n``, ``dice``, ``aji`` (means over patches), ``pq``, ``dq``, ``sq`` (over all
        nuclei of the set), ``f1`` and ``recall`` (``{type name: value}``; NaN for a type
        that never occurs), ``n_true`` per type and ``detection_recall``.
    """
    truths, predictions = list(truths), list(predictions)
    if len(truths) != len(predictions):
        raise ValueError("as many predictions as truths are needed")
    names = [str(n) for n in (class_names or class_ids)]
    dice, aji = [], []
    total: dict[str, float] = {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}
    typed = {int(c): {"tp": 0, "fp": 0, "fn": 0, "n_true": 0} for c in class_ids}
    for (t_inst, t_cls), (p_inst, p_cls) in zip(truths, predictions):
        dice.append(pixel_dice(t_inst, p_inst))
        aji.append(aggregated_jaccard(t_inst, p_inst))
        counts = patch_counts(t_inst, t_cls, p_inst, p_cls, class_ids)
        for key in total:
            total[key] += counts[key]
        for c, row in counts["typed"].items():
            for key in row:
                typed[c][key] += row[key]
    out: dict = {"n": len(truths), "dice": float(np.mean(dice)) if dice else float("nan"),
           "aji": float(np.mean(aji)) if aji else float("nan")}
    out.update(panoptic_quality(int(total["tp"]), int(total["fp"]), int(total["fn"]), total["iou_sum"]))
    out["detection_recall"] = total["tp"] / (total["tp"] + total["fn"]) if total["tp"] + total["fn"] else float("nan")
    out["f1"], out["recall"], out["n_true"] = {}, {}, {}
    for name, c in zip(names, class_ids):
        row = typed[int(c)]
        denominator = 2 * row["tp"] + row["fp"] + row["fn"]
        out["f1"][name] = 2 * row["tp"] / denominator if row["n_true"] else float("nan")
        out["recall"][name] = row["tp"] / row["n_true"] if row["n_true"] else float("nan")
        out["n_true"][name] = row["n_true"]
    return out
