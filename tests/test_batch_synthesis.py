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


# --- precision, layout and the latent model's batched path ------------------------------------------------------


def _save_tiny_latent(folder, seed: int = 0):
    """A tiny random latent NASDM (32 px patches, 4 x 4 latents) with the shipped TAEF2, saved as a model file."""
    import torch

    from napari_histogen.core.latent.diffusion import default_diffusion
    from napari_histogen.core.latent.model import LatentNasdmNet, latent_preset
    from napari_histogen.core.nasdm.checkpoint import NasdmModelConfig, save_nasdm
    from napari_histogen.core.schemes import get_scheme

    scheme = get_scheme("consep")
    torch.manual_seed(seed)
    net = LatentNasdmNet(latent_preset("tiny", cond_channels=len(scheme.ids) + 2, latent_size=4))
    with torch.no_grad():  # zero-initialised output layers would make every sample the same
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    config = NasdmModelConfig(unet=net.config.to_dict(), diffusion=default_diffusion(), scheme=scheme.to_dict(),
                              class_ids=list(scheme.ids), mpp=0.5, family="latent",
                              latent={"autoencoder": "taef2", "mean": [0.0] * 32, "std": [1.0] * 32},
                              training={"model_id": "tiny-latent-test", "default_steps": 3,
                                        "default_guidance": 0.5})
    folder.mkdir(parents=True, exist_ok=True)
    return save_nasdm(net, config, folder / "nasdm.safetensors")


@pytest.fixture(scope="module")
def tiny_latent(tmp_path_factory):
    return _save_tiny_latent(tmp_path_factory.mktemp("tiny_latent"))


def _bf16_on_cpu() -> bool:
    from napari_histogen.core.devices import cpu_bf16_supported

    return cpu_bf16_supported()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_latent_run_many_equals_run_at_the_same_precision(tiny_latent, precision):
    if precision == "bf16" and not _bf16_on_cpu():
        pytest.skip("this CPU has no native bf16")
    engine = NasdmEngine(tiny_latent, device="cpu", precision=precision)
    requests = [NasdmRequest(nuclei=_mask(k), n_samples=n, seed=3 * k, batch_size=4) for k, n in ((0, 2), (1, 1),
                                                                                                   (2, 2))]
    batched = engine.run_many(requests)
    for many, request in zip(batched, requests):
        for a, b in zip(many, engine.run(request)):
            assert_same_image(a.image, b.image, precision)
            assert a.provenance["parameters"]["precision"] == ("bfloat16" if precision == "bf16" else "fp32")
    assert np.abs(batched[0][0].image.astype(int) - batched[0][1].image).mean() > 1  # other seed, other image


def test_bf16_images_stay_close_to_fp32(tiny_latent):
    if not _bf16_on_cpu():
        pytest.skip("this CPU has no native bf16")
    request = NasdmRequest(nuclei=_mask(4), n_samples=2, seed=1)
    fp32 = NasdmEngine(tiny_latent, device="cpu", precision="fp32").run(request)
    bf16 = NasdmEngine(tiny_latent, device="cpu", precision="bf16").run(request)
    for a, b in zip(fp32, bf16):
        diff = np.abs(a.image.astype(float) - b.image)
        assert 0 < diff.mean() < 4, diff.mean()  # bf16 really ran, and the image is the same picture


def test_channels_last_gives_the_images_of_the_default_layout(tiny_nasdm, tiny_latent):
    for model in (tiny_nasdm, tiny_latent):
        request = NasdmRequest(nuclei=_mask(5), n_samples=2, seed=2, steps=3)
        # at fp32: the layout alone (bf16 rounds differently per kernel, and random weights amplify it)
        nhwc = NasdmEngine(model, device="cpu", channels_last=True, precision="fp32")
        nchw = NasdmEngine(model, device="cpu", channels_last=False, precision="fp32")
        assert nhwc.channels_last and not nchw.channels_last
        assert NasdmEngine(model, device="cpu").channels_last  # the CPU default
        for a, b in zip(nhwc.run(request), nchw.run(request)):
            assert_same_image(a.image, b.image, str(model))


def test_condition_features_computed_once_equal_encoding_at_every_step():
    import torch

    from napari_histogen.core.latent.diffusion import default_diffusion, sample_latents
    from napari_histogen.core.latent.model import LatentNasdmNet, latent_preset

    torch.manual_seed(0)
    net = LatentNasdmNet(latent_preset("tiny", cond_channels=6, latent_size=4)).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)

    class EveryStep(torch.nn.Module):  # the network without a visible condition encoder: encodes at every call
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z, t, cond):
            return self.inner(z, t, cond)

    cond = torch.zeros(2, 6, 32, 32)
    cond[:, 0] = 1
    cond[0, 0, 4:12, 4:12], cond[0, 2, 4:12, 4:12] = 0, 1
    kw = dict(latent_shape=(32, 4, 4), steps=4, guidance=0.5, sampler="dpmpp")
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    once = sample_latents(net, cond, default_diffusion(), generators=gens(), **kw)
    each = sample_latents(EveryStep(net), cond, default_diffusion(), generators=gens(), **kw)
    assert torch.allclose(once, each, atol=1e-5)
    assert (once[0] - once[1]).abs().mean() > 0.01


def test_latent_decode_one_at_a_time_equals_the_whole_batch():
    import torch

    from napari_histogen.core.latent.sampling import LatentModel
    from napari_histogen.core.latent.taef2 import load_taef2

    class Config:
        latent = {"mean": [0.1] * 32, "std": [0.9] * 32}

    model = LatentModel(torch.nn.Conv2d(1, 1, 1), load_taef2(), Config())
    z = torch.randn(3, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    whole, single = model.decode(z, batch=3), model.decode(z, batch=1)
    assert whole.shape == (3, 3, 32, 32)
    assert torch.allclose(whole, single, atol=1e-5)
    assert torch.equal(model.decode(z), single)  # CPU default: one at a time


def test_precision_choices_on_cpu(tiny_nasdm, monkeypatch):
    import torch

    from napari_histogen.core import devices

    with pytest.raises(HistogenInputError, match="CUDA"):
        NasdmEngine(tiny_nasdm, device="cpu", precision="fp16")
    auto = NasdmEngine(tiny_nasdm, device="cpu").autocast_dtype  # auto on CPU: bf16 where native, else fp32
    assert auto == (torch.bfloat16 if devices.cpu_bf16_supported() else None)
    assert NasdmEngine(tiny_nasdm, device="cpu", precision="fp32").autocast_dtype is None
    monkeypatch.setattr(devices, "cpu_bf16_supported", lambda: False)
    assert NasdmEngine(tiny_nasdm, device="cpu").autocast_dtype is None
    with pytest.raises(HistogenInputError, match="no native bf16"):
        NasdmEngine(tiny_nasdm, device="cpu", precision="bf16")


def test_cli_precision_on_cpu(tiny_nasdm, tmp_path, capsys):
    masks = _mask_folder(tmp_path / "masks", n=2)
    common = ["synthesize", "nasdm", "--mask", str(masks), "--model", str(tiny_nasdm), "--steps", "2",
              "--device", "cpu", "--mask-batch", "2"]
    assert main(common + ["--out", str(tmp_path / "fp16"), "--precision", "fp16"]) == 2
    assert "CUDA" in capsys.readouterr().err
    if not _bf16_on_cpu():
        pytest.skip("this CPU has no native bf16")
    assert main(common + ["--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    prov = json.loads((tmp_path / "bf16" / "m0_s0.json").read_text())
    assert prov["parameters"]["precision"] == "bfloat16"
