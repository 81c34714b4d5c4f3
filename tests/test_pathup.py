"""PathUp patch-wise timestep tracking (core/diffusion/tiled.py) in both NASDM samplers and the engine."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_histogen.core.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from napari_histogen.core.diffusion.tiled import TileGrid, tile_starts, tiled_output, weight_map  # noqa: E402
from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.latent.diffusion import default_diffusion, sample_latents  # noqa: E402
from napari_histogen.core.latent.model import LatentNasdmNet, latent_preset  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402
from napari_histogen.core.nasdm.sampling import sample  # noqa: E402
from napari_histogen.core.nasdm.unet import NasdmUNet, preset_config  # noqa: E402
from napari_histogen.core.progress import CancelToken, Cancelled  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seeded(module):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module.eval()


def _condition(height, width, seed=0):
    rng = np.random.default_rng(seed)
    cond = torch.zeros(1, 6, height, width)
    cond[:, 0] = 1
    for _ in range(height * width // 200):
        r, c = rng.integers(0, height - 6), rng.integers(0, width - 6)
        cond[:, 0, r:r + 5, c:c + 5] = 0
        cond[:, 1 + rng.integers(0, 4), r:r + 5, c:c + 5] = 1
    return cond


def _big_mask(size=64, seed=1):
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int32)
    classes = {}
    for i in range(1, size * size // 150):
        r, c = rng.integers(0, size - 6, 2)
        inst[r:r + 5, c:c + 5] = i
        classes[i] = int(rng.integers(1, 5))
    present = set(np.unique(inst)) - {0}
    return NucleiMask.create(inst, {i: k for i, k in classes.items() if i in present}, "consep", mpp=0.5)


def test_weight_map_is_eq6_half_at_the_border_one_at_the_centre():
    for tile in (7, 16, 32):
        w = weight_map(tile)
        c = (tile - 1) / 2
        p = np.arange(tile)
        expected = 1 - np.maximum(np.abs(p - c)[:, None], np.abs(p - c)[None, :]) / (tile - 1)
        np.testing.assert_allclose(w, expected, atol=1e-6)
        border = np.concatenate([w[0], w[-1], w[:, 0], w[:, -1]])
        np.testing.assert_allclose(border, 0.5)
        assert w.max() == pytest.approx(1.0, abs=0.5 / (tile - 1) + 1e-6) and w.min() == pytest.approx(0.5)
        assert np.array_equal(w, w.T) and np.array_equal(w, w[::-1])
    assert weight_map(7)[3, 3] == pytest.approx(1.0)
    assert weight_map(8, "uniform").min() == 1 and 0 < weight_map(8, "cosine").min() < 0.1


def test_tiles_cover_the_canvas_and_stay_inside():
    assert tile_starts(32, 32) == [0]
    assert tile_starts(64, 32) == [0, 16, 32]  # half-tile overlap: 3 x 3 tiles on a 2 x 2 canvas
    assert tile_starts(70, 32) == [0, 16, 32, 38]  # the last tile moved back inside
    assert tile_starts(64, 32, 0.0) == [0, 32]
    assert TileGrid(64, 48, 32).n_tiles == 3 * 2
    with pytest.raises(HistogenInputError, match="pad"):
        tile_starts(20, 32)


def test_recombination_is_the_weighted_mean_of_tile_outputs():
    # a denoiser whose output is a constant per tile: the canvas is sum(w_k v_k) / sum(w_k)
    grid = TileGrid(12, 12, 8, 0.5)
    values = iter(range(1, 100))

    def denoise(x, cond):
        return torch.stack([torch.full(x.shape[1:], float(next(values))) for _ in range(x.shape[0])])

    out = tiled_output(denoise, torch.zeros(1, 1, 12, 12), torch.zeros(1, 1, 12, 12), grid, tile_batch=1)
    w = weight_map(8)
    num = np.zeros((12, 12))
    den = np.zeros((12, 12))
    for k, (r, c) in enumerate(grid.positions):
        num[r:r + 8, c:c + 8] += (k + 1) * w
        den[r:r + 8, c:c + 8] += w
    np.testing.assert_allclose(out[0, 0].numpy(), num / den, rtol=1e-6)


@pytest.mark.parametrize("family", ["pixel", "latent"])
def test_3x3_tile_canvas_is_the_same_for_any_tile_batch(family):
    if family == "pixel":
        net = _seeded(NasdmUNet(preset_config("tiny", image_size=16, cond_channels=6)))

        def run(tile_batch, progress=None, cancel=None):
            return sample(net, _condition(32, 32), GaussianDiffusion().config(), steps=3, guidance=0.5,
                          variance="fixed_small", generators=[torch.Generator().manual_seed(3)], tile=16,
                          tile_batch=tile_batch, progress=progress, cancel=cancel)
    else:
        net = _seeded(LatentNasdmNet(latent_preset("tiny", cond_channels=6, latent_size=4)))

        def run(tile_batch, progress=None, cancel=None):
            return sample_latents(net, _condition(64, 64), default_diffusion(), latent_shape=(32, 8, 8), steps=3,
                                  guidance=1.0, sampler="dpmpp", generators=[torch.Generator().manual_seed(3)],
                                  tile=4, tile_batch=tile_batch, progress=progress, cancel=cancel)
    calls = []
    ref = run(1, progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (27, 27) and len(calls) == 27  # 3 x 3 tiles x 3 steps, one report per tile batch
    for tile_batch in (2, 4, 9, 20):
        # same draws and tile order; only the network's batched float rounding may differ (~1e-6)
        np.testing.assert_allclose(run(tile_batch).numpy(), ref.numpy(), atol=2e-5, rtol=0)
    # cancel mid-canvas (after the 4th tile of the 2nd step): Cancelled, nothing returned
    token = CancelToken()

    def stop(i, n):
        if i == 13:
            token.cancel()

    with pytest.raises(Cancelled):
        run(2, progress=stop, cancel=token)


def test_tiled_canvas_has_no_border_jump_where_naive_tiles_do(tiny_nasdm):
    # on the engine: a 64 px mask with a 32 px model is 3 x 3 tiles, and differs from 4 independent tiles
    engine = NasdmEngine(tiny_nasdm, device="cpu")
    mask = _big_mask(64)
    res = engine.run(NasdmRequest(nuclei=mask, steps=3, seed=4, tile_batch=3))
    again = engine.run(NasdmRequest(nuclei=mask, steps=3, seed=4, tile_batch=9))
    assert res[0].image.shape == (64, 64, 3) and np.array_equal(res[0].nuclei.instances, mask.instances)
    assert np.abs(res[0].image.astype(int) - again[0].image.astype(int)).max() <= 1
    assert any("overlapping tiles" in n for n in res[0].notes)


def test_non_multiple_canvas_is_padded_and_cropped_back(tiny_nasdm):
    engine = NasdmEngine(tiny_nasdm, device="cpu")
    inst = _big_mask(64).instances[:45, :37]
    mask = NucleiMask.create(inst, {int(i): 2 for i in np.unique(inst) if i}, "consep", mpp=0.5)
    res = engine.run(NasdmRequest(nuclei=mask, steps=2))
    assert res[0].image.shape == (45, 37, 3)


def test_cancel_mid_canvas_in_the_engine_returns_nothing(tiny_nasdm):
    engine = NasdmEngine(tiny_nasdm, device="cpu")
    token = CancelToken()
    seen = []

    def progress(i, n):
        seen.append((i, n))
        if i == 5:  # mid-way through the first step's 9 tiles
            token.cancel()

    with pytest.raises(Cancelled):
        engine.run(NasdmRequest(nuclei=_big_mask(64), steps=4, tile_batch=1), progress=progress, cancel=token)
    assert seen[-1] == (5, 36)


def test_too_large_canvas_is_refused_with_a_time_estimate(tiny_nasdm):
    engine = NasdmEngine(tiny_nasdm, device="cpu")
    inst = np.zeros((4200, 40), np.int32)
    inst[5:10, 5:10] = 1
    with pytest.raises(HistogenInputError, match=r"4096x4096 px limit \(about \d+ min"):
        engine.run(NasdmRequest(nuclei=NucleiMask.create(inst, {1: 2}, "consep", mpp=0.5), steps=2))
    problems = NasdmRequest(nuclei=_big_mask(), tile_overlap=0.95, tile_batch=0, tile_weight="gauss").problems()
    assert len(problems) == 3
