"""Tissue (semantic) label maps as files: reading masks and image + mask pairs, writing transfer results.

A tissue mask is an ``HxW`` map of class ids (0 = unlabelled). Files read here:

- PNG or TIFF with one channel (8 or 16 bit) whose values are the class ids (an RGB PNG whose
  three channels are equal counts as one channel);
- ``.npy`` holding a 2-D integer array; ``.npz`` with one of the keys ``tissue``, ``mask``,
  ``labels``, ``label``, ``type_map`` (and optionally ``scheme`` and ``mpp``);
- OME-TIFF written by napari-histogen (its tissue map).

A dataset of pairs is a folder with ``images/<stem>.png`` + ``masks/<stem>.png`` (``labels/``
also works; any of the mask formats above), or a flat folder with ``<stem>.png`` and
``<stem>_mask.png``. Transfer results are written in the flat layout, so an output folder is
itself a dataset of pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, HistogenInputError
from ..images import IMAGE_SUFFIXES, resize_image
from ..masks import TissueMask, as_label_image
from ..render import hstack_panels, render_labels
from .paths import TISSUE_MASK_SUFFIXES

__all__ = ["read_label_map", "read_tissue_mask", "find_tissue_pairs", "write_transfer_result", "render_labels", "MASK_SUFFIXES",
           "IMAGE_SUFFIXES"]

MASK_SUFFIXES = TISSUE_MASK_SUFFIXES
_NPZ_KEYS = ("tissue", "mask", "labels", "label", "type_map")


def read_label_map(path, *, name: str = "mask") -> tuple[np.ndarray, dict]:
    """Read a tissue mask file; returns ``(labels HxW int32, info)`` with ``info`` holding ``scheme``/``mpp`` when stored.

    Raises
    ------
    HistogenInputError
        No such file, an unsupported type, a colour (RGB) mask, or a map that is not 2-D integers.
    CorruptFileError
        The file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise HistogenInputError(f"No {name} file at {path}.")
    lower = path.name.lower()
    info: dict = {}
    try:
        if lower.endswith((".ome.tif", ".ome.tiff")):
            from .ome_tiff import read_ome_tiff

            item = read_ome_tiff(path)
            if item.tissue is None:
                raise HistogenInputError(f"The OME-TIFF {path.name} holds no tissue mask.")
            if item.tissue_scheme is not None:
                info["scheme"] = item.tissue_scheme.name
            if item.mpp:
                info["mpp"] = float(item.mpp)
            data = item.tissue
        elif lower.endswith(".npy"):
            data = np.load(path, allow_pickle=False)
        elif lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                key = next((k for k in _NPZ_KEYS if k in npz.files), None)
                if key is None:
                    raise HistogenInputError(f"{path.name} has no tissue mask: expected one of the keys "
                                             f"{', '.join(_NPZ_KEYS)}, found {', '.join(npz.files)}.")
                data = npz[key]
                if "scheme" in npz.files:
                    info["scheme"] = str(np.asarray(npz["scheme"]).ravel()[0])
                if "mpp" in npz.files:
                    info["mpp"] = float(npz["mpp"])
        elif lower.endswith((".tif", ".tiff")):
            import tifffile

            data = tifffile.imread(path)
        elif lower.endswith((".png", ".jpg", ".jpeg")):
            import imageio.v3 as iio

            data = iio.imread(path)
        else:
            raise HistogenInputError(f"{path.name}: unsupported mask type; use {', '.join(MASK_SUFFIXES)} or OME-TIFF.")
    except (HistogenInputError, CorruptFileError):
        raise
    except Exception as err:  # decoders raise many unrelated types for bad bytes
        raise CorruptFileError(f"The {name} {path.name} cannot be read ({type(err).__name__}: {err}).") from None
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        rgb = data[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            data = rgb[..., 0]
        else:
            raise HistogenInputError(
                f"The {name} {path.name} is a colour image; save masks as one-channel label images whose "
                "values are the class ids (0 = unlabelled).")
    return as_label_image(data, name=f"{name} {path.name}"), info


def read_tissue_mask(path, *, name: str = "mask", scheme=None) -> TissueMask:
    """:func:`read_label_map` as a :class:`~napari_histogen.core.masks.TissueMask`.

    ``scheme`` (a name or scheme) wins over the one the file records; an unknown recorded
    scheme name is dropped (the mask is still usable, its classes just have no names).
    """
    labels, info = read_label_map(path, name=name)
    spec = scheme if scheme is not None else info.get("scheme")
    resolved = None
    if spec is not None:
        from ..schemes import get_scheme

        try:
            resolved = get_scheme(spec)
        except HistogenInputError:
            if scheme is not None:
                raise
    return TissueMask(labels, resolved, info.get("mpp"), Path(path).name)


def _mask_for(image: Path, folder: Path) -> Path | None:
    stem = image.stem
    candidates = []
    for sub in ("masks", "labels", "Masks", "Labels"):
        candidates += [folder.parent / sub / f"{stem}{suffix}" for suffix in MASK_SUFFIXES]
    candidates += [folder / f"{stem}_mask{suffix}" for suffix in MASK_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def find_tissue_pairs(folder) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths of a dataset of pairs (see module doc), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HistogenInputError(f"No dataset folder at {folder}.")
    image_dirs = [d for d in (folder / "images", folder / "Images") if d.is_dir()] or [folder]
    pairs = []
    for image_dir in image_dirs:
        for path in sorted(image_dir.iterdir()):
            if (not path.is_file() or not path.name.lower().endswith(IMAGE_SUFFIXES)
                    or path.stem.endswith(("_mask", "_side_by_side"))):
                continue
            mask = _mask_for(path, image_dir)
            if mask is not None:
                pairs.append((path, mask))
    if not pairs:
        raise HistogenInputError(
            f"{folder} holds no image + mask pairs. Expected images/<name>.png with masks/<name>.png (or labels/), "
            "or <name>.png next to <name>_mask.png (masks: one-channel class ids, .png/.tif/.npy/.npz).")
    return pairs


def write_transfer_result(out_dir, name: str, image: np.ndarray, mask: np.ndarray | TissueMask, provenance: dict, *,
                          source: np.ndarray | None = None, scheme=None) -> dict[str, Path]:
    """Write one in-silico image with the label map it matches.

    Files: ``<name>.png`` (the image), ``<name>_mask.png`` (class ids, 8-bit, 16-bit above 255),
    ``<name>_side_by_side.png`` (mask | image | source), ``<name>.json`` (provenance).
    """
    from skimage.io import imsave

    from ..provenance import json_default
    from .bundle import safe_name, write_file_set

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(name)
    files = {"image": out / f"{stem}.png", "mask": out / f"{stem}_mask.png",
             "side_by_side": out / f"{stem}_side_by_side.png", "provenance": out / f"{stem}.json"}
    if isinstance(mask, TissueMask):
        scheme = scheme if scheme is not None else mask.scheme
        mask = mask.labels
    mask = np.asarray(mask)
    panels = [render_labels(mask, scheme), image]
    if source is not None:
        panels.append(resize_image(source, image.shape[:2]))

    def write(tmp):  # all four or none
        imsave(tmp["image"], image, check_contrast=False)
        imsave(tmp["mask"], mask.astype(np.uint8 if mask.max() < 256 else np.uint16), check_contrast=False)
        imsave(tmp["side_by_side"], hstack_panels(panels), check_contrast=False)
        tmp["provenance"].write_text(json.dumps(provenance, indent=2, default=json_default))

    return write_file_set(files, write)
