"""The learned nuclei segmenter (core/segment): targets, post-processing, metrics, training, files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histogen.core.errors import HistogenInputError
from napari_histogen.core.segment.metrics import panoptic_quality, patch_counts, score_set
from napari_histogen.core.segment.postprocess import instances_from_maps, types_of_instances
from napari_histogen.core.segment.targets import hover_maps, make_targets


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _two_touching_discs(size=48):
    inst = np.zeros((size, size), np.int32)
    inst[_disc(inst.shape, (24, 16), 7)] = 1
    inst[_disc(inst.shape, (24, 29), 7) & (inst == 0)] = 2  # centres 13 px apart, radius 7: they touch
    return inst


def test_hover_maps_point_away_from_each_centre():
    inst = _two_touching_discs()
    hv = hover_maps(inst)
    assert hv.shape == (2,) + inst.shape and hv.dtype == np.float32
    assert np.all(hv[:, inst == 0] == 0)
    for nid in (1, 2):
        rows, cols = np.nonzero(inst == nid)
        h, v = hv[0][inst == nid], hv[1][inst == nid]
        assert h.min() == pytest.approx(-1) and h.max() == pytest.approx(1)
        assert v.min() == pytest.approx(-1) and v.max() == pytest.approx(1)
        assert np.corrcoef(h, cols)[0, 1] > 0.99 and np.corrcoef(v, rows)[0, 1] > 0.99
    # at the contact line the horizontal map jumps from +1 (right edge of 1) to -1 (left edge of 2)
    assert inst[24, 23] == 1 and inst[24, 24] == 2
    assert hv[0, 24, 23] == pytest.approx(1) and hv[0, 24, 24] < -0.5


def test_targets_relabel_sparse_ids_and_types():
    inst = _two_touching_discs() * 50  # ids 50 and 100
    t = make_targets(inst, {50: 3, 100: 2}, [1, 2, 3, 4])
    assert set(np.unique(t["types"])) == {0, 2, 3}
    assert np.all(t["types"][inst == 50] == 3) and np.all(t["types"][inst == 100] == 2)
    assert t["foreground"].sum() == (inst > 0).sum()
    assert inst.max() == 100  # the input is untouched


def test_postprocessing_separates_two_touching_discs():
    inst = _two_touching_discs()
    foreground = (inst > 0).astype(float)
    pred = instances_from_maps(foreground, hover_maps(inst), min_size=5)
    assert len(np.unique(pred[pred > 0])) == 2
    counts = patch_counts(inst, {1: 1, 2: 1}, pred, {int(i): 1 for i in np.unique(pred[pred > 0])}, [1, 2, 3, 4])
    assert counts["tp"] == 2 and counts["fp"] == 0 and counts["fn"] == 0
    # the same foreground without the HoVer maps' split is one blob: the maps do the separating
    flat = instances_from_maps(foreground, np.zeros((2,) + inst.shape), min_size=5)
    assert len(np.unique(flat[flat > 0])) == 1


def test_types_are_the_majority_of_pixel_types():
    inst = _two_touching_discs()
    probs = np.zeros((5,) + inst.shape)
    probs[0] = 0.5
    probs[3][inst == 1] = 1.0  # class id 3 (type index 3 -> class_ids[2])
    probs[1][inst == 2] = 1.0
    probs[2][(inst == 2) & (np.arange(inst.shape[1])[None, :] > 33)] = 2.0  # a minority of nucleus 2
    assert types_of_instances(inst, probs, [1, 2, 3, 4]) == {1: 3, 2: 1}


def test_pq_and_per_type_f1_on_a_hand_case():
    true = np.zeros((20, 20), np.int32)
    true[2:6, 2:6] = 1
    true[10:14, 10:14] = 2
    pred = np.zeros_like(true)
    pred[2:6, 2:7] = 7        # IoU 16/20 = 0.8 with nucleus 1, right type
    pred[10:14, 10:14] = 8    # IoU 1 with nucleus 2, wrong type
    pred[16:19, 16:19] = 9    # a false positive
    scores = score_set([(true, {1: 1, 2: 2})], [(pred, {7: 1, 8: 3, 9: 3})], [1, 2, 3, 4],
                       ["a", "b", "c", "d"])
    assert scores["pq"] == pytest.approx(panoptic_quality(2, 1, 0, 1.8)["pq"])
    assert scores["dq"] == pytest.approx(2 / 2.5) and scores["sq"] == pytest.approx(0.9)
    assert scores["f1"]["a"] == 1.0 and scores["f1"]["b"] == 0.0
    assert scores["recall"] == pytest.approx({"a": 1.0, "b": 0.0, "c": float("nan"), "d": float("nan")},
                                             nan_ok=True)
    assert scores["detection_recall"] == 1.0


def _disc_patches(n, size=64, seed=0):
    """Discs of two colours (class 1 darker) on pink, some touching."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        inst = np.zeros((size, size), np.int32)
        classes = {}
        for i in range(1, 7):
            disc = _disc(inst.shape, rng.integers(8, size - 8, 2), 5) & (inst == 0)
            inst[disc] = i
            classes[i] = int(rng.integers(1, 3))
        image = np.empty((size, size, 3), np.uint8)
        image[:] = (230, 150, 200)
        for i, c in classes.items():
            image[inst == i] = (60, 30, 120) if c == 1 else (140, 80, 170)
        out.append((image, inst, classes))
    return out


@pytest.mark.slow
def test_segmenter_overfits_a_tiny_set(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from napari_histogen.core.segment.consistency import learned_consistency
    from napari_histogen.core.segment.model import load_segmenter, save_segmenter
    from napari_histogen.core.segment.train import TrainSettings, segment_batch, train_segmenter

    patches = _disc_patches(4)
    settings = TrainSettings(steps=100, batch_size=4, lr=1e-2, base_channels=8, depth=2, augment=False)
    model, history = train_segmenter(patches, [1, 2, 3, 4], settings)
    assert np.mean(history["loss"][-10:]) < 0.25 * np.mean(history["loss"][:3])
    truths = [(inst, classes) for _, inst, classes in patches]
    scores = score_set(truths, segment_batch(model, [im for im, _, _ in patches]), [1, 2, 3, 4])
    assert scores["dice"] > 0.9 and scores["pq"] > 0.6

    again = load_segmenter(save_segmenter(model, tmp_path / "seg"))
    assert again.config.class_ids == [1, 2, 3, 4] and again.config.training["steps"] == 100
    same = learned_consistency(again, [im for im, _, _ in patches], truths)
    assert same["dice"] == pytest.approx(scores["dice"]) and same["pq"] == pytest.approx(scores["pq"])


def test_bad_training_input_is_refused():
    pytest.importorskip("torch")
    from napari_histogen.core.segment.model import load_segmenter
    from napari_histogen.core.segment.train import TrainSettings, train_segmenter

    image, inst, classes = _disc_patches(1, size=60)[0]
    with pytest.raises(HistogenInputError, match="multiple of 8"):
        train_segmenter([(image, inst, classes)], [1, 2], TrainSettings(steps=1))
    with pytest.raises(HistogenInputError, match="same size"):
        train_segmenter([(image[:30], inst, classes)], [1, 2], TrainSettings(steps=1))
    with pytest.raises(HistogenInputError, match="No training patches"):
        train_segmenter([], [1, 2])
    with pytest.raises(HistogenInputError, match="No segmenter"):
        load_segmenter("/nonexistent/segmenter")
