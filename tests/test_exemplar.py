"""Example-based appearance transfer: the core method, the engine and the CLI (no model, CPU)."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_histogen.core.engines.base import ENGINES, create_engine, request_defaults
from napari_histogen.core.engines.exemplar import ExemplarEngine, ExemplarRequest
from napari_histogen.core.errors import HistogenInputError
from napari_histogen.core.exemplar import ExemplarSettings, exemplar_transfer
from napari_histogen.core.masks import NucleiMask, TissueMask
from napari_histogen.core.progress import Cancelled, CancelToken

GREY, RED, BLUE = (200, 200, 200), (210, 30, 30), (30, 30, 210)


def _disk(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def coloured_source(size=96, seed=0):
    """Grey background, class-1 nuclei red (round), class-2 nuclei blue (elongated): the colours say the origin."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float64)
    image[:] = GREY
    inst = np.zeros((size, size), np.int32)
    classes = {}
    nid = 0
    for cy in range(12, size - 8, 22):
        for cx in range(12, size - 8, 22):
            nid += 1
            cls = 1 + (nid % 2)
            shape = _disk(inst.shape, cy, cx, 5, 5) if cls == 1 else _disk(inst.shape, cy, cx, 3, 8)
            inst[shape] = nid
            classes[nid] = cls
            image[shape] = RED if cls == 1 else BLUE
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), NucleiMask.create(inst, classes, "consep", mpp=0.25)


def nuclei_target(size=64):
    inst = np.zeros((size, size), np.int32)
    inst[_disk(inst.shape, 15, 15, 6, 4)] = 1
    inst[_disk(inst.shape, 40, 45, 4, 9)] = 2
    inst[_disk(inst.shape, 48, 14, 5, 5)] = 3
    return NucleiMask.create(inst, {1: 1, 2: 2, 3: 1}, "consep", mpp=0.25)


def tissue_pair(size=64):
    rng = np.random.default_rng(1)
    labels = np.ones((size, size), np.int32)
    labels[:, size // 2:] = 2
    image = np.where(labels[..., None] == 1, RED, (40, 180, 40)).astype(float) + rng.normal(0, 8, (size, size, 3))
    target = np.ones((size, size), np.int32)
    target[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 2  # a different arrangement
    return (np.clip(image, 0, 255).astype(np.uint8), TissueMask.create(labels, "tissue"),
            TissueMask.create(target, "tissue"))


SMALL = ExemplarSettings(patch_px=16, overlap_px=4, candidates=32)


def test_nuclei_come_from_source_nuclei_of_their_class_and_the_background_from_the_background():
    image, nuclei = coloured_source()
    target = nuclei_target()
    out = exemplar_transfer(image, target, source_nuclei=nuclei, settings=SMALL, seed=3)
    assert out.image.shape == (64, 64, 3) and out.image.dtype == np.uint8
    assert out.info["nuclei_pasted"] == 3 and out.info["classes_unmatched"] == [] and out.notes == []
    px = out.image.astype(int)
    for nid, cls in target.classes.items():
        interior = ndi.binary_erosion(target.instances == nid, iterations=1)
        mean = px[interior].mean(0)
        want = np.array(RED if cls == 1 else BLUE)
        assert np.abs(mean - want).max() < 25, (nid, mean)
        assert target.classes[nid] == nuclei.classes[out.info["nucleus_sources"][nid]]
    far = ndi.distance_transform_edt(target.instances == 0) > SMALL.ring_px + 2
    # no nucleus colour leaks into the background: red and blue stay far from grey
    saturation = px.max(-1) - px.min(-1)
    assert np.percentile(saturation[far], 99) < 60
    assert np.abs(px[far].mean(0) - np.array(GREY)).max() < 12


def test_same_seed_same_image_other_seed_other_image():
    image, nuclei = coloured_source()
    target = nuclei_target()
    a = exemplar_transfer(image, target, source_nuclei=nuclei, settings=SMALL, seed=7).image
    b = exemplar_transfer(image, target, source_nuclei=nuclei, settings=SMALL, seed=7).image
    c = exemplar_transfer(image, target, source_nuclei=nuclei, settings=SMALL, seed=8).image
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # the inputs are not modified
    assert np.array_equal(image, coloured_source()[0])


def test_tissue_masks_take_each_region_from_the_same_source_class():
    image, source, target = tissue_pair()
    out = exemplar_transfer(image, target, source_tissue=source, settings=SMALL, seed=0)
    px = out.image.astype(int)
    inner1 = ndi.binary_erosion(target.labels == 1, iterations=3)
    inner2 = ndi.binary_erosion(target.labels == 2, iterations=3)
    assert np.abs(px[inner1].mean(0) - np.array(RED)).max() < 15
    assert np.abs(px[inner2].mean(0) - np.array((40, 180, 40))).max() < 15
    assert out.info["mask_kind"] == "tissue" and out.info["classes_matched"] == [1, 2]


def test_missing_classes_are_reported_and_filled_by_the_fallback():
    image, source, _ = tissue_pair()
    labels = np.ones((48, 48), np.int32)
    labels[10:30, 10:30] = 3  # the source has no class 3
    out = exemplar_transfer(image, TissueMask.create(labels, "tissue"), source_tissue=source, settings=SMALL)
    assert out.info["classes_unmatched"] == [3]
    assert any("not in the source mask: 3" in n and "whole source" in n for n in out.notes)
    assert out.image[15:25, 15:25].std() > 0  # filled with source texture, not left empty
    image, nuclei = coloured_source()
    target = NucleiMask.create(nuclei_target().instances, {1: 1, 2: 3, 3: 1}, "consep")
    out = exemplar_transfer(image, target, source_nuclei=nuclei, settings=SMALL)
    assert out.info["classes_unmatched"] == [3] and "epithelial" in out.notes[0] and "all classes" in out.notes[0]
    assert out.info["nuclei_pasted"] == 3


def test_bad_input_says_what_to_do_in_one_line():
    image, nuclei = coloured_source()
    img_t, tissue, target_t = tissue_pair()
    cases = [
        (lambda: exemplar_transfer(image, nuclei_target()), "needs the source's nuclei mask"),
        (lambda: exemplar_transfer(img_t, target_t, source_nuclei=None), "needs the source's tissue mask"),
        (lambda: exemplar_transfer(image[:50], nuclei_target(), source_nuclei=nuclei), "pixel for pixel"),
        (lambda: exemplar_transfer(image.astype(float), nuclei_target(), source_nuclei=nuclei), "RGB uint8"),
        (lambda: exemplar_transfer(image, nuclei_target(), source_nuclei=NucleiMask.create(
            np.zeros((96, 96), int), {}, "consep")), "no nuclei to copy"),
        (lambda: exemplar_transfer(img_t, TissueMask.create(np.zeros((32, 32), int)), source_tissue=tissue), "empty"),
        (lambda: exemplar_transfer(img_t, target_t, source_tissue=tissue, settings=ExemplarSettings(patch_px=2)),
         "Patch size"),
    ]
    for call, text in cases:
        with pytest.raises(HistogenInputError, match=text) as err:
            call()
        assert "\n" not in str(err.value)


def test_source_resampled_to_the_target_scale():
    image, nuclei = coloured_source()
    target = nuclei_target()
    target.mpp = 0.5  # the source (0.25 µm/px) is twice as fine: halved first
    out = exemplar_transfer(image, target, source_nuclei=nuclei, settings=SMALL)
    assert out.info["source_rescale"] == 0.5 and "resampled" in out.notes[0]


def test_engine_from_the_registry_with_progress_cancel_and_provenance():
    assert "exemplar" in ENGINES and ENGINES["exemplar"].model_lines()
    assert request_defaults(ExemplarRequest)["n_outputs"] == 4
    image, nuclei = coloured_source()
    target = nuclei_target()
    engine = create_engine("exemplar")
    assert isinstance(engine, ExemplarEngine) and engine.describe()["device"] == "cpu"
    request = ExemplarRequest(source_image=image, source_nuclei=nuclei, target_masks=[target], n_outputs=2, seed=4,
                              settings=SMALL, source_name="coloured")
    seen = []
    results = engine.run(request, progress=lambda d, t: seen.append((d, t)))
    assert [r.seed for r in results] == [4, 5] and seen[-1][0] == seen[-1][1]
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    prov = results[0].provenance["parameters"]
    assert prov["engine"] == "exemplar" and prov["settings"]["patch_px"] == 16 and prov["classes_unmatched"] == []
    assert results[0].mask is target and not np.array_equal(results[0].image, results[1].image)
    json.dumps(results[0].provenance)  # provenance is plain JSON
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        engine.run(request, cancel=token)
    problems = ExemplarRequest(source_image=image, target_masks=[target], n_outputs=0).problems()
    assert any("nuclei mask" in p for p in problems) and any("outputs" in p for p in problems)
    with pytest.raises(HistogenInputError, match="no model"):
        ExemplarEngine("sd15")
    with pytest.raises(HistogenInputError, match="CPU"):
        ExemplarEngine(device="cuda")
    engine.free()
    with pytest.raises(HistogenInputError, match="freed"):
        engine.run(request)


def test_cli_example_method_on_the_nucls_sample_and_a_tissue_mask(tmp_path, capsys):
    import dataclasses

    from skimage.io import imread, imsave

    from napari_histogen.cli import main
    from napari_histogen.core.io.bundle import write_annotated_bundle
    from napari_histogen.core.sample import nucls_sample

    sample = nucls_sample()
    write_annotated_bundle(sample, tmp_path / "src")
    rotated = NucleiMask.create(np.ascontiguousarray(np.rot90(sample.nuclei.instances)), sample.nuclei.classes,
                                "nucls", mpp=sample.mpp)
    write_annotated_bundle(dataclasses.replace(sample, name="target", nuclei=rotated, image=None, points=None,
                                               point_classes=None), tmp_path / "tgt")
    src = tmp_path / "src" / f"{sample.name}.png"
    assert main(["synthesize", "transfer", "--method", "example", "--mask-kind", "nuclei", "--source", str(src),
                 "--source-mask", str(tmp_path / "src" / f"{sample.name}.ome.tif"),
                 "--target-mask", str(tmp_path / "tgt" / "target.ome.tif"), "--n", "1", "--seed", "2",
                 "--out", str(tmp_path / "out")]) == 0
    written = tmp_path / "out" / f"{sample.name}_example_s2.png"
    assert imread(written).shape == (256, 256, 3)
    assert np.array_equal(imread(tmp_path / "out" / f"{sample.name}_example_s2_mask.png"), rotated.type_map())
    prov = json.loads((tmp_path / "out" / f"{sample.name}_example_s2.json").read_text())["parameters"]
    assert prov["engine"] == "exemplar" and prov["details"]["nuclei_pasted"] == rotated.n_nuclei
    # tissue masks (class ids)
    image, source, target = tissue_pair()
    imsave(tmp_path / "t.png", image, check_contrast=False)
    imsave(tmp_path / "t_mask.png", source.labels.astype(np.uint8), check_contrast=False)
    imsave(tmp_path / "target_mask.png", target.labels.astype(np.uint8), check_contrast=False)
    assert main(["synthesize", "transfer", "--method", "example", "--source", str(tmp_path / "t.png"),
                 "--source-mask", str(tmp_path / "t_mask.png"), "--target-mask", str(tmp_path / "target_mask.png"),
                 "--scheme", "tissue", "--patch-px", "16", "--overlap-px", "4", "--n", "2",
                 "--out", str(tmp_path / "out2")]) == 0
    assert "2 image + mask pair(s)" in capsys.readouterr().out
    # bad input: a message and exit status 2, no traceback, nothing written
    assert main(["synthesize", "transfer", "--method", "example", "--source", str(tmp_path / "t.png"),
                 "--target-mask", str(tmp_path / "target_mask.png"), "--out", str(tmp_path / "out3")]) == 2
    assert "--source-mask" in capsys.readouterr().err and not (tmp_path / "out3").exists()
