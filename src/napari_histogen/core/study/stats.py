"""Statistics of a reader study: real vs synthetic realism scores.

Tests come from :mod:`scipy.stats` and agreement from the ``krippendorff`` package; the
ROC AUC is the Mann-Whitney U divided by ``n_real * n_synthetic`` (the probability that a
real case scores above a synthetic one, ties counting half).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

from .layout import SCORE_MAX, SCORE_MIN

__all__ = [
    "describe",
    "mann_whitney",
    "roc_points",
    "auc_from_histograms",
    "bootstrap_auc_ci",
    "accuracy_vs_chance",
    "wilcoxon_paired",
    "krippendorff_alpha",
    "score_histograms",
]

_LEVELS = np.arange(SCORE_MIN, SCORE_MAX + 1)


def _clean(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def describe(values) -> dict:
    """``n``, ``mean`` and sample ``sd`` (ddof=1; NaN below two values)."""
    arr = _clean(values)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()) if arr.size else math.nan,
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
    }


def mann_whitney(real, synthetic) -> dict:
    """Two-sided Mann-Whitney U test of real vs synthetic scores, with the ROC AUC.

    Parameters
    ----------
    real, synthetic : array_like
        Scores (higher = judged more real).

    Returns
    -------
    dict
        ``U`` (the statistic of the real sample), ``p``, ``auc`` = U / (n_real * n_synthetic),
        ``n_real``, ``n_synthetic``. NaN where a sample is empty.
    """
    r, s = _clean(real), _clean(synthetic)
    out = {"n_real": int(r.size), "n_synthetic": int(s.size), "U": math.nan, "p": math.nan, "auc": math.nan}
    if r.size == 0 or s.size == 0:
        return out
    res = _st.mannwhitneyu(r, s, alternative="two-sided")
    u = float(res.statistic)
    p = float(res.pvalue)
    if np.all(np.concatenate([r, s]) == r[0]):  # all scores equal: no evidence either way
        p = 1.0
    out.update(U=u, p=p, auc=u / (r.size * s.size))
    return out


def roc_points(real, synthetic) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of the score as a test for "real": one point per score threshold.

    Returns
    -------
    fpr, tpr : ndarray
        False and true positive rates for "score >= t = real", from (0, 0) to (1, 1).
    thresholds : ndarray
        ``t`` of each point (``SCORE_MAX + 1`` for the (0, 0) corner).

    Notes
    -----
    The trapezoidal area under these points equals :func:`mann_whitney`'s ``auc``.
    """
    r, s = _clean(real), _clean(synthetic)
    thresholds = np.concatenate([[SCORE_MAX + 1], np.unique(np.concatenate([r, s]))[::-1]])
    tpr = np.array([(r >= t).mean() if r.size else math.nan for t in thresholds])
    fpr = np.array([(s >= t).mean() if s.size else math.nan for t in thresholds])
    return fpr, tpr, thresholds


def score_histograms(scores_per_case) -> np.ndarray:
    """``(n_cases, 10)`` counts of each score 1..10 per case."""
    hist = np.zeros((len(scores_per_case), _LEVELS.size), dtype=np.int64)
    for i, scores in enumerate(scores_per_case):
        vals = _clean(scores).astype(int)
        np.add.at(hist[i], vals - SCORE_MIN, 1)
    return hist


def auc_from_histograms(real_hist, synthetic_hist) -> np.ndarray:
    """AUC from score histograms (last axis: counts of scores 1..10); vectorised over leading axes."""
    hr = np.asarray(real_hist, dtype=float)
    hs = np.asarray(synthetic_hist, dtype=float)
    below = np.cumsum(hs, axis=-1) - hs  # synthetic scores strictly below each level
    wins = (hr * (below + 0.5 * hs)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (hr.sum(axis=-1) * hs.sum(axis=-1))


def bootstrap_auc_ci(real_cases, synthetic_cases, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap CI of the AUC, resampling cases (all of a case's ratings together).

    Parameters
    ----------
    real_cases, synthetic_cases : list of array_like
        Scores of each real / synthetic case (one per reader who rated it). Resampling
        whole cases keeps the CI honest when several readers rated the same case.
    n_boot : int
    level : float
    seed : int
        Seed of the NumPy generator (the CI is reproducible).

    Returns
    -------
    (low, high) : tuple of float
        NaN when a kind has no cases.
    """
    hr, hs = score_histograms(real_cases), score_histograms(synthetic_cases)
    if len(hr) == 0 or len(hs) == 0 or hr.sum() == 0 or hs.sum() == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ir = rng.integers(0, len(hr), size=(n_boot, len(hr)))
    is_ = rng.integers(0, len(hs), size=(n_boot, len(hs)))
    aucs = auc_from_histograms(hr[ir].sum(axis=1), hs[is_].sum(axis=1))
    aucs = aucs[np.isfinite(aucs)]
    alpha = (1 - level) / 2
    return (float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha)))


def accuracy_vs_chance(real, synthetic, *, threshold: int = 6) -> dict:
    """Accuracy of "score >= threshold means real", tested against chance (p = 0.5).

    Returns
    -------
    dict
        ``n``, ``correct``, ``accuracy``, ``p`` (two-sided exact binomial test),
        ``ci_low``, ``ci_high`` (Clopper-Pearson 95 %).
    """
    r, s = _clean(real), _clean(synthetic)
    correct = int((r >= threshold).sum() + (s < threshold).sum())
    n = int(r.size + s.size)
    out = {"n": n, "correct": correct, "accuracy": math.nan, "p": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if n == 0:
        return out
    res = _st.binomtest(correct, n, 0.5, alternative="two-sided")
    ci = res.proportion_ci(confidence_level=0.95, method="exact")
    out.update(accuracy=correct / n, p=float(res.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
    return out


def wilcoxon_paired(real, synthetic) -> dict:
    """Wilcoxon signed-rank test of paired scores (e.g. a real image and the synthetic one made from its mask).

    Returns
    -------
    dict
        ``n_pairs``, ``W``, ``p``, ``mean_difference`` (real - synthetic); NaN below one
        non-zero difference.
    """
    r = np.asarray(real, dtype=float).ravel()
    s = np.asarray(synthetic, dtype=float).ravel()
    keep = np.isfinite(r) & np.isfinite(s)
    r, s = r[keep], s[keep]
    out = {"n_pairs": int(r.size), "W": math.nan, "p": math.nan,
           "mean_difference": float((r - s).mean()) if r.size else math.nan}
    if r.size == 0 or np.all(r == s):
        return out
    res = _st.wilcoxon(r, s, alternative="two-sided")
    out.update(W=float(res.statistic), p=float(res.pvalue))
    return out


def krippendorff_alpha(ratings, *, level: str = "ordinal", value_domain=None) -> float:
    """Krippendorff's alpha of a readers x cases matrix (NaN = not rated).

    Parameters
    ----------
    ratings : array_like (n_readers, n_cases)
    level : {'ordinal', 'nominal', 'interval'}
    value_domain : sequence, optional
        All possible values (default the scores 1..10 for ordinal data).

    Returns
    -------
    float
        NaN with fewer than two readers, no case rated twice, or a single value used.
    """
    import krippendorff

    data = np.asarray(ratings, dtype=float)
    if data.ndim != 2 or data.shape[0] < 2:
        return math.nan
    pairable = (np.isfinite(data).sum(axis=0) >= 2)
    if not pairable.any():
        return math.nan
    values = np.unique(data[:, pairable][np.isfinite(data[:, pairable])])
    if values.size < 2:
        return math.nan
    if value_domain is None and level == "ordinal":
        value_domain = _LEVELS
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                                    value_domain=None if value_domain is None else list(value_domain)))
