"""A loaded latent NASDM model: denoiser + TAEF2 + latent statistics, sampled to RGB.

:class:`LatentModel` is what :func:`~napari_histogen.core.nasdm.checkpoint.load_nasdm`
returns as the ``model`` of a latent-family checkpoint, and what
:func:`~napari_histogen.core.nasdm.sampling.sample` hands over to when it is given one, so
the NASDM engine, CLI and dock use either family the same way.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..diffusion.tiled import DEFAULT_OVERLAP, DEFAULT_TILE_BATCH
from ..errors import HistogenInputError
from ..progress import ProgressCallback
from .diffusion import LATENT_SAMPLERS, sample_latents

__all__ = ["LatentModel", "decode_latents", "DEFAULT_SAMPLER", "DEFAULT_STEPS"]

DEFAULT_SAMPLER = "dpmpp"
DEFAULT_STEPS = 20
#: latent pixels per side decoded at once (plus margins) on large canvases
DECODE_TILE = 128
#: latent pixels decoded around each window and cut off (the decoder's reach)
DECODE_MARGIN = 24


class LatentModel:
    """Denoiser (eval mode), autoencoder and config of a latent NASDM model."""

    is_latent = True

    def __init__(self, net, taef2, config):
        self.net = net
        self.taef2 = taef2
        self.config = config
        lat = config.latent
        self.mean = torch.tensor(lat["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(lat["std"], dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def device(self):
        return next(self.net.parameters()).device

    def parameters(self):
        return self.net.parameters()

    def n_parameters(self) -> int:
        return self.net.n_parameters()

    @property
    def recommended(self) -> dict:
        """Sampler, steps and guidance the model was validated with."""
        tr = self.config.training or {}
        return {"sampler": tr.get("sampler", DEFAULT_SAMPLER), "steps": int(tr.get("default_steps", DEFAULT_STEPS)),
                "guidance": float(tr.get("default_guidance", 1.0))}

    def sample_latents(self, cond: torch.Tensor, *, steps: int, guidance: float, sampler: str = DEFAULT_SAMPLER,
                       generators=None, progress: ProgressCallback = None, cancel=None,
                       autocast_dtype=None, tile: int | None = None, tile_overlap: float = DEFAULT_OVERLAP,
                       tile_batch: int = DEFAULT_TILE_BATCH, tile_weight: str = "pathup") -> torch.Tensor:
        """Normalised latents for ``cond``; ``tile`` (pixels, the model's patch) tiles a larger canvas."""
        cfg = self.net.config
        d = int(cfg.downscale)
        if cond.shape[-2] % d or cond.shape[-1] % d:
            raise HistogenInputError(f"A latent model needs condition sides divisible by {d}, not "
                                     f"{tuple(cond.shape[-2:])}; pad the mask.")
        shape = (int(cfg.unet["in_channels"]), cond.shape[-2] // d, cond.shape[-1] // d)
        return sample_latents(self.net, cond, self.config.diffusion, latent_shape=shape, steps=steps,
                              guidance=guidance, sampler=sampler, generators=generators, progress=progress,
                              cancel=cancel, autocast_dtype=autocast_dtype,
                              tile=None if tile is None else int(tile) // d, tile_overlap=tile_overlap,
                              tile_batch=tile_batch, tile_weight=tile_weight)

    def to_channels_last(self) -> "LatentModel":
        """Keep the denoiser's and the decoder's convolution weights channels-last (NHWC).

        oneDNN's CPU convolutions (fp32 and, above all, bf16 on AVX-512 BF16/AMX) run without
        layout conversions then: measured 1.2x (fp32) to 1.6x (bf16) per network call on CPU
        (docs/performance.md). The outputs agree with the default layout up to float rounding.
        """
        self.net.to(memory_format=torch.channels_last)
        self.taef2.to(memory_format=torch.channels_last)
        return self

    def decode(self, z: torch.Tensor, *, autocast_dtype=None, batch: int | None = None) -> torch.Tensor:
        """Normalised latents -> RGB in [0, 1] ``(N, 3, H, W)`` float32.

        ``batch`` latents are decoded per call (default: one at a time on CPU, where a larger
        batch was measured slower per image since its full-resolution activations leave the
        caches, and all at once on a GPU); an image does not depend on the others decoded with
        it. ``autocast_dtype`` (bf16 on CPUs with native bf16, bf16/fp16 on CUDA) runs the
        decoder under autocast, as the denoiser.

        Latents larger than :data:`DECODE_TILE` per side are decoded in overlapping windows
        whose margins (:data:`DECODE_MARGIN` latent pixels, about the decoder's receptive
        field) are cut off, so memory stays bounded on large canvases.
        """
        if batch is None:
            batch = 1 if z.device.type == "cpu" else max(1, int(z.shape[0]))
        amp = (torch.autocast(device_type=z.device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else nullcontext())
        with torch.inference_mode(), amp:
            z = z.float() * self.std.to(z.device) + self.mean.to(z.device)
            dtype = next(self.taef2.parameters()).dtype
            parts = [self._decode_part(z[i: i + int(batch)].to(dtype)) for i in range(0, z.shape[0], int(batch))]
            return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _decode_part(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents (de-normalised), windowed when they are large."""
        h, w = z.shape[-2:]
        if max(h, w) <= DECODE_TILE + 2 * DECODE_MARGIN:
            return self.taef2.decode(z).float()
        d = int(self.net.config.downscale)
        out = torch.empty((z.shape[0], 3, h * d, w * d), dtype=torch.float32, device=z.device)
        for r in range(0, h, DECODE_TILE):
            for c in range(0, w, DECODE_TILE):
                r0, c0 = max(0, r - DECODE_MARGIN), max(0, c - DECODE_MARGIN)
                r1, c1 = min(h, r + DECODE_TILE + DECODE_MARGIN), min(w, c + DECODE_TILE + DECODE_MARGIN)
                rgb = self.taef2.decode(z[:, :, r0:r1, c0:c1]).float()
                rh, cw = min(DECODE_TILE, h - r), min(DECODE_TILE, w - c)
                out[:, :, r * d:(r + rh) * d, c * d:(c + cw) * d] = \
                    rgb[:, :, (r - r0) * d:(r - r0 + rh) * d, (c - c0) * d:(c - c0 + cw) * d]
        return out

    def sample(self, cond: torch.Tensor, *, steps=None, guidance=None, sampler=None, generators=None,
               progress: ProgressCallback = None, cancel=None, autocast_dtype=None, tile: int | None = None,
               tile_overlap: float = DEFAULT_OVERLAP, tile_batch: int = DEFAULT_TILE_BATCH,
               tile_weight: str = "pathup") -> torch.Tensor:
        """RGB samples in [-1, 1] ``(N, 3, H, W)``, as pixel NASDM's :func:`sample` returns."""
        rec = self.recommended
        sampler = rec["sampler"] if sampler in (None, "", "auto") or sampler not in LATENT_SAMPLERS else sampler
        z = self.sample_latents(cond, steps=int(steps or rec["steps"]),
                                guidance=rec["guidance"] if guidance is None else float(guidance), sampler=sampler,
                                generators=generators, progress=progress, cancel=cancel,
                                autocast_dtype=autocast_dtype, tile=tile, tile_overlap=tile_overlap,
                                tile_batch=tile_batch, tile_weight=tile_weight)
        return self.decode(z, autocast_dtype=autocast_dtype) * 2 - 1


def decode_latents(model: LatentModel, z: torch.Tensor) -> list[np.ndarray]:
    """Normalised latents -> list of ``(H, W, 3)`` uint8 RGB images."""
    rgb = model.decode(z).clamp(0, 1)
    return [np.round(img.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8) for img in rgb]
