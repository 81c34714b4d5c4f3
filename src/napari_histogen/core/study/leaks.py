"""Statistics a reader could use to tell real from synthetic cases without looking at them.

:func:`case_features` measures what a reader can get from a case file (size, unique
colours, 8x8 block-artefact strength, file size, scale); :func:`separating_features`
gives each feature's ROC AUC between the groups, so :func:`~.create.create_study` can
warn when one of them separates real from synthetic.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LEAK_AUC", "blockiness", "case_features", "feature_auc", "separating_features", "FEATURE_TEXT"]

#: A feature whose AUC is at least this far from 0.5 (>= 0.8 or <= 0.2) is reported.
LEAK_AUC = 0.8
FEATURE_TEXT = {
    "pixels": "case size (pixels)",
    "unique_colours": "unique colours",
    "blockiness": "8x8 JPEG block-artefact strength",
    "mpp": "scale (um/px)",
    "file_bytes": "case file size (bytes)",
}


def blockiness(rgb: np.ndarray) -> float:
    """Strength of an 8x8 block grid: mean step across block borders / mean step elsewhere.

    About 1 for camera or synthetic images; clearly above 1 for JPEG-compressed ones
    (whose blocks of 8 pixels meet at visible steps). NaN for images under 16 px.
    """
    gray = np.asarray(rgb, dtype=np.float64)
    if gray.ndim == 3:
        gray = gray[..., :3].mean(axis=-1)
    ratios = []
    for diff in (np.abs(np.diff(gray, axis=1)), np.abs(np.diff(gray, axis=0)).T):
        if diff.shape[1] < 15:
            continue
        border = (np.arange(diff.shape[1]) % 8) == 7  # the step between pixel 8k+7 and 8k+8
        inside = diff[:, ~border].mean()
        ratios.append(float(diff[:, border].mean() / inside) if inside > 0 else 1.0)
    return float(np.mean(ratios)) if ratios else math.nan


def case_features(rgb: np.ndarray, *, file_bytes: int | None = None, mpp: float | None = None) -> dict:
    """What a reader could measure of one case: pixels, unique colours, blockiness, file size, scale."""
    rgb = np.asarray(rgb)
    flat = rgb.reshape(-1, rgb.shape[-1]) if rgb.ndim == 3 else rgb.reshape(-1, 1)
    packed = flat.astype(np.uint32)
    if packed.shape[1] >= 3:
        packed = (packed[:, 0] << 16) | (packed[:, 1] << 8) | packed[:, 2]
    return {
        "pixels": int(rgb.shape[0] * rgb.shape[1]),
        "unique_colours": int(np.unique(packed).size),
        "blockiness": blockiness(rgb),
        "file_bytes": None if file_bytes is None else int(file_bytes),
        "mpp": None if mpp is None else float(mpp),
    }


def feature_auc(real, synthetic) -> float:
    """ROC AUC of "larger value = real" (ties count half); NaN when a side is empty."""
    r = np.asarray([v for v in real if v is not None and not _isnan(v)], dtype=np.float64)
    s = np.asarray([v for v in synthetic if v is not None and not _isnan(v)], dtype=np.float64)
    if r.size == 0 or s.size == 0:
        return math.nan
    greater = (r[:, None] > s[None, :]).sum()
    ties = (r[:, None] == s[None, :]).sum()
    return float((greater + 0.5 * ties) / (r.size * s.size))


def separating_features(features: list[dict], truths: list[str], *, threshold: float = LEAK_AUC) -> dict:
    """Feature -> AUC (real vs synthetic) of every feature; and the ones at or past ``threshold``.

    Returns
    -------
    dict
        ``{"auc": {feature: auc}, "separating": {feature: auc}}``; a feature only
        one side records (e.g. a scale known for real cases only) counts as separating
        with AUC 1.0, since its mere presence tells the groups apart.
    """
    aucs, separating = {}, {}
    for name in FEATURE_TEXT:
        real = [f.get(name) for f, t in zip(features, truths) if t == "real"]
        syn = [f.get(name) for f, t in zip(features, truths) if t == "synthetic"]
        known_r = [v for v in real if v is not None and not _isnan(v)]
        known_s = [v for v in syn if v is not None and not _isnan(v)]
        if not known_r and not known_s:
            continue
        if bool(known_r) != bool(known_s):
            aucs[name] = separating[name] = 1.0
            continue
        auc = feature_auc(known_r, known_s)
        aucs[name] = auc
        if not math.isnan(auc) and max(auc, 1 - auc) >= threshold and len(known_r) + len(known_s) >= 4:
            separating[name] = auc
    return {"auc": aucs, "separating": separating}


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)
