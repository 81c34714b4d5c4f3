"""Synthesis batched across masks (``NasdmEngine.run_many``, ``synthesize_masks(mask_batch=)``):
the same images as one mask at a time for the same seeds.

"The same" is up to float rounding: every sample has its own noise generator, but CPU kernels
may sum in another order for another batch size (about 1e-6), which can move a pixel that lies
on a rounding boundary by one grey level (seen: 1 pixel of 10 images of 32 x 32 x 3).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_histogen.cli import main  # noqa: E402
from napari_histogen.core.engines.batch import synthesize_masks  # noqa: E402
from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402
from napari_histogen.core.progress import CancelToken, Cancelled  # noqa: E402


def _mask(seed: int, shape=(32, 32), mpp=0.5) -> NucleiMask:
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, np.int32)
    classes = {}
    for i in range(1, 5):
        r = int(rng.integers(0, shape[0] - 6))
        c = int(rng.integers(0, shape[1] - 6))
        inst[r: r + 5, c: c + 5] = i
        classes[i] = int(rng.integers(1, 5))
    present = {i: k for i, k in classes.items() if (inst == i).any()}
    return NucleiMask.create(inst, present, "consep", mpp=mpp)


def assert_same_image(a: np.ndarray, b: np.ndarray, what="") -> None:
    """Equal images up to float rounding: at most one grey level apart, in under 0.2 % of values."""
    assert a.shape == b.shape, what
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.002, (what, int(diff.max()), int((diff > 0).sum()))


@pytest.fixture(scope="module")
def engine(tiny_nasdm):
    return NasdmEngine(tiny_nasdm, device="cpu")


def test_run_many_gives_the_images_of_one_mask_at_a_time(engine):
    masks = [_mask(0), _mask(1, shape=(28, 30)), _mask(2), _mask(3, shape=(16, 16), mpp=1.0)]
    requests = [NasdmRequest(nuclei=m, n_samples=n, seed=s, steps=4, batch_size=3)
                for m, n, s in zip(masks, (2, 1, 3, 1), (5, 9, 0, 7))]
    calls = []
    batched = engine.run_many(requests, progress=lambda i, n: calls.append((i, n)))
    alone = [engine.run(r) for r in requests]
    assert [len(r) for r in batched] == [2, 1, 3, 1]
    for many, one in zip(batched, alone):
        for a, b in zip(many, one):
            assert_same_image(a.image, b.image)
            assert a.provenance["parameters"]["seed"] == b.provenance["parameters"]["seed"]
            assert a.notes == b.notes
            assert np.array_equal(a.nuclei.instances, b.nuclei.instances)
    assert batched[1][0].image.shape == (28, 30, 3)  # padded for the model, cropped back
    assert batched[3][0].image.shape == (16, 16, 3)  # made at 0.5 µm/px, brought back to 1.0
    assert calls[-1] == (12, 12)  # 7 samples in 3 batches of <= 3, 4 steps each
    assert np.abs(batched[0][0].image.astype(int) - batched[0][1].image).mean() > 10  # other seed, other image


def test_run_many_refuses_one_mask_and_runs_the_others(engine):
    bad = NucleiMask.create(np.zeros((32, 32), np.int32), {}, "consep", mpp=0.5)
    out = engine.run_many([NasdmRequest(nuclei=_mask(0), steps=2), NasdmRequest(nuclei=bad, steps=2),
                           NasdmRequest(nuclei=_mask(1), steps=2, n_samples=0)])
    assert len(out[0]) == 1 and out[0][0].image.shape == (32, 32, 3)
    assert isinstance(out[1], HistogenInputError) and "empty" in str(out[1])
    assert isinstance(out[2], HistogenInputError) and "samples" in str(out[2])


def test_run_many_cancel_returns_nothing(engine):
    token = CancelToken()

    def progress(i, n):
        if i >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        engine.run_many([NasdmRequest(nuclei=_mask(k), steps=5) for k in range(3)], progress=progress, cancel=token)


def _mask_folder(folder, n=5):
    folder.mkdir()
    for k in range(n):
        m = _mask(10 + k)
        np.savez(folder / f"m{k}.npz", inst_map=m.instances, classes=np.array(sorted(m.classes.items())),
                 scheme=np.array("consep"), mpp=np.array(0.5))
    (folder / "broken.npz").write_bytes(b"not a mask")
    return folder


def _images(folder) -> dict:
    from skimage.io import imread

    return {p.name: imread(p) for p in sorted(folder.glob("*_s*.png")) if "side_by_side" not in p.name}


def test_folder_synthesis_batched_equals_unbatched(engine, tmp_path):
    masks = _mask_folder(tmp_path / "masks")
    paths = sorted(masks.iterdir())
    one = synthesize_masks(paths, tmp_path / "one", engine, n_samples=2, steps=3, seed=4, batch_size=4, mask_batch=1)
    many = synthesize_masks(paths, tmp_path / "many", engine, n_samples=2, steps=3, seed=4, batch_size=4,
                            mask_batch=3)
    assert [s for s, _ in one.written] == [s for s, _ in many.written]
    assert len(one.written) == 10 and [p for p, _ in many.skipped] == [str(masks / "broken.npz")]
    a, b = _images(tmp_path / "one"), _images(tmp_path / "many")
    assert sorted(a) == sorted(b) and len(a) == 10
    for name in a:
        assert_same_image(a[name], b[name], name)
    prov = json.loads((tmp_path / "many" / "m0_s5.json").read_text())
    assert prov["parameters"]["seed"] == 5 and prov["parameters"]["mask_source"] == "m0.npz"
    with pytest.raises(HistogenInputError, match="mask batch"):
        synthesize_masks(paths, tmp_path / "x", engine, steps=2, mask_batch=0)


def test_cli_mask_batch_option(tiny_nasdm, tmp_path, capsys):
    masks = _mask_folder(tmp_path / "masks", n=3)
    common = ["synthesize", "nasdm", "--mask", str(masks), "--model", str(tiny_nasdm), "--steps", "2",
              "--device", "cpu", "--seed", "3"]
    assert main(common + ["--out", str(tmp_path / "a"), "--mask-batch", "3"]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--mask-batch", "1"]) == 0
    a, b = _images(tmp_path / "a"), _images(tmp_path / "b")
    assert sorted(a) == ["m0_s3.png", "m1_s3.png", "m2_s3.png"] and sorted(b) == sorted(a)
    for name in a:
        assert_same_image(a[name], b[name], name)
    with pytest.raises(SystemExit) as exit_:
        main(common + ["--out", str(tmp_path / "c"), "--mask-batch", "0"])
    assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err
