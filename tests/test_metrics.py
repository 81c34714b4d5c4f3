"""Quality measures: consistency scores on hand cases, the segmenter on drawn nuclei, FID/KID maths."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histogen.core.metrics.consistency import aggregated_jaccard, consistency_scores, pixel_dice, recovered_fraction
from napari_histogen.core.metrics.realism import fid, kid
from napari_histogen.core.metrics.segment import segment_nuclei_hed


def test_scores_of_a_perfect_and_a_shifted_segmentation():
    true = np.zeros((20, 20), np.int32)
    true[2:6, 2:6] = 1      # 16 px
    true[10:14, 10:14] = 2  # 16 px
    assert consistency_scores(true, true * 7) == {"dice": 1.0, "aji": 1.0, "recovered": 1.0}
    pred = np.zeros_like(true)
    pred[2:6, 3:7] = 5      # overlaps nucleus 1 by 12 px; union 20
    pred[0:2, 18:20] = 9    # a false positive of 4 px
    assert pixel_dice(true, pred) == pytest.approx(2 * 12 / (32 + 20))
    # AJI: C = 12, U = 20 (pair) + 16 (nucleus 2 unmatched) + 4 (unused prediction) = 40
    assert aggregated_jaccard(true, pred) == pytest.approx(12 / 40)
    assert recovered_fraction(true, pred) == 0.5  # IoU 0.6 > 0.5 for nucleus 1, none for nucleus 2
    assert aggregated_jaccard(true, np.zeros_like(true)) == 0.0


def test_segmenter_finds_drawn_nuclei_on_he_like_tissue():
    rng = np.random.default_rng(0)
    image = np.empty((96, 96, 3), np.float64)
    image[:] = (235, 170, 210)  # eosin pink
    true = np.zeros((96, 96), np.int32)
    yy, xx = np.mgrid[:96, :96]
    for k, (r, c) in enumerate([(15, 15), (15, 60), (45, 35), (70, 70), (80, 20)], start=1):
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= 36
        true[disc] = k
        image[disc] = (70, 40, 130)  # haematoxylin purple
    image += rng.normal(0, 4, image.shape)
    pred = segment_nuclei_hed(np.clip(image, 0, 255).astype(np.uint8), mpp=0.5)
    scores = consistency_scores(true, pred)
    assert scores["recovered"] == 1.0 and scores["dice"] > 0.9


def test_fid_and_kid_maths():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([2.0] + [0.0] * 7)
    assert fid(a, shifted) == pytest.approx(4.0, rel=1e-6)  # same covariance: |mean difference|^2
    b = rng.normal(size=(400, 8))
    k_same, _ = kid(a, b, subset_size=100, n_subsets=20)
    k_diff, _ = kid(a, shifted, subset_size=100, n_subsets=20)
    assert abs(k_same) < 0.05 < k_diff


def test_inception_features_when_installed():
    torch = pytest.importorskip("torch")
    from napari_histogen.core.errors import HistogenInputError
    from napari_histogen.core.metrics.realism import inception_features, load_inception

    try:
        net = load_inception()
    except HistogenInputError as err:
        pytest.skip(str(err))
    images = [np.full((64, 64, 3), v, np.uint8) for v in (30, 200)]
    feats = inception_features(net, images)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])
    del torch
