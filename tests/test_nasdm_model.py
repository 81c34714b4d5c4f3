"""NASDM model, diffusion maths, sampling and checkpoints on a tiny random model (CPU, seconds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_histogen.core.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from napari_histogen.core.errors import CorruptFileError, HistogenInputError, UnknownClassError  # noqa: E402
from napari_histogen.core.nasdm.condition import instance_edges, make_condition  # noqa: E402
from napari_histogen.core.nasdm.sampling import guided_output, make_scheduler, sample  # noqa: E402
from napari_histogen.core.nasdm.unet import NasdmUNet, preset_config  # noqa: E402
from napari_histogen.core.progress import CancelToken, Cancelled  # noqa: E402

CLASS_IDS = [1, 2, 3, 4]


def tiny_model(seed=0, size=32, randomize=True):
    torch.manual_seed(seed)
    model = NasdmUNet(preset_config("tiny", image_size=size, cond_channels=len(CLASS_IDS) + 2))
    if randomize:  # zero-initialised output layers would make every prediction 0
        with torch.no_grad():
            for p in model.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.02)
    return model.eval()


# -- condition ------------------------------------------------------------------------------
def test_condition_one_hot_and_edges_between_touching_nuclei():
    inst = np.zeros((6, 8), np.int32)
    inst[1:4, 1:4] = 5          # class 3
    inst[1:4, 4:6] = 9          # class 3, touching nucleus 5 at column 3|4
    inst[5, 7] = 2              # class 1, single pixel
    cond = make_condition(inst, {5: 3, 9: 3, 2: 1}, CLASS_IDS)
    assert cond.shape == (6, 6, 8) and cond.dtype == np.float32
    assert np.array_equal(cond[:5].sum(axis=0), np.ones((6, 8)))  # exactly one of background/classes per pixel
    assert np.array_equal(cond[0] == 1, inst == 0)
    assert np.array_equal(cond[3] == 1, np.isin(inst, [5, 9]))     # class 3 -> channel 1 + index(3) = 3
    assert np.array_equal(cond[1] == 1, inst == 2)
    assert cond[2].sum() == 0 and cond[4].sum() == 0
    edges = cond[5].astype(bool)
    # both sides of the boundary between two same-class nuclei are edges
    assert edges[2, 3] and edges[2, 4]
    # the inside of nucleus 5 is not an edge; pixels next to it outside are
    assert not edges[2, 2] and edges[2, 0]
    # far background is not an edge
    assert not edges[5, 0]
    # hand check of the rule: a pixel is an edge iff a 4-neighbour differs
    ref = np.zeros_like(edges)
    for r in range(6):
        for c in range(8):
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < 6 and 0 <= cc < 8 and inst[rr, cc] != inst[r, c]:
                    ref[r, c] = True
    assert np.array_equal(edges, ref)
    assert np.array_equal(instance_edges(inst), ref)


def test_condition_refuses_unknown_and_unclassified():
    inst = np.zeros((4, 4), np.int32)
    inst[1, 1] = 1
    with pytest.raises(UnknownClassError, match="does not know"):
        make_condition(inst, {1: 7}, CLASS_IDS)
    with pytest.raises(HistogenInputError, match="no class"):
        make_condition(inst, {}, CLASS_IDS)


# -- diffusion maths ------------------------------------------------------------------------
def _hand_schedule(t):
    """alpha_bar_t, alpha_bar_{t-1}, beta_t of the linear schedule by plain Python."""
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    abar = 1.0
    for i in range(t + 1):
        prev = abar
        abar *= 1 - betas[i]
    return abar, prev, betas[t]


def test_learned_variance_posterior_matches_hand_computation():
    d = GaussianDiffusion()
    t = 10
    abar, abar_prev, beta = _hand_schedule(t)
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    v = 0.3
    frac = (v + 1) / 2
    expected_log_var = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
    x_t = torch.full((1, 3, 2, 2), 0.4)
    eps = torch.full((1, 3, 2, 2), -0.2)
    out = d.p_mean_variance(torch.cat([eps, torch.full_like(eps, v)], 1), x_t, torch.tensor([t]), clip_denoised=False)
    assert out["log_variance"][0, 0, 0, 0].item() == pytest.approx(expected_log_var, rel=1e-5)
    x0 = (0.4 - math.sqrt(1 - abar) * -0.2) / math.sqrt(abar)
    mean = (beta * math.sqrt(abar_prev) / (1 - abar)) * x0 + ((1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)) * 0.4
    assert out["pred_x0"][0, 0, 0, 0].item() == pytest.approx(x0, rel=1e-5)
    assert out["mean"][0, 0, 0, 0].item() == pytest.approx(mean, rel=1e-5)


def test_diffusers_learned_range_step_agrees_with_training_posterior():
    """The scheduler used for sampling draws from the distribution the training loss fits."""
    d = GaussianDiffusion()
    sched = make_scheduler("ddpm", d.config(), 1000)
    t = 10
    x_t = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.5
    model_out = torch.cat([torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)),
                           torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1], 1)
    ours = d.p_mean_variance(model_out, x_t, torch.tensor([t]), clip_denoised=True)
    g = torch.Generator().manual_seed(7)
    stepped = sched.step(model_out, t, x_t, generator=g).prev_sample
    z = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    expected = ours["mean"] + torch.exp(0.5 * ours["log_variance"]) * z
    assert torch.allclose(stepped, expected, atol=2e-4)


def test_respaced_variance_uses_respaced_beta():
    d = GaussianDiffusion()
    sched = make_scheduler("ddpm", d.config(), 250)
    ts = sched.timesteps.tolist()
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 250
    t, t_prev = ts[1], ts[2]
    abar = np.prod([1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(t + 1)])
    abar_prev = np.prod([1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(t_prev + 1)])
    beta_r = 1 - abar / abar_prev
    v = torch.full((1, 1, 1, 1), 1.0)  # frac 1 -> the respaced beta itself
    log_var = sched._get_variance(t, predicted_variance=v)
    assert float(log_var) == pytest.approx(math.log(beta_r), rel=1e-4)


def test_vb_term_is_zero_when_model_equals_posterior():
    d = GaussianDiffusion()
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    t = torch.tensor([50, 400])
    noise = torch.randn_like(x0)
    x_t = d.q_sample(x0, t, noise)
    # the true eps and v = -1 (posterior variance) give exactly the posterior
    out = torch.cat([noise, -torch.ones_like(x0)], 1)
    vb = d.vb_term(out, x0, x_t, t)
    assert torch.allclose(vb, torch.zeros(2), atol=1e-4)


@pytest.mark.slow
def test_loss_decreases_when_overfitting_a_few_patches():
    torch.manual_seed(0)
    model = NasdmUNet(preset_config("tiny", image_size=16, cond_channels=6, attention_resolutions=(8,)))
    d = GaussianDiffusion()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    inst = np.zeros((16, 16), np.int32)
    inst[4:9, 4:9] = 1
    cond = torch.from_numpy(make_condition(inst, {1: 2}, CLASS_IDS))[None].expand(2, -1, -1, -1)
    g = torch.Generator().manual_seed(0)
    eval_t = torch.randint(0, 1000, (8,), generator=g)
    eval_noise = torch.randn(8, 3, 16, 16, generator=g)

    def eval_loss():
        with torch.no_grad():
            return float(d.training_losses(model, x0.repeat(4, 1, 1, 1), eval_t, cond.repeat(4, 1, 1, 1),
                                           noise=eval_noise)["loss"])

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(40):
        t = torch.randint(0, 1000, (2,), generator=g)
        loss = d.training_losses(model, x0, t, cond)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


# -- sampling -------------------------------------------------------------------------------
def _cond(size=32):
    inst = np.zeros((size, size), np.int32)
    inst[4:12, 4:12] = 1
    inst[14:20, 20:28] = 2
    return torch.from_numpy(make_condition(inst, {1: 3, 2: 2}, CLASS_IDS))[None]


def test_guidance_zero_equals_conditional_prediction():
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    cond = _cond().expand(2, -1, -1, -1)
    t = torch.tensor(300)
    with torch.no_grad():
        plain = model(x, t.expand(2), cond)
        g0 = guided_output(model, x, t, cond, 0.0)
        g2 = guided_output(model, x, t, cond, 2.0)
        null = model(x, t.expand(2), torch.zeros_like(cond))
    assert torch.allclose(g0, plain, atol=1e-5)
    eps_c, v_c = plain.chunk(2, 1)
    eps_u = null[:, :3]
    assert torch.allclose(g2[:, :3], eps_c + 2.0 * (eps_c - eps_u), atol=1e-4)
    assert torch.allclose(g2[:, 3:], v_c, atol=1e-5)  # variance from the conditional pass


@pytest.mark.slow
def test_respaced_sampling_is_reproducible_from_a_seed():
    model = tiny_model()
    cond = _cond().expand(2, -1, -1, -1)
    d = GaussianDiffusion().config()
    calls = []
    a = sample(model, cond, d, steps=12, guidance=1.5, generators=[torch.Generator().manual_seed(s) for s in (3, 4)],
               progress=lambda i, n: calls.append((i, n)))
    b = sample(model, cond, d, steps=12, guidance=1.5, generators=[torch.Generator().manual_seed(s) for s in (3, 4)])
    c = sample(model, cond[:1], d, steps=12, guidance=1.5, generators=[torch.Generator().manual_seed(4)])
    assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert torch.allclose(a[1:], c, atol=1e-5)  # a sample does not depend on its batch
    assert not torch.allclose(a[0], a[1])
    assert calls[-1] == (12, 12) and len(calls) == 12
    ddim = sample(model, cond[:1], d, steps=8, sampler="ddim", generators=[torch.Generator().manual_seed(4)])
    assert ddim.shape == (1, 3, 32, 32)


class _NoReuse:
    """Calls the network like the sampler does, but is not a NasdmUNet: no reuse of its SPADE work."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args):
        return self.model(*args)


def _count_spade_calls(model) -> list:
    calls = []
    for module in model.modules():
        if module.__class__.__name__ == "SpadeGroupNorm":
            module.shared.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("sampler, guidance", [("ddpm", 1.5), ("dpmpp", 0.0)])
def test_spade_modulation_is_computed_once_per_run_with_the_same_images(sampler, guidance):
    """The samplers let the SPADE layers reuse their modulation across steps (it depends on the
    condition only): exactly the same images, the branch run once per layer instead of per step."""
    model = tiny_model()
    cond = _cond().expand(2, -1, -1, -1).contiguous()
    d = GaussianDiffusion().config()
    n_spade = sum(1 for m in model.modules() if m.__class__.__name__ == "SpadeGroupNorm")
    calls = _count_spade_calls(model)
    kw = dict(steps=6, guidance=guidance, sampler=sampler)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    reused = sample(model, cond, d, generators=gens(), **kw)
    assert len(calls) == n_spade
    calls.clear()
    plain = sample(_NoReuse(model), cond, d, generators=gens(), **kw)
    assert len(calls) == 6 * n_spade
    assert torch.equal(reused, plain)
    # nothing is kept after the run, and a training step (gradients) never keeps anything
    assert all(m.kept is None and not m.keep for m in model.modules() if hasattr(m, "kept"))
    model.train()
    with model.reuse_condition():
        out = model(torch.randn(2, 3, 32, 32), torch.tensor([5, 9]), cond)
        out.mean().backward()
        assert all(m.kept is None for m in model.modules() if hasattr(m, "kept"))


def test_cancel_stops_within_a_step_and_returns_nothing():
    model = tiny_model()
    token = CancelToken()
    seen = []

    def progress(i, n):
        seen.append(i)
        if i == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        sample(model, _cond(), GaussianDiffusion().config(), steps=50, progress=progress, cancel=token)
    assert seen == [1, 2, 3]


def test_bad_sampler_and_steps():
    with pytest.raises(HistogenInputError, match="sampler"):
        make_scheduler("euler", GaussianDiffusion().config(), 10)
    with pytest.raises(HistogenInputError, match="Steps"):
        make_scheduler("ddpm", GaussianDiffusion().config(), 0)


# -- checkpoints ----------------------------------------------------------------------------
def _config():
    from napari_histogen.core.nasdm.checkpoint import NasdmModelConfig
    from napari_histogen.core.schemes import get_scheme

    model = tiny_model()
    return model, NasdmModelConfig(unet=model.config.to_dict(), diffusion=GaussianDiffusion().config(),
                                   scheme=get_scheme("consep").to_dict(), class_ids=CLASS_IDS, mpp=0.5)


def test_checkpoint_round_trip_with_sha256(tmp_path):
    from napari_histogen.core.nasdm.checkpoint import load_nasdm, save_nasdm

    model, cfg = _config()
    path = save_nasdm(model, cfg, tmp_path / "m" / "nasdm")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert len(meta["weights"]["sha256"]) == 64
    for spec in (path, path.with_suffix(".json"), path.parent):
        loaded = load_nasdm(spec)
        assert loaded.sha256_checked
        for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
            assert torch.equal(a, b), k
    # without the JSON: config from the safetensors metadata, hash not checkable
    path.with_suffix(".json").unlink()
    alone = load_nasdm(path)
    assert not alone.sha256_checked and alone.config.class_ids == CLASS_IDS


def test_checkpoint_damage_and_mismatch_give_clear_messages(tmp_path):
    from napari_histogen.core.nasdm.checkpoint import load_nasdm, save_nasdm

    model, cfg = _config()
    path = save_nasdm(model, cfg, tmp_path / "nasdm.safetensors")
    # changed weights -> sha256 mismatch
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HistogenInputError, match="sha256"):
        load_nasdm(path)
    # truncated file with its JSON gone -> corrupt
    path.write_bytes(bytes(data[:100]))
    path.with_suffix(".json").unlink()
    with pytest.raises(CorruptFileError, match="not a readable safetensors"):
        load_nasdm(path)
    # a JSON that belongs to another architecture -> mismatch message
    path2 = save_nasdm(model, cfg, tmp_path / "b" / "nasdm.safetensors")
    meta = json.loads(path2.with_suffix(".json").read_text())
    meta["unet"]["model_channels"] = 64
    meta.pop("weights")
    path2.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(HistogenInputError, match="do not fit"):
        load_nasdm(path2)
    # not a NASDM config at all
    path2.with_suffix(".json").write_text("{\"hello\": 1}")
    with pytest.raises(CorruptFileError, match="not a napari-histogen NASDM"):
        load_nasdm(path2)
    with pytest.raises(HistogenInputError, match="No NASDM model"):
        load_nasdm(tmp_path / "missing.safetensors")


def test_cuda_without_gpu_is_a_clear_message():
    from napari_histogen.core.devices import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(HistogenInputError, match="sees no GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
