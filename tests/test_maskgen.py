"""Mask generation (NASDM++, issue 17): the type vector, guidance, decoding, the engine, training."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402


def tiny_net(seed=0):
    from napari_histogen.core.maskgen.model import MaskGenNet, MaskGenNetConfig

    torch.manual_seed(seed)
    net = MaskGenNet(MaskGenNetConfig(channels=6, n_types=4, block_out_channels=[8, 16], attention_levels=[1],
                                      norm_num_groups=4))
    with torch.no_grad():  # zero-initialised layers would hide the condition's effect
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net.eval()


def save_tiny_maskgen(folder, *, image_size=32, mpp=0.5, seed=0):
    """A tiny random mask-generation model (CoNSeP classes) saved to ``folder``; its weights path."""
    from napari_histogen.core.maskgen.checkpoint import MaskGenConfig, save_maskgen
    from napari_histogen.core.maskgen.diffusion import default_diffusion
    from napari_histogen.core.schemes import get_scheme

    net = tiny_net(seed)
    scheme = get_scheme("consep")
    config = MaskGenConfig(net=net.config.to_dict(), diffusion=default_diffusion(), scheme=scheme.to_dict(),
                           class_ids=list(scheme.ids), mpp=mpp, image_size=image_size,
                           training={"default_steps": 4, "default_guidance": 1.0})
    return save_maskgen(net, config, folder / "maskgen.safetensors")


@pytest.fixture(scope="module")
def tiny_maskgen(tmp_path_factory):
    return save_tiny_maskgen(tmp_path_factory.mktemp("tiny_maskgen"))


def _touching():
    inst = np.zeros((32, 32), np.int32)
    inst[4:12, 4:12] = 1
    inst[4:12, 12:20] = 2  # touches 1
    inst[20:28, 6:14] = 3
    inst[18:30, 20:28] = 4
    return inst, {1: 3, 2: 3, 3: 2, 4: 4}


def test_type_vector_reaches_the_network_and_its_linear_map_learns():
    net = tiny_net()
    x = torch.randn(2, 6, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    a = net(x, t, torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    b = net(x, t, torch.tensor([[0.0, 0, 1, 0], [0.0, 1, 1, 0]]))
    assert not torch.allclose(a, b, atol=1e-5)
    net.train()
    out = net(x, t, torch.tensor([[0.0, 1, 1, 0], [1.0, 0, 0, 1]]))
    out.pow(2).mean().backward()
    assert net.type_embed.weight.grad is not None and net.type_embed.weight.grad.abs().sum() > 0
    with pytest.raises(HistogenInputError, match="type vector"):
        net(x, t, torch.zeros(2, 3))


def test_guidance_changes_the_output_and_the_null_vector_is_unconditional():
    from napari_histogen.core.maskgen.diffusion import guided_output

    net = tiny_net()
    x = torch.randn(1, 6, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(300)
    y = torch.tensor([[0.0, 1, 1, 0]])
    with torch.no_grad():
        plain = guided_output(net, x, t, y, 0.0)
        guided = guided_output(net, x, t, y, 2.0)
        null0 = guided_output(net, x, t, torch.zeros_like(y), 0.0)
        null2 = guided_output(net, x, t, torch.zeros_like(y), 2.0)
    assert not torch.allclose(plain, guided, atol=1e-5)
    assert torch.allclose(null0, null2, atol=1e-5)  # out(null) + s (out(null) - out(null))


def test_encode_then_decode_separates_touching_nuclei_and_keeps_classes():
    from napari_histogen.core.maskgen.target import decode_mask, encode_mask, type_vector

    inst, classes = _touching()
    target = encode_mask(inst, classes, (1, 2, 3, 4))
    assert target.shape == (6, 32, 32) and target.min() >= -1 and target.max() <= 1
    assert np.array_equal(inst, _touching()[0])  # the input is not changed
    assert type_vector(classes, (1, 2, 3, 4)).tolist() == [0, 1, 1, 1]
    mask = decode_mask(target, (1, 2, 3, 4), "consep", mpp=0.5)
    assert isinstance(mask, NucleiMask) and mask.scheme.name == "consep" and mask.mpp == 0.5
    assert mask.n_nuclei == 4  # 1 and 2 touch and are still apart
    for k, cls in classes.items():
        ids = np.unique(mask.instances[inst == k])
        assert len(ids) == 1 and ids[0] != 0
        assert np.array_equal(mask.instances == ids[0], inst == k)
        assert mask.classes[int(ids[0])] == cls
    fine = decode_mask(target, (1, 2, 3, 4), "consep", mpp=0.5, out_mpp=0.25)
    assert fine.shape == (64, 64) and fine.mpp == 0.25 and fine.n_nuclei == 4
    assert sorted(fine.classes.values()) == sorted(classes.values())
    with pytest.raises(HistogenInputError, match="Expected a"):
        decode_mask(target[:5], (1, 2, 3, 4), "consep", mpp=0.5)


def test_engine_outputs_valid_masks_with_provenance_and_is_seeded(tiny_maskgen):
    from napari_histogen.core.engines.base import create_engine
    from napari_histogen.core.engines.maskgen import MaskGenRequest

    engine = create_engine("maskgen", tiny_maskgen, device="cpu")
    req = MaskGenRequest(types=["epithelial", "Inflammatory"], n_samples=2, seed=3, steps=3, mpp=0.25)
    calls = []
    results = engine.run(req, progress=lambda d, t: calls.append((d, t)))
    assert len(results) == 2 and calls[-1][0] == calls[-1][1]
    for k, res in enumerate(results):
        assert isinstance(res.mask, NucleiMask) and res.mask.scheme.name == "consep"
        assert res.mask.shape == (64, 64) and res.mask.mpp == 0.25
        assert set(res.mask.classes.values()) <= {1, 2, 3, 4}
        prov = res.provenance
        assert prov["parameters"]["engine"] == "maskgen" and prov["parameters"]["types"] == ["epithelial", "inflammatory"]
        assert prov["parameters"]["type_vector"] == [0.0, 1.0, 1.0, 0.0] and res.seed == 3 + k
        assert res.image.shape == (64, 64, 3) and res.extras["image_kind"] == "mask rendering"
    again = engine.run(MaskGenRequest(types=[3, 2], n_samples=1, seed=4, steps=3, mpp=0.25))
    assert np.array_equal(again[0].mask.instances, results[1].mask.instances)
    with pytest.raises(HistogenInputError, match="Unknown nucleus type 'tumour'"):
        engine.run(MaskGenRequest(types=["tumour"], steps=3))
    assert any("Steps must be" in p for p in engine.check(MaskGenRequest(steps=0)))
    assert any("Unknown sampler 'euler'" in p for p in engine.check(MaskGenRequest(sampler="euler")))
    engine.free()
    with pytest.raises(HistogenInputError, match="freed"):
        engine.run(MaskGenRequest(steps=3))


def test_the_long_ancestral_chain_is_seeded_per_mask_and_recorded(tiny_maskgen):
    """``sampler="ddpm"`` (the reference chain of the few-step check) draws its step noise from
    each mask's own generator: mask k is the same alone or in a batch."""
    from napari_histogen.core.engines.base import create_engine
    from napari_histogen.core.engines.maskgen import MaskGenRequest

    engine = create_engine("maskgen", tiny_maskgen, device="cpu")
    kw = dict(types=["epithelial"], steps=6, mpp=0.5, sampler="ddpm")
    pair = engine.run(MaskGenRequest(n_samples=2, seed=5, batch_size=2, **kw))
    alone = engine.run(MaskGenRequest(n_samples=1, seed=6, **kw))[0]
    assert pair[1].provenance["parameters"]["sampler"] == "ddpm"
    assert alone.mask.n_nuclei > 0 and np.array_equal(alone.mask.instances, pair[1].mask.instances)
    ode = engine.run(MaskGenRequest(n_samples=1, seed=6, types=["epithelial"], steps=6, mpp=0.5))[0]
    assert ode.provenance["parameters"]["sampler"] == "dpmpp"
    engine.free()


def test_damaged_weights_are_refused(tmp_path):
    from napari_histogen.core.maskgen.checkpoint import load_maskgen

    path = save_tiny_maskgen(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HistogenInputError, match="sha256"):
        load_maskgen(tmp_path)


@pytest.mark.slow
def test_trainer_resumes_exactly(tmp_path):
    from conftest import write_pairs_dataset

    from napari_histogen.core.maskgen.train import MaskGenTrainSettings, train_maskgen
    from safetensors.torch import load_file

    data = write_pairs_dataset(tmp_path / "data", n=4, size=64, nucleus_px=6)

    def settings(out, steps):
        return MaskGenTrainSettings(data=str(data), out=str(out), image_size=32, crop=16, steps=steps, batch_size=4,
                                    block_out_channels=[8, 16], attention_levels=[1], sample_every=1000,
                                    checkpoint_every=2, sample_steps=2, val_fraction=0.25, precision="fp32",
                                    device="cpu", threads=1)

    whole = train_maskgen(settings(tmp_path / "whole", 4), log_fn=lambda m: None)
    train_maskgen(settings(tmp_path / "parts", 2), log_fn=lambda m: None)
    resumed = train_maskgen(settings(tmp_path / "parts", 4), log_fn=lambda m: None)
    assert whole.step == resumed.step == 4
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k]) for k in a)
    assert resumed.sample_grids and resumed.sample_grids[-1].is_file()
    with pytest.raises(HistogenInputError, match="other crop"):
        s = settings(tmp_path / "parts", 6)
        s.crop = 32
        train_maskgen(s, log_fn=lambda m: None)


@pytest.mark.slow
def test_cli_generates_masks_then_images_in_every_format(tmp_path, tiny_maskgen, capsys):
    from conftest import save_tiny_nasdm

    from napari_histogen.cli import main
    from napari_histogen.core.io.dispatch import read_annotated
    from napari_histogen.core.nasdm.data import build_patch_set

    nasdm = save_tiny_nasdm(tmp_path / "nasdm")
    out = tmp_path / "gen"
    code = main(["generate", "--types", "epithelial,inflammatory", "--n", "2", "--out", str(out), "--mask-model",
                 str(tiny_maskgen), "--image-model", str(nasdm), "--steps", "3", "--image-steps", "2", "--seed", "5"])
    assert code == 0, capsys.readouterr()
    assert "Wrote 2 image + mask pairs" in capsys.readouterr().out
    for name in ("generated_s000005", "generated_s000006"):
        for suffix in (".png", ".npz", ".ome.tif", "_side_by_side.png", ".json"):
            assert (out / "pairs" / f"{name}{suffix}").is_file()
        for rel in ("images/{}.png", "labels/{}.npz", "labels/{}_inst.npy", "labels/{}_inst.tif",
                    "labels/{}_type.npy", "labels/{}_type.png"):
            assert (out / "dataset" / rel.format(name)).is_file()
        prov = json.loads((out / "pairs" / f"{name}.json").read_text())["parameters"]
        assert prov["mask"]["parameters"]["types"] == ["epithelial", "inflammatory"]
        assert prov["mask_model_sha256"] and prov["image_model_sha256"]
        item = read_annotated(out / "pairs" / f"{name}.png")
        inst = np.load(out / "dataset" / "labels" / f"{name}_inst.npy")
        assert np.array_equal(item.nuclei.instances, inst) and item.nuclei.scheme.name == "consep"
    patches = build_patch_set(out / "dataset", target_mpp=0.5, patch_size=32, min_tissue=0.0, val_fraction=0.0)
    assert len(patches.train) == 2  # the NASDM trainer reads the dataset layout
    # masks only, and bad input as one line
    assert main(["generate", "--types", "spindle", "--n", "1", "--out", str(tmp_path / "m"), "--mask-model",
                 str(tiny_maskgen), "--image-model", str(nasdm), "--steps", "2", "--masks-only"]) == 0
    assert (tmp_path / "m" / "masks" / "generated_s000000.npz").is_file()
    capsys.readouterr()
    assert main(["generate", "--types", "tumour", "--out", str(tmp_path / "x"), "--mask-model",
                 str(tiny_maskgen), "--masks-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Unknown nucleus type 'tumour'" in err and len(err.splitlines()) == 1


def test_embedded_default_generates_the_requested_types():
    """The shipped model loads by name (sha256 checked) and draws epithelial-only masks when asked."""
    from napari_histogen.core.engines.maskgen import MaskGenEngine, MaskGenRequest
    from napari_histogen.core.models.registry import embedded_maskgen_sha256, list_maskgen_models, resolve_maskgen

    assert "default" in list_maskgen_models()
    assert embedded_maskgen_sha256("default")
    engine = MaskGenEngine(resolve_maskgen(None), device="cpu")
    try:
        (result,) = engine.run(MaskGenRequest(types=["epithelial"], n_samples=1, seed=3, steps=8))
    finally:
        engine.free()
    mask = result.mask
    assert isinstance(mask, NucleiMask) and mask.scheme.name == "consep"
    assert mask.n_nuclei >= 5
    classes = np.array(list(mask.classes.values()))
    assert np.mean(classes == 3) >= 0.8  # epithelial, the type asked for
    assert result.provenance["parameters"]["sampler"] == "dpmpp_sde"  # the recommendation of its card
