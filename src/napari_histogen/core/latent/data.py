"""Training data of latent NASDM: TAEF2 latents of the training windows, encoded once.

Encoding costs far more than a training step of the small latent UNet (about 0.6 s per
256 px window on 2 CPU cores), so every window is encoded once per dihedral transform and
kept in the run folder. The 8 flips/quarter turns are applied to the *image* before
encoding: TAEF2 is not equivariant to them (decoding a flipped latent gives about 20 dB
PSNR against the flipped image, against 32 dB for the round trip), so latents cannot be
flipped after the fact.

Cache layout (``RUN_DIR/latents/``)::

    latents_k{k}.safetensors   fp16 (N, 32, h, w) latents of transform k of every window,
                               with the windows' names and the settings' key in its metadata

A file whose key does not match the current windows and autoencoder is ignored and
rewritten, so a cache never feeds latents of other data to a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from ..nasdm.data import PatchRef, PatchSet, dihedral
from ..progress import check_cancel

__all__ = ["window_names", "cache_key", "encode_transform", "load_cached", "encode_all"]

log = logging.getLogger(__name__)


def window_names(refs) -> list[str]:
    """Stable names of windows (source id and position)."""
    return [f"{r.source_id}@{r.row},{r.col}+{r.size}" for r in refs]


def cache_key(refs, taef2_sha: dict, k: int) -> str:
    """Hash of the windows, the autoencoder and the transform: what a cached file must match."""
    text = json.dumps({"windows": window_names(refs), "taef2": taef2_sha, "k": int(k)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def encode_transform(patch_set: PatchSet, refs, taef2, k: int, *, batch_size: int = 8, device="cpu",
                     cancel=None, progress=None):
    """fp16 latents ``(N, 32, P/8, P/8)`` of every window after dihedral transform ``k``."""
    import torch

    out = []
    refs = list(refs)
    for start in range(0, len(refs), batch_size):
        check_cancel(cancel)
        batch = []
        for ref in refs[start:start + batch_size]:
            image, _, _ = patch_set.crop(ref)
            image = np.array(dihedral(image, k), dtype=np.uint8, copy=True)
            batch.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
        with torch.inference_mode():
            out.append(taef2.encode(torch.stack(batch).to(device)).to("cpu", torch.float16))
        if progress is not None:
            progress(min(start + batch_size, len(refs)), len(refs))
    return torch.cat(out)


def load_cached(folder, refs, taef2_sha: dict, k: int):
    """The cached latents of transform ``k`` if the file matches these windows, else None."""
    from safetensors import safe_open

    path = Path(folder) / f"latents_k{k}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("key") != cache_key(refs, taef2_sha, k):
                log.info("%s belongs to other windows or another autoencoder; it will be rewritten.", path.name)
                return None
            return fh.get_tensor("latents")
    except Exception as err:  # a damaged cache is rebuilt, never trusted
        log.warning("Ignoring the unreadable latent cache %s (%s).", path, err)
        return None


def encode_all(patch_set: PatchSet, refs: list[PatchRef], taef2, taef2_sha: dict, folder, *,
               transforms=range(8), batch_size: int = 8, device="cpu", cancel=None, log_fn=None) -> dict:
    """``{k: latents}`` for every transform, encoding and caching what is missing.

    Each transform is written atomically as soon as it is done, so an interrupted run keeps
    the finished ones.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    latents = {}
    for k in transforms:
        cached = load_cached(folder, refs, taef2_sha, k)
        if cached is not None:
            latents[k] = cached
            continue
        if log_fn:
            log_fn(f"Encoding {len(refs)} windows with TAEF2 (transform {k} of 8) ...")
        lat = encode_transform(patch_set, refs, taef2, k, batch_size=batch_size, device=device, cancel=cancel)
        tmp = folder / f"latents_k{k}.safetensors.tmp"
        save_file({"latents": lat.contiguous()}, str(tmp),
                  metadata={"key": cache_key(refs, taef2_sha, k), "windows": json.dumps(window_names(refs))})
        tmp.replace(folder / f"latents_k{k}.safetensors")
        latents[k] = lat
    return latents
