"""Patch-wise timestep tracking (PathUp, section 3.3 and Algorithm 1): canvases larger than a model's tile.

A diffusion model trained on ``T x T`` tiles samples a larger canvas as follows: the canvas
(pixels, or latents for a latent model) is covered with overlapping ``T x T`` tiles; at every
timestep ``t`` each tile is denoised by the network with its own crop of the condition and
classifier-free guidance, the tiles' outputs are recombined with a weight map by distance to
the tile centre (the sum of weighted outputs divided by the sum of weights), and the whole
canvas then takes one step ``t -> t-1``. Every part of the canvas is therefore always at the
same timestep.

Sampler state (a design choice, recorded here): PathUp gives each tile its own scheduler.
Here the network outputs are recombined on the canvas and **one** scheduler step is applied
to the whole canvas. For the deterministic solvers (DDIM, multistep DPM-Solver++) the step is
a per-position linear function of the current sample and of the model outputs of this and the
previous steps, with coefficients that depend only on the timestep; per-tile scheduler states
would hold exactly the crops of the canvas state, so recombining ``x_{t-1}`` per tile or
recombining the outputs and stepping once give the same canvas (up to the ``clip_sample`` of
the pixel sampler, which clips the predicted ``x_0`` per position either way). For the
ancestral DDPM step one canvas-wide noise draw keeps overlaps consistent, where per-tile draws
averaged in the overlaps would shrink the noise there. The noise is drawn for the whole
canvas, once per step, from the per-sample generators, never per tile batch, so a result does
not depend on the tile batch size.

Weight maps (:func:`weight_map`): ``"pathup"`` is eq. 6 of the PathUp paper, read as the
Chebyshev distance to the centre, ``w = 1 - max(|p - p'|, |q - q'|) / L``, 0.5 on the tile
border and 1 at the centre (the printed ``min(...) / L`` would be 0 along the centre lines
and at most 0.5, contradicting the paper's own "range [0.5, 1]" and its Figure 2b).
``"cosine"`` is a feathered raised-cosine window (Mixture-of-Diffusers / DiffInfinite style;
near 0 at the border), ``"uniform"`` the plain average of overlaps (MultiDiffusion).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import HistogenInputError

__all__ = ["WEIGHTS", "DEFAULT_OVERLAP", "DEFAULT_TILE_BATCH", "TileGrid", "tile_starts", "weight_map",
           "tiled_output", "canvas_output", "n_canvas_tiles"]

WEIGHTS = ("pathup", "cosine", "uniform")
#: overlap between neighbouring tiles, as a fraction of the tile (PathUp: 32 of 64)
DEFAULT_OVERLAP = 0.5
#: tiles per network call (per sample): bounds memory, not the result
DEFAULT_TILE_BATCH = 4


def tile_starts(length: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> list[int]:
    """Start positions of ``tile``-long windows covering ``0..length`` with ``overlap`` (fraction).

    The stride is ``round(tile * (1 - overlap))`` (at least 1); the last window is moved back
    to end exactly at ``length``, so every position is covered and no window leaves the canvas.
    """
    if tile < 1 or length < tile:
        raise HistogenInputError(f"A canvas side of {length} cannot hold tiles of {tile}; pad it to at least {tile}.")
    if not 0 <= overlap < 1:
        raise HistogenInputError(f"Tile overlap must be at least 0 and below 1 (a fraction of the tile), not {overlap}.")
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """Overlapping ``tile x tile`` windows over a ``height x width`` canvas (in model units)."""

    height: int
    width: int
    tile: int
    overlap: float = DEFAULT_OVERLAP

    @property
    def positions(self) -> list[tuple[int, int]]:
        """``(row, col)`` of every tile's top-left corner, row by row."""
        rows = tile_starts(self.height, self.tile, self.overlap)
        cols = tile_starts(self.width, self.tile, self.overlap)
        return [(r, c) for r in rows for c in cols]

    @property
    def n_tiles(self) -> int:
        return len(tile_starts(self.height, self.tile, self.overlap)) * len(tile_starts(self.width, self.tile,
                                                                                         self.overlap))

    @property
    def single(self) -> bool:
        """True when the canvas is exactly one tile (sampling then runs the plain, untiled path)."""
        return self.height == self.tile and self.width == self.tile


def weight_map(tile: int, kind: str = "pathup") -> np.ndarray:
    """The ``(tile, tile)`` float32 weight of every position of a tile (see the module docstring).

    ``"pathup"`` (eq. 6): ``1 - max(|p - c|, |q - c|) / (tile - 1)`` with ``c = (tile - 1) / 2``:
    exactly 0.5 on the outermost positions, 1 at the centre (``1 - 0.5 / (tile - 1)`` on the
    four central positions of an even tile).
    """
    if kind not in WEIGHTS:
        raise HistogenInputError(f"Unknown tile weight '{kind}'; choose one of {', '.join(WEIGHTS)}.")
    if tile == 1 or kind == "uniform":
        return np.ones((tile, tile), np.float32)
    pos = np.arange(tile, dtype=np.float64)
    if kind == "pathup":
        dist = np.abs(pos - (tile - 1) / 2)
        cheb = np.maximum(dist[:, None], dist[None, :])
        return (1 - cheb / (tile - 1)).astype(np.float32)
    ramp = 0.5 - 0.5 * np.cos(2 * np.pi * (pos + 0.5) / tile)  # raised cosine, > 0 everywhere
    return (ramp[:, None] * ramp[None, :]).astype(np.float32)


def tiled_output(denoise: Callable, x, cond, grid: TileGrid, *, scale: int = 1, weight: str = "pathup",
                 tile_batch: int = DEFAULT_TILE_BATCH, cancel=None, on_tiles: Callable[[int], None] | None = None):
    """One timestep's network output for a whole canvas, tile by tile, recombined with a weight map.

    Parameters
    ----------
    denoise : callable(x_tiles, cond_tiles) -> tensor
        The guided network output for a batch of tiles ``(B, C, T, T)`` with their condition
        crops ``(B, K, T * scale, T * scale)``; returns ``(B, C', T, T)``.
    x : tensor (N, C, H, W)
        The canvas at the current timestep.
    cond : tensor (N, K, H * scale, W * scale)
        The full-canvas condition (``scale``: condition pixels per canvas unit, e.g. a
        latent model's downscale).
    grid : TileGrid
        Over ``(H, W)``.
    tile_batch : int
        Tiles per network call (each with all ``N`` samples): bounds memory; the result does
        not depend on it (every tile's output is computed alone and accumulated in tile order).
    cancel : CancelToken or callable, optional
        Checked before every tile batch.
    on_tiles : callable(tiles_done), optional
        Called after every tile batch with the number of tiles done in this timestep.

    Returns
    -------
    tensor (N, C', H, W) float32: ``sum_k w_k out_k / sum_k w_k`` at every position.
    """
    import torch

    from ..progress import check_cancel

    if tile_batch < 1:
        raise HistogenInputError(f"Tile batch must be at least 1, not {tile_batch}.")
    n, tile = x.shape[0], grid.tile
    positions = grid.positions
    w = torch.from_numpy(weight_map(tile, weight)).to(x.device)
    acc = None
    wsum = torch.zeros((grid.height, grid.width), dtype=torch.float32, device=x.device)
    s = int(scale)
    for first in range(0, len(positions), int(tile_batch)):
        check_cancel(cancel)
        chunk = positions[first:first + int(tile_batch)]
        x_tiles = torch.cat([x[:, :, r:r + tile, c:c + tile] for r, c in chunk])
        c_tiles = torch.cat([cond[:, :, r * s:(r + tile) * s, c * s:(c + tile) * s] for r, c in chunk])
        out = denoise(x_tiles, c_tiles).float()
        if acc is None:
            acc = torch.zeros((n, out.shape[1], grid.height, grid.width), dtype=torch.float32, device=x.device)
        for k, (r, c) in enumerate(chunk):
            acc[:, :, r:r + tile, c:c + tile] += out[k * n:(k + 1) * n] * w
            wsum[r:r + tile, c:c + tile] += w
        if on_tiles is not None:
            on_tiles(first + len(chunk))
    assert acc is not None  # a grid has at least one tile
    return acc / wsum


def canvas_output(denoise: Callable, x, cond, *, tile: int | None, overlap: float = DEFAULT_OVERLAP, scale: int = 1,
                  weight: str = "pathup", tile_batch: int = DEFAULT_TILE_BATCH, cancel=None,
                  on_tiles: Callable[[int], None] | None = None):
    """The network output for canvas ``x``: one call when it is one tile (or ``tile`` is None), else tiled.

    The single-tile path is the plain ``denoise(x, cond)``, bit for bit what the samplers did
    before tiling existed.
    """
    if tile is None:
        out = denoise(x, cond)
    else:
        grid = TileGrid(int(x.shape[-2]), int(x.shape[-1]), int(tile), overlap)
        if not grid.single:
            return tiled_output(denoise, x, cond, grid, scale=scale, weight=weight, tile_batch=tile_batch,
                                cancel=cancel, on_tiles=on_tiles)
        out = denoise(x, cond)
    if on_tiles is not None:
        on_tiles(1)
    return out


def n_canvas_tiles(height: int, width: int, tile: int | None, overlap: float = DEFAULT_OVERLAP) -> int:
    """Tiles per timestep for a ``height x width`` canvas (1 when untiled)."""
    if tile is None:
        return 1
    return TileGrid(int(height), int(width), int(tile), overlap).n_tiles
