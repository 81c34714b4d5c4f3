"""The main job's synthesis: the embedded NASDM model conditioned on the bundled sample masks.

Two masks, both redistributable, brought to the model's scale and patch size: the NuCLS
patch (CC0, 40x; its classes mapped to the CoNSeP scheme, with its real image beside the
result) and a crop of the IHC sample's nuclei (derived heuristically, CoNSeP scheme, 0.5
µm/px).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .masks import NucleiMask, relabel_sequential, remap_classes
from .progress import ProgressCallback, sub_progress

logger = logging.getLogger(__name__)

__all__ = ["NUCLS_TO_CONSEP", "demo_masks", "synthesize_demo"]

#: NuCLS classes -> CoNSeP classes (tumour -> epithelial, stromal -> spindle, TILs ->
#: inflammatory, other -> other); unclassified NuCLS nuclei become "other".
NUCLS_TO_CONSEP = {1: 3, 2: 4, 3: 2, 4: 1}


def demo_masks(image_size: int = 128, mpp: float = 0.5) -> list[tuple[str, NucleiMask, np.ndarray | None]]:
    """``(name, nuclei mask, real image or None)`` at the model's scale and patch size."""
    from skimage.transform import resize

    from .masks import resample_nuclei
    from .sample import ihc_sample, nucls_sample

    out = []
    nucls = nucls_sample()
    mask = remap_classes(nucls.nuclei, "consep", NUCLS_TO_CONSEP, default=1)
    factor = nucls.mpp / mpp
    mask = resample_nuclei(mask, mpp) if abs(factor - 1) > 0.1 else mask
    real = resize(nucls.image, mask.shape + (3,), order=1, anti_aliasing=True, preserve_range=True)
    real = np.clip(np.rint(real), 0, 255).astype(np.uint8)
    out.append((nucls.name, _crop(mask, image_size), _crop_image(real, image_size)))
    ihc = ihc_sample()
    nuclei = ihc.nuclei
    if nuclei.mpp is not None and abs(nuclei.mpp / mpp - 1) > 0.1:
        nuclei = resample_nuclei(nuclei, mpp)
    r0, c0 = 192, 192  # a crop with glands and stroma
    inst, classes = relabel_sequential(nuclei.instances[r0: r0 + image_size, c0: c0 + image_size], nuclei.classes)
    out.append(("ihc_nuclei_r192_c192", NucleiMask.create(inst, classes, nuclei.scheme, mpp=mpp), None))
    return out


def _crop(mask: NucleiMask, size: int) -> NucleiMask:
    if mask.shape[0] <= size and mask.shape[1] <= size:
        return mask
    inst, classes = relabel_sequential(mask.instances[:size, :size], mask.classes)
    return NucleiMask.create(inst, classes, mask.scheme, mpp=mask.mpp)


def _crop_image(image: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(image[:size, :size])


def synthesize_demo(out_dir, *, model=None, steps: int | None = None, seed: int = 0, device: str = "auto",
                    progress: ProgressCallback = None, log=None) -> list[dict]:
    """Synthesize one patch per demo mask with ``model`` (default: the embedded one) into ``out_dir``.

    Returns the written files per patch.
    """
    from .engines.nasdm import NasdmEngine, NasdmRequest
    from .io.synthesis import write_synthesis_pair

    log = log or logger.info
    engine = NasdmEngine(model, device=device)
    info = engine.describe()
    log(f"NASDM model '{info['model']}' ({info['weights']}, sha256 {info['sha256'][:12]}... "
        f"{'checked' if info['sha256_checked'] else 'not checked'}), device {engine.device}")
    written = []
    masks = demo_masks(engine.config.image_size, engine.config.mpp)
    request = NasdmRequest(steps=steps, seed=seed)
    if request.steps is None:  # the model's recommendation (progress needs the count up front)
        request.steps = int(engine.recommended()["steps"])
    for k, (name, mask, real) in enumerate(masks):
        request.nuclei = mask
        result = engine.run(request, progress=sub_progress(progress, k * request.steps,
                                                           len(masks) * request.steps))[0]
        files = write_synthesis_pair(Path(out_dir), f"{name}_nasdm_s{seed}", result.image, result.nuclei,
                                     result.provenance, real=real)
        written.append(files)
        log(f"{name}: {mask.n_nuclei} nuclei -> {files['side_by_side']}")
    return written
