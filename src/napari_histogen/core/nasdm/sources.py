"""NASDM training data, step 1-2: read the sources of a dataset and resample them to the model's scale.

:func:`iter_sources` reads every source image of a dataset with the product's readers:
Lizard ``.mat`` labels, CoNSeP ``.mat`` (the original 1000-px tiles and the 256-px patch
layout), PanNuke and CoNIC ``.npy`` folders, folders of image + mask pairs. Each source gets
``provenance['source_id']``, the image it came from, which is what the train/validation
split goes by (see :mod:`.data` for the table of source ids). :func:`resample_to_mpp`
brings a source to the model's scale (40x -> 20x: anti-aliased image resizing,
nearest-neighbour instance resizing).

The planning helpers (``_plan*``) find the sources without reading them, so
:func:`~napari_histogen.core.nasdm.patchset.build_patch_set` can report progress per source.
"""

from __future__ import annotations

import copy
import csv
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import HistogenInputError
from ..images import IMAGE_SUFFIXES, resize_image
from ..io.annotated import AnnotatedImage
from ..io.paths import split_index
from ..masks import NucleiMask
from ..schemes import get_scheme

__all__ = ["FORMATS", "DEFAULT_MPP", "iter_sources", "resample_to_mpp"]

FORMATS = ("auto", "lizard", "consep", "pannuke", "conic", "folder")
#: The model's scale: 20x, as Lizard/CoNIC and the NASDM paper.
DEFAULT_MPP = 0.5


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
    base, index = split_index(data)
    if not base.exists():
        raise HistogenInputError(f"No training data at {base}: the file or folder does not exist.")
    if base.is_file():
        name = base.name.lower()
        if name.endswith(".npy"):
            return _plan_npy(base.parent, fmt, index), []
        if name.endswith(".mat"):
            return _plan_mats([base], fmt), []
        if name.endswith(IMAGE_SUFFIXES + (".npz",)):
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
                      if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
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
            out.image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        else:
            out.image = resize_image(item.image, (nh, nw), anti_aliasing=factor < 1)
            if out.image is item.image:  # a tiny image whose size rounds to its own: still a copy
                out.image = item.image.copy()
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

