"""The structure image, the flips/rotations of target masks, and resizing to the working size.

The structure branch needs the target mask as an image. Each class is painted flat in one
colour: by default the mean colour of that class in the source image (``render="mean"``), so
the structure image already has the source's stain colours where the output should have them
and its inversion starts the output from plausible colours; label 0 gets the source's
unlabelled colour (or, without one, the source's mean). Classes the source lacks get their
class-scheme colour when a scheme is known, else the source's mean colour. ``render="scheme"``
paints the scheme colours instead (a diagnostic; the output then starts from cartoon colours).
``render="mask"`` is the paper's wording taken literally (it inverts "the mask" m_target): the
label map itself as a grey image, class ``c`` at grey ``round(255 c / m)`` with ``m`` the
highest id of the scheme (else of the mask), so a binary mask is black background and white
foreground. Painting in the source's mean colours is our choice, not the paper's or the
reference's (the reference inverts two photographs); it is the default because the output
branch starts from the structure's inverted latent, and a flat grey or cartoon start has to be
pulled all the way to the stain colours by attention and AdaIN alone.

Target masks are augmented as in the paper ("random flips and rotations"): each output draws
one of the 8 flips/rotations of the square (for non-square masks, one of the 4 that keep the
shape) from its own seed. Resizing lives with the images and masks
(:func:`~napari_histogen.core.images.resize_image`, :func:`~napari_histogen.core.masks.resize_labels`;
re-exported here as ``resize_image`` and ``resize_mask``).
"""

from __future__ import annotations

import numpy as np

from ..images import resize_image
from ..masks import resize_labels as resize_mask

__all__ = ["class_colours", "render_structure", "AUGMENTATIONS", "augment", "choose_augmentation",
           "resize_image", "resize_mask", "SLIDE_WHITE"]

SLIDE_WHITE = (235, 235, 235)

AUGMENTATIONS = ("identity", "rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "antitranspose")
_SHAPE_KEEPING = ("identity", "rot180", "flip_lr", "flip_ud")


def class_colours(image: np.ndarray, mask: np.ndarray | None) -> dict[int, tuple[int, ...]]:
    """Mean RGB colour of each label of ``mask`` in ``image`` (label -> colour); ``-1`` = the whole image."""
    img = np.asarray(image, dtype=np.float64).reshape(-1, 3)
    out = {-1: tuple(int(round(v)) for v in img.mean(axis=0))}
    if mask is None:
        return out
    labels = np.asarray(mask).reshape(-1)
    ids, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), 3))
    np.add.at(sums, inverse, img)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    for cid, colour in zip(ids.tolist(), sums / counts):
        out[int(cid)] = tuple(int(round(v)) for v in colour)
    return out


def render_structure(target_mask: np.ndarray, colours: dict, *, scheme=None, mode: str = "mean") -> np.ndarray:
    """The target mask as an RGB image (HxWx3 uint8), each class in one flat colour (see module doc)."""
    mask = np.asarray(target_mask)
    ids = np.unique(mask)
    if mode == "mask":
        return _mask_as_grey(mask, scheme)
    lut = {}
    for cid in ids.tolist():
        colour = None
        if mode == "scheme":
            colour = _scheme_colour(scheme, cid)
        if colour is None:
            colour = colours.get(cid)
        if colour is None:
            colour = _scheme_colour(scheme, cid) if cid else None
        if colour is None:
            colour = colours.get(-1, SLIDE_WHITE) if cid else SLIDE_WHITE
        lut[cid] = colour
    out = np.zeros((*mask.shape, 3), np.uint8)
    for cid, colour in lut.items():
        out[mask == cid] = colour
    return out


def _mask_as_grey(mask: np.ndarray, scheme) -> np.ndarray:
    """The label map as a grey RGB image: id ``c`` at ``round(255 c / m)``, ``m`` the scheme's (else mask's) top id."""
    top = int(mask.max()) if mask.size else 0
    if scheme is not None:
        try:
            top = max(top, max(int(c) for c in scheme.ids))
        except (AttributeError, TypeError, ValueError):
            pass
    grey = np.rint(np.clip(mask, 0, None).astype(np.float64) * 255.0 / max(top, 1)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _scheme_colour(scheme, cid):
    if scheme is None:
        return None
    if cid == 0:
        return SLIDE_WHITE
    try:
        return tuple(scheme.color(cid)) if cid in scheme else None
    except Exception:  # noqa: BLE001 - an unknown id simply has no scheme colour
        return None


def augment(mask: np.ndarray, name: str) -> np.ndarray:
    """``mask`` flipped/rotated by ``name`` (one of :data:`AUGMENTATIONS`); always a new array."""
    m = np.asarray(mask)
    ops = {
        "identity": lambda a: a,
        "rot90": lambda a: np.rot90(a, 1),
        "rot180": lambda a: np.rot90(a, 2),
        "rot270": lambda a: np.rot90(a, 3),
        "flip_lr": lambda a: a[:, ::-1],
        "flip_ud": lambda a: a[::-1, :],
        "transpose": lambda a: a.T,
        "antitranspose": lambda a: np.rot90(a, 2).T,
    }
    if name not in ops:
        raise ValueError(f"unknown augmentation {name!r}")
    return np.ascontiguousarray(ops[name](m))


def choose_augmentation(seed: int, shape) -> str:
    """The flip/rotation output ``k`` uses (drawn from seed ``seed + k``); shape-keeping ones for non-square masks."""
    choices = AUGMENTATIONS if shape[0] == shape[1] else _SHAPE_KEEPING
    return choices[int(np.random.default_rng(int(seed)).integers(len(choices)))]
