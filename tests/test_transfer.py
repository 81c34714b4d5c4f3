"""Zero-shot appearance transfer (mask-guided cross-image attention) on a tiny random Stable Diffusion.

The tiny model is saved in the Stable Diffusion folder layout and loaded through the same code
as real weights. Its images are 64 px (latent 8x8), so the paper's swap resolutions (32x32 and
64x64 tokens at 512 px) fall on its 4x4 and 8x8 decoder levels. Most tests run a short chain
(20 steps, 4 skipped) with ranges moved to fit; one checks the paper's defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from napari_histogen.core.engines.transfer import TransferEngine, TransferRequest  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.progress import Cancelled, CancelToken  # noqa: E402
from napari_histogen.core.transfer import adain as adain_mod  # noqa: E402
from napari_histogen.core.transfer.attention import explicit_attention, swap_layer_names  # noqa: E402
from napari_histogen.core.transfer.inversion import inversion_cache, make_schedule  # noqa: E402
from napari_histogen.core.transfer.models import load_stable_diffusion  # noqa: E402
from napari_histogen.core.transfer.pipeline import TransferRecord, TransferRunner  # noqa: E402
from napari_histogen.core.transfer.render import augment, class_colours, render_structure  # noqa: E402
from napari_histogen.core.transfer.settings import SwapRange, TransferSettings  # noqa: E402
from napari_histogen.core.transfer.tiny import save_tiny_stable_diffusion, sd15_scheduler_config  # noqa: E402

# a short chain: 16 steps run (0..15); swap ranges in the reference's lagged step counter: at 4x4
# tokens for counter 2-8 (steps 3-9), at 8x8 for counter 3-12 (steps 4-13); structure keys/values
# at counter 5 and 10 (steps 6 and 11); AdaIN after steps 4-15
FAST = dict(steps=20, skip_steps=4, swap_ranges=(SwapRange(32, 2, 9), SwapRange(64, 3, 13)), structure_kv_every=5,
            structure_kv_until=12, adain_start=4, adain_end=16)


@pytest.fixture(scope="module")
def parts(tiny_sd):
    return load_stable_diffusion(str(tiny_sd), device="cpu")


@pytest.fixture
def engine(parts):
    inversion_cache().clear()
    return TransferEngine(parts=parts, device="cpu")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image[:, 32:] = (image[:, 32:] * 0.5 + np.array([120, 60, 30])).astype(np.uint8)  # a "stroma" half
    source_mask = np.zeros((64, 64), np.int32)
    source_mask[:, 32:] = 2
    source_mask[8:30, 4:26] = 1
    target = np.zeros((64, 64), np.int32)
    target[32:, :] = 2
    target[4:26, 30:60] = 1
    return image, source_mask, target


def _fast(**kw):
    return TransferSettings(**{**FAST, **kw})


def _request(source_image, target_mask, source_mask=None, **kw):
    """A transfer request from plain arrays, one output unless said otherwise."""
    kw.setdefault("n_outputs", 1)
    return TransferRequest.from_arrays(source_image, target_mask, source_mask, **kw)


# -- settings and models -------------------------------------------------------------------
def test_defaults_are_the_papers():
    s = TransferSettings()
    assert (s.steps, s.skip_steps, s.steps_run) == (100, 32, 68)
    assert s.swap_ranges == (SwapRange(32, 10, 70), SwapRange(64, 10, 90))
    assert s.swap_sides(64) == {32: (10, 70), 64: (10, 90)}  # SD 1.5 at 512 px
    assert s.swap_sides(8) == {4: (10, 70), 8: (10, 90)}  # the same decoder levels of a 64 px model
    assert (s.adain, s.adain_start, s.adain_end) == ("masked", 20, 100)
    assert s.contrast == 1.67
    assert s.swap_guidance(0) == 3.5 and s.swap_guidance(67) == pytest.approx(1.75)
    assert s.swap_guidance(33) == pytest.approx(3.5 - 1.75 * 33 / 67)  # linear
    assert (s.inversion, s.inversion_guidance, s.inversion_guidance_used) == ("edit_friendly", 3.5, 3.5)
    assert TransferSettings(inversion="ddim").inversion_guidance_used == 1.0  # DDIM must round-trip
    assert s.freeu and s.render == "mean"
    # the reference's counter lags one step: structure keys/values at steps 11, 16, ..., 36
    assert [s.structure_step(k) for k in (11, 16, 36, 41, 12, 10)] == [True, True, True, False, False, False]
    sched = make_schedule(sd15_scheduler_config(), 100, 32)
    assert sched.chain_timesteps[0] == 991 and sched.chain_timesteps[-1] == 1 and len(sched.chain_timesteps) == 100
    assert sched.timesteps[0] == 671 and len(sched) == 68


def test_settings_are_checked():
    with pytest.raises(HistogenInputError, match="Skipped steps"):
        TransferSettings(steps=10, skip_steps=10).check()
    with pytest.raises(HistogenInputError, match="AdaIN mode"):
        TransferSettings(adain="local").check()
    with pytest.raises(HistogenInputError, match="multiple of 64"):
        TransferSettings(size=300).check()
    back = TransferSettings.from_dict(json.loads(json.dumps(TransferSettings().to_dict())))
    assert back == TransferSettings()


def test_model_folder_loads_once_with_clip_text_encoder(tiny_sd, parts):
    from transformers import CLIPTextModel, CLIPTokenizer

    assert sorted(p.name for p in tiny_sd.iterdir()) == ["model_index.json", "scheduler", "text_encoder", "tokenizer",
                                                         "unet", "vae"]
    assert load_stable_diffusion(str(tiny_sd), device="cpu") is parts  # loaded once, kept
    assert isinstance(parts.tokenizer, CLIPTokenizer) and isinstance(parts.text_encoder, CLIPTextModel)
    assert parts.native_size == 64 and parts.vae_scale_factor == 8
    emb = parts.encode_prompt("a photo of stained tissue")
    assert emb.shape == (1, 77, 32)
    assert not torch.equal(emb, parts.encode_prompt("an ihc image"))
    assert parts.sha256 and len(parts.sha256) == 64


def test_prompt_embeddings_file_replaces_the_text_encoder(tmp_path):
    folder = save_tiny_stable_diffusion(tmp_path / "sd", text_encoder=False, prompt_embeds=True)
    parts = load_stable_diffusion(str(folder), device="cpu")
    assert parts.text_encoder is None
    assert parts.encode_prompt(TransferSettings().prompt).shape == (1, 77, 32)
    with pytest.raises(HistogenInputError, match="holds embeddings only for"):
        parts.encode_prompt("another prompt")


def _no_network(monkeypatch):
    """Any connection attempt fails the test (offline failures must not wait for a network)."""
    import socket

    def refuse(*_a, **_k):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_missing_weights_say_what_to_do_without_the_network(tmp_path, monkeypatch):
    from napari_histogen.core.models.stable_diffusion import resolve_stable_diffusion

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HISTOGEN_SD_MODEL", raising=False)
    _no_network(monkeypatch)  # fails from the file system alone: no download, no retries
    for spec in (None, "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        with pytest.raises(HistogenInputError) as err:
            TransferEngine(spec, device="cpu")
        assert "histogen models fetch" in str(err.value) and "copy" in str(err.value)
    with pytest.raises(HistogenInputError, match="No model folder"):
        resolve_stable_diffusion(str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(HistogenInputError, match="lacks"):
        resolve_stable_diffusion(str(tmp_path / "half"))


def test_hub_id_found_in_a_copied_hugging_face_cache(tiny_sd, tmp_path, monkeypatch):
    import shutil

    from napari_histogen.core.models.stable_diffusion import resolve_stable_diffusion

    repo = tmp_path / "hf" / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    shutil.copytree(tiny_sd, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    found = resolve_stable_diffusion("sd15")
    assert found.source == "hf-cache" and found.path == repo / "snapshots" / "abc123"
    monkeypatch.setenv("HISTOGEN_SD_MODEL", str(tiny_sd))
    assert resolve_stable_diffusion(None).path == tiny_sd.resolve()


def test_models_fetch_offline_fails_without_the_network(tmp_path, monkeypatch):
    from napari_histogen.cli_transfer import add_models_fetch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    add_models_fetch(parser.add_subparsers().add_parser("models"))
    args = parser.parse_args(["models", "fetch", "sd15", "--out", str(tmp_path / "sd15")])
    _no_network(monkeypatch)
    with pytest.raises(HistogenInputError, match="HF_HUB_OFFLINE"):
        args.func(args)


# -- the algorithm ----------------------------------------------------------------------------
def _plain_denoise(parts, inv, settings):
    """Inversion then denoising with diffusers' own DDIMScheduler.step: the reference for 'no swap, no AdaIN'."""
    from diffusers import DDIMScheduler

    from napari_histogen.core.transfer.freeu import FreeUHooks

    sched = DDIMScheduler.from_config(parts.scheduler_config)
    sched.set_timesteps(settings.steps)
    cond = parts.encode_prompt(settings.prompt)
    x = inv.x_start.clone()
    eta = 1.0 if inv.kind == "edit_friendly" else 0.0
    hooks = FreeUHooks(parts.unet) if settings.freeu else contextlib.nullcontext()
    with torch.inference_mode(), hooks:
        for k, t in enumerate(sched.timesteps[settings.skip_steps:]):
            eps = parts.unet(x, t, encoder_hidden_states=cond).sample
            x = sched.step(eps, t, x, eta=eta, variance_noise=None if inv.zs is None else inv.zs[:, k]).prev_sample
    return x


@pytest.mark.slow
@pytest.mark.parametrize("inversion", ["edit_friendly", "ddim"])
@pytest.mark.parametrize("mode", ["optimised", "straightforward"])
def test_without_swap_and_adain_it_is_plain_inversion_then_denoising(parts, data, inversion, mode):
    image, _, target = data
    s = _fast(inversion=inversion, swap=False, adain="off")
    runner = TransferRunner(parts, s, mode=mode)
    structure = render_structure(target, class_colours(image, None))
    inv = runner.invert(runner.encode(structure), [3])
    out = runner.transfer(inv, inv)
    np.testing.assert_allclose(out.numpy(), _plain_denoise(parts, inv, s).numpy(), atol=1e-4)


def test_engine_without_swap_and_adain_decodes_the_plain_reconstruction(engine, parts, data):
    image, source_mask, target = data
    s = _fast(swap=False, adain="off")
    result = engine.run(_request(image, target, source_mask, seed=5, augment=False, settings=s))[0]
    runner = TransferRunner(parts, s)
    structure = render_structure(target, class_colours(image, source_mask))
    expected = runner.decode(_plain_denoise(parts, runner.invert(runner.encode(structure), [5]), s))[0]
    assert np.abs(result.image.astype(int) - expected).max() <= 1
    assert np.array_equal(result.mask.labels, target)


@pytest.mark.slow
def test_appearance_equal_to_structure_keeps_the_structure(engine, data):
    image, source_mask, target = data
    structure = render_structure(target, class_colours(image, source_mask))
    s = _fast()
    plain = engine.run(_request(structure, target, target, augment=False, settings=_fast(swap=False, adain="off")))[0]
    same = engine.run(_request(structure, target, target, augment=False, settings=s))[0]
    other = engine.run(_request(image, target, source_mask, augment=False, settings=s))[0]

    def diff(a, b):
        return np.abs(a.image.astype(float) - b.image).mean()

    assert diff(same, plain) < 0.25 * diff(other, plain)
    # without attention contrast the swap of identical keys/values changes nothing at all
    same_flat = engine.run(_request(structure, target, target, augment=False, settings=_fast(contrast=1.0)))[0]
    assert diff(same_flat, plain) < 0.05


@pytest.mark.slow
def test_swapped_layers_and_steps_are_exactly_the_configured_ones(engine, parts, data):
    image, source_mask, target = data
    s = _fast()
    record = TransferRecord(keep_tensors=False)
    engine.run(_request(image, target, source_mask, settings=s), record=record)
    steps = {4: range(3, 10), 8: range(4, 14)}  # counter ranges (2, 9) and (3, 13), read one step late
    layers = swap_layer_names(parts.unet)
    assert layers and all(name.startswith("up_blocks.") and ".attn1." in name for name in layers)
    side_of = {name: 4 if name.startswith("up_blocks.0.") else 8 for name in layers}
    expected = {(k, name, "struct" if k in (6, 11) else "app")
                for name in layers for k in steps[side_of[name]]}
    got = {(r["step"], r["layer"], r["source"]) for r in record.swaps}
    assert got == expected
    assert len(record.swaps) == len(expected)  # once per layer and step: one UNet call per step
    assert {r["tokens"] for r in record.swaps} == {4, 8}
    # the straightforward path swaps in exactly the same places
    straight = TransferRecord(keep_tensors=False)
    TransferEngine(parts=parts, device="cpu", mode="straightforward").run(
        _request(image, target, source_mask, settings=s), record=straight)
    assert {(r["step"], r["layer"], r["source"]) for r in straight.swaps} == expected


def test_swap_off_never_swaps(engine, data):
    image, source_mask, target = data
    record = TransferRecord(keep_tensors=False)
    engine.run(_request(image, target, source_mask, settings=_fast(swap=False)), record=record)
    assert record.swaps == []


@pytest.mark.slow
def test_optimised_path_matches_the_straightforward_one(parts, data):
    image, source_mask, target = data
    request = dict(source_image=image, target_mask=target, source_mask=source_mask, n_outputs=2, seed=1,
                   settings=_fast())
    request = _request(**request)
    inversion_cache().clear()
    fast_rec, slow_rec = TransferRecord(keep_tensors=False), TransferRecord(keep_tensors=False)
    fast = TransferEngine(parts=parts, device="cpu").run(request, record=fast_rec)
    slow = TransferEngine(parts=parts, device="cpu", mode="straightforward").run(request,
                                                                                record=slow_rec)
    for a, b in zip(fast, slow):
        assert np.array_equal(a.mask.labels, b.mask.labels)
        assert np.abs(a.image.astype(int) - b.image).max() <= 2
    assert fast_rec.unet_items < 0.7 * slow_rec.unet_items and fast_rec.unet_calls < slow_rec.unet_calls / 3


def test_branches_share_one_unet_call_per_step(engine, data):
    image, source_mask, target = data
    record = TransferRecord(keep_tensors=False)
    engine.run(_request(image, target, source_mask, settings=_fast()), record=record)
    roles = record.roles
    assert len(roles) == 16  # one call per step
    assert roles[0] == (("app", 0), ("struct", 0))  # the output is still its structure
    assert roles[2] == (("app", 0), ("struct", 0))  # no swap before step 3 (counter 2)
    assert roles[6] == (("out_swap", 0), ("out_noswap", 0), ("app", 0), ("struct", 0))  # structure step
    assert roles[12] == (("out_swap", 0), ("out_noswap", 0), ("app", 0))  # structure no longer needed
    assert roles[15] == (("out", 0), ("app", 0))  # AdaIN still needs the appearance


# -- AdaIN ---------------------------------------------------------------------------------
def _stats(lat, mask):
    flat = lat.reshape(lat.shape[0], -1)[:, torch.as_tensor(mask).reshape(-1)]
    return flat.mean(1), flat.std(1)


def test_masked_adain_function():
    gen = torch.Generator().manual_seed(0)
    content, style = torch.randn(4, 8, 8, generator=gen) * 3 + 1, torch.randn(4, 8, 8, generator=gen)
    cmask = torch.zeros(8, 8, dtype=torch.bool)
    cmask[:, :3] = True
    smask = torch.zeros(8, 8, dtype=torch.bool)
    smask[5:] = True
    out = adain_mod.masked_adain(content, style, cmask, smask)
    for a, b in zip(_stats(out, cmask), _stats(style, smask)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert torch.equal(out[:, ~cmask], content[:, ~cmask])  # other classes untouched
    glob = adain_mod.adain(content, style)
    torch.testing.assert_close(glob.mean((1, 2)), style.mean((1, 2)), rtol=1e-4, atol=1e-4)


def test_latent_masks_and_class_choice():
    mask = np.zeros((64, 64), int)
    mask[:, 32:] = 2
    mask[0:8, 0:8] = 1
    small = adain_mod.latent_mask(mask, (8, 8))
    assert small.shape == (8, 8) and small[0, 0] == 1 and small[0, 5] == 2 and small[5, 0] == 0
    target = np.array([[0, 1, 3], [1, 1, 3], [0, 5, 5]])
    source = np.array([[0, 0, 1], [1, 2, 2], [5, 9, 9]])
    classes, left = adain_mod.adain_classes(target, source)
    assert classes == [1, 0] and left == {"not_in_source": [3], "too_small": [5]}  # foreground first
    assert adain_mod.adain_classes(target, source, include_unlabelled=False)[0] == [1]
    assert [adain_mod.class_for_step([0, 1, 2], k) for k in range(5)] == [0, 1, 2, 0, 1]


def test_masked_adain_gives_each_class_the_source_statistics_in_turn(engine, data):
    image, source_mask, target = data
    target = target.copy()
    target[40:60, 4:20] = 7  # a class the source lacks: reported, never applied
    record = TransferRecord()
    results = engine.run(_request(image, target, source_mask, augment=False, settings=_fast()), record=record)
    classes = [1, 2, 0]  # the paper's order: foreground (labelled classes) first, unlabelled last
    assert [(e["step"], e["class"]) for e in record.adain] == [(k, classes[k % 3]) for k in range(4, 16)]
    for entry in record.adain:
        out_mean, out_std = _stats(entry["out"], entry["target_mask"])
        app_mean, app_std = _stats(entry["app"], entry["source_mask"])
        torch.testing.assert_close(out_mean, app_mean, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(out_std, app_std, rtol=2e-3, atol=1e-4)
    note = " ".join(results[0].notes)
    assert "not in the source mask: 7" in note
    assert results[0].provenance["parameters"]["classes_unmatched"] == [7]


def test_global_adain_is_the_baseline(engine, data):
    image, source_mask, target = data
    record = TransferRecord()
    engine.run(_request(image, target, None, settings=_fast(adain="global")), record=record)
    assert [e["step"] for e in record.adain] == list(range(4, 16)) and {e["class"] for e in record.adain} == {"global"}
    for entry in record.adain:
        torch.testing.assert_close(entry["out"].mean((1, 2)), entry["app"].mean((1, 2)), rtol=1e-3, atol=1e-4)
    record = TransferRecord()
    engine.run(_request(image, target, None, settings=_fast(adain="off")), record=record)
    assert record.adain == []


# -- engine: cancel, cache, outputs, inputs --------------------------------------------------
@pytest.mark.parametrize("stop_at", [3, 40])  # during the source's inversion, during the transfer
def test_cancel_stops_within_a_step(engine, data, stop_at):
    image, source_mask, target = data
    token, record, seen = CancelToken(), TransferRecord(keep_tensors=False), []

    def progress(done, total):
        seen.append((done, record.unet_calls))
        if done >= stop_at and not token.cancelled:
            token.cancel()

    with pytest.raises(Cancelled):
        engine.run(_request(image, target, source_mask, settings=_fast(inversion="ddim")), progress=progress,
                   cancel=token, record=record)
    calls_at_cancel = next(calls for done, calls in seen if done >= stop_at)
    assert record.unet_calls == calls_at_cancel  # not one more UNet call after the flag
    assert max(done for done, _ in seen) == next(done for done, _ in seen if done >= stop_at)


@pytest.mark.slow
def test_one_source_pays_for_its_inversion_once(engine, data):
    image, source_mask, target = data
    totals = []
    first = engine.run(_request(image, target, source_mask, seed=0, settings=_fast()),
                       progress=lambda d, t: totals.append(t))
    second = engine.run(_request(image, target, source_mask, seed=7, settings=_fast()),
                        progress=lambda d, t: totals.append(t))
    assert not first[0].provenance["parameters"]["appearance_inversion_cached"]
    assert second[0].provenance["parameters"]["appearance_inversion_cached"]
    assert totals[0] == 16 * 3 and totals[-1] == 16 * 2  # (inversion +) structure inversion + transfer
    again = engine.run(_request(image, target, source_mask, seed=0, settings=_fast()))
    assert np.array_equal(again[0].image, first[0].image)  # same request, same seed: same image


@pytest.mark.slow
def test_outputs_follow_flipped_and_rotated_masks_with_provenance(engine, data):
    image, source_mask, target = data
    results = engine.run(_request(image, target, source_mask, n_outputs=3, seed=11, settings=_fast(),
                                         scheme="tissue", source_name="src.png", target_name="tgt.png"))
    assert len(results) == 3
    for k, result in enumerate(results):
        assert np.array_equal(result.mask.labels, augment(target, result.extras["augmentation"]))
        assert result.image.shape == (64, 64, 3) and result.image.dtype == np.uint8
        prov = result.provenance["parameters"]
        assert prov["engine"] == "transfer" and prov["seed"] == 11 + k and prov["augmentation"] == result.extras["augmentation"]
        assert prov["settings"]["swap_ranges"] == [[32, 2, 9], [64, 3, 13]]
        assert prov["model_sha256"] and prov["target"] == "tgt.png" and prov["classes_matched"] == [0, 1, 2]
        json.dumps(result.provenance, default=str)
    unaugmented = engine.run(_request(image, target, source_mask, n_outputs=2, augment=False, settings=_fast()))
    assert all(r.extras["augmentation"] == "identity" and np.array_equal(r.mask.labels, target) for r in unaugmented)


@pytest.mark.slow
def test_other_sizes_are_resized_and_back(engine, data):
    image, source_mask, target = data
    wide = np.zeros((48, 80), np.int32)
    wide[:, 40:] = 1
    wide[10:30, 5:30] = 2
    results = engine.run(_request(image, wide, source_mask, n_outputs=2, settings=_fast()))
    for r in results:
        assert r.image.shape == (48, 80, 3) and r.mask.shape == (48, 80)
        assert r.extras["augmentation"] in ("identity", "rot180", "flip_lr", "flip_ud")
    assert any("resized" in n for n in results[0].notes)


@pytest.mark.slow
def test_several_target_masks_in_one_request(engine, data):
    image, source_mask, target = data
    other = np.flipud(target).copy()
    results = engine.run(_request(image, [target, other], source_mask, n_outputs=3, augment=False,
                                         settings=_fast(), target_name=["a", "b"]))
    assert [r.provenance["parameters"]["target"] for r in results] == ["a", "b", "a"]
    assert np.array_equal(results[1].mask.labels, other)


def test_bad_inputs_are_refused_plainly(engine, data):
    image, source_mask, target = data
    with pytest.raises(HistogenInputError, match="needs the appearance image's own mask"):
        engine.run(_request(image, target, None, settings=_fast()))
    with pytest.raises(HistogenInputError, match="empty"):
        engine.run(_request(image, np.zeros_like(target), source_mask, settings=_fast()))
    with pytest.raises(HistogenInputError, match="pixel for pixel"):
        engine.run(_request(image, target, source_mask[:40], settings=_fast()))
    with pytest.raises(HistogenInputError, match="outputs"):
        engine.run(_request(image, target, source_mask, n_outputs=0, settings=_fast()))


# -- pieces ----------------------------------------------------------------------------------
def test_explicit_attention_matches_sdpa_and_applies_contrast():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8, generator=gen) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = explicit_attention(q, k, v, scale=8 ** -0.5, chunk_bytes=2 * 3 * 50 * 4 * 2 * 7)  # 7 rows per chunk
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    attn = (q @ k.transpose(-1, -2) * 8 ** -0.5).softmax(-1)
    mean = attn.mean(-1, keepdim=True)
    expected = (((attn - mean) * 1.67 + mean).clamp(0, 1)) @ v
    torch.testing.assert_close(explicit_attention(q, k, v, scale=8 ** -0.5, contrast=1.67), expected,
                               rtol=1e-5, atol=1e-5)


def test_structure_image_uses_the_source_class_colours():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :2] = (200, 100, 50)
    image[:, 2:] = (10, 20, 30)
    mask = np.zeros((4, 4), int)
    mask[:, :2] = 1
    colours = class_colours(image, mask)
    assert colours[1] == (200, 100, 50) and colours[0] == (10, 20, 30)
    target = np.array([[1, 0], [3, 3]])
    from napari_histogen.core.schemes import get_scheme

    out = render_structure(target, colours, scheme=get_scheme("tissue"))
    assert tuple(out[0, 0]) == (200, 100, 50) and tuple(out[0, 1]) == (10, 20, 30)
    assert tuple(out[1, 0]) == colours[-1]  # class 3: not in the source, not in the scheme -> source mean


def test_writer_and_dataset_pairs(tmp_path, data):
    from napari_histogen.core.io.tissue import find_tissue_pairs, read_label_map, write_transfer_result

    image, source_mask, _ = data
    files = write_transfer_result(tmp_path, "x_s0", image, source_mask, {"engine": "transfer"}, source=image)
    back, _ = read_label_map(files["mask"])
    assert np.array_equal(back, source_mask)
    assert json.loads(files["provenance"].read_text())["engine"] == "transfer"
    assert find_tissue_pairs(tmp_path) == [(files["image"], files["mask"])]
    np.save(tmp_path / "m.npy", source_mask)
    assert np.array_equal(read_label_map(tmp_path / "m.npy")[0], source_mask)
    from skimage.io import imsave

    imsave(tmp_path / "colour.png", np.dstack([source_mask * 40, source_mask * 0, source_mask]).astype(np.uint8),
           check_contrast=False)
    with pytest.raises(HistogenInputError, match="colour image"):
        read_label_map(tmp_path / "colour.png")


@pytest.mark.slow
def test_cli_one_source_and_dataset(tiny_sd, tmp_path, data):
    from skimage.io import imsave

    from napari_histogen.cli_transfer import add_transfer_parser

    image, source_mask, target = data
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    for name, img, mask in (("a", image, source_mask), ("b", np.flipud(image).copy(), np.flipud(source_mask).copy())):
        imsave(tmp_path / "ds" / "images" / f"{name}.png", img, check_contrast=False)
        imsave(tmp_path / "ds" / "masks" / f"{name}.png", mask.astype(np.uint8), check_contrast=False)
    imsave(tmp_path / "target.png", target.astype(np.uint8), check_contrast=False)
    parser = argparse.ArgumentParser()
    add_transfer_parser(parser.add_subparsers().add_parser("synthesize").add_subparsers())
    fast = ["--model", str(tiny_sd), "--device", "cpu", "--steps", "20", "--skip", "4", "--swap-32", "2", "9",
            "--swap-64", "3", "13", "--adain-steps", "4", "16", "--scheme", "tissue"]
    args = parser.parse_args(["synthesize", "transfer", "--source", str(tmp_path / "ds/images/a.png"), "--source-mask",
                              str(tmp_path / "ds/masks/a.png"), "--target-mask", str(tmp_path / "target.png"),
                              "--n", "2", "--out", str(tmp_path / "one"), *fast])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "one").glob("*_mask.png")) == ["a_transfer_s0_mask.png",
                                                                            "a_transfer_s1_mask.png"]
    prov = json.loads((tmp_path / "one" / "a_transfer_s1.json").read_text())
    assert prov["parameters"]["settings"]["steps"] == 20 and prov["parameters"]["seed"] == 1
    args = parser.parse_args(["synthesize", "transfer", "--dataset", str(tmp_path / "ds"), "--n", "2", "--out",
                              str(tmp_path / "many"), *fast])
    assert args.func(args) == 0
    written = sorted(p.name for p in (tmp_path / "many").glob("*_transfer_s?.png"))
    assert written == ["a_transfer_s0.png", "a_transfer_s1.png", "b_transfer_s0.png", "b_transfer_s1.png"]
    prov = json.loads((tmp_path / "many" / "a_transfer_s0.json").read_text())["parameters"]
    assert prov["target"] == "b.png"  # another image's mask
    args = parser.parse_args(["synthesize", "transfer", "--source", str(tmp_path / "ds/images/a.png"), "--out",
                              str(tmp_path / "bad"), *fast])
    with pytest.raises(HistogenInputError, match="target-mask"):
        args.func(args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_cuda(tiny_sd, data, precision):
    image, source_mask, target = data
    engine = TransferEngine(str(tiny_sd), device="cuda", precision=precision)
    assert engine.parts.unet.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
    result = engine.run(_request(image, target, source_mask, n_outputs=2, settings=_fast()))
    assert result[0].image.shape == (64, 64, 3) and result[0].provenance["parameters"]["precision"] in ("bfloat16",
                                                                                                         "float16")


@pytest.mark.slow
def test_histogen_command_once_wired(tiny_sd, tmp_path, data):
    """``histogen synthesize transfer`` through cli.main (skipped until cli_nasdm.py calls add_transfer_parser)."""
    from skimage.io import imsave

    from napari_histogen import cli

    image, source_mask, target = data
    imsave(tmp_path / "src.png", image, check_contrast=False)
    imsave(tmp_path / "src_mask.png", source_mask.astype(np.uint8), check_contrast=False)
    imsave(tmp_path / "tgt.png", target.astype(np.uint8), check_contrast=False)
    argv = ["synthesize", "transfer", "--source", str(tmp_path / "src.png"), "--source-mask",
            str(tmp_path / "src_mask.png"), "--target-mask", str(tmp_path / "tgt.png"), "--n", "1", "--out",
            str(tmp_path / "out"), "--model", str(tiny_sd), "--device", "cpu", "--steps", "12", "--skip", "4"]
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.skip("`histogen synthesize transfer` is not wired into the CLI yet")
    assert cli.main(argv) == 0 and (tmp_path / "out" / "src_transfer_s0_mask.png").is_file()
    assert cli.main([*argv[:-6], "--model", str(tmp_path / "no_model"), "--device", "cpu"]) == 2


def test_step_callbacks_run_after_every_step(parts, data):
    image, _, _ = data
    seen = []
    runner = TransferRunner(parts, _fast(adain="off"),
                            step_callbacks=[lambda k, out, app: seen.append((k, out.shape[0], app is None))])
    inv = runner.invert(runner.encode(image), [0])
    runner.transfer(inv, inv)
    assert [k for k, _, _ in seen] == list(range(16))
    assert [no_app for k, _, no_app in seen] == [k > 13 for k in range(16)]  # appearance dropped after its last swap


# the pixels of a fixed request on the tiny model (seeded weights), recorded on CPU; a change
# that alters the output fails here on purpose (update the slice when that is intended)
# (re-recorded for issue 19: FreeU, the reference's lagged swap counter, the paper's AdaIN class order)
PINNED_SLICE = [[[133, 164, 119], [139, 139, 112], [126, 103, 91]],
                [[115, 173, 142], [103, 130, 133], [117, 86, 111]],
                [[102, 172, 137], [86, 128, 134], [105, 104, 116]]]


def test_pinned_output_slice(engine, data):
    image, source_mask, target = data
    result = engine.run(_request(image, target, source_mask, seed=3, augment=False, settings=_fast()))[0]
    got = result.image[28:31, 40:43].astype(int)
    assert np.abs(got - np.array(PINNED_SLICE)).max() <= 2, got.tolist()
