"""Sample data: an IHC image with derived masks, a bundled NuCLS patch, and overlay pictures.

- :func:`ihc_sample` — scikit-image's immunohistochemistry image (colonic glands, DAB
  marks the epithelium) with a tissue mask and a nuclei mask derived from it by a short,
  documented heuristic (no model, no download).
- :func:`nucls_sample` — one real NuCLS breast H&E patch (CC0) with expert-reviewed
  nucleus instances and typed points, shipped inside the package.
- :func:`render_overlay` (from :mod:`napari_histogen.core.render`, re-exported here) — an
  annotated RGB picture of an image and its masks/points.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from importlib import resources
from io import BytesIO, StringIO

import numpy as np
from scipy import ndimage as ndi

from .images import to_rgb_uint8
from .io.annotated import AnnotatedImage
from .masks import NucleiMask, as_label_image, classes_from_type_map
from .provenance import make_provenance
from .render import render_overlay
from .schemes import UNCLASSIFIED, get_scheme

__all__ = ["ihc_sample", "nucls_sample", "render_overlay", "IHC_MPP", "NUCLS_MPP", "NUCLS_PATCH"]

#: Microns per pixel assumed for the IHC sample (approximate). scikit-image does not
#: document it; at 0.5 the sample's nuclei and glands have plausible sizes (see
#: :func:`ihc_sample`).
IHC_MPP = 0.5

#: Microns per pixel of NuCLS (40x scans, per the dataset paper).
NUCLS_MPP = 0.25

#: Name of the bundled NuCLS patch (``test_2`` of the CellViT++ example database).
NUCLS_PATCH = "test_2"

# Parameters of the IHC heuristics. Tuned by eye on the overlay of this one image: they
# are not a general IHC segmentation method, only a plausible starting mask.
_IHC_PARAMS = {
    "dab_sigma_px": 4.0,  # smooths DAB over membranes and nuclei into solid glands
    "dab_threshold": "otsu",
    "min_epithelium_px": 2000,  # drops brown specks in the stroma
    "epithelium_closing_radius_px": 6,  # closes notches where pale nuclei reach the gland edge
    "max_epithelium_hole_px": 3000,  # fills unstained nuclei inside glands
    "background_sigma_px": 8.0,  # averages over stromal nuclei, so stroma reads as stained
    "background_max_haematoxylin": 0.010,  # smoothed rgb2hed H below this and ...
    "background_max_dab": 0.05,  # ... smoothed DAB below this = unstained lumen / glass
    "min_background_px": 200,
    "nucleus_signal": "haematoxylin - DAB, each scaled to its 1-99 percentiles",
    "nucleus_sigma_px": 1.0,
    "nucleus_background_sigma_px": 8.0,  # local contrast: signal minus its blur at this scale
    "nucleus_threshold": 0.12,  # on the local contrast (range about -1..1)
    "min_nucleus_px": 20,
    "peak_min_distance_px": 5,
    "spindle_eccentricity": 0.85,
    "inflammatory_max_area_px": 60,
}


def _copy(sample: AnnotatedImage) -> AnnotatedImage:
    """A copy of a cached sample that shares no mutable state with the cache.

    Arrays, the class table and provenance are copied; schemes are frozen and shared.
    """
    nuclei = sample.nuclei
    if nuclei is not None:
        nuclei = dataclasses.replace(
            nuclei, instances=nuclei.instances.copy(), classes=dict(nuclei.classes),
            metadata=copy.deepcopy(nuclei.metadata),
        )
    return dataclasses.replace(
        sample,
        image=None if sample.image is None else sample.image.copy(),
        nuclei=nuclei,
        tissue=None if sample.tissue is None else sample.tissue.copy(),
        points=None if sample.points is None else sample.points.copy(),
        point_classes=None if sample.point_classes is None else sample.point_classes.copy(),
        provenance=copy.deepcopy(sample.provenance),
    )


# -- the IHC sample -----------------------------------------------------------------------


def ihc_sample() -> AnnotatedImage:
    """scikit-image's IHC colon image with a heuristic tissue mask and nuclei mask.

    The image (``skimage.data.immunohistochemistry``, 512x512) shows colonic glands; DAB
    (brown) marks the FHL2 protein in the epithelium, haematoxylin (blue) the nuclei.

    Returns
    -------
    AnnotatedImage
        ``image`` 512x512x3 uint8; ``tissue`` with scheme ``'tissue'`` (1 epithelium,
        2 stroma, 0 lumen/glass); ``nuclei`` with scheme ``'consep'``; ``mpp`` =
        :data:`IHC_MPP` (0.5, approximate); ``provenance`` with the method, its parameters
        and the image's source. A new copy on every call (the result is computed once
        and cached).

    Notes
    -----
    Derived automatically, not annotated by a pathologist:

    - **Epithelium**: DAB channel of colour deconvolution (``skimage.color.rgb2hed``),
      Gaussian-smoothed (sigma 4 px), above its Otsu threshold; pieces under 2000 px
      removed, closed with a 6-px disk, holes under 3000 px filled.
    - **Background** (lumen, glass): pixels where both the haematoxylin and the DAB
      channel, averaged over a wide window (sigma 8 px), are nearly zero (unstained).
      Stroma is almost as pale as glass, but its nuclei and blue tint raise the wide
      haematoxylin average. Background wins over epithelium (lumina inside glands).
    - **Stroma**: all other pixels.
    - **Nuclei**: haematoxylin minus DAB, each scaled to its 1-99 percentiles (in
      DAB-rich epithelium the deconvolution puts part of the brown cytoplasm into the
      haematoxylin channel too; subtracting DAB leaves the nuclei); its local contrast
      (minus its own blur, sigma 8 px) above 0.12, since stroma and epithelium sit at
      different levels; restricted to tissue; split by a watershed of the (lightly
      smoothed) distance transform from ``peak_local_max`` markers (5 px apart);
      nuclei under 20 px dropped.
    - **Classes**: a nucleus mostly in epithelium is *epithelial*; in stroma an elongated
      one (eccentricity above 0.85) is *spindle*, a small round one (at most 60 px,
      15 µm²) *inflammatory*;
      others (larger round stromal nuclei, nuclei on lumen) *other*.
    - **Scale**: not documented by scikit-image. :data:`IHC_MPP` = 0.5 µm/px is an
      assumption: at 0.5 the median segmented areas (epithelial about 28 µm², spindle
      24, inflammatory 8) are of the order of the 'consep' typical areas (22, 12, 11),
      and the glands (about 250 px across, 125 µm) are of colonic-crypt size.
    - Measured on scikit-image 0.26: about 460 nuclei (about 280 epithelial, 110
      spindle, 45 other, 20 inflammatory); 58 % epithelium, 37 % stroma, 6 % background.
    """
    return _copy(_ihc_sample_cached())


@functools.lru_cache(maxsize=1)
def _ihc_sample_cached() -> AnnotatedImage:
    from skimage import data

    image = to_rgb_uint8(data.immunohistochemistry(), name="IHC sample")
    tissue = _ihc_tissue(image, _IHC_PARAMS)
    instances, classes = _ihc_nuclei(image, tissue, _IHC_PARAMS)
    nuclei = NucleiMask.create(instances, classes, "consep", mpp=IHC_MPP, name="IHC sample nuclei")
    provenance = make_provenance(
        "IHC sample (derived automatically, heuristic)",
        image_source="skimage.data.immunohistochemistry: colonic glands, IHC for FHL2 (DAB) with "
        "haematoxylin counterstain, acquired at the Center for Microscopy And Molecular Imaging (CMMI)",
        image_licence="no known copyright restrictions (scikit-image data documentation)",
        masks="derived automatically by a colour-deconvolution heuristic; not expert annotations",
        mpp=IHC_MPP,
        mpp_note="approximate; the source does not state the scale",
        **_IHC_PARAMS,
    )
    return AnnotatedImage(
        name="ihc_colon",
        image=image,
        nuclei=nuclei,
        tissue=tissue,
        tissue_scheme=get_scheme("tissue"),
        mpp=IHC_MPP,
        provenance=provenance,
    ).validate()


def _scaled(channel: np.ndarray) -> np.ndarray:
    """Channel mapped to [0, 1] by its 1st and 99th percentiles (robust to specks)."""
    lo, hi = np.percentile(channel, [1, 99])
    return np.clip((channel - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """``mask`` without its 8-connected pieces smaller than ``min_px`` pixels.

    Written out rather than ``skimage.morphology.remove_small_objects``, whose size
    parameter changed name and meaning in scikit-image 0.26.
    """
    pieces, count = ndi.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask.copy()
    sizes = np.bincount(pieces.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[pieces]


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a disk; the image edge is padded so it does not erode the mask."""
    from skimage.morphology import disk

    padded = np.pad(mask, radius + 1, mode="edge")
    closed = ndi.binary_closing(padded, structure=disk(radius).astype(bool))
    return closed[radius + 1 : -(radius + 1), radius + 1 : -(radius + 1)]


def _ihc_tissue(image: np.ndarray, p: dict) -> np.ndarray:
    from skimage import color, filters

    hed = color.rgb2hed(image)
    dab = filters.gaussian(hed[..., 2], sigma=p["dab_sigma_px"])
    epithelium = _remove_small(dab > filters.threshold_otsu(dab), p["min_epithelium_px"])
    epithelium = _close(epithelium, p["epithelium_closing_radius_px"])
    # holes = background pieces of the complement that are small (nuclei, not lumina)
    epithelium |= ~_remove_small(~epithelium, p["max_epithelium_hole_px"])

    # Lumen and glass carry neither stain. Stroma is nearly as pale as glass, but its
    # nuclei and blue tint raise the haematoxylin average over a large window.
    sigma = p["background_sigma_px"]
    haem = filters.gaussian(hed[..., 0], sigma=sigma)
    dab_wide = filters.gaussian(hed[..., 2], sigma=sigma)
    background = (haem < p["background_max_haematoxylin"]) & (dab_wide < p["background_max_dab"])
    background = _remove_small(background, p["min_background_px"])

    tissue = np.full(image.shape[:2], 2, np.int32)  # stroma unless shown otherwise
    tissue[epithelium] = 1
    tissue[background] = 0  # a lumen inside a gland is not epithelium
    return tissue


def _ihc_nuclei(image: np.ndarray, tissue: np.ndarray, p: dict) -> tuple[np.ndarray, dict[int, int]]:
    from skimage import color, feature, filters, measure, segmentation

    hed = color.rgb2hed(image)
    # In DAB-rich cytoplasm colour deconvolution puts part of the brown into the
    # haematoxylin channel too; subtracting the DAB channel leaves the nuclei.
    signal = filters.gaussian(_scaled(hed[..., 0]) - _scaled(hed[..., 2]), sigma=p["nucleus_sigma_px"])
    # Stroma and epithelium sit at different signal levels, so one global threshold
    # either misses epithelial nuclei or fills the stroma: threshold the local contrast.
    contrast = signal - filters.gaussian(signal, sigma=p["nucleus_background_sigma_px"])
    fg = (contrast > p["nucleus_threshold"]) & (tissue > 0)
    fg = ndi.binary_fill_holes(_remove_small(fg, p["min_nucleus_px"]))
    dist = ndi.distance_transform_edt(fg)
    # Smooth the distance map a little so one elongated nucleus does not get a
    # marker at every bump of its outline.
    dist = filters.gaussian(dist, sigma=1.0)
    comps, _ = ndi.label(fg)
    peaks = feature.peak_local_max(dist, min_distance=p["peak_min_distance_px"], labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    instances = segmentation.watershed(-dist, markers, mask=fg).astype(np.int32)
    sizes = np.bincount(instances.ravel())
    instances[sizes[instances] < p["min_nucleus_px"]] = 0
    instances = segmentation.relabel_sequential(instances)[0].astype(np.int32)

    place = classes_from_type_map(instances, tissue)  # majority tissue under each nucleus
    classes: dict[int, int] = {}
    for region in measure.regionprops(instances):
        where = place.get(region.label, 0)
        if where == 1:
            cls = 3  # epithelial
        elif where == 2 and region.eccentricity > p["spindle_eccentricity"]:
            cls = 4  # spindle
        elif where == 2 and region.area <= p["inflammatory_max_area_px"]:
            cls = 2  # inflammatory
        else:
            cls = 1  # other
        classes[region.label] = cls
    return instances, classes


# -- the NuCLS sample ---------------------------------------------------------------------


def nucls_sample() -> AnnotatedImage:
    """One NuCLS breast-cancer H&E patch (CC0) with nucleus instances and typed points.

    Returns
    -------
    AnnotatedImage
        ``image`` 256x256x3 uint8; ``nuclei`` with scheme ``'nucls'``; ``points``
        ``(N, 2)`` ``(row, col)`` with ``point_classes`` and ``point_scheme`` ``'nucls'``;
        ``mpp`` 0.25. A new copy on every call.

    Notes
    -----
    - Files are read from the package (``napari_histogen/data/nucls``, see its
      ``ATTRIBUTION.md``) with :mod:`importlib.resources`, so this works from a wheel.
    - The points file stores ``x, y, class`` with class 0..3; the scheme ids are class + 1
      (tumor_any, nonTIL_stromal, sTIL, other_nucleus).
    - Each instance's class is the majority class of the points inside it (ties: the
      lower id); instances without a point are unclassified (0). The dataset's own
      two-class type map (non-tumour/tumour) is not used: it is not in this scheme
      and its classes look unreliable.
    """
    return _copy(_nucls_sample_cached())


def _data_file(name: str) -> bytes:
    return resources.files("napari_histogen").joinpath("data").joinpath("nucls").joinpath(name).read_bytes()


@functools.lru_cache(maxsize=1)
def _nucls_sample_cached() -> AnnotatedImage:
    from skimage import io as skio

    image = to_rgb_uint8(skio.imread(BytesIO(_data_file(f"{NUCLS_PATCH}.png"))), name="NuCLS image")
    with np.load(BytesIO(_data_file(f"{NUCLS_PATCH}.npz"))) as npz:
        instances = as_label_image(npz["inst_map"], name="NuCLS instance map")
    rows = np.loadtxt(StringIO(_data_file(f"{NUCLS_PATCH}.csv").decode("utf-8")), delimiter=",", ndmin=2)
    points = np.ascontiguousarray(rows[:, [1, 0]], dtype=np.float64)  # file has x, y; we use (row, col)
    point_classes = rows[:, 2].astype(np.int32) + 1
    scheme = get_scheme("nucls")
    classes = _majority_point_class(instances, points, point_classes)
    nuclei = NucleiMask.create(instances, classes, scheme, mpp=NUCLS_MPP, name="NuCLS nuclei")
    provenance = make_provenance(
        "NuCLS sample",
        dataset="NuCLS (Amgad et al., GigaScience 2022), https://sites.google.com/view/nucls/",
        licence="CC0 1.0",
        via="TIO-IKIM/CellViT-plus-plus @ 463c5c44bfdebfbe3943597eaa84daf3f5e26a5f, "
        "test_database/training_database/Example-{Segmentation,Detection}/test",
        patch=NUCLS_PATCH,
        instance_classes="majority class of the points inside each instance; none -> unclassified",
        point_class_ids="file class + 1",
        mpp=NUCLS_MPP,
    )
    return AnnotatedImage(
        name=f"nucls_{NUCLS_PATCH}",
        image=image,
        nuclei=nuclei,
        points=points,
        point_classes=point_classes,
        point_scheme=scheme,
        mpp=NUCLS_MPP,
        provenance=provenance,
    ).validate()


def _majority_point_class(instances: np.ndarray, points: np.ndarray, point_classes: np.ndarray) -> dict[int, int]:
    """Instance id -> most frequent class of the points inside it (ties: lower class id)."""
    height, width = instances.shape
    pix = np.floor(points + 0.5).astype(np.int64)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < height) & (pix[:, 1] >= 0) & (pix[:, 1] < width)
    votes: dict[int, dict[int, int]] = {}
    for (r, c), cls in zip(pix[inside], point_classes[inside]):
        inst = int(instances[r, c])
        if inst:
            tally = votes.setdefault(inst, {})
            tally[int(cls)] = tally.get(int(cls), 0) + 1
    classes = {int(i): UNCLASSIFIED for i in np.unique(instances) if i}
    for inst, tally in votes.items():
        classes[inst] = min(tally, key=lambda k: (-tally[k], k))
    return classes
