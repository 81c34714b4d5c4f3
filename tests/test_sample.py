"""Sample data (IHC with derived masks, bundled NuCLS patch) and overlay pictures."""

from importlib import resources

import numpy as np
import pytest

from napari_histogen.core.errors import HistogenInputError, UnknownClassError
from napari_histogen.core.masks import NucleiMask, nuclei_to_points
from napari_histogen.core.points import point_pixels
from napari_histogen.core.sample import IHC_MPP, ihc_sample, nucls_sample, render_overlay
from napari_histogen.core.schemes import UNCLASSIFIED_COLOR, get_scheme

# -- IHC sample ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ihc():
    return ihc_sample()


def test_ihc_sample_types_and_schemes(ihc):
    assert ihc.image.shape == (512, 512, 3) and ihc.image.dtype == np.uint8
    assert ihc.tissue.shape == (512, 512) and ihc.tissue.dtype == np.int32
    assert ihc.tissue_scheme.name == "tissue"
    assert set(np.unique(ihc.tissue)) <= {0, 1, 2}
    assert isinstance(ihc.nuclei, NucleiMask)
    assert ihc.nuclei.scheme.name == "consep"
    assert ihc.nuclei.instances.dtype == np.int32 and ihc.nuclei.shape == (512, 512)
    assert ihc.mpp == IHC_MPP == ihc.nuclei.mpp == 0.5


def test_ihc_tissue_fractions_are_plausible(ihc):
    # measured: 58 % epithelium, 37 % stroma, 6 % background (scikit-image 0.26)
    fractions = [float(np.mean(ihc.tissue == k)) for k in (0, 1, 2)]
    assert 0.02 < fractions[0] < 0.15
    assert 0.45 < fractions[1] < 0.70
    assert 0.25 < fractions[2] < 0.50


def test_ihc_epithelium_is_brown_and_background_is_bright(ihc):
    from skimage.color import rgb2hed

    dab = rgb2hed(ihc.image)[..., 2]
    assert dab[ihc.tissue == 1].mean() > 3 * dab[ihc.tissue == 2].mean()
    grey = ihc.image.mean(axis=-1)
    assert grey[ihc.tissue == 0].mean() > grey[ihc.tissue == 2].mean() > grey[ihc.tissue == 1].mean()


def test_ihc_nuclei_are_plausible(ihc):
    # measured: 461 nuclei (283 epithelial, 113 spindle, 44 other, 21 inflammatory)
    nuclei = ihc.nuclei
    assert 300 <= nuclei.n_nuclei <= 650
    counts = nuclei.counts()
    assert all(counts[name] > 0 for name in ("other", "inflammatory", "epithelial", "spindle"))
    assert counts["epithelial"] > counts["spindle"] > counts["inflammatory"]
    assert "unclassified" not in counts
    # nuclei sit on tissue, not on lumen or glass
    inside = nuclei.instances > 0
    assert np.mean(ihc.tissue[inside] == 0) < 0.01
    # nuclei are bluer (haematoxylin) than the tissue around them
    rgb = ihc.image.astype(float)
    blue = rgb[..., 2] - rgb[..., 0]
    tissue = (ihc.tissue > 0) & ~inside
    assert blue[inside].mean() > blue[tissue].mean() + 15
    # epithelial nuclei lie in epithelium, spindle ones in stroma
    points, classes, _ = nuclei_to_points(nuclei.instances, nuclei.classes)
    pix = point_pixels(points)
    where = ihc.tissue[pix[:, 0], pix[:, 1]]
    assert np.mean(where[classes == 3] == 1) > 0.9
    assert np.mean(where[classes == 4] == 2) > 0.9
    areas = np.bincount(nuclei.instances.ravel())[1:]
    assert 60 < np.median(areas) < 200  # px at 0.5 µm/px: 15-50 µm²


def test_ihc_sample_is_a_copy_of_the_cache(ihc):
    first = ihc_sample()
    first.image[:] = 0
    first.tissue[:] = 0
    first.nuclei.instances[:] = 0
    first.nuclei.classes.clear()
    first.provenance["parameters"].clear()
    second = ihc_sample()
    assert second.image.any() and second.tissue.any() and second.nuclei.instances.any()
    assert second.nuclei.n_nuclei == ihc.nuclei.n_nuclei
    assert second.provenance["parameters"]


def test_ihc_provenance(ihc):
    prov = ihc.provenance
    assert "heuristic" in prov["operation"]
    params = prov["parameters"]
    assert "immunohistochemistry" in params["image_source"]
    assert "copyright" in params["image_licence"]
    assert params["mpp"] == 0.5 and "approximate" in params["mpp_note"]
    assert params["spindle_eccentricity"] == 0.85


# -- NuCLS sample -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nucls():
    return nucls_sample()


def test_nucls_files_are_package_data():
    folder = resources.files("napari_histogen").joinpath("data", "nucls")
    for name in ("test_2.png", "test_2.npz", "test_2.csv", "ATTRIBUTION.md"):
        assert folder.joinpath(name).is_file(), name
    text = folder.joinpath("ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "CC0" in text and "Amgad" in text and "463c5c44bfdebfbe3943597eaa84daf3f5e26a5f" in text


def test_nucls_sample_types_and_schemes(nucls):
    assert nucls.image.shape == (256, 256, 3) and nucls.image.dtype == np.uint8
    assert nucls.mpp == 0.25 and nucls.nuclei.mpp == 0.25
    assert nucls.nuclei.scheme.name == "nucls" and nucls.point_scheme.name == "nucls"
    assert nucls.nuclei.instances.dtype == np.int32 and nucls.nuclei.shape == (256, 256)
    assert nucls.points.shape == (54, 2) and nucls.points.dtype == np.float64
    assert nucls.point_classes.shape == (54,)
    # file classes 0..3 -> scheme ids 1..4; the patch was picked for using all four
    assert np.bincount(nucls.point_classes, minlength=5).tolist() == [0, 19, 17, 11, 7]
    assert nucls.nuclei.n_nuclei == 46
    assert nucls.tissue is None


def test_nucls_points_are_row_col(nucls):
    # the file stores x, y: its first row is "231,29,1" -> point (row 29, col 231)
    assert nucls.points[0].tolist() == [29.0, 231.0]
    assert nucls.point_classes[0] == 2
    # most points fall inside a nucleus (the dataset says 85-100 %)
    pix = point_pixels(nucls.points)
    assert np.mean(nucls.nuclei.instances[pix[:, 0], pix[:, 1]] > 0) > 0.75


def test_nucls_instance_classes_follow_their_points(nucls):
    instances, classes = nucls.nuclei.instances, nucls.nuclei.classes
    pix = point_pixels(nucls.points)
    under = instances[pix[:, 0], pix[:, 1]]
    for inst_id, cls in classes.items():
        votes = nucls.point_classes[under == inst_id]
        if votes.size == 0:
            assert cls == 0
        else:
            counts = np.bincount(votes, minlength=5)
            assert cls == int(np.argmax(counts)), inst_id
    assert sum(1 for c in classes.values() if c) >= 40


def test_nucls_sample_is_a_copy(nucls):
    first = nucls_sample()
    first.points[:] = -1
    first.nuclei.instances[:] = 0
    assert nucls_sample().points.min() >= 0 and nucls_sample().nuclei.instances.any()


# -- overlays ---------------------------------------------------------------------------------------


def _has_colour(picture, colour):
    return bool(np.any(np.all(picture == np.asarray(colour, np.uint8), axis=-1)))


def test_overlay_of_tissue_shows_class_colours(ihc):
    scheme = get_scheme("tissue")
    picture = render_overlay(ihc.image, tissue=ihc.tissue, tissue_scheme="tissue", alpha=1.0)
    assert picture.shape == ihc.image.shape and picture.dtype == np.uint8
    assert np.all(picture[ihc.tissue == 1] == scheme[1].color)
    assert np.all(picture[ihc.tissue == 2] == scheme[2].color)
    assert np.array_equal(picture[ihc.tissue == 0], ihc.image[ihc.tissue == 0])
    half = render_overlay(ihc.image, tissue=ihc.tissue, alpha=0.4)
    assert not _has_colour(half, scheme[1].color) and not np.array_equal(half, ihc.image)


def test_overlay_outlines_nuclei_and_draws_points(nucls):
    scheme = nucls.nuclei.scheme
    image_before = nucls.image.copy()
    picture = render_overlay(nucls.image, nucls.nuclei, points=nucls.points,
                             point_classes=nucls.point_classes, point_scheme=nucls.point_scheme)
    assert picture.shape == (256, 256, 3) and picture.dtype == np.uint8
    assert np.array_equal(nucls.image, image_before)
    for cls in scheme.classes:
        assert _has_colour(picture, cls.color), cls.name
    assert _has_colour(picture, UNCLASSIFIED_COLOR)  # unclassified nuclei outlines
    assert _has_colour(picture, (20, 20, 20))  # the points' dark rims
    # each point's own pixel shows its class colour
    pix = point_pixels(nucls.points)
    for (r, c), cls in zip(pix, nucls.point_classes):
        assert tuple(picture[r, c]) == scheme.color(cls)
    # without outline the nuclei are only tinted: no pure class colour on a nucleus
    tinted = render_overlay(nucls.image, nucls.nuclei, outline=False)
    assert not any(_has_colour(tinted, c.color) for c in scheme.classes)


def test_overlay_of_nothing_is_the_image(nucls):
    assert np.array_equal(render_overlay(nucls.image), nucls.image)


def test_overlay_refuses_bad_input(nucls, ihc):
    with pytest.raises(HistogenInputError):
        render_overlay(nucls.image, tissue=ihc.tissue)  # 512 px mask on a 256 px image
    with pytest.raises(HistogenInputError):
        render_overlay(nucls.image, alpha=1.5)
    with pytest.raises(HistogenInputError):
        render_overlay(nucls.image, points=[[1.0, 2.0, 3.0]])
    with pytest.raises(HistogenInputError):
        render_overlay(nucls.image, points=[[1.0, 2.0]], point_classes=[1])  # scheme missing
    with pytest.raises(UnknownClassError):
        render_overlay(nucls.image, points=[[1.0, 2.0]], point_classes=[9], point_scheme="nucls")
