"""Nuclei masks (instances with a class each), tissue masks and their conversions.

Conventions (see the README's data conventions table):

- an *instance map* is ``HxW int32``; 0 is background, every other value one nucleus;
  ids need not be contiguous;
- a *class table* maps instance id -> class id of the mask's scheme (0 = unclassified);
- a *type map* (semantic map) is ``HxW int32`` holding the class id of every pixel;
- a *tissue mask* (:class:`TissueMask`) is a semantic map of class ids (0 = unlabelled), with
  an optional scheme giving the classes names and colours.

No function here modifies its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .errors import HistogenInputError
from .schemes import UNCLASSIFIED, ClassScheme, get_scheme

__all__ = [
    "NucleiMask",
    "as_label_image",
    "check_same_shape",
    "instance_ids",
    "next_free_id",
    "sync_classes",
    "class_counts",
    "type_map_from_nuclei",
    "nuclei_from_type_map",
    "classes_from_type_map",
    "nuclei_to_points",
    "merge_nuclei",
    "relabel_sequential",
    "remap_classes",
    "resize_labels",
    "resample_nuclei",
    "TissueMask",
    "ClassMatch",
    "match_classes",
    "describe_class",
]


def as_label_image(labels, *, name: str = "mask") -> np.ndarray:
    """Return ``labels`` as a new ``HxW int32`` label image, or refuse it clearly.

    Parameters
    ----------
    labels : array_like
        2-D array of non-negative integers. Bool arrays become 0/1; float arrays are
        accepted only when every value is a whole number.
    name : str, optional
        What to call the array in error messages.

    Raises
    ------
    HistogenInputError
        Non-2-D arrays, negative labels, fractional values, values above int32.
    """
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise HistogenInputError(f"The {name} has shape {arr.shape}; a label image must be 2-D (HxW).")
    if arr.size == 0:
        raise HistogenInputError(f"The {name} is empty (shape {arr.shape}).")
    check_mask_size(arr.shape, name=name)
    if arr.dtype == np.bool_:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise HistogenInputError(
                f"The {name} has non-integer values (dtype {arr.dtype}); labels must be whole numbers. "
                "Was an image opened as a mask?"
            )
    elif not np.issubdtype(arr.dtype, np.integer):
        raise HistogenInputError(f"The {name} has dtype {arr.dtype}; labels must be integers.")
    if arr.min() < 0:
        raise HistogenInputError(f"The {name} has negative labels (min {arr.min()}); 0 is background, ids are >= 1.")
    if arr.max() > np.iinfo(np.int32).max:
        raise HistogenInputError(f"The {name} has labels above the int32 limit ({np.iinfo(np.int32).max}); relabel it first.")
    return arr.astype(np.int32)  # astype copies, so callers never share memory with the input


def check_mask_size(shape, *, name: str = "mask") -> None:
    """Refuse a mask above the image limit (``MAX_IMAGE_PIXELS``, 8192 x 8192), with what to do.

    Raises
    ------
    HistogenInputError
        ``shape[0] * shape[1]`` above the limit.
    """
    from .images import MAX_IMAGE_PIXELS

    h, w = int(shape[0]), int(shape[1])
    if h * w > MAX_IMAGE_PIXELS:
        side = int(MAX_IMAGE_PIXELS ** 0.5)
        raise HistogenInputError(
            f"The {name} is {w}x{h} px, above the {side}x{side} px limit (it would need "
            f"{h * w * 4 / 2**30:.1f} GiB); crop or tile it first."
        )


def check_same_shape(image_shape, mask_shape, *, what: str = "mask") -> None:
    """Raise a clear error when a mask does not cover its image pixel for pixel."""
    if tuple(image_shape[:2]) != tuple(mask_shape[:2]):
        raise HistogenInputError(
            f"The {what} is {mask_shape[1]}x{mask_shape[0]} px but the image is "
            f"{image_shape[1]}x{image_shape[0]} px; they must match pixel for pixel "
            "(was one of them resampled or cropped?)."
        )


def instance_ids(instances: np.ndarray) -> np.ndarray:
    """Sorted non-zero ids present in an instance map."""
    ids = np.unique(instances)
    return ids[ids != 0]


def next_free_id(instances: np.ndarray, classes: Mapping[int, int] | None = None) -> int:
    """The smallest id above every id in the map and in ``classes`` (a new nucleus)."""
    top = int(instances.max()) if instances.size else 0
    if classes:
        top = max(top, max(int(k) for k in classes))
    return top + 1


def sync_classes(instances: np.ndarray, classes: Mapping[int, int], default_class: int = UNCLASSIFIED) -> dict[int, int]:
    """Class table that matches the ids present in ``instances``.

    Ids that disappeared (erased, painted over by a merge) are dropped; ids painted
    without a class entry get ``default_class``.
    """
    present = instance_ids(instances)
    return {int(i): int(classes.get(int(i), default_class)) for i in present}


def class_counts(classes: Mapping[int, int], scheme) -> dict[str, int]:
    """Number of nuclei per class name of ``scheme`` (every class listed, 'unclassified' if any)."""
    scheme = get_scheme(scheme)
    counts = {c.name: 0 for c in scheme.classes}
    for cls in classes.values():
        counts[scheme.name_of(cls)] = counts.get(scheme.name_of(cls), 0) + 1
    return counts


def type_map_from_nuclei(instances: np.ndarray, classes: Mapping[int, int]) -> np.ndarray:
    """Semantic type map: every pixel of a nucleus gets that nucleus' class (0 elsewhere)."""
    instances = np.asarray(instances)
    if instances.max(initial=0) == 0:
        return np.zeros(instances.shape, np.int32)
    lut = np.zeros(int(instances.max()) + 1, np.int32)
    for inst_id, cls in classes.items():
        if 0 < int(inst_id) < lut.size:
            lut[int(inst_id)] = int(cls)
    return lut[instances]


def nuclei_from_type_map(type_map, *, connectivity: int = 1) -> tuple[np.ndarray, dict[int, int]]:
    """Split a semantic type map into nuclei: connected components per class.

    Parameters
    ----------
    type_map : array_like
        ``HxW`` class id per pixel, 0 = background.
    connectivity : {1, 2}
        1: pixels touching by an edge form one nucleus; 2: also by a corner.

    Returns
    -------
    instances : ndarray of int32
        Ids 1..N, numbered class by class.
    classes : dict
        Instance id -> class id.

    Notes
    -----
    Two touching nuclei of the same class painted with a plain brush become one
    instance; paint them with a background gap (or in the nuclei mask) to keep them apart.
    """
    from scipy import ndimage as ndi  # here: scipy.ndimage costs 0.1 s to import, on the GUI thread for a dock

    tmap = as_label_image(type_map, name="type map")
    structure = ndi.generate_binary_structure(2, connectivity)
    instances = np.zeros(tmap.shape, np.int32)
    classes: dict[int, int] = {}
    offset = 0
    for cls in np.unique(tmap):
        if cls == 0:
            continue
        comp, n = ndi.label(tmap == cls, structure=structure)
        inside = comp > 0
        instances[inside] = comp[inside] + offset
        classes.update({offset + k: int(cls) for k in range(1, n + 1)})
        offset += n
    return instances, classes


def classes_from_type_map(instances, type_map) -> dict[int, int]:
    """Class of each instance as the majority type-map value under it (ties: lower id).

    Pixels of type 0 under a nucleus are ignored unless the nucleus has no typed pixel,
    in which case it is unclassified (0).
    """
    inst = as_label_image(instances, name="instance map")
    tmap = as_label_image(type_map, name="type map")
    check_same_shape(inst.shape, tmap.shape, what="type map")
    ids = instance_ids(inst)
    if ids.size == 0:
        return {}
    sel = (inst > 0) & (tmap > 0)
    n_types = int(tmap.max()) + 1
    # one bincount over (instance index, type) pairs instead of a loop over nuclei
    index = np.searchsorted(ids, inst[sel])
    votes = np.bincount(index * n_types + tmap[sel], minlength=ids.size * n_types).reshape(ids.size, n_types)
    best = votes.argmax(axis=1)
    best[votes.max(axis=1) == 0] = UNCLASSIFIED
    return {int(i): int(c) for i, c in zip(ids, best)}


def nuclei_to_points(instances, classes: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid point layout of a nuclei mask.

    Returns
    -------
    points : ndarray (N, 2) float64
        ``(row, col)`` centre of mass of each nucleus, ordered by id.
    point_classes : ndarray (N,) int32
        Class of each nucleus (0 when it has none).
    ids : ndarray (N,) int32
        Instance id each point came from.
    """
    from scipy import ndimage as ndi

    inst = as_label_image(instances, name="instance map")
    ids = instance_ids(inst)
    if ids.size == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int32), np.zeros(0, np.int32)
    centres = np.asarray(ndi.center_of_mass(np.ones(inst.shape), inst, ids), dtype=np.float64).reshape(-1, 2)
    point_classes = np.array([classes.get(int(i), UNCLASSIFIED) for i in ids], np.int32)
    return centres, point_classes, ids.astype(np.int32)


def merge_nuclei(instances, classes: Mapping[int, int], ids, *, into: int | None = None):
    """Merge nuclei ``ids`` into one (``into``, default the smallest); it keeps its class.

    Returns new ``(instances, classes)``.
    """
    ids = [int(i) for i in ids]
    if not ids:
        return np.array(instances, np.int32), dict(classes)
    target = int(into) if into is not None else min(ids)
    out = np.array(instances, dtype=np.int32)
    out[np.isin(out, ids)] = target
    new_classes = {k: v for k, v in classes.items() if int(k) not in ids or int(k) == target}
    new_classes.setdefault(target, classes.get(target, classes.get(ids[0], UNCLASSIFIED)))
    return out, new_classes


def relabel_sequential(instances, classes: Mapping[int, int]):
    """Renumber nuclei 1..N (in id order), carrying the classes along."""
    inst = as_label_image(instances, name="instance map")
    ids = instance_ids(inst)
    lut = np.zeros(int(inst.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[inst], {int(lut[i]): int(classes.get(int(i), UNCLASSIFIED)) for i in ids}


@dataclass
class NucleiMask:
    """A nuclei mask: instance map + class per instance + scheme + scale.

    Parameters
    ----------
    instances : ndarray (H, W) int32
        Instance map, 0 = background.
    classes : dict
        Instance id -> class id (0 = unclassified). Built by :meth:`create`, which
        validates; the plain constructor trusts its arguments.
    scheme : ClassScheme
        Class scheme of ``classes``.
    mpp : float or None
        Microns per pixel, None when unknown.
    """

    instances: np.ndarray
    classes: dict[int, int]
    scheme: ClassScheme
    mpp: float | None = None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def create(cls, instances, classes=None, scheme="consep", *, mpp=None, metadata=None, name="nuclei mask"):
        """Validated constructor: label image checked, class table synced and checked.

        Instances present in the map but missing from ``classes`` become unclassified;
        classes of ids absent from the map are dropped. Unknown class ids raise
        :class:`~napari_histogen.core.errors.UnknownClassError`.
        """
        scheme = get_scheme(scheme)
        if scheme.kind != "nuclei":
            raise HistogenInputError(f"Scheme '{scheme.name}' is a {scheme.kind} scheme; a nuclei mask needs a nuclei scheme.")
        inst = as_label_image(instances, name=name)
        table = sync_classes(inst, {int(k): int(v) for k, v in (classes or {}).items()})
        scheme.check_ids(table.values(), what=name)
        if mpp is not None and not (float(mpp) > 0):
            raise HistogenInputError(f"Microns per pixel must be positive, not {mpp}.")
        return cls(inst, table, scheme, None if mpp is None else float(mpp), dict(metadata or {}))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.instances.shape)  # type: ignore[return-value]

    @property
    def n_nuclei(self) -> int:
        return len(self.classes)

    def type_map(self) -> np.ndarray:
        return type_map_from_nuclei(self.instances, self.classes)

    def counts(self) -> dict[str, int]:
        return class_counts(self.classes, self.scheme)


def remap_classes(nuclei: "NucleiMask", scheme, mapping: Mapping[int, int], *, default: int | None = None) -> "NucleiMask":
    """The same nuclei with classes of another scheme: ``mapping`` old class id -> new class id.

    Unclassified nuclei (and classes missing from ``mapping``) take ``default``; with
    ``default=None`` they stay unclassified. Raises UnknownClassError for targets the new
    scheme lacks.
    """
    table = {}
    for nid, cls in nuclei.classes.items():
        new = mapping.get(int(cls), default) if cls != UNCLASSIFIED else default
        table[int(nid)] = UNCLASSIFIED if new is None else int(new)
    return NucleiMask.create(nuclei.instances, table, scheme, mpp=nuclei.mpp, metadata=dict(nuclei.metadata))


# -- resampling (nearest neighbour: labels are never blended) ---------------------------------
def resize_labels(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size`` (H, W), sampling pixel centres."""
    mask = np.asarray(mask)
    if tuple(mask.shape) == tuple(size):
        return mask
    h, w = mask.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return mask[np.ix_(rows, cols)]


def resample_nuclei(nuclei: NucleiMask, target_mpp: float) -> NucleiMask:
    """Nearest-neighbour resampling of a nuclei mask to ``target_mpp``; vanished nuclei dropped."""
    from skimage.transform import resize

    if nuclei.mpp is None:
        raise HistogenInputError("The nuclei mask has no scale (µm/px), so it cannot be resampled.")
    factor = nuclei.mpp / target_mpp
    shape = tuple(max(1, int(round(s * factor))) for s in nuclei.shape)
    inst = resize(nuclei.instances, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    return NucleiMask.create(inst, nuclei.classes, nuclei.scheme, mpp=target_mpp,
                             metadata=scale_slide_offset(nuclei.metadata, factor))


def scale_slide_offset(metadata: Mapping, factor: float) -> dict:
    """A copy of ``metadata`` whose slide offset (``offset_xy``, in pixels) follows a resampling by ``factor``.

    A mask cut from a whole-slide annotation keeps where it was cut (:func:`read_geojson`
    records ``offset_xy``); after resampling, that place is ``factor`` times as many pixels away.
    """
    out = dict(metadata)
    if out.get("offset_xy") is not None:
        out["offset_xy"] = [int(round(float(v) * factor)) for v in out["offset_xy"]]
    return out


# -- tissue masks -----------------------------------------------------------------------------
@dataclass
class TissueMask:
    """A tissue (semantic) mask: a class id per pixel, the scheme that names them, the scale.

    The twin of :class:`NucleiMask` for engines conditioned on regions (appearance transfer).
    Any class ids are allowed (0 = unlabelled); ``scheme`` only names and colours them.

    Parameters
    ----------
    labels : ndarray (H, W) int32
    scheme : ClassScheme or None
    mpp : float or None
        Microns per pixel, None when unknown.
    name : str
        What the mask is called in notes and provenance (a file or layer name).
    """

    labels: np.ndarray
    scheme: ClassScheme | None = None
    mpp: float | None = None
    name: str = "tissue mask"
    metadata: dict = field(default_factory=dict)

    @classmethod
    def create(cls, labels, scheme=None, *, mpp=None, name: str = "tissue mask", metadata=None) -> "TissueMask":
        """Validated constructor: a 2-D label image (see :func:`as_label_image`), a known scheme."""
        arr = as_label_image(labels, name=name)
        if scheme is not None and not isinstance(scheme, ClassScheme):
            scheme = get_scheme(scheme)
        if mpp is not None and not (float(mpp) > 0):
            raise HistogenInputError(f"Microns per pixel must be positive, not {mpp}.")
        return cls(arr, scheme, None if mpp is None else float(mpp), str(name), dict(metadata or {}))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]

    @property
    def class_ids(self) -> list[int]:
        """The ids present, 0 included when some pixels are unlabelled."""
        return [int(i) for i in np.unique(self.labels)]

    @property
    def is_empty(self) -> bool:
        return not bool(self.labels.any())

    def describe_class(self, cid: int) -> str:
        return describe_class(self.scheme, cid)

    def with_labels(self, labels: np.ndarray) -> "TissueMask":
        """The same mask description with other labels (a flipped or resized copy)."""
        return TissueMask(np.ascontiguousarray(labels).astype(np.int32, copy=False), self.scheme, self.mpp, self.name,
                          dict(self.metadata))


def describe_class(scheme: ClassScheme | None, cid: int) -> str:
    """``"2 (stroma)"`` with a scheme that names the id, ``"0 (unlabelled)"``, else ``"2"``."""
    if scheme is not None and cid in scheme:
        return f"{cid} ({scheme.name_of(cid)})"
    return "0 (unlabelled)" if cid == 0 else str(cid)


@dataclass
class ClassMatch:
    """Which target classes a source mask has (matched by id) and which it lacks."""

    matched: list[int]
    unmatched: list[int]


def match_classes(targets, source=None) -> ClassMatch:
    """Match the class ids of target masks to a source mask's (label arrays or :class:`TissueMask`).

    Without a source every target class counts as matched. Ids include 0 (unlabelled).
    """
    def ids(m):
        return {int(i) for i in np.unique(m.labels if isinstance(m, TissueMask) else np.asarray(m))}

    target_ids = sorted(set().union(*(ids(t) for t in targets))) if targets else []
    if source is None:
        return ClassMatch(target_ids, [])
    have = ids(source)
    return ClassMatch([c for c in target_ids if c in have], [c for c in target_ids if c not in have])
