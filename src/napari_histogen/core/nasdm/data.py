"""NASDM training data: annotated source images -> resampled, filtered, split 128-px patches.

The pipeline, in the order :func:`build_patch_set` runs it:

1. **Read** every source image of a dataset with the product's readers
   (:func:`iter_sources`): Lizard ``.mat`` labels, CoNSeP ``.mat`` (the original 1000-px
   tiles and the 256-px patch layout), PanNuke and CoNIC ``.npy`` folders, folders of image
   + mask pairs. Each source gets ``provenance['source_id']``, the image it came from (see
   below), which is what the train/validation split goes by.
2. **Resample** to the model's scale (:func:`resample_to_mpp`): 40x (0.25 µm/px) data
   becomes 20x (0.5 µm/px) by anti-aliased image resizing and nearest-neighbour instance
   resizing.
3. **Tile** each source into windows of ``patch_size`` px with ``overlap`` (default 50 %)
   (:func:`patch_grid`), dropping windows with too little tissue (:func:`tissue_fraction`)
   and, on request, windows with unclassified nuclei.
4. Optionally **normalise the stain** of every source (:mod:`.stain`).
5. **Split by source image**, never by patch (:func:`split_sources`): overlapping windows
   of one image (and CoNSeP's 16 patches of one tile, which share pixel strips) are all in
   training or all in validation.

Patches are :class:`PatchRef` windows into the kept sources, cropped when a
:class:`NasdmPatchDataset` item is read, so no pixel is copied per patch (Lizard's 238
regions give tens of thousands of windows).

Source ids (the unit of the split):

=================  ===============================================================
CoNSeP patches     the tile: ``train_1`` for ``train_1_003`` (16 patches per tile)
CoNSeP / Lizard    the ``.mat`` file stem (one tile / one region)
image + mask       the image file stem
CoNIC              the Lizard image named in ``patch_info.csv`` next to the arrays
                   (``consep_1`` for ``consep_1-0003``); without that file, each patch
PanNuke            each patch (``<folder>[<index>]``): PanNuke does not record which
                   slide a patch came from, so patches of one slide can fall on both
                   sides. For a clean validation set train on some folds and validate
                   on another, or keep ``val_fraction`` for a loss curve only.
=================  ===============================================================

Pure numpy/scipy/scikit-image except :class:`NasdmPatchDataset` (torch).
"""

from __future__ import annotations

import copy
import csv
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import HistogenInputError
from ..io.annotated import AnnotatedImage
from ..masks import NucleiMask, class_counts, instance_ids
from ..schemes import UNCLASSIFIED, ClassScheme, get_scheme
from .condition import make_condition
from .stain import METHODS as STAIN_METHODS
from .stain import StainNormalizer

__all__ = [
    "FORMATS",
    "DEFAULT_MPP",
    "TISSUE_MAX_VALUE",
    "iter_sources",
    "resample_to_mpp",
    "tissue_mask",
    "tissue_fraction",
    "window_fractions",
    "patch_grid",
    "split_sources",
    "dihedral",
    "PatchRef",
    "PatchSet",
    "build_patch_set",
    "format_summary",
    "NasdmPatchDataset",
]

FORMATS = ("auto", "lizard", "consep", "pannuke", "conic", "folder")
#: The model's scale: 20x, as Lizard/CoNIC and the NASDM paper.
DEFAULT_MPP = 0.5
#: A pixel is tissue when its darkest channel is at most this value, i.e. its optical
#: density ``-log((v + 1) / 256)`` is >= 0.15 in some channel (the stain module's threshold).
TISSUE_MAX_VALUE = 219
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_UNCLASSIFIED_POLICIES = ("error", "drop")


# -- reading sources ---------------------------------------------------------------------------


@dataclass
class _Task:
    """One source to read: a label for messages, a loader and (when known) its source id."""

    label: str
    load: Callable[[], AnnotatedImage]
    source_id: str | None = None


def _check_format(fmt) -> str:
    name = "auto" if fmt is None else str(fmt).strip().lower()
    if name not in FORMATS:
        raise HistogenInputError(f"Unknown data format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    return name


def _as_paths(data) -> list:
    if isinstance(data, (str, Path)):
        return [data]
    try:
        paths = list(data)
    except TypeError:
        raise HistogenInputError(
            f"Give the training data as a file or folder path, not {type(data).__name__}.") from None
    if not paths:
        raise HistogenInputError("No training data given: pass a dataset file or folder.")
    return paths


def _plan(data, fmt, scheme) -> tuple[list[_Task], list[dict]]:
    """The sources of ``data`` (without reading them) and the files passed over, with reasons."""
    fmt = _check_format(fmt)
    tasks: list[_Task] = []
    skipped: list[dict] = []
    for path in _as_paths(data):
        more, passed = _plan_one(path, fmt, scheme)
        tasks += more
        skipped += passed
    return tasks, skipped


def _plan_one(data, fmt: str, scheme) -> tuple[list[_Task], list[dict]]:
    from ..io.dispatch import split_index

    base, index = split_index(data)
    if not base.exists():
        raise HistogenInputError(f"No training data at {base}: the file or folder does not exist.")
    if base.is_file():
        name = base.name.lower()
        if name.endswith(".npy"):
            return _plan_npy(base.parent, fmt, index), []
        if name.endswith(".mat"):
            return _plan_mats([base], fmt), []
        if name.endswith(_IMAGE_SUFFIXES + (".npz",)):
            _require(fmt, ("auto", "folder"), base, "an image + mask pair")
            return _plan_pairs([base], scheme)
        raise HistogenInputError(
            f"{base.name} is not a training data file: give a Lizard/CoNSeP .mat, a PanNuke/CoNIC .npy, "
            "an image with its mask, or a folder of these.")
    if (base / "images.npy").is_file():
        return _plan_npy(base, fmt, index), []
    if fmt in ("auto", "lizard", "consep"):
        mats = _find_mats(base)
        if mats:
            return _plan_mats(mats, fmt), []
    if fmt in ("auto", "folder"):
        images = _find_pair_images(base)
        if images:
            tasks, skipped = _plan_pairs(images, scheme)
            if tasks:
                return tasks, skipped
            raise HistogenInputError(
                f"None of the {len(images)} images in {base} has a mask (e.g. {skipped[0]['reason']}). "
                "Put <stem>.npz or <stem>_mask.tif next to each image, or masks in ../labels/<stem>.npz.")
    expected = {
        "auto": "images.npy with masks.npy or labels.npy (PanNuke/CoNIC), .mat label files (Lizard/CoNSeP, "
                "also in Labels/ or type_mat/<split>/), or images with masks",
        "lizard": "Lizard .mat label files (here, in Labels/)",
        "consep": "CoNSeP .mat label files (here, in Labels/ or type_mat/<split>/)",
        "pannuke": "images.npy and masks.npy",
        "conic": "images.npy and labels.npy",
        "folder": "images (PNG/JPEG/TIFF) with masks (<stem>.npz, <stem>_mask.tif, ../labels/<stem>.npz)",
    }[fmt]
    raise HistogenInputError(f"No training data found in {base}: expected {expected}. Check the path or the format.")


def _require(fmt: str, allowed: tuple, path: Path, what: str) -> None:
    if fmt not in allowed:
        raise HistogenInputError(f"{path.name} is {what}, not '{fmt}' data; use format 'auto' or '{allowed[-1]}'.")


def _plan_npy(folder: Path, fmt: str, index: int | None) -> list[_Task]:
    from ..io.npy_datasets import read_conic, read_pannuke

    images, masks, labels = folder / "images.npy", folder / "masks.npy", folder / "labels.npy"
    if fmt == "auto":
        kind = "pannuke" if masks.is_file() else "conic" if labels.is_file() else None
        if kind is None or not images.is_file():
            raise HistogenInputError(
                f"{folder} needs images.npy with masks.npy (PanNuke) or labels.npy (CoNIC).")
    elif fmt in ("pannuke", "conic"):
        kind = fmt
        needed = [p.name for p in (images, masks if kind == "pannuke" else labels) if not p.is_file()]
        if needed:
            raise HistogenInputError(f"{folder} is not a {kind} folder: {', '.join(needed)} missing.")
    else:
        raise HistogenInputError(f"{folder} holds PanNuke/CoNIC arrays, not '{fmt}' data; use format 'auto'.")
    target = masks if kind == "pannuke" else labels
    try:
        n = int(np.load(target, mmap_mode="r", allow_pickle=False).shape[0])
    except Exception as err:  # numpy raises several types for damaged files
        raise HistogenInputError(f"{target} is not a readable .npy array ({type(err).__name__}: {err}).") from None
    if index is not None:
        if not -n <= index < n:
            raise HistogenInputError(f"Patch index {index} is out of range: {target.name} holds patches 0..{n - 1}.")
        indices = [index % n]
    else:
        indices = list(range(n))
    ids = _conic_source_ids(folder, n) if kind == "conic" else None
    reader = read_pannuke if kind == "pannuke" else read_conic
    return [_Task(f"{folder.name}[{i}]", (lambda i=i: reader(images, target, i)),
                  ids[i] if ids is not None else f"{folder.name}[{i}]") for i in indices]


def _conic_source_ids(folder: Path, n: int) -> list[str] | None:
    """Lizard image of each CoNIC patch from ``patch_info.csv`` (``<image>-<k>`` rows), or None."""
    path = folder / "patch_info.csv"
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if rows and rows[0].lower() == "patch_info":
        rows = rows[1:]
    if len(rows) != n:
        warnings.warn(f"{path.name} has {len(rows)} rows for {n} patches; each patch is split on its own.",
                      stacklevel=3)
        return None
    return [row.rpartition("-")[0] or row for row in rows]


def _natural_key(path: Path):
    """Sort key that puts ``train_2`` before ``train_12``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(path)) if part]


def _find_mats(folder: Path) -> list[Path]:
    for sub in (folder, folder / "Labels", folder / "labels"):
        mats = sorted(sub.glob("*.mat"), key=_natural_key) if sub.is_dir() else []
        if mats:
            return mats
    type_mat = folder / "type_mat"
    return sorted(type_mat.rglob("*.mat"), key=_natural_key) if type_mat.is_dir() else []


def _plan_mats(mats: Sequence[Path], fmt: str) -> list[_Task]:
    from ..io.consep import read_consep_mat
    from ..io.dispatch import read_annotated
    from ..io.lizard import read_lizard_mat

    if fmt not in ("auto", "lizard", "consep"):
        raise HistogenInputError(f"{mats[0].parent} holds .mat label files, not '{fmt}' data; "
                                 "use format 'auto', 'lizard' or 'consep'.")
    reader = {"auto": read_annotated, "lizard": read_lizard_mat, "consep": read_consep_mat}[fmt]
    return [_Task(path.name, (lambda path=path: reader(path))) for path in mats]


def _find_pair_images(folder: Path) -> list[Path]:
    found = []
    for sub in (folder, folder / "images", folder / "Images"):
        if sub.is_dir():
            found += [p for p in sorted(sub.iterdir(), key=_natural_key)
                      if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES)
                      and not p.stem.lower().endswith("_mask")]
    return found


def _plan_pairs(images: Sequence[Path], scheme) -> tuple[list[_Task], list[dict]]:
    from ..io.dispatch import read_annotated
    from ..io.pairs import _find_mask

    tasks, skipped = [], []
    for path in images:
        name = path.name.lower()
        if not name.endswith((".npz", ".ome.tif", ".ome.tiff")):
            try:
                _find_mask(path)
            except HistogenInputError as err:
                skipped.append({"name": path.name, "reason": str(err)})
                continue
        tasks.append(_Task(path.name, (lambda path=path: read_annotated(path, scheme=scheme))))
    return tasks, skipped


_PATCH_NAME = re.compile(r"^(?P<tile>.+)_(?P<k>\d+)$")


def _default_source_id(item: AnnotatedImage) -> str:
    prov = item.provenance
    if prov.get("format") == "consep" and prov.get("layout") == "patches":
        match = _PATCH_NAME.match(item.name)
        return match.group("tile") if match else item.name
    return item.name


def _finish(item: AnnotatedImage, task: _Task, scheme, source_mpp) -> AnnotatedImage:
    """Set source id and scale of a freshly read source; check it has typed nuclei."""
    if item.nuclei is None:
        raise HistogenInputError(f"{task.label} has no nuclei mask; NASDM trains on images with nuclei masks.")
    if scheme is not None and item.nuclei.scheme.name != get_scheme(scheme).name:
        raise HistogenInputError(
            f"{task.label} is labelled in scheme '{item.nuclei.scheme.name}', not '{get_scheme(scheme).name}'; "
            "leave the scheme out for this dataset (it records its own) or convert the masks first.")
    if source_mpp is not None:
        mpp = float(source_mpp)
        if not mpp > 0:
            raise HistogenInputError(f"The source scale must be a positive number of µm/px, not {source_mpp}.")
        item.provenance["mpp_from"] = "source_mpp"
    elif item.mpp is not None:
        mpp = float(item.mpp)
        item.provenance.setdefault("mpp_from", "file")
    else:
        raise HistogenInputError(
            f"{task.label} does not record its scale (µm/px). Pass the scale of the data with source_mpp "
            "(histogen: --source-mpp), e.g. 0.25 for 40x or 0.5 for 20x scans.")
    item.mpp = mpp
    item.nuclei = replace(item.nuclei, mpp=mpp)
    item.provenance["source_id"] = task.source_id if task.source_id is not None else _default_source_id(item)
    return item


def iter_sources(data, fmt: str = "auto", *, scheme=None,
                 source_mpp: float | None = None) -> Iterator[AnnotatedImage]:
    """Read the source images of a training dataset one at a time.

    Parameters
    ----------
    data : str, Path or sequence of them
        A dataset folder or file (several are read in turn):

        - a folder with ``images.npy`` and ``masks.npy`` (PanNuke) or ``labels.npy``
          (CoNIC), or one of these files (``file.npy::N`` for patch N only);
        - a folder of ``.mat`` labels, directly or in ``Labels/`` (Lizard, original
          CoNSeP; images are found as the readers do) or in ``type_mat/<split>/``
          (CoNSeP 256-px patch layout; every split below is read), or one ``.mat``;
        - a folder of images with masks (in it or in ``images/``; masks by the
          convention of :func:`~napari_histogen.core.io.pairs.read_image_mask_pair`);
          images without a mask are passed over with a warning.
    fmt : {'auto', 'lizard', 'consep', 'pannuke', 'conic', 'folder'}
        The format; 'auto' detects it as listed above.
    scheme : str or ClassScheme, optional
        Class scheme of image + mask folders whose masks do not store one. For the
        other formats it must equal the dataset's own scheme if given.
    source_mpp : float, optional
        Microns per pixel of the data; overrides the scale the files record and is
        required when they record none (image + mask pairs without ``mpp``).

    Yields
    ------
    AnnotatedImage
        A new item per source, with ``mpp`` set and ``provenance['source_id']`` (the
        unit of the train/validation split, see the module docstring). The image may
        be None for label files whose image was not found.

    Raises
    ------
    HistogenInputError
        Unknown format, no data found, unknown scale, a scheme that is not the dataset's.
    """
    tasks, skipped = _plan(data, fmt, scheme)
    for entry in skipped:
        warnings.warn(f"{entry['name']} passed over: {entry['reason']}", stacklevel=2)
    for task in tasks:
        yield _finish(task.load(), task, scheme, source_mpp)


# -- resampling --------------------------------------------------------------------------------


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel whose centre maps into it (pixel-centre alignment)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def resample_to_mpp(item: AnnotatedImage, target_mpp: float) -> AnnotatedImage:
    """A copy of ``item`` at ``target_mpp`` microns per pixel.

    Parameters
    ----------
    item : AnnotatedImage
        With ``mpp`` set. Not modified.
    target_mpp : float
        Microns per pixel wanted (0.5 for the 20x model).

    Returns
    -------
    AnnotatedImage
        New arrays. The image is shrunk by an integer factor ``n`` (40x -> 20x) as the
        mean of each ``n x n`` block (area interpolation), otherwise resized bilinearly
        with anti-aliasing (Gaussian pre-filter) when shrunk; instance and tissue maps by nearest neighbour on the
        same pixel-centre grid, so masks stay aligned to the image; nuclei that vanish
        are dropped from the class table (their number is in
        ``provenance['resample_dropped_nuclei']``); points are rescaled. Sizes are
        ``round(size * mpp / target_mpp)``. When that factor is 1 the copy is exact.

    Raises
    ------
    HistogenInputError
        If the item's scale is unknown or ``target_mpp`` is not positive.
    """
    if item.mpp is None:
        raise HistogenInputError(f"{item.name} has no scale (µm/px); set it (source_mpp) before resampling.")
    try:
        target = float(target_mpp)
    except (TypeError, ValueError):
        target = float("nan")
    if not target > 0 or not np.isfinite(target):
        raise HistogenInputError(f"The target scale must be a positive number of µm/px, not {target_mpp}.")
    factor = float(item.mpp) / target
    if abs(factor - 1.0) < 1e-6:
        out = copy.deepcopy(item)
        out.mpp = target
        if out.nuclei is not None:
            out.nuclei = replace(out.nuclei, mpp=target)
        return out
    ref = item.image if item.image is not None else (item.nuclei.instances if item.nuclei is not None else item.tissue)
    if ref is None:
        raise HistogenInputError(f"{item.name} has neither an image nor masks to resample.")
    out = copy.copy(item)  # the arrays are replaced below; the rest is copied
    out.provenance = copy.deepcopy(item.provenance)
    out.point_classes = None if item.point_classes is None else np.array(item.point_classes, copy=True)
    h, w = ref.shape[:2]
    nh, nw = max(1, int(np.floor(h * factor + 0.5))), max(1, int(np.floor(w * factor + 0.5)))
    rows, cols = _nearest_indices(h, nh), _nearest_indices(w, nw)
    if item.image is not None:
        block = 1.0 / factor
        n = int(round(block))
        if factor < 1 and abs(block - n) < 1e-6 and h == nh * n and w == nw * n:
            # integer shrink (40x -> 20x): the mean of each n x n block (area interpolation)
            img = item.image.reshape(nh, n, nw, n, -1).mean(axis=(1, 3), dtype=np.float32)
        else:
            from skimage.transform import resize

            img = resize(item.image, (nh, nw, item.image.shape[2]), order=1, mode="reflect",
                         anti_aliasing=factor < 1, preserve_range=True)
        out.image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if item.nuclei is not None:
        inst = item.nuclei.instances[np.ix_(rows, cols)]
        nuclei = NucleiMask.create(inst, item.nuclei.classes, item.nuclei.scheme, mpp=target,
                                   metadata=item.nuclei.metadata, name=f"{item.name} nuclei")
        out.provenance["resample_dropped_nuclei"] = item.nuclei.n_nuclei - nuclei.n_nuclei
        out.nuclei = nuclei
    if item.tissue is not None:
        out.tissue = item.tissue[np.ix_(rows, cols)].copy()
    if item.points is not None:
        scale = np.array([nh / h, nw / w])
        out.points = (np.asarray(item.points, dtype=np.float64) + 0.5) * scale - 0.5
    out.mpp = target
    out.provenance["resampled_from_mpp"] = float(item.mpp)
    return out


# -- tissue and windows ------------------------------------------------------------------------


def _check_rgb(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise HistogenInputError(f"Expected an RGB image (H, W, 3), not an array of shape {arr.shape}.")
    return arr


def tissue_mask(image) -> np.ndarray:
    """Boolean map of tissue pixels: darkest channel <= :data:`TISSUE_MAX_VALUE` (219).

    That is an optical density of at least 0.15 in some channel: stained tissue,
    nuclei, and dark debris count; white glass and the bright background of a scan do
    not. ``image`` is RGB uint8 (floats are taken as 0..255).
    """
    return _check_rgb(image).min(axis=-1) <= TISSUE_MAX_VALUE


def tissue_fraction(image) -> float:
    """Fraction of the image's pixels that are tissue (see :func:`tissue_mask`)."""
    return float(tissue_mask(image).mean())


def window_fractions(mask, windows, size: int) -> np.ndarray:
    """Fraction of true pixels of ``mask`` in each ``size``-px window ``(row, col)``.

    Uses a summed-area table: one pass over the mask for any number of windows.
    """
    m = np.asarray(mask, dtype=bool)
    table = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(m, axis=0), axis=1, out=table[1:, 1:])
    if not len(windows):
        return np.zeros(0)
    rc = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    r0, c0, r1, c1 = rc[:, 0], rc[:, 1], rc[:, 0] + size, rc[:, 1] + size
    total = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return total / float(size * size)


def _check_window(size, overlap) -> tuple[int, float]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise HistogenInputError(f"The patch size must be a positive whole number of pixels, not {size!r}.")
    try:
        overlap = float(overlap)
    except (TypeError, ValueError):
        overlap = float("nan")
    if not 0.0 <= overlap < 1.0:
        raise HistogenInputError(f"The patch overlap must be a fraction from 0 up to (not including) 1, not {overlap}.")
    return int(size), overlap


def patch_grid(shape, size: int = 128, overlap: float = 0.5) -> list[tuple[int, int]]:
    """Top-left corners of the windows that tile an image.

    Parameters
    ----------
    shape : tuple
        ``(H, W, ...)`` of the image.
    size : int
        Window side in pixels.
    overlap : float
        Fraction of a window shared with the next one, in ``[0, 1)``; the stride is
        ``round(size * (1 - overlap))`` (at least 1).

    Returns
    -------
    list of (row, col)
        Row-major. Along each axis the windows start at 0, step by the stride, and a
        last window is shifted back to end exactly at the border when the stride does
        not land there, so every pixel is covered. An image smaller than ``size`` along
        an axis gives no windows (it is not padded: padding would teach the model
        blank borders).
    """
    size, overlap = _check_window(size, overlap)
    if len(shape) < 2:
        raise HistogenInputError(f"An image shape needs two axes, not {tuple(shape)}.")
    stride = max(1, int(np.floor(size * (1.0 - overlap) + 0.5)))

    def starts(length: int) -> list[int]:
        if length < size:
            return []
        out = list(range(0, length - size + 1, stride))
        if out[-1] != length - size:
            out.append(length - size)
        return out

    return [(r, c) for r in starts(int(shape[0])) for c in starts(int(shape[1]))]


def split_sources(source_ids, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split source ids into training and validation ids.

    Parameters
    ----------
    source_ids : iterable of str
        Ids of the sources (repeats are fine: the unique ids are split).
    val_fraction : float
        Fraction of the *sources* held out, in ``[0, 1)``; rounded, and at least one
        source on each side when there are two or more sources and the fraction is
        positive. A single source goes to training.
    seed : int
        Seed of the shuffle; the result depends only on the set of ids and the seed.

    Returns
    -------
    train_ids, val_ids : list of str
        Sorted, disjoint.
    """
    try:
        val_fraction = float(val_fraction)
    except (TypeError, ValueError):
        val_fraction = float("nan")
    if not 0.0 <= val_fraction < 1.0:
        raise HistogenInputError(f"The validation fraction must be from 0 up to (not including) 1, not {val_fraction}.")
    ids = sorted({str(s) for s in source_ids})
    n = len(ids)
    n_val = int(np.floor(n * val_fraction + 0.5))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    order = np.random.default_rng(int(seed)).permutation(n)
    val = sorted(ids[i] for i in order[:n_val])
    val_set = set(val)
    return [s for s in ids if s not in val_set], val


# -- the patch set -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchRef:
    """One training window: ``size`` px at ``(row, col)`` of source ``source`` of a :class:`PatchSet`."""

    source: int
    row: int
    col: int
    size: int
    source_id: str


@dataclass
class PatchSet:
    """Resampled sources, their kept windows split by source, and what was done.

    Attributes
    ----------
    sources : list of AnnotatedImage
        The kept sources at the model's scale (stain-normalised if asked).
    train, val : list of PatchRef
        Windows of the training and validation sources, in source order, row-major.
    scheme : ClassScheme
        Class scheme of every source.
    class_ids : tuple of int
        The model's class ids in condition channel order (the scheme's ids).
    summary : dict
        Counts and settings (see :func:`build_patch_set`; :func:`format_summary` prints it).
    """

    sources: list[AnnotatedImage]
    train: list[PatchRef]
    val: list[PatchRef]
    scheme: ClassScheme
    class_ids: tuple[int, ...]
    summary: dict = field(default_factory=dict)

    def crop(self, ref: PatchRef) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(image (P, P, 3) uint8, instances (P, P) int32, classes)`` of a window.

        The arrays are read-only views into the source: copy before changing them.
        """
        src = self.sources[ref.source]
        window = (slice(ref.row, ref.row + ref.size), slice(ref.col, ref.col + ref.size))
        image, inst = src.image[window], src.nuclei.instances[window]
        image.flags.writeable = False
        inst.flags.writeable = False
        return image, inst, src.nuclei.classes

    def condition(self, ref: PatchRef) -> np.ndarray:
        """The ``(K + 2, P, P)`` NASDM condition of a window (no augmentation)."""
        _, inst, classes = self.crop(ref)
        return make_condition(inst, classes, self.class_ids)


def _resolve_normalizer(stain_normalizer, sources: list[AnnotatedImage], fractions: list[float]):
    """(callable image -> image, description) or (None, None)."""
    if stain_normalizer is None or stain_normalizer is False:
        return None, None
    if isinstance(stain_normalizer, str):
        method, _, ref_path = stain_normalizer.partition(":")
        method = method.strip().lower()
        if method in ("", "none"):
            return None, None
        if method not in STAIN_METHODS:
            raise HistogenInputError(f"Unknown stain normalisation '{stain_normalizer}'; choose one of "
                                     f"{', '.join(STAIN_METHODS)} (optionally 'method:reference.png').")
        if ref_path.strip():
            from ..io.pairs import read_rgb_image

            reference, ref_name = read_rgb_image(ref_path.strip(), name="stain reference image"), Path(ref_path).name
        else:
            # the source with the most tissue (first on ties): deterministic and typical
            best = int(np.argmax(fractions))
            reference, ref_name = sources[best].image, sources[best].name
        normalizer = StainNormalizer(method).fit(reference)
        return normalizer.transform, f"{method} (reference {ref_name})"
    if hasattr(stain_normalizer, "transform"):
        return stain_normalizer.transform, repr(stain_normalizer)
    if callable(stain_normalizer):
        return stain_normalizer, getattr(stain_normalizer, "__name__", repr(stain_normalizer))
    raise HistogenInputError(
        f"stain_normalizer must be None, a method name ({', '.join(STAIN_METHODS)}), a fitted StainNormalizer "
        f"or a function image -> image, not {type(stain_normalizer).__name__}.")


def _count_nuclei(sources, refs, scheme) -> dict[str, int]:
    """Nuclei touched by the windows, each nucleus counted once per source."""
    covered: dict[int, np.ndarray] = {}
    for ref in refs:
        src = sources[ref.source]
        cov = covered.setdefault(ref.source, np.zeros(src.nuclei.shape, dtype=bool))
        cov[ref.row: ref.row + ref.size, ref.col: ref.col + ref.size] = True
    counts = {c.name: 0 for c in scheme.classes}
    for index, cov in covered.items():
        nuclei = sources[index].nuclei
        present = instance_ids(nuclei.instances[cov])
        for name, n in class_counts({int(i): nuclei.classes[int(i)] for i in present}, scheme).items():
            counts[name] = counts.get(name, 0) + n
    return counts


def build_patch_set(data, fmt: str = "auto", *, target_mpp: float = DEFAULT_MPP, patch_size: int = 128,
                    overlap: float = 0.5, min_tissue: float = 0.5, val_fraction: float = 0.1, seed: int = 0,
                    scheme=None, source_mpp: float | None = None, stain_normalizer=None,
                    unclassified: str = "error", progress=None) -> PatchSet:
    """Read a dataset and cut it into NASDM training windows, split by source image.

    Parameters
    ----------
    data, fmt, scheme, source_mpp
        As :func:`iter_sources`.
    target_mpp : float
        The model's scale in µm/px (0.5 = 20x).
    patch_size : int
        Window side in pixels at ``target_mpp``.
    overlap : float
        Overlap of neighbouring windows, in ``[0, 1)`` (see :func:`patch_grid`).
    min_tissue : float
        Windows whose tissue fraction (:func:`tissue_mask`) is below this are dropped.
    val_fraction : float
        Fraction of source images held out for validation (:func:`split_sources`).
    seed : int
        Seed of the split.
    stain_normalizer : None, str, StainNormalizer or callable
        ``'macenko'`` or ``'vahadane'``: fitted on the source with the largest tissue
        fraction, or on the image in ``'macenko:/path/reference.png'``; a fitted
        :class:`~napari_histogen.core.nasdm.stain.StainNormalizer`; or any function
        ``uint8 RGB -> uint8 RGB``. Applied to every kept source after resampling.
    unclassified : {'error', 'drop'}
        What to do with nuclei without a class (NASDM needs a class per nucleus):
        refuse the dataset, or drop the windows that contain any.
    progress : callable, optional
        ``progress(done, total)`` after each source is read.

    Returns
    -------
    PatchSet
        ``summary`` holds: ``data``, ``formats``, ``scheme``, ``class_ids``,
        ``class_names``, ``mpp_in`` (scales read), ``mpp_out``, ``patch_size``,
        ``overlap``, ``min_tissue``, ``val_fraction``, ``seed``, ``stain_normalization``,
        ``sources`` (kept), ``sources_read``, ``sources_skipped`` (name, reason),
        ``sources_train``, ``sources_val``, ``val_source_ids``, ``patches_total``,
        ``patches_kept``, ``patches_dropped_tissue``, ``patches_dropped_unclassified``,
        ``patches_train``, ``patches_val``, ``nuclei_dropped_by_resampling``,
        ``nuclei_per_class`` (``{'train': {...}, 'val': {...}}``, nuclei inside kept
        windows, each once per source), ``seconds``.

    Raises
    ------
    HistogenInputError
        Bad settings, unreadable or unsuitable data, mixed class schemes, unclassified
        nuclei (with ``unclassified='error'``), or no window left.
    """
    start = time.perf_counter()
    target_mpp = float(target_mpp) if isinstance(target_mpp, (int, float, np.number)) else float("nan")
    if not target_mpp > 0 or not np.isfinite(target_mpp):
        raise HistogenInputError("The target scale (target_mpp) must be a positive number of µm/px, e.g. 0.5 for 20x.")
    patch_size, overlap = _check_window(patch_size, overlap)
    if not isinstance(min_tissue, (int, float, np.number)) or not 0.0 <= float(min_tissue) <= 1.0:
        raise HistogenInputError(f"The minimum tissue fraction must be between 0 and 1, not {min_tissue!r}.")
    if unclassified not in _UNCLASSIFIED_POLICIES:
        raise HistogenInputError(
            f"unclassified must be one of {', '.join(_UNCLASSIFIED_POLICIES)}, not {unclassified!r}.")
    split_sources([], val_fraction, seed)  # checks val_fraction before the slow part

    tasks, skipped = _plan(data, fmt, scheme)
    sources: list[AnnotatedImage] = []
    windows_of: list[list[tuple[int, int]]] = []
    fractions: list[float] = []
    the_scheme: ClassScheme | None = None
    mpp_in, formats = set(), set()
    n_total = n_tissue = n_unclassified = n_resample_dropped = 0
    for done, task in enumerate(tasks, start=1):
        item = _finish(task.load(), task, scheme, source_mpp)
        if item.image is None:
            skipped.append({"name": task.label, "reason": "no image found next to the labels (mask only)"})
        else:
            if the_scheme is None:
                the_scheme = item.nuclei.scheme
            elif item.nuclei.scheme.name != the_scheme.name:
                raise HistogenInputError(
                    f"{task.label} uses class scheme '{item.nuclei.scheme.name}' but earlier sources use "
                    f"'{the_scheme.name}'; train on one scheme at a time.")
            mpp_in.add(round(float(item.mpp), 6))
            formats.add(str(item.provenance.get("format", "?")))
            item = resample_to_mpp(item, target_mpp)
            n_resample_dropped += int(item.provenance.get("resample_dropped_nuclei", 0))
            windows = patch_grid(item.image.shape, patch_size, overlap)
            if not windows:
                h, w = item.image.shape[:2]
                skipped.append({"name": task.label, "reason": f"{w}x{h} px at {target_mpp} µm/px is smaller than "
                                                             f"the {patch_size}-px patch"})
            else:
                n_total += len(windows)
                tissue = tissue_mask(item.image)
                keep = window_fractions(tissue, windows, patch_size) >= float(min_tissue)
                n_tissue += int((~keep).sum())
                unclassified_ids = [i for i, c in item.nuclei.classes.items() if c == UNCLASSIFIED]
                if unclassified_ids:
                    if unclassified == "error":
                        raise HistogenInputError(
                            f"{len(unclassified_ids)} nuclei of {task.label} have no class, and NASDM needs a class "
                            "for every nucleus. Classify them, or drop the patches that contain them "
                            "(unclassified='drop'; histogen: --unclassified drop).")
                    hit = window_fractions(np.isin(item.nuclei.instances, unclassified_ids), windows, patch_size) > 0
                    n_unclassified += int((keep & hit).sum())
                    keep &= ~hit
                kept = [win for win, k in zip(windows, keep) if k]
                if kept:
                    sources.append(item)
                    windows_of.append(kept)
                    fractions.append(float(tissue.mean()))
                else:
                    skipped.append({"name": task.label, "reason": "no window passed the tissue/class filters"})
        if progress is not None:
            progress(done, len(tasks))
    if not sources:
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3]) or "no sources found"
        raise HistogenInputError(
            f"No training patches in {data}: {reasons}. Check the data, or lower min_tissue / patch_size.")

    normalize, stain_text = _resolve_normalizer(stain_normalizer, sources, fractions)
    if normalize is not None:
        for item in sources:
            new = np.asarray(normalize(item.image))
            if new.shape != item.image.shape:
                raise HistogenInputError(f"The stain normaliser changed the shape of {item.name} "
                                         f"from {item.image.shape} to {new.shape}; it must keep it.")
            item.image = np.clip(np.rint(new), 0, 255).astype(np.uint8) if new.dtype != np.uint8 else new

    train_ids, val_ids = split_sources([s.provenance["source_id"] for s in sources], val_fraction, seed)
    val_set = set(val_ids)
    train, val = [], []
    for index, (item, windows) in enumerate(zip(sources, windows_of)):
        sid = item.provenance["source_id"]
        refs = [PatchRef(index, int(r), int(c), patch_size, sid) for r, c in windows]
        (val if sid in val_set else train).extend(refs)

    summary = {
        "data": [str(p) for p in _as_paths(data)],
        "formats": sorted(formats),
        "scheme": the_scheme.name,
        "class_ids": list(the_scheme.ids),
        "class_names": list(the_scheme.names),
        "mpp_in": sorted(mpp_in),
        "mpp_out": target_mpp,
        "patch_size": patch_size,
        "overlap": overlap,
        "min_tissue": float(min_tissue),
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "stain_normalization": stain_text,
        "sources_read": len(tasks),
        "sources": len(sources),
        "sources_skipped": skipped,
        "sources_train": len(train_ids),
        "sources_val": len(val_ids),
        "val_source_ids": val_ids,
        "patches_total": n_total,
        "patches_kept": len(train) + len(val),
        "patches_dropped_tissue": n_tissue,
        "patches_dropped_unclassified": n_unclassified,
        "patches_train": len(train),
        "patches_val": len(val),
        "nuclei_dropped_by_resampling": n_resample_dropped,
        "nuclei_per_class": {"train": _count_nuclei(sources, train, the_scheme),
                             "val": _count_nuclei(sources, val, the_scheme)},
    }
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return PatchSet(sources, train, val, the_scheme, tuple(the_scheme.ids), summary)


def format_summary(summary: dict) -> str:
    """A few human-readable lines of a :func:`build_patch_set` summary."""
    s = summary
    lines = [
        f"data: {', '.join(s['data'])} ({', '.join(s['formats'])}, scheme {s['scheme']})",
        f"scale: {', '.join(str(m) for m in s['mpp_in'])} -> {s['mpp_out']} µm/px; "
        f"{s['patch_size']} px patches, {s['overlap']:.0%} overlap, tissue >= {s['min_tissue']:.0%}",
        f"sources: {s['sources']} kept of {s['sources_read']} read ({len(s['sources_skipped'])} skipped); "
        f"train {s['sources_train']}, validation {s['sources_val']}",
        f"patches: {s['patches_kept']} kept of {s['patches_total']} (dropped: {s['patches_dropped_tissue']} too little "
        f"tissue, {s['patches_dropped_unclassified']} unclassified nuclei); train {s['patches_train']}, "
        f"validation {s['patches_val']}",
    ]
    for part in ("train", "val"):
        counts = s["nuclei_per_class"][part]
        lines.append(f"nuclei ({part}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if s.get("stain_normalization"):
        lines.append(f"stain normalisation: {s['stain_normalization']}")
    lines.append(f"took {s['seconds']} s")
    return "\n".join(lines)


# -- the torch dataset -------------------------------------------------------------------------


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square on axes 0 and 1 (a view).

    ``k % 4`` quarter turns (``np.rot90``), then a left-right flip when ``k >= 4``.
    """
    k = int(k)
    if not 0 <= k < 8:
        raise HistogenInputError(f"A dihedral transform is numbered 0..7, not {k}.")
    out = np.rot90(array, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


class NasdmPatchDataset(Dataset):
    """Torch dataset of NASDM training pairs from a :class:`PatchSet`.

    Parameters
    ----------
    patch_set : PatchSet
    refs : sequence of PatchRef, or 'train' / 'val'
        The windows to serve (e.g. ``patch_set.train``).
    augment : bool
        Apply a random one of the 8 flips/quarter turns (:func:`dihedral`) to the image
        and the instance map together. The draw uses ``generator`` if given, else
        torch's global generator, which ``torch.manual_seed`` seeds and the DataLoader
        seeds per worker, so seeded runs repeat.
    generator : torch.Generator, optional

    Items are dicts: ``image`` float32 ``(3, P, P)`` in ``[-1, 1]``; ``condition``
    float32 ``(K + 2, P, P)`` = :func:`~napari_histogen.core.nasdm.condition.make_condition`
    of the (transformed) window.
    """

    def __init__(self, patch_set: PatchSet, refs="train", *, augment: bool = True,
                 generator: torch.Generator | None = None):
        if isinstance(refs, str):
            if refs not in ("train", "val"):
                raise HistogenInputError(f"refs must be 'train', 'val' or a list of PatchRef, not {refs!r}.")
            refs = getattr(patch_set, refs)
        self.patch_set = patch_set
        self.refs = list(refs)
        self.augment = bool(augment)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict:
        if not -len(self.refs) <= index < len(self.refs):
            raise IndexError(f"patch {index} of {len(self.refs)}")
        image, inst, classes = self.patch_set.crop(self.refs[index])
        if self.augment:
            k = int(torch.randint(0, 8, (1,), generator=self.generator).item())
            image, inst = dihedral(image, k), dihedral(inst, k)
        image = np.array(image, dtype=np.uint8, copy=True)  # writable and contiguous, for torch
        inst = np.ascontiguousarray(inst)
        cond = make_condition(inst, classes, self.patch_set.class_ids)
        tensor = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)
        return {"image": tensor, "condition": torch.from_numpy(cond)}
