"""Latent NASDM: the shipped TAEF2 autoencoder, condition folding, training, resume, sampling."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.latent.diffusion import (  # noqa: E402
    LatentDiffusion,
    default_diffusion,
    make_latent_scheduler,
    sample_latents,
)
from napari_histogen.core.latent.model import ConditionEncoder, LatentNasdmNet, latent_preset  # noqa: E402
from napari_histogen.core.latent.taef2 import load_taef2, taef2_dir  # noqa: E402
from napari_histogen.core.latent.train import LatentTrainSettings, train_latent_nasdm  # noqa: E402
from napari_histogen.core.nasdm.checkpoint import load_nasdm  # noqa: E402
from napari_histogen.core.nasdm.sampling import sample  # noqa: E402
from napari_histogen.core.progress import CancelToken  # noqa: E402
from conftest import write_pairs_dataset  # noqa: E402


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


@pytest.fixture(scope="module")
def taef2():
    return load_taef2()


def test_taef2_round_trip_of_a_cc0_patch_at_40x(taef2):
    from napari_histogen.core.sample import nucls_sample

    image = nucls_sample().image  # 256 px CC0 NuCLS H&E patch at 40x, bundled with the package
    assert image.shape[:2] == (256, 256)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        z = taef2.encode(x)
        back = taef2.decode(z)
    assert z.shape == (1, 32, 32, 32)
    rgb = np.round(back[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert _psnr(rgb, image) > 30.0
    # the decoder is not equivariant to flips (why the training data flips images, not latents)
    with torch.inference_mode():
        flipped = taef2.decode(torch.flip(z, [-1]))[0].permute(1, 2, 0).numpy() * 255
    assert _psnr(flipped, image[:, ::-1]) < _psnr(rgb, image) - 5


def test_taef2_refuses_damaged_weights(tmp_path):
    for name in ("taef2_encoder.safetensors", "taef2_decoder.safetensors"):
        (tmp_path / name).write_bytes((taef2_dir() / name).read_bytes())
    data = bytearray((tmp_path / "taef2_decoder.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "taef2_decoder.safetensors").write_bytes(bytes(data))
    with pytest.raises(HistogenInputError, match="sha256"):
        load_taef2(tmp_path)
    with pytest.raises(HistogenInputError, match="missing"):
        load_taef2(tmp_path / "nowhere")


def test_condition_encoder_sees_a_one_pixel_nucleus():
    torch.manual_seed(0)
    enc = ConditionEncoder(cond_channels=6, downscale=8, features=16)
    cond = torch.zeros(1, 6, 64, 64)
    cond[:, 0] = 1
    base = enc(cond)
    one = cond.clone()
    one[0, 0, 37, 21] = 0
    one[0, 2, 37, 21] = 1  # a single pixel of class channel 2, not on the 8 px grid
    diff = (enc(one) - base).abs().sum(dim=1)[0]
    assert diff[37 // 8, 21 // 8] > 0  # reaches the latent pixel that holds it
    # nearest resizing (what pixel NASDM's SPADE does) drops the same pixel
    near = torch.nn.functional.interpolate(one, size=(8, 8), mode="nearest")
    assert near[0, 2].sum() == 0


def test_one_pixel_nucleus_changes_the_unet_output():
    torch.manual_seed(0)
    net = LatentNasdmNet(latent_preset("tiny", cond_channels=6, latent_size=8))
    for p in net.parameters():  # zero-initialised output convs would hide the effect
        torch.nn.init.normal_(p, std=0.05)
    z = torch.randn(1, 32, 8, 8)
    cond = torch.zeros(1, 6, 64, 64)
    cond[:, 0] = 1
    one = cond.clone()
    one[0, 0, 13, 50] = 0
    one[0, 3, 13, 50] = 1
    t = torch.tensor([500])
    with torch.no_grad():
        assert not torch.allclose(net(z, t, cond), net(z, t, one))
    with pytest.raises(HistogenInputError, match="condition"):
        net(z, t, torch.zeros(1, 6, 32, 32))


def test_v_target_and_min_snr_weights():
    d = LatentDiffusion(default_diffusion("v", 5.0))
    z0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([10, 900])
    a, s = d.sqrt_ac[t].view(-1, 1, 1, 1), d.sqrt_1m_ac[t].view(-1, 1, 1, 1)
    assert torch.allclose(d.target(z0, t, noise), a * noise - s * z0)
    assert torch.allclose(d.q_sample(z0, t, noise), a * z0 + s * noise)
    w = d.loss_weight(t)
    snr = d.snr[t]
    assert torch.allclose(w, torch.clamp(snr, max=5) / (snr + 1))
    assert w[0] < 1 and 0 < w[1] < 1


@pytest.mark.parametrize("sampler", ["dpmpp", "ddim", "ddpm", "dpmpp_sde"])
def test_latent_sampling_is_reproducible_and_batch_independent(sampler):
    torch.manual_seed(0)
    net = LatentNasdmNet(latent_preset("tiny", cond_channels=6, latent_size=4)).eval()
    cond = torch.zeros(2, 6, 32, 32)
    cond[:, 0] = 1
    diff = default_diffusion()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    a = sample_latents(net, cond, diff, latent_shape=(32, 4, 4), steps=4, guidance=1.0, sampler=sampler,
                       generators=gens())
    b = sample_latents(net, cond, diff, latent_shape=(32, 4, 4), steps=4, guidance=1.0, sampler=sampler,
                       generators=gens())
    one = sample_latents(net, cond[1:], diff, latent_shape=(32, 4, 4), steps=4, guidance=1.0, sampler=sampler,
                         generators=gens()[1:])
    assert torch.equal(a, b)
    assert torch.allclose(a[1:], one, atol=1e-5)
    assert len(make_latent_scheduler(sampler, diff, 4).timesteps) == 4


def test_latent_sampling_reuses_the_spade_modulation_with_the_same_latents():
    torch.manual_seed(0)
    net = LatentNasdmNet(latent_preset("tiny", cond_channels=6, latent_size=4)).eval()
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised output layers would make every prediction 0
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    cond = torch.zeros(2, 6, 32, 32)
    cond[:, 0] = 1
    cond[1, 0, 8:16, 8:16], cond[1, 2, 8:16, 8:16] = 0, 1
    diff = default_diffusion()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    calls = []
    for module in net.unet.modules():
        if module.__class__.__name__ == "SpadeGroupNorm":
            module.shared.register_forward_hook(lambda *_: calls.append(1))
    n_spade = len(net.unet._spade_layers())
    reused = sample_latents(net, cond, diff, latent_shape=(32, 4, 4), steps=5, guidance=1.0, generators=gens())
    assert len(calls) == n_spade

    class Wrapped(torch.nn.Module):  # not a NasdmUNet (as a compiled one is not): no reuse
        def __init__(self, unet):
            super().__init__()
            self.inner = unet

        def forward(self, *args):
            return self.inner(*args)

    net.unet = Wrapped(net.unet)
    calls.clear()
    plain = sample_latents(net, cond, diff, latent_shape=(32, 4, 4), steps=5, guidance=1.0, generators=gens())
    assert len(calls) == 5 * n_spade
    assert torch.equal(reused, plain)


def test_few_step_sampler_lands_near_the_exact_probability_flow_endpoint():
    """Gaussian data has a closed-form denoiser and ODE endpoint: DPM-Solver++ in 20 steps
    must land within 0.1 of it, at least twice as close as DDIM with the same steps."""
    diff = default_diffusion("v")
    d = LatentDiffusion(diff)
    mu, sd = 0.2, 0.8  # data ~ N(mu, sd^2) per element

    class Exact(torch.nn.Module):
        def forward(self, z, t, cond):
            a = d.sqrt_ac[t].view(-1, 1, 1, 1)
            s = d.sqrt_1m_ac[t].view(-1, 1, 1, 1)
            x0 = mu + a * sd ** 2 * (z - a * mu) / (a ** 2 * sd ** 2 + s ** 2)
            return a * (z - a * x0) / s - s * x0

    cond = torch.zeros(1, 6, 16, 16)
    z_T = torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(0))
    a, s = d.sqrt_ac[999], d.sqrt_1m_ac[999]
    exact = mu + (z_T - a * mu) * sd / torch.sqrt(a ** 2 * sd ** 2 + s ** 2)  # the ODE's map for Gaussians

    def run(sampler):
        return sample_latents(Exact(), cond, diff, latent_shape=(1, 2, 2), steps=20, guidance=0, sampler=sampler,
                              generators=[torch.Generator().manual_seed(0)])[0]

    err_dpm = float((run("dpmpp") - exact).abs().max())
    err_ddim = float((run("ddim") - exact).abs().max())
    assert err_dpm < 0.1 and err_dpm < err_ddim / 2


def _dataset(folder, n=4, size=64, seed=0):
    return write_pairs_dataset(folder, n, size, seed, mpp=0.25, nucleus_px=6)


def _settings(data, out, **kw):
    base = dict(data=str(data), out=str(out), size="tiny", steps=4, batch_size=2, image_size=64, val_fraction=0.25,
                sample_every=4, checkpoint_every=2, sample_steps=2, device="cpu", min_tissue=0.1, log_every=1,
                transforms=2, warmup=2)
    base.update(kw)
    return LatentTrainSettings(**base)


@pytest.mark.slow
def test_latent_training_resumes_exactly_and_loads_for_sampling(tmp_path):
    data = _dataset(tmp_path / "data")
    straight = train_latent_nasdm(_settings(data, tmp_path / "a"), log_fn=lambda m: None)
    assert straight.step == 4
    run = tmp_path / "a"
    for rel in ("run.json", "log.csv", "samples/step_000004.png", "checkpoints/last/state.json",
                "model/nasdm.safetensors", "model/nasdm.json", "latents/latents_k0.safetensors",
                "latents/latents_k5.safetensors"):
        assert (run / rel).is_file(), rel
    meta = json.loads((run / "model" / "nasdm.json").read_text())
    assert meta["family"] == "latent" and meta["mpp"] == 0.25 and len(meta["latent"]["std"]) == 32
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]

    # stop after 2 steps, then resume to 4: the same weights as the uninterrupted run
    token = CancelToken()
    train_latent_nasdm(_settings(data, tmp_path / "b"), log_fn=lambda m: None,
                       progress=lambda s, t: token.cancel() if s == 2 else None, cancel=token)
    resumed = train_latent_nasdm(_settings(data, tmp_path / "b"), log_fn=lambda m: None)
    assert resumed.step == 4
    a = load_nasdm(run / "model")
    b = load_nasdm(tmp_path / "b" / "model")
    for (name, pa), (_, pb) in zip(a.model.net.state_dict().items(), b.model.net.state_dict().items()):
        assert torch.equal(pa, pb), name
    with pytest.raises(HistogenInputError, match="other"):
        train_latent_nasdm(_settings(data, tmp_path / "b", prediction="epsilon", steps=6), log_fn=lambda m: None)

    # the loaded model samples RGB through the pixel sampler's entry point
    assert a.config.image_size == 64
    cond = torch.zeros(1, 6, 64, 64)
    cond[:, 0] = 1
    out = sample(a.model, cond, a.config.diffusion, steps=2, guidance=1.0, sampler="dpmpp",
                 generators=[torch.Generator().manual_seed(0)])
    assert out.shape == (1, 3, 64, 64) and float(out.min()) >= -1 and float(out.max()) <= 1


@pytest.mark.slow
def test_cli_trains_a_latent_model_and_synthesizes_with_it(tmp_path, capsys):
    from napari_histogen.cli import main

    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["train", "nasdm", "--family", "latent", "--data", str(data), "--out", str(run), "--size", "tiny",
                 "--steps", "2", "--batch-size", "2", "--patch-size", "64", "--min-tissue", "0.1",
                 "--val-fraction", "0.25", "--transforms", "1", "--sample-every", "2", "--sample-steps", "2",
                 "--device", "cpu"])
    assert code == 0
    meta = json.loads((run / "model" / "nasdm.json").read_text())
    assert meta["family"] == "latent" and meta["training"]["steps"] == 2
    # a 20x mask (0.5 µm/px) on the 40x latent model: the image comes back at the mask's scale
    inst = np.zeros((32, 32), np.int32)
    inst[10:16, 10:16] = 1
    np.savez(tmp_path / "mask.npz", inst_map=inst, classes=np.array([[1, 2]]), scheme=np.array("consep"),
             mpp=np.array(0.5))
    out = tmp_path / "out"
    code = main(["synthesize", "nasdm", "--mask", str(tmp_path / "mask.npz"), "--model", str(run / "model"),
                 "--out", str(out), "--steps", "2", "--device", "cpu"])
    assert code == 0
    written = json.loads(next(out.glob("*.json")).read_text())
    params = written.get("parameters", written)
    assert params["sampler"] == "dpmpp" and params["model_mpp"] == 0.25
    from skimage.io import imread

    assert imread(next(p for p in out.glob("*.png") if "side_by_side" not in p.name)).shape[:2] == (32, 32)
