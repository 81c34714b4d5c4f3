"""The NASDM engine, batch synthesis and CLI on a tiny checkpoint (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_histogen.cli import main  # noqa: E402
from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.io.dispatch import read_annotated  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402
from napari_histogen.core.progress import CancelToken, Cancelled  # noqa: E402


def _mask(shape=(32, 32), scheme="consep", mpp=0.5):
    inst = np.zeros(shape, np.int32)
    inst[3:10, 3:10] = 4
    inst[12:18, 15:24] = 7
    inst[20:26, 4:9] = 9
    return NucleiMask.create(inst, {4: 3, 7: 2, 9: 4}, scheme, mpp=mpp)


@pytest.fixture(scope="module")
def engine(tiny_nasdm):
    return NasdmEngine(tiny_nasdm, device="cpu")


def test_engine_is_reproducible_and_records_provenance(engine):
    calls = []
    req = NasdmRequest(nuclei=_mask(), n_samples=3, steps=6, seed=11, batch_size=2)
    a = engine.run(req, progress=lambda i, n: calls.append((i, n)))
    b = engine.run(NasdmRequest(nuclei=_mask(), n_samples=1, steps=6, seed=12))
    assert len(a) == 3 and a[0].image.shape == (32, 32, 3) and a[0].image.dtype == np.uint8
    assert np.array_equal(a[1].image, b[0].image)  # sample k uses seed + k, whatever the batch
    assert not np.array_equal(a[0].image, a[1].image)
    assert calls[-1] == (12, 12)  # 2 batches x 6 steps
    p = a[2].provenance["parameters"]
    assert p["engine"] == "nasdm" and p["seed"] == 13 and p["steps"] == 6 and p["guidance"] == 1.5
    assert len(p["model_sha256"]) == 64 and p["model_sha256_checked"] is True
    assert p["mask_sha256"] and p["device"] == "cpu"
    assert np.array_equal(a[0].nuclei.instances, _mask().instances)


def test_smaller_mask_is_padded_and_cropped_back(engine):
    res = engine.run(NasdmRequest(nuclei=_mask().__class__.create(_mask().instances[:28, :30], {4: 3, 7: 2, 9: 4},
                                                                    "consep", mpp=0.5), steps=3))
    assert res[0].image.shape == (28, 30, 3)
    assert any("padded" in n for n in res[0].notes)


def test_40x_mask_is_resampled_to_the_model_scale(engine):
    big = NucleiMask.create(np.kron(_mask().instances, np.ones((2, 2), np.int32)), {4: 3, 7: 2, 9: 4}, "consep",
                            mpp=0.25)
    res = engine.run(NasdmRequest(nuclei=big, steps=3))
    assert res[0].image.shape == (32, 32, 3) and res[0].nuclei.mpp == 0.5
    assert any("resampled" in n for n in res[0].notes)
    with pytest.raises(HistogenInputError, match="µm/px"):
        engine.run(NasdmRequest(nuclei=big, steps=3, resample=False))


@pytest.mark.parametrize("mask, message", [
    (lambda: NucleiMask.create(np.zeros((32, 32), np.int32), {}, "consep", mpp=0.5), "empty"),
    (lambda: _mask(scheme="lizard"), "trained on 'consep'"),
    (lambda: NucleiMask.create(np.pad(_mask().instances, ((0, 4200), (0, 0))), {4: 3, 7: 2, 9: 4}, "consep",
                               mpp=0.5), "4096x4096 px limit"),
    (lambda: NucleiMask.create(_mask().instances, {4: 3}, "consep", mpp=0.5), "no class"),
])
def test_bad_masks_get_clear_messages(engine, mask, message):
    with pytest.raises(HistogenInputError, match=message):
        engine.run(NasdmRequest(nuclei=mask(), steps=2))


def test_cancel_leaves_no_output(engine):
    token = CancelToken()

    def progress(i, n):
        if i == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        engine.run(NasdmRequest(nuclei=_mask(), n_samples=2, steps=50), progress=progress, cancel=token)


def test_missing_default_model_message(monkeypatch, tmp_path):
    from napari_histogen.core.models import registry

    monkeypatch.setattr(registry, "embedded_nasdm_dir", lambda name="default": tmp_path / "none")
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    with pytest.raises(HistogenInputError, match="no embedded NASDM model"):
        NasdmEngine("default", device="cpu")
    with pytest.raises(HistogenInputError, match="No NASDM model 'nope'"):
        NasdmEngine("nope", device="cpu")


def _write_mask_npz(path, nuclei):
    table = np.array(sorted(nuclei.classes.items())).reshape(-1, 2)
    np.savez(path, inst_map=nuclei.instances, classes=table, scheme=np.array(nuclei.scheme.name),
             mpp=np.array(nuclei.mpp))


def test_cli_synthesize_folder_with_tiles_and_a_bad_mask(tiny_nasdm, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    _write_mask_npz(masks / "a.npz", _mask())
    big = NucleiMask.create(np.tile(_mask().instances, (2, 2)), {4: 3, 7: 2, 9: 4}, "consep", mpp=0.5)
    _write_mask_npz(masks / "big.npz", big)
    _write_mask_npz(masks / "wrong.npz", _mask(scheme="lizard"))
    out = tmp_path / "out"
    rc = main(["synthesize", "nasdm", "--mask", str(masks), "--model", str(tiny_nasdm), "--out", str(out),
               "--n", "2", "--steps", "3", "--seed", "5", "--tile", "--device", "cpu"])
    text = capsys.readouterr()
    assert rc == 0, text
    assert "skipped 1 mask" in text.out and "wrong.npz" in text.out
    pngs = sorted(p.name for p in out.glob("*_s*.png") if "side_by_side" not in p.name)
    assert pngs == ["a_s5.png", "a_s6.png"] + [f"big_r{r}_c{c}_s{s}.png" for r in (0, 32) for c in (0, 32) for s in (5, 6)]
    # every pair reads back: the image with the mask it matches, pixel for pixel
    item = read_annotated(out / "a_s5.npz")
    assert np.array_equal(item.nuclei.instances, _mask().instances) and item.image.shape == (32, 32, 3)
    prov = json.loads((out / "a_s5.json").read_text())
    assert prov["parameters"]["seed"] == 5 and prov["parameters"]["mask_source"]
    assert (out / "a_s5_side_by_side.png").is_file() and (out / "a_s5.ome.tif").is_file()


def test_cli_synthesize_bad_inputs_exit_2(tiny_nasdm, tmp_path, capsys):
    rc = main(["synthesize", "nasdm", "--mask", str(tmp_path / "none.npz"), "--model", str(tiny_nasdm),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "No mask file" in capsys.readouterr().err
    _write_mask_npz(tmp_path / "m.npz", _mask())
    rc = main(["synthesize", "nasdm", "--mask", str(tmp_path / "m.npz"), "--model", str(tmp_path / "nope.safetensors"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "No NASDM model" in capsys.readouterr().err


def test_requests_left_open_take_the_models_recommendations(engine):
    from napari_histogen.core.engines.nasdm import recommended_settings

    rec = recommended_settings(engine.config, "cpu")
    assert rec == {"steps": 75, "guidance": 1.5, "sampler": "ddpm", "variance": "learned"}
    assert recommended_settings(engine.config, "cuda")["steps"] == 250
    engine.config.training["sampler_variance"] = "fixed_small"
    engine.config.training["default_guidance"] = 0.5
    try:
        out = engine.run(NasdmRequest(nuclei=_mask(), steps=3))[0].provenance["parameters"]
    finally:
        del engine.config.training["sampler_variance"], engine.config.training["default_guidance"]
    assert (out["variance"], out["guidance"], out["sampler"]) == ("fixed_small", 0.5, "ddpm")
    with pytest.raises(HistogenInputError, match="Unknown sampler"):
        engine.run(NasdmRequest(nuclei=_mask(), steps=3, sampler="euler"))


def test_pixel_dpm_solver_is_deterministic_and_follows_the_ode(engine):
    """DPM-Solver++ on a pixel model: same image twice; on Gaussian data, whose probability-flow
    ODE has a closed form, 20 steps land closer to the exact end point than DDIM's 20."""
    import torch

    from napari_histogen.core.nasdm.sampling import make_scheduler, sample

    first = engine.run(NasdmRequest(nuclei=_mask(), steps=4, sampler="dpmpp"))[0]
    again = engine.run(NasdmRequest(nuclei=_mask(), steps=4, sampler="dpmpp"))[0]
    assert first.provenance["parameters"]["sampler"] == "dpmpp"
    assert np.array_equal(first.image, again.image)
    # the SDE variant draws each step's noise from the sample's own generator
    pair = engine.run(NasdmRequest(nuclei=_mask(), steps=4, sampler="dpmpp_sde", n_samples=2, seed=5, batch_size=2))
    alone = engine.run(NasdmRequest(nuclei=_mask(), steps=4, sampler="dpmpp_sde", n_samples=1, seed=6))[0]
    assert np.array_equal(pair[1].image, alone.image) and not np.array_equal(pair[0].image, alone.image)
    assert not np.array_equal(alone.image, engine.run(NasdmRequest(nuclei=_mask(), steps=4, sampler="dpmpp",
                                                                   seed=6))[0].image)

    diffusion = {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    alphas_cumprod = make_scheduler("ddim", diffusion, 10).alphas_cumprod.double()
    mu, sd = 0.2, 0.3  # data ~ N(mu, sd^2) per element, well inside [-1, 1]

    class Exact(torch.nn.Module):  # the optimal noise prediction for that data, [eps, variance] channels
        def forward(self, x, t, cond):
            a = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
            s = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
            x0 = mu + a * sd ** 2 * (x.double() - a * mu) / (a ** 2 * sd ** 2 + s ** 2)
            eps = (x.double() - a * x0) / s
            return torch.cat([eps, torch.zeros_like(eps)], 1).float()

    cond = torch.zeros(1, 6, 4, 4)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn((3, 4, 4), generator=gen).double()
    a, s = alphas_cumprod[999].sqrt(), (1 - alphas_cumprod[999]).sqrt()
    exact = mu + (x_T - a * mu) * sd / torch.sqrt(a ** 2 * sd ** 2 + s ** 2)

    def run(sampler):
        return sample(Exact(), cond, diffusion, steps=20, guidance=0, sampler=sampler,
                      generators=[torch.Generator().manual_seed(0)])[0].double()

    err_dpm = float((run("dpmpp") - exact).abs().max())
    err_ddim = float((run("ddim") - exact).abs().max())
    assert err_dpm < 0.05 and err_dpm < err_ddim / 2


def test_fixed_small_variance_differs_from_learned_and_is_reproducible(engine):
    fixed = engine.run(NasdmRequest(nuclei=_mask(), steps=4, variance="fixed_small"))[0].image
    again = engine.run(NasdmRequest(nuclei=_mask(), steps=4, variance="fixed_small"))[0].image
    learned = engine.run(NasdmRequest(nuclei=_mask(), steps=4, variance="learned"))[0].image
    assert np.array_equal(fixed, again) and not np.array_equal(fixed, learned)
