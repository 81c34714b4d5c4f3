"""Nuclei copied from a source image onto a target nuclei mask: matched by class and shape, warped, blended.

Each target nucleus takes one source nucleus of its class whose shape is close (area ratio and
eccentricity), drawn at random among the closest few. The source nucleus is mapped onto the
target outline by a radial warp about the centroids: the major axes are aligned (with a random
mirror and half turn), and a pixel at a fraction ``u`` of the target's radius in its direction
samples the source at the same fraction of the source's radius in the matching direction, so
the target outline maps onto the source outline and every pixel of the target nucleus takes a
pixel of the source nucleus (bilinear). Outside the outline the warp continues at the local
scale for a few pixels, and that ring is blended into the background with a linear feather
(only on background pixels: a neighbouring nucleus is never painted over). The nuclei and the
background come from the same image, so their colours agree without Poisson blending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["NucleusShape", "nucleus_shapes", "choose_source", "paste_nucleus", "paste_all", "N_ANGLES"]

#: angular bins of the outline's radius function
N_ANGLES = 32


@dataclass
class NucleusShape:
    """One nucleus: id, class, centroid, area, eccentricity, major-axis angle and outline radii."""

    id: int
    cls: int
    cy: float
    cx: float
    area: int
    eccentricity: float
    angle: float          # of the major axis, radians, atan2(dy, dx) convention
    radii: np.ndarray     # (N_ANGLES,) outline distance from the centroid per absolute direction
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)


def _radii(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Outline radius per direction bin (largest pixel-centre distance + half a pixel; gaps interpolated)."""
    theta = np.arctan2(dy, dx)
    rho = np.hypot(dy, dx) + 0.5
    bins = ((theta + np.pi) / (2 * np.pi) * N_ANGLES).astype(np.int64) % N_ANGLES
    radii = np.zeros(N_ANGLES)
    np.maximum.at(radii, bins, rho)
    have = radii > 0
    if not have.any():
        return np.full(N_ANGLES, 0.5)
    centres = np.arange(N_ANGLES)
    radii = np.interp(centres, centres[have], radii[have], period=N_ANGLES)
    return np.maximum(radii, 0.5)


def nucleus_shapes(instances: np.ndarray, classes: dict[int, int]) -> list[NucleusShape]:
    """The shape of every nucleus of an instance map (ids in ``classes``; others unclassified)."""
    from scipy import ndimage as ndi  # here: 0.2 s to import, paid when the transfer dock opens otherwise

    out = []
    objects = ndi.find_objects(instances)
    for index, sl in enumerate(objects):
        if sl is None:
            continue
        nid = index + 1
        ys, xs = np.nonzero(instances[sl] == nid)
        if len(ys) == 0:
            continue
        ys = ys + sl[0].start
        xs = xs + sl[1].start
        cy, cx = float(ys.mean()), float(xs.mean())
        dy, dx = ys - cy, xs - cx
        if len(ys) > 2:
            cov = np.cov(np.stack([dx, dy]))
            evals, evecs = np.linalg.eigh(cov)
            major = evecs[:, 1]
            angle = float(np.arctan2(major[1], major[0]))
            ecc = float(np.sqrt(max(0.0, 1 - evals[0] / evals[1]))) if evals[1] > 1e-9 else 0.0
        else:
            angle, ecc = 0.0, 0.0
        out.append(NucleusShape(nid, int(classes.get(nid, 0)), cy, cx, int(len(ys)), ecc, angle,
                                _radii(dy, dx), (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)))
    return out


def choose_source(target: NucleusShape, pool: list[NucleusShape], rng: np.random.Generator,
                  choices: int) -> NucleusShape:
    """One of the ``choices`` pool nuclei closest in shape to ``target`` (log area ratio + eccentricity)."""
    areas = np.array([p.area for p in pool], np.float64)
    eccs = np.array([p.eccentricity for p in pool])
    cost = np.abs(np.log(areas / max(target.area, 1))) + 2.0 * np.abs(eccs - target.eccentricity)
    best = np.argsort(cost, kind="stable")[: max(1, min(int(choices), len(pool)))]
    return pool[int(best[rng.integers(len(best))])]


def _radius_at(radii: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The outline radius in direction ``theta`` (linear between bin centres, periodic)."""
    pos = (theta + np.pi) / (2 * np.pi) * N_ANGLES - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    return (1 - frac) * radii[lo % N_ANGLES] + frac * radii[(lo + 1) % N_ANGLES]


def paste_nucleus(out: np.ndarray, target_instances: np.ndarray, target: NucleusShape, source_image: np.ndarray,
                  source: NucleusShape, *, ring_px: int, mirror: bool, half_turn: bool) -> None:
    """Warp ``source`` (a nucleus of ``source_image``) onto ``target``'s outline in ``out`` (float32, in place).

    Pixels of the target nucleus take the warped source nucleus; background pixels (instance 0)
    within ``ring_px`` of the outline blend the warped surroundings in with a linear feather.
    """
    from scipy import ndimage as ndi  # here: 0.2 s to import, paid when the transfer dock opens otherwise

    h, w = target_instances.shape
    y0, x0, y1, x1 = target.bbox
    y0, x0 = max(0, y0 - ring_px), max(0, x0 - ring_px)
    y1, x1 = min(h, y1 + ring_px), min(w, x1 + ring_px)
    window = target_instances[y0:y1, x0:x1]
    inside = window == target.id
    if ring_px > 0:
        dist = ndi.distance_transform_edt(~inside)
        alpha = np.where(inside, 1.0, np.clip(1.0 - dist / (ring_px + 1), 0.0, 1.0))
        alpha[(window != 0) & ~inside] = 0.0  # another nucleus: never painted over
    else:
        alpha = inside.astype(np.float64)
    yy, xx = np.nonzero(alpha > 0)
    if len(yy) == 0:
        return
    dy = yy + y0 - target.cy
    dx = xx + x0 - target.cx
    rho = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    r_t = _radius_at(target.radii, theta)
    rel = theta - target.angle
    if mirror:
        rel = -rel
    theta_s = rel + source.angle + (np.pi if half_turn else 0.0)
    theta_s = (theta_s + np.pi) % (2 * np.pi) - np.pi
    r_s = _radius_at(source.radii, theta_s)
    # inside: the same fraction of the (half-pixel shrunk) source radius; outside: continue at the local scale
    u = rho / r_t
    r_s_in = np.maximum(r_s - 0.5, 0.25)
    rho_s = np.where(u <= 1, np.minimum(u, 1.0) * r_s_in, r_s_in + (rho - r_t) * r_s / r_t)
    sy = source.cy + rho_s * np.sin(theta_s)
    sx = source.cx + rho_s * np.cos(theta_s)
    sampled = np.stack([ndi.map_coordinates(source_image[..., c], [sy, sx], order=1, mode="nearest")
                        for c in range(3)], axis=-1)
    a = alpha[yy, xx][:, None].astype(np.float32)
    ty, tx = yy + y0, xx + x0
    out[ty, tx] = a * sampled + (1 - a) * out[ty, tx]


def paste_all(out: np.ndarray, target_instances: np.ndarray, targets: list[NucleusShape], source_image: np.ndarray,
              pools: dict[int, list[NucleusShape]], everything: list[NucleusShape], *, ring_px: int, choices: int,
              rng: np.random.Generator, tick: Callable[[], None] | None = None) -> dict[int, int]:
    """Paste a source nucleus on every target nucleus; returns target id -> source id.

    ``pools`` maps a class to the source nuclei of that class; a class without a pool (and
    unclassified targets) draws from ``everything``.
    """
    chosen: dict[int, int] = {}
    # large nuclei first, so the feather of a small neighbour lies over them, not the reverse
    for t in sorted(targets, key=lambda n: -n.area):
        pool = pools.get(t.cls) if t.cls else None
        src = choose_source(t, pool or everything, rng, choices)
        paste_nucleus(out, target_instances, t, source_image, src, ring_px=ring_px,
                      mirror=bool(rng.integers(2)), half_turn=bool(rng.integers(2)))
        chosen[t.id] = src.id
        if tick is not None:
            tick()
    return chosen
