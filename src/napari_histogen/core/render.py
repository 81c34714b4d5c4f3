"""Masks drawn as pictures: the one home of mask rendering.

- :func:`render_overlay` — an image with its tissue tinted, nuclei outlined and points drawn
  in their class colours (headless "screenshots", bundles, reports, the mask panel of a
  synthesis pair);
- :func:`render_labels` — a label map in scheme colours (or a fixed palette) on white;
- :func:`hstack_panels` — pictures side by side with white gaps (``mask | synthetic | real``).

NASDM's condition pictures (``core.nasdm.render``) and the transfer's structure image
(``core.transfer.render``) are model inputs, not pictures of a mask for people, and stay with
their model code.
"""

from __future__ import annotations

import numpy as np

from .errors import HistogenInputError
from .images import to_rgb_uint8
from .masks import NucleiMask, as_label_image, check_same_shape
from .schemes import UNCLASSIFIED, get_scheme

__all__ = ["render_overlay", "render_labels", "hstack_panels", "LABEL_PALETTE"]

#: colours of label ids that no scheme names (id 1 -> row 0, cycling)
LABEL_PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                          [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)


def render_overlay(
    image,
    nuclei: NucleiMask | None = None,
    tissue=None,
    tissue_scheme=None,
    points=None,
    point_classes=None,
    point_scheme=None,
    *,
    alpha: float = 0.4,
    outline: bool = True,
    point_radius: float = 3.0,
) -> np.ndarray:
    """An annotated RGB picture: tissue tinted, nuclei outlined, points as dots.

    Parameters
    ----------
    image : array_like
        The image (anything :func:`~napari_histogen.core.images.to_rgb_uint8` accepts).
    nuclei : NucleiMask, optional
        Drawn as a light fill (``alpha / 2``) plus a 1-px inner outline in each
        nucleus' class colour (grey for unclassified).
    tissue : array_like (H, W) int, optional
        Tissue mask, tinted with the class colours of ``tissue_scheme`` at ``alpha``.
    tissue_scheme : ClassScheme or str, optional
        Default ``'tissue'``.
    points : array_like (N, 2), optional
        ``(row, col)`` points, drawn as discs of ``point_radius`` px in their class
        colour with a dark rim; points outside the image are skipped.
    point_classes : array_like (N,), optional
        Class of each point (default all unclassified).
    point_scheme : ClassScheme or str, optional
        Scheme of ``point_classes``; default the nuclei mask's scheme, else 'nucls'
        only if no classes are given (all grey).
    alpha : float, optional
        Opacity of the tissue tint, 0..1. Default 0.4: the stain stays readable.
    outline : bool, optional
        Draw nucleus outlines (default True); False draws the fill only, at ``alpha``.
    point_radius : float, optional
        Radius of the point discs in pixels. Default 3.

    Returns
    -------
    ndarray (H, W, 3) uint8
        A new picture; the inputs are not modified.

    Raises
    ------
    HistogenInputError
        Masks whose shape differs from the image, alpha outside 0..1, bad points.
    UnknownClassError
        Classes not in the given schemes.
    """
    rgb = to_rgb_uint8(image).astype(np.float32)
    height, width = rgb.shape[:2]
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise HistogenInputError(f"alpha {alpha!r} is not a number; give an opacity from 0 to 1.") from None
    if not 0.0 <= alpha <= 1.0:
        raise HistogenInputError(f"alpha is {alpha}; give an opacity from 0 to 1.")

    if tissue is not None:
        tmap = as_label_image(tissue, name="tissue mask")
        check_same_shape(rgb.shape, tmap.shape, what="tissue mask")
        scheme = get_scheme(tissue_scheme if tissue_scheme is not None else "tissue")
        scheme.check_ids(np.unique(tmap[tmap > 0]), what="tissue mask", allow_unclassified=False)
        lut = _colour_lut(scheme, int(tmap.max()))
        sel = tmap > 0
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * lut[tmap[sel]]

    if nuclei is not None:
        inst = as_label_image(nuclei.instances, name="nuclei mask")
        check_same_shape(rgb.shape, inst.shape, what="nuclei mask")
        type_map = nuclei.type_map()
        nuclei.scheme.check_ids(np.unique(type_map), what="nuclei mask")
        lut = _colour_lut(nuclei.scheme, int(type_map.max()))
        colours = lut[type_map]
        sel = inst > 0
        fill = alpha / 2 if outline else alpha
        rgb[sel] = (1 - fill) * rgb[sel] + fill * colours[sel]
        if outline:
            from skimage.segmentation import find_boundaries

            edge = find_boundaries(inst, mode="inner") & sel
            rgb[edge] = colours[edge]

    if points is not None:
        pts = np.array(points, dtype=np.float64)
        if pts.size == 0:
            pts = np.zeros((0, 2))
        if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
            raise HistogenInputError(f"The points have shape {pts.shape}; expected finite (N, 2) (row, col).")
        if point_classes is None:
            cls = np.zeros(len(pts), np.int64)
        else:
            cls = np.asarray(point_classes).reshape(-1).astype(np.int64)
            if cls.size != len(pts):
                raise HistogenInputError(f"{len(pts)} points but {cls.size} point classes; give one per point.")
        if point_scheme is not None:
            scheme = get_scheme(point_scheme)
        elif nuclei is not None:
            scheme = nuclei.scheme
        elif np.any(cls):
            raise HistogenInputError("Give the point_scheme that the point classes belong to.")
        else:
            scheme = get_scheme("nucls")  # only its grey 'unclassified' colour is used
        scheme.check_ids(np.unique(cls), what="point layout")
        lut = _colour_lut(scheme, int(cls.max(initial=0)))
        _draw_points(rgb, pts, lut[cls], float(point_radius))

    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _colour_lut(scheme, top: int) -> np.ndarray:
    """Row ``k`` = RGB colour of class ``k`` (unclassified grey for 0 and unused ids)."""
    lut = np.tile(np.asarray(scheme.color(UNCLASSIFIED), np.float32), (max(top, max(scheme.ids)) + 1, 1))
    for c in scheme.classes:
        lut[c.id] = c.color
    return lut


def _draw_points(rgb: np.ndarray, pts: np.ndarray, colours: np.ndarray, radius: float) -> None:
    """Discs in ``colours`` with a 1-px dark rim, painted in place into ``rgb`` (float)."""
    height, width = rgb.shape[:2]
    outer = radius + 1.0  # the rim keeps light-coloured dots visible on pale stroma
    reach = int(np.ceil(outer))
    offsets = np.arange(-reach, reach + 1)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    for (r, c), colour in zip(pts, colours):
        rows, cols = np.floor(r + 0.5).astype(int) + dr, np.floor(c + 0.5).astype(int) + dc
        d = np.hypot(rows - r, cols - c)
        ok = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width) & (d <= outer)
        if not ok.any():
            continue
        rim = ok & (d > radius)
        disc = ok & (d <= radius)
        rgb[rows[rim], cols[rim]] = (20, 20, 20)
        rgb[rows[disc], cols[disc]] = colour


def render_labels(mask: np.ndarray, scheme=None) -> np.ndarray:
    """A label map as an RGB picture: scheme colours (or :data:`LABEL_PALETTE`), 0 white."""
    mask = np.asarray(mask)
    out = np.full((*mask.shape, 3), 255, np.uint8)
    for cid in np.unique(mask).tolist():
        if cid == 0:
            continue
        colour = None
        if scheme is not None and cid in scheme:
            colour = scheme.color(cid)
        out[mask == cid] = colour if colour is not None else LABEL_PALETTE[(cid - 1) % len(LABEL_PALETTE)]
    return out


def hstack_panels(panels, *, gap: int = 4) -> np.ndarray:
    """RGB pictures of one height side by side, ``gap`` white pixels between them."""
    height = panels[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    row = []
    for panel in panels:
        row += [panel, spacer]
    return np.concatenate(row[:-1], axis=1)
