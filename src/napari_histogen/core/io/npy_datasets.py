"""PanNuke and CoNIC patch arrays (``images.npy`` + ``masks.npy`` / ``labels.npy``).

The arrays are memory-mapped, so opening one patch of a 2 GB fold reads one patch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, HistogenInputError
from ..images import to_rgb_uint8
from ..masks import NucleiMask, as_label_image, classes_from_type_map
from .annotated import AnnotatedImage
from .paths import split_index

__all__ = ["read_pannuke", "read_conic", "read_npy_dataset", "PANNUKE_MPP", "CONIC_MPP"]

PANNUKE_MPP = 0.25  # 40x
CONIC_MPP = 0.5  # 20x, as Lizard


def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        raise HistogenInputError(f"No file at {path}.")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # numpy raises several types for damaged or pickled files
        raise CorruptFileError(f"{path.name} is not a readable .npy array ({type(err).__name__}: {err}).") from None


def _patch(array: np.ndarray, index: int, path: Path, ndim: int) -> tuple[np.ndarray, int]:
    """Copy of patch ``index`` (negative counts from the end) and its index from 0."""
    if array.ndim != ndim:
        raise CorruptFileError(f"{path.name} has shape {array.shape}; expected {ndim} axes (N, H, W, C).")
    n = array.shape[0]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise HistogenInputError(f"Patch index {index!r} is not a whole number; give 0..{n - 1}.")
    if not -n <= int(index) < n:
        raise HistogenInputError(f"Patch index {index!r} is out of range: {path.name} holds patches 0..{n - 1}.")
    index = int(index) % n
    return np.array(array[index]), index  # np.array copies one patch out of the memory map


def _image_patch(images_path: Path, index: int, n_masks: int) -> np.ndarray:
    images = _open(images_path)
    if images.shape[:1] != (n_masks,):
        raise CorruptFileError(
            f"{images_path.name} holds {images.shape[0] if images.ndim else 0} patches but its masks hold {n_masks}; "
            "the two files are not from the same fold."
        )
    image, _ = _patch(images, index, images_path, 4)
    if np.issubdtype(image.dtype, np.floating) and np.all(np.isfinite(image)) and image.min() >= 0 and image.max() <= 255:
        # PanNuke stores 0..255 as float; a dark patch (max <= 1) would be misread as 0..1
        image = np.rint(image).astype(np.uint8)
    return to_rgb_uint8(image, name=f"{images_path.name}[{index}]")


def read_pannuke(images_path, masks_path, index: int) -> AnnotatedImage:
    """Patch ``index`` of a PanNuke fold.

    ``masks.npy`` is (N, 256, 256, 6): channels 0..4 are per-class instance maps
    (neoplastic, inflammatory, connective, dead, epithelial -> ``pannuke`` ids 1..5),
    channel 5 background. Instance ids may repeat across channels, so nuclei are
    renumbered 1..K, channel by channel.
    """
    images_path, masks_path = Path(images_path), Path(masks_path)
    all_masks = _open(masks_path)
    masks, index = _patch(all_masks, index, masks_path, 4)
    if masks.shape[-1] != 6:
        raise CorruptFileError(f"{masks_path.name}: PanNuke masks have 6 channels, this one has {masks.shape[-1]}.")
    image = _image_patch(images_path, index, all_masks.shape[0])
    instances = np.zeros(masks.shape[:2], np.int32)
    classes: dict[int, int] = {}
    next_id = 1
    for channel in range(5):
        layer = as_label_image(masks[..., channel], name=f"{masks_path.name}[{index}] channel {channel}")
        for old in np.unique(layer[layer > 0]):
            instances[layer == old] = next_id
            classes[next_id] = channel + 1
            next_id += 1
    nuclei = NucleiMask.create(instances, classes, "pannuke", mpp=PANNUKE_MPP, name=f"{masks_path.name}[{index}]")
    return AnnotatedImage(
        name=f"pannuke[{index}]", image=image, nuclei=nuclei, mpp=PANNUKE_MPP,
        provenance={"format": "pannuke", "source": masks_path.name, "images_source": images_path.name,
                    "index": int(index), "licence": "PanNuke: CC BY-NC-SA 4.0"},
    ).validate()


def read_conic(images_path, labels_path, index: int) -> AnnotatedImage:
    """Patch ``index`` of CoNIC: ``labels.npy`` (N, 256, 256, 2) = instance map, class map (``lizard`` 1..6)."""
    images_path, labels_path = Path(images_path), Path(labels_path)
    all_labels = _open(labels_path)
    labels, index = _patch(all_labels, index, labels_path, 4)
    if labels.shape[-1] != 2:
        raise CorruptFileError(f"{labels_path.name}: CoNIC labels have 2 channels, this one has {labels.shape[-1]}.")
    image = _image_patch(images_path, index, all_labels.shape[0])
    instances = as_label_image(labels[..., 0], name=f"{labels_path.name}[{index}] instances")
    classes = classes_from_type_map(instances, labels[..., 1])
    nuclei = NucleiMask.create(instances, classes, "lizard", mpp=CONIC_MPP, name=f"{labels_path.name}[{index}]")
    return AnnotatedImage(
        name=f"conic[{index}]", image=image, nuclei=nuclei, mpp=CONIC_MPP,
        provenance={"format": "conic", "source": labels_path.name, "images_source": images_path.name,
                    "index": int(index), "licence": "CoNIC/Lizard: CC BY-NC-SA 4.0"},
    ).validate()


def read_npy_dataset(path, index: int | None = None) -> AnnotatedImage:
    """Open a PanNuke or CoNIC patch from any of its files or its folder.

    ``path`` may be ``images.npy``, ``masks.npy`` (PanNuke), ``labels.npy`` (CoNIC),
    the folder holding them, or any of these with ``::N`` for patch N. ``index``
    overrides ``::N``; default 0.
    """
    base, suffix_index = split_index(path)
    index = index if index is not None else (suffix_index or 0)
    folder = base if base.is_dir() else base.parent
    images, masks, labels = folder / "images.npy", folder / "masks.npy", folder / "labels.npy"
    if not images.is_file():
        raise HistogenInputError(
            f"No images.npy next to {base.name}: PanNuke and CoNIC folders hold images.npy with masks.npy (PanNuke) "
            "or labels.npy (CoNIC)."
        )
    if masks.is_file() and (base.name != "labels.npy" or not labels.is_file()):
        return read_pannuke(images, masks, index)
    if labels.is_file():
        return read_conic(images, labels, index)
    raise HistogenInputError(f"{folder.name}/ has images.npy but neither masks.npy (PanNuke) nor labels.npy (CoNIC).")
