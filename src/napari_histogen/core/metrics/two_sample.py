"""Realism checks beyond FID: a classifier two-sample test, memorisation distances, noise.

- :func:`classifier_auc`: a linear classifier (standardised features, L2 logistic
  regression) learns to tell set A from set B, cross-validated with folds by *group* (the
  source tile of each image, so a classifier cannot learn a tile); the AUC of its held-out
  scores says how separable the sets are (0.5 = cannot tell them apart).
- :func:`jpeg_round_trip`: one JPEG encoding at a fixed quality, applied to both sides
  before the classifier test. CoNSeP's images carry JPEG traces (libjpeg quality 75) that a
  classifier sees, so without it even a perfect synthetic PNG is told apart.
- :func:`nearest_distances`: for each query feature vector, the Euclidean distance to its
  nearest reference (e.g. synthetic validation patches against the training patches); a
  model that copies training patches has synthetic distances well below real ones.
- :func:`pixel_noise`: the standard deviation of an image minus its 3x3 median (grey levels),
  a measure of white pixel noise (speckle).
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["jpeg_round_trip", "classifier_auc", "nearest_distances", "pixel_noise"]


def jpeg_round_trip(image: np.ndarray, quality: int = 75) -> np.ndarray:
    """``image`` (H, W, 3) uint8 after one JPEG encode/decode at ``quality`` (4:2:0, as libjpeg)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB")).copy()


def classifier_auc(feats_a: np.ndarray, feats_b: np.ndarray, groups_a, groups_b, *, c: float = 0.01,
                   seed: int = 0) -> float:
    """Held-out AUC of a linear classifier telling ``feats_a`` (label 0) from ``feats_b`` (1).

    Parameters
    ----------
    feats_a, feats_b : ndarray (N, D)
    groups_a, groups_b : sequence
        Group of each row (e.g. source tile); folds leave one group out at a time, so no
        group is in a training fold and its test fold together.
    c : float
        Inverse L2 strength of the logistic regression (strong: D >> N).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([feats_a, feats_b]).astype(np.float64)
    y = np.concatenate([np.zeros(len(feats_a)), np.ones(len(feats_b))])
    groups = np.array([str(g) for g in list(groups_a) + list(groups_b)])
    if len(set(groups)) < 2:
        raise ValueError("the classifier test needs at least two groups for its folds")
    scores = np.zeros(len(y))
    for train, test in LeaveOneGroupOut().split(x, y, groups):
        if len(set(y[train])) < 2:
            scores[test] = 0.5
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        clf.fit(x[train], y[train])
        scores[test] = clf.decision_function(x[test])
    return float(roc_auc_score(y, scores))


def nearest_distances(query: np.ndarray, reference: np.ndarray, *, exclude_self: bool = False):
    """``(distances, indices)``: each query row's nearest reference row (Euclidean)."""
    q = np.asarray(query, np.float64)
    r = np.asarray(reference, np.float64)
    d2 = (q ** 2).sum(1)[:, None] + (r ** 2).sum(1)[None] - 2 * q @ r.T
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    idx = np.argmin(d2, axis=1)
    return np.sqrt(np.maximum(d2[np.arange(len(q)), idx], 0)), idx


def pixel_noise(image: np.ndarray) -> float:
    """Std (grey levels) of the grey image minus its 3x3 median: white pixel noise."""
    from scipy.ndimage import median_filter

    grey = np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114])
    return float(np.std(grey - median_filter(grey, size=3)))
