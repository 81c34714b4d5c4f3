"""Texture by numbers: image quilting of one image's own pixels, guided by a class map.

Efros & Freeman's image quilting (SIGGRAPH 2001), per class: for every class of the target
map a canvas is quilted, block by block in raster order, from source blocks that lie (almost)
inside that class of the source, each randomly mirrored; each block is chosen among random candidates by how well it
matches what is already laid down in the overlap, and joined to it along the minimum-error
boundary cut. The class canvases are then composed by the target map with a narrow Gaussian
feather at class borders. Pure numpy/scipy; seeded by the caller's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["class_plate", "block_candidates", "quilt", "compose_classes", "block_positions"]

#: a source block counts as inside a class when at least this fraction of its pixels is that class;
#: with too few such blocks the next, looser fraction is tried (the plate fills the rest)
INSIDE_FRACTIONS = (0.9, 0.75, 0.5)
#: at least this many candidate blocks are wanted (else the blocks with the largest fraction are used)
MIN_CANDIDATES = 64


def class_plate(image: np.ndarray, member: np.ndarray) -> np.ndarray:
    """``image`` (float32) with the pixels outside ``member`` filled from the nearest member pixels, blurred.

    Blocks that reach a little over a class border then carry that class's colours, not the
    neighbour's (a blurred fill: no sharp copy of the border's streaks).
    """
    from scipy import ndimage as ndi  # here: 0.2 s to import, paid when the transfer dock opens otherwise

    image = np.asarray(image, np.float32)
    member = np.asarray(member, bool)
    if member.all():
        return image.copy()
    idx = ndi.distance_transform_edt(~member, return_distances=False, return_indices=True)
    filled = image[idx[0], idx[1]]
    smooth = ndi.gaussian_filter(filled, sigma=(2.0, 2.0, 0.0))
    out = filled.copy()
    out[~member] = smooth[~member]
    return out


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Sum of ``values`` over every ``block`` x ``block`` window, indexed by its top-left corner."""
    c = np.zeros((values.shape[0] + 1, values.shape[1] + 1), np.float64)
    c[1:, 1:] = np.cumsum(np.cumsum(values, 0), 1)
    return c[block:, block:] - c[:-block, block:] - c[block:, :-block] + c[:-block, :-block]


def block_candidates(member: np.ndarray, block: int) -> np.ndarray:
    """Top-left corners ``(n, 2)`` of source blocks inside ``member`` (or the best it has)."""
    frac = _block_sums(np.asarray(member, np.float64), block) / (block * block)
    for fraction in INSIDE_FRACTIONS:
        inside = np.argwhere(frac >= fraction)
        if len(inside) >= MIN_CANDIDATES:
            return inside
    order = np.argsort(-frac, axis=None, kind="stable")
    best = order[:MIN_CANDIDATES]
    best = best[frac.ravel()[best] > 0]
    return np.column_stack(np.unravel_index(best, frac.shape))


def block_positions(length: int, block: int, step: int) -> list[int]:
    """Start offsets of blocks covering ``length`` pixels (the last one flush with the end)."""
    if length <= block:
        return [0]
    out = list(range(0, length - block, step))
    out.append(length - block)
    return out


def _seam_mask(err: np.ndarray) -> np.ndarray:
    """Minimum-error vertical cut through ``err`` (rows, cols): True right of (and on) the cut."""
    rows, cols = err.shape
    cost = err.astype(np.float64).copy()
    for r in range(1, rows):
        prev = cost[r - 1]
        left = np.concatenate([[np.inf], prev[:-1]])
        right = np.concatenate([prev[1:], [np.inf]])
        cost[r] += np.minimum(np.minimum(left, prev), right)
    path = np.empty(rows, np.int64)
    path[-1] = int(np.argmin(cost[-1]))
    for r in range(rows - 2, -1, -1):
        c = path[r + 1]
        lo = max(c - 1, 0)
        path[r] = lo + int(np.argmin(cost[r, lo:min(c + 2, cols)]))
    return np.arange(cols)[None, :] >= path[:, None]


@dataclass
class QuiltStats:
    """What one quilting did (for provenance)."""

    blocks: int = 0
    candidates: int = 0


def quilt(plate: np.ndarray, candidates: np.ndarray, region: np.ndarray, *, block: int, overlap: int,
          n_candidates: int, tolerance: float, rng: np.random.Generator,
          tick: Callable[[], None] | None = None) -> tuple[np.ndarray, QuiltStats]:
    """Quilt a canvas the size of ``region`` from blocks of ``plate`` (H, W, 3 float32) at ``candidates``.

    Only blocks that touch ``region`` are laid. Returns the canvas (float32; zero where no block
    was laid) and the stats. ``tick`` is called once per block (progress and cancel).
    """
    h, w = region.shape
    step = max(1, block - overlap)
    channels_first = np.ascontiguousarray(np.moveaxis(plate, -1, 0))
    windows = np.lib.stride_tricks.sliding_window_view(channels_first, (block, block), axis=(1, 2))
    out = np.zeros((h, w, 3), np.float32)
    filled = np.zeros((h, w), bool)
    need = _block_sums(region.astype(np.float64), block) > 0 if min(h, w) >= block else None
    stats = QuiltStats(candidates=len(candidates))
    k = min(int(n_candidates), len(candidates))
    for y in block_positions(h, block, step):
        for x in block_positions(w, block, step):
            if need is not None and not need[y, x]:
                continue
            pick = candidates[rng.choice(len(candidates), size=k, replace=False)] if k < len(candidates) else candidates
            blocks = windows[:, pick[:, 0], pick[:, 1]]  # (3, k, block, block)
            # each candidate randomly mirrored: 4x the variety of a small class region (no transposes:
            # they turn oriented fibres across and weave them)
            flips = rng.integers(2, size=(2, len(pick))).astype(bool)
            blocks = np.where(flips[0][None, :, None, None], blocks[..., ::-1], blocks)
            blocks = np.where(flips[1][None, :, None, None], blocks[..., ::-1, :], blocks)
            old = out[y:y + block, x:x + block]
            ov = filled[y:y + block, x:x + block]
            if ov.any():
                diff = ((blocks - np.moveaxis(old, -1, 0)[:, None]) ** 2).sum(0)  # (k, block, block)
                cost = (diff * ov).sum((1, 2)) / ov.sum()
                good = np.flatnonzero(cost <= cost.min() * (1 + tolerance) + 1e-6)
                j = int(good[rng.integers(len(good))])
                err = diff[j]
                take = np.ones((block, block), bool)
                cols_full, rows_full = ov.all(0), ov.all(1)
                left = int(np.argmin(cols_full)) if not cols_full.all() else block  # leading filled columns
                top = int(np.argmin(rows_full)) if not rows_full.all() else block
                if 0 < left < block:
                    take[:, :left] &= _seam_mask(err[:, :left])
                if 0 < top < block:
                    take[:top] &= _seam_mask(err[:top].T).T
                take |= ~ov
            else:
                j = int(rng.integers(len(pick)))
                take = np.ones((block, block), bool)
            new = np.moveaxis(blocks[:, j], 0, -1)
            old[take] = new[take]
            ov[:] = True
            stats.blocks += 1
            if tick is not None:
                tick()
    return out, stats


def compose_classes(canvases: dict[int, np.ndarray], labels: np.ndarray, feather_px: float) -> np.ndarray:
    """One image from per-class canvases: each pixel from its class's, with a Gaussian feather at borders."""
    from scipy import ndimage as ndi  # here: 0.2 s to import, paid when the transfer dock opens otherwise

    ids = list(canvases)
    if len(ids) == 1:
        return canvases[ids[0]].copy()
    if feather_px <= 0:
        out = np.zeros(labels.shape + (3,), np.float32)
        for c in ids:
            out[labels == c] = canvases[c][labels == c]
        return out
    weights = np.stack([ndi.gaussian_filter((labels == c).astype(np.float32), feather_px) for c in ids])
    weights /= np.maximum(weights.sum(0), 1e-6)
    out = np.zeros(labels.shape + (3,), np.float32)
    for wgt, c in zip(weights, ids):
        out += wgt[..., None] * canvases[c]
    return out
