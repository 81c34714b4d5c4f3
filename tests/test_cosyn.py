"""Co-synthesis: categorical diffusion maths, conditions reaching the network, watershed decoding,
engine, CLI and trainer with tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_histogen.core.cosyn.categorical import CategoricalDiffusion  # noqa: E402
from napari_histogen.core.cosyn.checkpoint import CosynModelConfig, load_cosyn, save_cosyn  # noqa: E402
from napari_histogen.core.cosyn.diffusion import JointDiffusion, default_cosyn_diffusion, sample_joint  # noqa: E402
from napari_histogen.core.cosyn.layout import centroids, decode_instances, point_map, training_targets  # noqa: E402
from napari_histogen.core.cosyn.model import CosynNet, cosyn_preset  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.schemes import get_scheme  # noqa: E402
from conftest import write_pairs_dataset  # noqa: E402

CONSEP_IDS = [1, 2, 3, 4]


# -- categorical diffusion against a hand-computed case --------------------------------------------
def test_categorical_forward_and_posterior_match_a_hand_computed_case():
    # K = 3, abar = (0.5, 0.25): q(x_1 | x_0 = e0) = 0.25 e0 + 0.75 / 3 = (1/2, 1/4, 1/4)
    cat = CategoricalDiffusion(torch.tensor([0.5, 0.25]), 3)
    x0 = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1)
    x1 = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1)
    assert torch.allclose(cat.q_probs(x0, torch.tensor([1])).ravel(), torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(cat.q_probs(x0, torch.tensor([0])).ravel(), torch.tensor([2 / 3, 1 / 6, 1 / 6]))
    # q(x_0' | x_1 = e1, x_0 = e0): (0.5 e1 + 1/6) * (0.5 e0 + 1/6) = (1/9, 1/9, 1/36) -> (4/9, 4/9, 1/9)
    post = cat.posterior(x1, x0, torch.tensor([1])).ravel()
    assert torch.allclose(post, torch.tensor([4 / 9, 4 / 9, 1 / 9]), atol=1e-6)
    # to the clean label (s = -1): the clean label itself, whatever x_t
    assert torch.allclose(cat.posterior(x1, x0, torch.tensor([0])).ravel(), x0.ravel())
    # the loss: 0 KL for a perfect prediction at t >= 1, NLL -log p(x0) at t = 0
    perfect = torch.log(x0.clamp_min(1e-12)) * 50
    assert float(cat.loss(perfect, x0, x1, torch.tensor([1]))) < 1e-5
    logits = torch.log(torch.tensor([0.2, 0.5, 0.3])).view(1, 3, 1)
    assert float(cat.loss(logits, x0, x1, torch.tensor([0]))) == pytest.approx(-np.log(0.2), rel=1e-5)
    wrong = float(cat.loss(logits, x0, x1, torch.tensor([1])))
    expected_model_post = np.array([0.2 * 1 / 6 + 0, 0.5 * 2 / 3, 0.3 * 1 / 6])  # unnormalised, see below
    # model posterior: (0.5 e1 + 1/6) * (0.5 x0_hat + 1/6)
    fac = np.array([1 / 6, 2 / 3, 1 / 6]) * (0.5 * np.array([0.2, 0.5, 0.3]) + 1 / 6)
    q = fac / fac.sum()
    p = np.array([4 / 9, 4 / 9, 1 / 9])
    assert wrong == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-4)
    assert expected_model_post.shape == (3,)


def test_categorical_forward_draws_follow_q():
    cat = CategoricalDiffusion(torch.tensor([0.5, 0.25]), 4)
    x0 = torch.zeros(1, 4, 20000)
    x0[:, 2] = 1
    draws = cat.q_sample(x0, torch.tensor([1]), torch.Generator().manual_seed(0))
    freq = draws.mean(dim=2).ravel()
    assert torch.allclose(freq, torch.tensor([0.1875, 0.1875, 0.4375, 0.1875]), atol=0.015)


# -- the network sees the points and the prompt ----------------------------------------------------
def _tiny_net(seed=0, latent_size=4):
    torch.manual_seed(seed)
    net = CosynNet(cosyn_preset("tiny", num_classes=4, latent_size=latent_size))
    with torch.no_grad():  # residual branches and heads start at zero: give them trained-like weights
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    return net


def _inputs(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 32, size // 8, size // 8, generator=g)
    d = torch.randn(n, 1, size, size, generator=g)
    lab = torch.nn.functional.one_hot(torch.randint(0, 5, (n, size, size), generator=g), 5).movedim(-1, 1).float()
    t = torch.tensor([10, 500])[:n]
    pts = torch.zeros(n, size, size, dtype=torch.long)
    pts[:, 5, 7] = 3
    pts[:, 20, 12] = 1
    prompt = torch.tensor([[1.0, 0, 1, 0]] * n)
    return z, d, lab, t, pts, prompt


def test_points_and_prompt_change_the_outputs_and_get_gradients():
    net = _tiny_net()
    z, d, lab, t, pts, prompt = _inputs()
    base = net(z, d, lab, t, pts, prompt)
    moved = pts.clone()
    moved[:, 5, 7] = 0
    moved[:, 9, 25] = 2
    other_points = net(z, d, lab, t, moved, prompt)
    other_prompt = net(z, d, lab, t, pts, torch.tensor([[0.0, 1, 0, 1]] * 2))
    for a, b, c in zip(base, other_points, other_prompt):
        assert not torch.allclose(a, b)
        assert not torch.allclose(a, c)
    assert base[0].shape == z.shape and base[1].shape == d.shape and base[2].shape == lab.shape
    # a loss on all three outputs sends gradients to the point embedding and the prompt MLP
    jd = JointDiffusion(default_cosyn_diffusion(), 5)
    out = jd.training_loss(net, z, torch.rand(2, 1, 32, 32), lab.argmax(1), t, pts, prompt, torch.randn_like(z),
                           torch.randn(2, 1, 32, 32), generator=torch.Generator().manual_seed(1))
    out["loss"].backward()
    assert float(net.points.embed.weight.grad[1:].abs().sum()) > 0
    assert float(net.points.embed.weight.grad[0].abs().sum()) == 0  # "no point" stays the zero vector
    assert float(net.prompt_embed[0].weight.grad.abs().sum()) > 0
    assert float(net.points_late.weight.grad.abs().sum()) > 0


def test_sampler_is_seeded_and_returns_the_three_outputs():
    net = _tiny_net().eval()
    _, _, _, _, pts, prompt = _inputs(1)
    cfg = default_cosyn_diffusion()
    a = sample_joint(net, pts, prompt, cfg, steps=3, guidance=1.0, generators=[torch.Generator().manual_seed(4)])
    b = sample_joint(net, pts, prompt, cfg, steps=3, guidance=1.0, generators=[torch.Generator().manual_seed(4)])
    c = sample_joint(net, pts, prompt, cfg, steps=3, guidance=1.0, generators=[torch.Generator().manual_seed(5)])
    z, dist, label = a
    assert z.shape == (1, 32, 4, 4) and dist.shape == (1, 32, 32) and label.shape == (1, 32, 32)
    assert float(dist.min()) >= 0 and float(dist.max()) <= 1 and int(label.max()) <= 4
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


# -- layouts and decoding --------------------------------------------------------------------------
def _touching_discs():
    """Three nuclei, two of them touching, as an instance map + classes."""
    yy, xx = np.mgrid[:48, :48]
    inst = np.zeros((48, 48), np.int32)
    inst[(yy - 15) ** 2 + (xx - 14) ** 2 <= 36] = 1
    inst[((yy - 15) ** 2 + (xx - 25) ** 2 <= 36) & (inst == 0)] = 2
    inst[(yy - 36) ** 2 + (xx - 30) ** 2 <= 25] = 3
    return inst, {1: 3, 2: 2, 3: 4}


def test_watershed_gives_one_nucleus_per_point_of_its_class():
    inst, classes = _touching_discs()
    label, dist = training_targets(inst, classes, CONSEP_IDS)
    assert set(np.unique(label)) == {0, 2, 3, 4}
    pts, cls = centroids(inst, classes)
    assert len(pts) == 3 and sorted(cls.tolist()) == [2, 3, 4]
    # the semantic label merges the two touching nuclei; the points + distance map split them again
    out, table = decode_instances(label, dist, pts, cls, CONSEP_IDS)
    assert out.max() == 3
    for (r, c), k in zip(np.floor(pts + 0.5).astype(int), cls):
        nid = int(out[r, c])
        assert nid > 0 and table[nid] == k
        assert (out == nid).sum() == pytest.approx((inst == inst[r, c]).sum(), rel=0.25)
    # a point whose class differs from the label's: the point's class wins
    out2, table2 = decode_instances(label, dist, pts, np.array([4, 4, 4]), CONSEP_IDS)
    assert set(table2.values()) == {4}
    # foreground without a point becomes a nucleus of its own, with the label's class
    out3, table3 = decode_instances(label, dist, pts[:2], cls[:2], CONSEP_IDS)
    assert out3.max() == 3 and sorted(table3.values()) == sorted(cls.tolist())


def test_point_map_and_bad_classes():
    pm = point_map(np.array([[2.4, 3.6], [100, 100]]), [3, 2], (8, 8), CONSEP_IDS)
    assert pm[2, 4] == 3 and pm.sum() == 3  # class 3 is index 3 of (1, 2, 3, 4); the outside point is left out
    with pytest.raises(HistogenInputError, match="not classes of this model"):
        point_map(np.array([[1.0, 1.0]]), [7], (8, 8), CONSEP_IDS)


# -- model files, engine, CLI ----------------------------------------------------------------------
def save_tiny_cosyn(folder, seed=0):
    """A tiny random co-synthesis model (32 px patches at 0.25 µm/px, CoNSeP classes)."""
    net = _tiny_net(seed)
    scheme = get_scheme("consep")
    config = CosynModelConfig(net=net.config.to_dict(), diffusion=default_cosyn_diffusion(), scheme=scheme.to_dict(),
                              class_ids=CONSEP_IDS, mpp=0.25,
                              latent={"mean": [0.0] * 32, "std": [1.0] * 32, "channels": 32, "downscale": 8},
                              training={"model_id": "tiny-test", "steps": 0})
    return save_cosyn(net, config, folder / "cosyn.safetensors")


@pytest.fixture(scope="module")
def tiny_cosyn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cosyn_model")
    save_tiny_cosyn(folder)
    return folder


def test_engine_makes_image_mask_and_distance_with_provenance(tiny_cosyn):
    from napari_histogen.core.engines.base import create_engine
    from napari_histogen.core.engines.cosyn import CosynRequest

    engine = create_engine("cosyn", tiny_cosyn, device="cpu")
    pts = np.array([[5.0, 6.0], [20.0, 22.0], [12.0, 28.0]])
    req = CosynRequest(points=pts, point_classes=[1, 3, 2], shape=(30, 36), mpp=0.25, steps=2, seed=3)
    assert engine.check(req) == []
    (res,) = engine.run(req)
    assert res.image.shape == (30, 36, 3) and res.image.dtype == np.uint8
    assert res.mask.shape == (30, 36) and res.mask.scheme.name == "consep" and res.mask.mpp == 0.25
    assert res.extras["distance"].shape == (30, 36)
    p = res.provenance["parameters"]
    assert p["engine"] == "cosyn" and p["seed"] == 3 and p["prompt"] == [1, 2, 3] and p["n_points"] == 3
    assert len(p["sha256"]) == 64 and "watershed" in p["instances"]
    assert any("padded" in n for n in res.notes)
    again = engine.run(req)[0]
    assert np.array_equal(again.image, res.image) and np.array_equal(again.mask.instances, res.mask.instances)
    # bad requests: one sentence each, no traceback
    assert engine.check(CosynRequest(points=np.zeros((0, 2)), point_classes=[], shape=(32, 32)))
    assert "not classes of this model" in " ".join(
        engine.check(CosynRequest(points=pts, point_classes=[9, 9, 9], shape=(32, 32))))
    assert "No point lies inside" in " ".join(
        engine.check(CosynRequest(points=pts + 500, point_classes=[1, 1, 1], shape=(32, 32))))


def test_damaged_model_is_refused(tmp_path):
    save_tiny_cosyn(tmp_path)
    data = bytearray((tmp_path / "cosyn.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "cosyn.safetensors").write_bytes(bytes(data))
    with pytest.raises(HistogenInputError, match="sha256"):
        load_cosyn(tmp_path)


def test_cli_synthesize_cosyn_end_to_end(tiny_cosyn, tmp_path, capsys):
    from napari_histogen.cli import main

    csv_file = tmp_path / "layout.csv"
    csv_file.write_text("row,col,class_id\n5,6,1\n20,22,3\n12,28,2\n")
    geo = tmp_path / "layout.geojson"
    geo.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [6, 5]},
         "properties": {"classification": {"name": "epithelial"}}}]}))
    out = tmp_path / "out"
    code = main(["synthesize", "cosyn", "--points", str(tmp_path), "--model", str(tiny_cosyn), "--out", str(out),
                 "--shape", "32", "32", "--steps", "2", "--device", "cpu"])
    assert code == 0
    for stem in ("layout_s0",):
        for suffix in (".png", ".npz", ".json", "_distance.npy", "_distance.png", "_side_by_side.png"):
            assert (out / f"{stem}{suffix}").is_file(), suffix
    prov = json.loads((out / "layout_s0.json").read_text())
    assert prov["parameters"]["engine"] == "cosyn"
    assert "2 output(s)" in capsys.readouterr().out  # the CSV and the GeoJSON layout


# -- training -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_resumes_exactly_and_loads(tmp_path):
    from napari_histogen.core.cosyn.train import CosynTrainSettings, train_cosyn
    from napari_histogen.core.progress import CancelToken

    data = write_pairs_dataset(tmp_path / "data", 4, 64, 0, mpp=0.25, nucleus_px=6)

    def settings(out):
        return CosynTrainSettings(data=str(data), out=str(out), size="tiny", steps=4, batch_size=2, image_size=64,
                                  val_fraction=0.25, sample_every=4, checkpoint_every=2, sample_steps=2,
                                  device="cpu", min_tissue=0.1, log_every=1, transforms=2, warmup=2)

    straight = train_cosyn(settings(tmp_path / "a"), log_fn=lambda m: None)
    assert straight.step == 4
    for rel in ("run.json", "log.csv", "samples/step_000004.png", "checkpoints/last/state.json",
                "model/cosyn.safetensors", "model/cosyn.json"):
        assert (tmp_path / "a" / rel).is_file(), rel
    token = CancelToken()
    train_cosyn(settings(tmp_path / "b"), log_fn=lambda m: None,
                progress=lambda s, t: token.cancel() if s == 2 else None, cancel=token)
    resumed = train_cosyn(settings(tmp_path / "b"), log_fn=lambda m: None)
    assert resumed.step == 4
    a, b = load_cosyn(tmp_path / "a" / "model"), load_cosyn(tmp_path / "b" / "model")
    for (name, pa), (_, pb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(pa, pb), name
