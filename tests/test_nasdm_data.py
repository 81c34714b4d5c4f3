"""NASDM training data: readers -> resampling -> windows -> tissue filter -> split -> dataset; stain normalisation."""

import gzip
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from skimage.io import imsave

from napari_histogen.core.errors import HistogenInputError
from napari_histogen.core.io.annotated import AnnotatedImage
from napari_histogen.core.masks import NucleiMask
from napari_histogen.core.nasdm.condition import make_condition
from napari_histogen.core.nasdm.data import (
    NasdmPatchDataset,
    PatchRef,
    build_patch_set,
    dihedral,
    format_summary,
    iter_sources,
    patch_grid,
    resample_to_mpp,
    split_sources,
    tissue_fraction,
    tissue_mask,
)
from napari_histogen.core.nasdm.stain import StainNormalizer, od_to_rgb, rgb_to_od, stain_matrix

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PINK = (232, 150, 205)  # stroma-like: tissue by the OD rule
DARK = (40, 20, 90)  # nucleus-like


def _blobs(rng, shape, n, size=(5, 12)):
    """Instance map of ``n`` irregular (asymmetric) blobs, ids 1..n, some touching."""
    inst = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        h, w = rng.integers(size[0], size[1], 2)
        r, c = rng.integers(0, shape[0] - h), rng.integers(0, shape[1] - w)
        block = inst[r:r + h, c:c + w]
        block[(np.arange(h)[:, None] + np.arange(w)[None] * 2) % 7 != 0] = i  # not symmetric
        block[0, :] = np.where(block[0, :] == i, 0, block[0, :])  # an L-ish shape
    return inst


def _tissue_image(inst, background=PINK, rng=None):
    """Stroma-coloured image (with colour noise when ``rng`` is given) whose nuclei are DARK."""
    img = np.empty(inst.shape + (3,), np.uint8)
    img[:] = background
    if rng is not None:
        img[:] = np.clip(img + rng.integers(-30, 15, img.shape), 0, 255)
    img[inst > 0] = DARK
    return img


def _write_pair(folder, stem, image, inst, types=None, scheme="consep", mpp=0.5):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    imsave(folder / "images" / f"{stem}.png", image, check_contrast=False)
    arrays = {"inst_map": inst}
    if types is not None:
        arrays["type_map"] = types
        arrays["scheme"] = np.array(scheme)
    if mpp is not None:
        arrays["mpp"] = np.array(mpp)
    np.savez(folder / "labels" / f"{stem}.npz", **arrays)


def _typed(inst, rng, n_classes=4):
    classes = {int(i): int(rng.integers(1, n_classes + 1)) for i in np.unique(inst) if i}
    lut = np.zeros(int(inst.max()) + 1, np.int32)
    for i, c in classes.items():
        lut[i] = c
    return lut[inst], classes


@pytest.fixture
def rng():
    return np.random.default_rng(11)


@pytest.fixture
def pair_folder(tmp_path, rng):
    """Three 20x images of 96x80 px with typed nuclei (scheme consep)."""
    folder = tmp_path / "pairs"
    for k in range(3):
        inst = _blobs(rng, (96, 80), 12)
        types, _ = _typed(inst, rng)
        _write_pair(folder, f"slide{k}", _tissue_image(inst, rng=rng), inst, types)
    return folder


# -- windows, resampling, tissue, split -----------------------------------------------------------


def test_patch_grid_covers_the_image_with_half_overlap_and_ends_at_the_border():
    grid = patch_grid((300, 256, 3), size=128, overlap=0.5)
    rows, cols = sorted({r for r, _ in grid}), sorted({c for _, c in grid})
    assert rows == [0, 64, 128, 172] and cols == [0, 64, 128]
    assert len(grid) == len(rows) * len(cols)
    covered = np.zeros((300, 256), int)
    for r, c in grid:
        covered[r:r + 128, c:c + 128] += 1
    assert covered.min() >= 1 and max(r for r, _ in grid) + 128 == 300 and max(c for _, c in grid) + 128 == 256
    assert patch_grid((128, 128), 128) == [(0, 0)]  # CoNSeP 256 px at 40x -> one patch at 20x
    assert patch_grid((127, 500), 128) == []  # smaller than a patch: no window, no padding
    assert len(patch_grid((256, 256), 128, overlap=0.0)) == 4
    for bad in ({"size": 0}, {"overlap": 1.0}, {"overlap": -0.1}, {"size": 12.5}):
        with pytest.raises(HistogenInputError):
            patch_grid((256, 256), **{"size": 128, "overlap": 0.5, **bad})


def _item(rng, shape=(64, 48), mpp=0.25):
    inst = np.zeros(shape, np.int32)
    inst[4:20, 6:22] = 3
    inst[30:46, 10:30] = 8
    inst[50:60, 30:46] = 9
    inst[2, 40] = 12  # one pixel on an even row/column: gone at half size
    classes = {3: 1, 8: 2, 9: 4, 12: 3}
    image = _tissue_image(inst)
    nuclei = NucleiMask.create(inst, classes, "consep", mpp=mpp)
    return AnnotatedImage("toy", image=image, nuclei=nuclei, mpp=mpp, provenance={"source_id": "toy"})


def test_resample_halves_the_shape_keeps_classes_and_updates_mpp(rng):
    item = _item(rng)
    before = (item.image.copy(), item.nuclei.instances.copy(), dict(item.nuclei.classes))
    half = resample_to_mpp(item, 0.5)
    assert half.image.shape == (32, 24, 3) and half.nuclei.instances.shape == (32, 24)
    assert half.mpp == half.nuclei.mpp == 0.5 and half.image.dtype == np.uint8
    assert half.nuclei.classes == {3: 1, 8: 2, 9: 4}  # the 1-px nucleus vanished and left the table
    assert half.provenance["resample_dropped_nuclei"] == 1 and half.provenance["resampled_from_mpp"] == 0.25
    # nuclei stay on their pixels: every nucleus pixel of the mask is dark in the image
    assert half.image[half.nuclei.instances > 0].max() <= 120
    # input untouched
    np.testing.assert_array_equal(item.image, before[0])
    np.testing.assert_array_equal(item.nuclei.instances, before[1])
    assert item.nuclei.classes == before[2] and item.mpp == 0.25
    same = resample_to_mpp(half, 0.5)
    assert same is not half and same.image is not half.image
    np.testing.assert_array_equal(same.image, half.image)
    # a non-integer factor goes through the anti-aliased resize
    odd = resample_to_mpp(item, 0.3)
    assert odd.image.shape[:2] == odd.nuclei.instances.shape == (53, 40)
    with pytest.raises(HistogenInputError, match="positive"):
        resample_to_mpp(item, 0)
    item.mpp = None
    with pytest.raises(HistogenInputError, match="scale"):
        resample_to_mpp(item, 0.5)


def test_tissue_fraction_tells_glass_from_tissue():
    white = np.full((64, 64, 3), 245, np.uint8)
    tissue = np.zeros((64, 64, 3), np.uint8)
    tissue[:] = PINK
    tissue[::7, ::5] = DARK
    assert tissue_fraction(white) == 0.0 and tissue_fraction(tissue) == 1.0
    half = white.copy()
    half[:, :32] = PINK
    assert tissue_fraction(half) == pytest.approx(0.5)
    assert tissue_mask(half).dtype == bool
    with pytest.raises(HistogenInputError):
        tissue_fraction(np.zeros((4, 4)))


def test_split_is_by_source_deterministic_and_non_empty():
    ids = [f"tile{i}" for i in range(10) for _ in range(5)]  # 5 patches per source
    train, val = split_sources(ids, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert set(train) | set(val) == set(ids)
    assert split_sources(list(reversed(ids)), 0.2, seed=3) == (train, val)  # order does not matter
    assert split_sources(ids, 0.2, seed=4) != (train, val)
    assert split_sources(["a", "b"], 0.01) in ((["a"], ["b"]), (["b"], ["a"]))  # at least one each
    assert split_sources(["a"], 0.5) == (["a"], [])
    assert split_sources(ids, 0.0) == (sorted(set(ids)), [])
    with pytest.raises(HistogenInputError, match="validation fraction"):
        split_sources(ids, 1.0)


# -- the patch set and the dataset -------------------------------------------------------------


def test_build_patch_set_splits_by_source_drops_glass_and_copies_no_pixels(tmp_path, rng, pair_folder):
    inst = np.zeros((96, 80), np.int32)
    _write_pair(pair_folder, "glass", np.full((96, 80, 3), 247, np.uint8), inst, inst)
    seen = []
    ps = build_patch_set(pair_folder, patch_size=32, overlap=0.5, val_fraction=0.34, seed=0,
                         progress=lambda done, total: seen.append((done, total)))
    s = ps.summary
    assert seen[-1] == (4, 4) and len(seen) == 4
    assert s["sources_read"] == 4 and s["sources"] == 3
    assert [x["name"] for x in s["sources_skipped"]] == ["glass.png"]
    per_source = len(patch_grid((96, 80), 32, 0.5))
    assert s["patches_total"] == 4 * per_source and s["patches_dropped_tissue"] == per_source
    assert s["patches_kept"] == 3 * per_source == len(ps.train) + len(ps.val)
    assert s["sources_train"] == 2 and s["sources_val"] == 1
    train_ids = {r.source_id for r in ps.train}
    val_ids = {r.source_id for r in ps.val}
    assert not train_ids & val_ids and val_ids == set(s["val_source_ids"])
    assert ps.class_ids == (1, 2, 3, 4) and ps.scheme.name == "consep"
    assert sum(s["nuclei_per_class"]["train"].values()) + sum(s["nuclei_per_class"]["val"].values()) > 20
    assert s["mpp_in"] == [0.5] and s["mpp_out"] == 0.5
    image, inst_crop, _ = ps.crop(ps.train[0])
    assert np.shares_memory(image, ps.sources[ps.train[0].source].image) and not image.flags.writeable
    assert "patches:" in format_summary(s)
    # the same call gives the same split
    again = build_patch_set(pair_folder, patch_size=32, overlap=0.5, val_fraction=0.34, seed=0)
    assert again.train == ps.train and again.val == ps.val


def test_dataset_items_match_make_condition_of_the_crop(rng, pair_folder):
    ps = build_patch_set(pair_folder, patch_size=32, val_fraction=0.0)
    plain = NasdmPatchDataset(ps, ps.train, augment=False)
    assert len(plain) == len(ps.train)
    item = plain[3]
    assert set(item) == {"image", "condition"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["condition"].shape == (6, 32, 32) and item["condition"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    image, inst, classes = ps.crop(ps.train[3])
    np.testing.assert_array_equal(item["condition"].numpy(), make_condition(inst, classes, ps.class_ids))
    np.testing.assert_allclose(item["image"].numpy(), image.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)

    # augmented items are one of the 8 dihedral transforms of the crop, image and mask alike
    augmented = NasdmPatchDataset(ps, ps.train, augment=True)
    torch.manual_seed(5)
    first = [augmented[i] for i in range(len(augmented))]
    torch.manual_seed(5)
    second = [augmented[i] for i in range(len(augmented))]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, second))  # seeded: repeatable
    used = set()
    for ref, got in zip(ps.train, first):
        image, inst, classes = ps.crop(ref)
        ks = [k for k in range(8)
              if np.array_equal(got["condition"].numpy(), make_condition(np.ascontiguousarray(dihedral(inst, k)),
                                                                         classes, ps.class_ids))
              and np.allclose(got["image"].numpy(), dihedral(image, k).transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)]
        assert ks, "an augmented item is not a dihedral transform of its crop"
        used.update(ks)
    assert len(used) >= 4  # the draw really varies


def test_augmentation_keeps_image_and_nuclei_aligned(rng, pair_folder):
    ps = build_patch_set(pair_folder, patch_size=48, overlap=0.5, val_fraction=0.0)
    ds = NasdmPatchDataset(ps, "train", augment=True)
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        dark = item["image"].numpy().mean(axis=0) < -0.3  # nucleus pixels are exactly the dark ones
        nucleus = item["condition"][0].numpy() == 0  # channel 0 = background
        np.testing.assert_array_equal(dark, nucleus)
    square = np.arange(12).reshape(3, 4)
    assert len({dihedral(square, k).tobytes() + bytes(dihedral(square, k).shape) for k in range(8)}) == 8
    with pytest.raises(HistogenInputError):
        dihedral(square, 8)


def test_unclassified_nuclei_are_refused_or_their_patches_dropped(tmp_path, rng):
    folder = tmp_path / "partly"
    inst = _blobs(rng, (64, 64), 8)
    types, _ = _typed(inst, rng)
    types[inst == 1] = 0  # nucleus 1 has no class
    _write_pair(folder, "a", _tissue_image(inst), inst, types)
    with pytest.raises(HistogenInputError, match="no class"):
        build_patch_set(folder, patch_size=32)
    ps = build_patch_set(folder, patch_size=32, unclassified="drop")
    assert ps.summary["patches_dropped_unclassified"] >= 1
    for ref in ps.train + ps.val:
        assert 1 not in ps.crop(ref)[1]
        ps.condition(ref)  # every kept window has a valid condition


# -- formats --------------------------------------------------------------------------------------


def test_iter_sources_pannuke_and_conic_folders(tmp_path, rng):
    fold = tmp_path / "fold1"
    fold.mkdir()
    masks = np.zeros((3, 32, 32, 6))
    masks[:, 2:8, 2:8, 0] = 4
    masks[:, 20:26, 12:20, 2] = 4
    np.save(fold / "images.npy", rng.uniform(100, 230, (3, 32, 32, 3)))
    np.save(fold / "masks.npy", masks)
    items = list(iter_sources(fold))
    assert [i.provenance["source_id"] for i in items] == ["fold1[0]", "fold1[1]", "fold1[2]"]
    assert all(i.mpp == 0.25 and i.nuclei.scheme.name == "pannuke" for i in items)
    assert [i.provenance["source_id"] for i in iter_sources(str(fold / "masks.npy") + "::1")] == ["fold1[1]"]
    ps = build_patch_set(fold, patch_size=16, val_fraction=0.34)
    assert ps.summary["mpp_in"] == [0.25] and ps.sources[0].image.shape == (16, 16, 3)
    assert ps.summary["sources_val"] == 1 and ps.summary["formats"] == ["pannuke"]

    conic = tmp_path / "conic"
    conic.mkdir()
    labels = np.zeros((4, 32, 32, 2), np.int32)
    labels[:, 3:9, 3:9] = (5, 2)
    np.save(conic / "images.npy", rng.integers(100, 230, (4, 32, 32, 3), dtype=np.uint8))
    np.save(conic / "labels.npy", labels)
    assert [i.provenance["source_id"] for i in iter_sources(conic, "conic")] == [f"conic[{k}]" for k in range(4)]
    (conic / "patch_info.csv").write_text("patch_info\nconsep_1-0000\nconsep_1-0001\ncrag_3-0000\ncrag_3-0001\n")
    items = list(iter_sources(conic))
    assert [i.provenance["source_id"] for i in items] == ["consep_1", "consep_1", "crag_3", "crag_3"]
    assert items[0].mpp == 0.5 and items[0].nuclei.classes == {5: 2}
    with pytest.raises(HistogenInputError, match="not 'lizard'"):
        list(iter_sources(conic, "lizard"))
    with pytest.raises(HistogenInputError, match="scheme"):
        list(iter_sources(conic, scheme="pannuke"))


def test_iter_sources_image_mask_folder_needs_a_scale(tmp_path, rng):
    folder = tmp_path / "pairs"
    inst = _blobs(rng, (40, 40), 4)
    types, _ = _typed(inst, rng)
    _write_pair(folder, "a", _tissue_image(inst), inst, types, mpp=None)
    imsave(folder / "images" / "orphan.png", _tissue_image(inst), check_contrast=False)  # no mask
    with pytest.warns(UserWarning, match="orphan.png"):
        with pytest.raises(HistogenInputError, match="source-mpp"):
            list(iter_sources(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = list(iter_sources(folder, source_mpp=0.25))
    assert len(items) == 1 and items[0].mpp == items[0].nuclei.mpp == 0.25
    assert items[0].provenance["source_id"] == "a" and items[0].provenance["mpp_from"] == "source_mpp"
    with pytest.raises(HistogenInputError, match="No training data"):
        list(iter_sources(tmp_path / "pairs" / "labels", "folder"))
    with pytest.raises(HistogenInputError, match="Unknown data format"):
        list(iter_sources(folder, "svs"))
    with pytest.raises(HistogenInputError, match="does not exist"):
        list(iter_sources(tmp_path / "missing"))


def test_iter_sources_consep_patch_layout_and_lizard_labels(tmp_path, rng):
    root = tmp_path / "consep"
    for sub in ("images/train", "inst/train", "type_mat/train"):
        (root / sub).mkdir(parents=True)
    for name in ("train_1_000", "train_1_001", "train_12_000"):
        inst = _blobs(rng, (64, 64), 5) * 10  # ids need not be contiguous
        ids = np.unique(inst)[1:]
        imsave(root / "images/train" / f"{name}.png", _tissue_image(inst), check_contrast=False)
        with gzip.open(root / "inst/train" / f"{name}.npy.gz", "wb") as handle:
            np.save(handle, inst)
        sio.savemat(root / "type_mat/train" / f"{name}.mat",
                    {"inst_type": rng.integers(1, 5, (ids.size, 1)), "inst_centroid": np.zeros((ids.size, 2))})
    items = list(iter_sources(root))
    assert [i.provenance["source_id"] for i in items] == ["train_1", "train_1", "train_12"]
    assert all(i.mpp == 0.25 and i.nuclei.scheme.name == "consep" for i in items)
    ps = build_patch_set(root, patch_size=32, val_fraction=0.5)
    assert {r.source_id for r in ps.val} in ({"train_1"}, {"train_12"})

    labels = tmp_path / "Lizard_Labels" / "Labels"
    labels.mkdir(parents=True)
    images = tmp_path / "Lizard_Images1"
    images.mkdir()
    inst = _blobs(rng, (48, 48), 4)
    ids = np.unique(inst)[1:]
    imsave(images / "crag_1.png", _tissue_image(inst), check_contrast=False)
    sio.savemat(labels / "crag_1.mat", {"inst_map": inst.astype(np.float64), "id": ids[:, None],
                                        "class": rng.integers(1, 7, (ids.size, 1))})
    lizard = list(iter_sources(tmp_path / "Lizard_Labels", "lizard"))
    assert [i.provenance["source_id"] for i in lizard] == ["crag_1"] and lizard[0].mpp == 0.5


# -- stain normalisation ----------------------------------------------------------------------------

H1, E1 = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
H2, E2 = np.array([0.55, 0.78, 0.30]), np.array([0.20, 0.95, 0.25])


def _two_stain(h, e, seed, n=96):
    """Synthetic H&E: a third pure haematoxylin, a third pure eosin, a third mixed, some glass."""
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    r = np.random.default_rng(seed)
    kind = r.integers(0, 4, (n, n))
    ch = np.select([kind == 0, kind == 2], [r.uniform(0.4, 1.6, (n, n)), r.uniform(0.1, 0.6, (n, n))], 0.0)
    ce = np.select([kind == 1, kind == 2], [r.uniform(0.3, 1.0, (n, n)), r.uniform(0.1, 0.6, (n, n))], 0.0)
    return od_to_rgb(ch[..., None] * h + ce[..., None] * e), ch, ce


def _angle(a, b):
    return np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_stain_normalisation_on_a_synthetic_two_stain_image(method):
    ref, _, _ = _two_stain(H1, E1, seed=0)
    src, ch, ce = _two_stain(H2, E2, seed=1)
    vectors = stain_matrix(ref, method)
    assert _angle(vectors[:, 0], H1) < 3 and _angle(vectors[:, 1], E1) < 3  # haematoxylin first
    src_before = src.copy()
    norm = StainNormalizer(method).fit(ref)
    out = norm.transform(src)
    np.testing.assert_array_equal(src, src_before)  # input untouched
    assert out.dtype == np.uint8 and out.shape == src.shape
    # the source's stain amounts drawn with the reference's stains
    h1, e1 = H1 / np.linalg.norm(H1), E1 / np.linalg.norm(E1)
    expected = od_to_rgb(ch[..., None] * h1 + ce[..., None] * e1).astype(float)
    err_after, err_before = np.abs(out - expected).mean(), np.abs(src - expected).mean()
    assert err_after < 3.0 and err_after < err_before / 4
    np.testing.assert_array_equal(norm(src), out)  # deterministic
    blank = np.full((40, 40, 3), 248, np.uint8)
    np.testing.assert_array_equal(norm.transform(blank), blank)  # no tissue: unchanged
    with pytest.raises(HistogenInputError, match="too little"):
        StainNormalizer(method).fit(blank)
    assert np.allclose(rgb_to_od(od_to_rgb(rgb_to_od(ref))), rgb_to_od(ref))


def test_build_patch_set_with_stain_normalisation(rng, pair_folder):
    plain = build_patch_set(pair_folder, patch_size=32, val_fraction=0.0)
    normed = build_patch_set(pair_folder, patch_size=32, val_fraction=0.0, stain_normalizer="macenko")
    assert normed.summary["stain_normalization"].startswith("macenko (reference")
    assert normed.train == plain.train
    with pytest.raises(HistogenInputError, match="stain normalisation"):
        build_patch_set(pair_folder, patch_size=32, stain_normalizer="reinhard")
    inverted = build_patch_set(pair_folder, patch_size=32, val_fraction=0.0, stain_normalizer=lambda im: 255 - im)
    np.testing.assert_array_equal(inverted.sources[0].image, 255 - plain.sources[0].image)


# -- real data (research-only copy beside the repository; never shipped) ----------------------------


@pytest.mark.skipif(not (SHARED_DATA / "consep_patches256").is_dir(),
                    reason="../shared/data/consep_patches256 is absent")
@pytest.mark.slow
def test_real_consep_patches_at_20x():
    ps = build_patch_set(SHARED_DATA / "consep_patches256", target_mpp=0.5, patch_size=128, min_tissue=0.1,
                         val_fraction=0.1, seed=0)
    s = ps.summary
    print("\n" + format_summary(s))
    tiles = {src.provenance["source_id"] for src in ps.sources}
    assert s["sources_read"] == 432 and len(tiles) == 27  # every CoNSeP train tile is a source
    assert all(src.image.shape == (128, 128, 3) for src in ps.sources)  # 256 px at 40x -> one 128 px patch
    assert s["patches_total"] == 432 and s["patches_kept"] == 432 - s["patches_dropped_tissue"]
    assert s["mpp_in"] == [0.25] and s["scheme"] == "consep"
    train_tiles, val_tiles = {r.source_id for r in ps.train}, {r.source_id for r in ps.val}
    assert not train_tiles & val_tiles and len(val_tiles) == 3  # by tile, never by patch
    assert all(re.fullmatch(r"train_\d+", ref.source_id) for ref in ps.train + ps.val)  # tile, not patch
    counts = s["nuclei_per_class"]["train"]
    assert counts["epithelial"] > 1000 and counts["spindle"] > 1000 and counts["inflammatory"] > 1000
    item = NasdmPatchDataset(ps, ps.val, augment=False)[0]
    assert item["image"].shape == (3, 128, 128) and item["condition"].shape == (6, 128, 128)
    assert isinstance(ps.train[0], PatchRef)
