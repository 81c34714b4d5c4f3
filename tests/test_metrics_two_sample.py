"""The classifier two-sample test, nearest-neighbour distances, JPEG round trip and pixel noise."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from napari_histogen.core.metrics.two_sample import (  # noqa: E402
    classifier_auc,
    jpeg_round_trip,
    nearest_distances,
    pixel_noise,
)


def _groups(n):
    return [f"tile{i % 3}" for i in range(n)]


def test_classifier_auc_separates_shifted_clouds_and_not_identical_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 40))
    b = rng.normal(size=(60, 40))
    shifted = b + 1.0
    assert classifier_auc(a, shifted, _groups(60), _groups(60)) > 0.95
    assert 0.3 < classifier_auc(a, b, _groups(60), _groups(60)) < 0.7
    with pytest.raises(ValueError, match="groups"):
        classifier_auc(a, b, ["x"] * 60, ["x"] * 60)


def test_folds_leave_whole_groups_out():
    """A feature that only identifies the group cannot help when folds leave groups out."""
    rng = np.random.default_rng(1)
    groups = _groups(60)
    code = np.array([[float(g == f"tile{k}") for k in range(3)] for g in groups])
    a = np.hstack([rng.normal(size=(60, 5)), code])
    b = np.hstack([rng.normal(size=(60, 5)), code])
    assert classifier_auc(a, b, groups, groups) < 0.75


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(2)
    q, r = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    d, i = nearest_distances(q, r)
    brute = np.linalg.norm(q[:, None] - r[None], axis=-1)
    assert np.allclose(d, brute.min(1)) and np.array_equal(i, brute.argmin(1))
    d_self, i_self = nearest_distances(r, r, exclude_self=True)
    assert (i_self != np.arange(len(r))).all() and (d_self > 0).all()


def test_jpeg_round_trip_and_pixel_noise():
    rng = np.random.default_rng(3)
    flat = np.full((64, 64, 3), 180, np.uint8)
    noisy = np.clip(flat + rng.normal(0, 8, flat.shape), 0, 255).astype(np.uint8)
    assert pixel_noise(flat) == 0.0
    assert 4 < pixel_noise(noisy) < 12
    out = jpeg_round_trip(noisy, 75)
    assert out.shape == noisy.shape and out.dtype == np.uint8 and not np.array_equal(out, noisy)
    assert pixel_noise(out) < pixel_noise(noisy)  # JPEG smooths white noise
