"""Generate annotated data from nucleus types: mask model -> image model -> files (NASDM++).

:func:`generate_pairs` draws nuclei masks for a list of nucleus types with the mask-generation
engine (:mod:`napari_histogen.core.engines.maskgen`), synthesizes one H&E image per mask with
the NASDM engine, and writes every pair in the product's formats plus a training-dataset
layout. Both models (with their sha256) are in every pair's provenance.

Output folder::

    OUT/pairs/<name>.png, .npz, .ome.tif, _side_by_side.png, .json
                               the synthesis pair files (core.io.synthesis.write_synthesis_pair)
    OUT/dataset/images/<name>.png          the image
    OUT/dataset/labels/<name>.npz          instance map, type map, classes, scheme, mpp
                                           (`histogen train nasdm --data OUT/dataset` reads it)
    OUT/dataset/labels/<name>_inst.npy/.tif  instance map (int32; 0 = background)
    OUT/dataset/labels/<name>_type.npy/.png  type map (uint8 class id per pixel; 0 = background)
    OUT/dataset/classes.json               the scheme's class ids and names
    OUT/generate.json                      the run: types, counts, both models, settings

With ``masks_only`` no image model runs: ``OUT/masks/<name>.npz`` (readable by
``histogen synthesize nasdm --mask OUT/masks``), ``<name>_mask.png`` (the mask drawn) and
``<name>.json`` (provenance).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .engines.base import BatchReport
from .errors import HistogenInputError
from .masks import NucleiMask
from .progress import ProgressCallback, check_cancel
from .provenance import json_default, make_provenance

__all__ = ["generate_pairs", "generate_masks", "write_mask_files", "write_dataset_item"]

log = logging.getLogger(__name__)


def _mask_arrays(nuclei: NucleiMask) -> dict:
    table = np.array(sorted(nuclei.classes.items()), dtype=np.int64).reshape(-1, 2)
    arrays = dict(inst_map=nuclei.instances, type_map=nuclei.type_map(), classes=table,
                  scheme=np.array(nuclei.scheme.name))
    if nuclei.mpp is not None:
        arrays["mpp"] = np.array(nuclei.mpp)
    return arrays


def write_mask_files(out_dir, name: str, nuclei: NucleiMask, provenance: dict) -> dict[str, Path]:
    """``<name>.npz`` (the product's mask file), ``<name>_mask.png`` (drawn) and ``<name>.json``; all or nothing."""
    from skimage.io import imsave

    from .io.bundle import safe_name, write_file_set
    from .render import render_overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(name)
    files = {"mask": out / f"{stem}.npz", "image": out / f"{stem}_mask.png", "provenance": out / f"{stem}.json"}

    def write(tmp):
        with open(tmp["mask"], "wb") as fh:
            np.savez_compressed(fh, **_mask_arrays(nuclei))  # type: ignore[arg-type]
        white = np.full(nuclei.shape + (3,), 255, np.uint8)
        imsave(tmp["image"], render_overlay(white, nuclei=nuclei, alpha=1.0), check_contrast=False)
        tmp["provenance"].write_text(json.dumps(provenance, indent=2, default=json_default))

    return write_file_set(files, write)


def write_dataset_item(dataset_dir, name: str, image: np.ndarray, nuclei: NucleiMask) -> dict[str, Path]:
    """One training item: ``images/<name>.png`` and its ``labels/`` files (see the module docstring)."""
    import tifffile
    from skimage.io import imsave

    from .io.bundle import safe_name, write_file_set

    root = Path(dataset_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    stem = safe_name(name)
    labels = root / "labels"
    files = {"image": root / "images" / f"{stem}.png", "mask": labels / f"{stem}.npz",
             "inst_npy": labels / f"{stem}_inst.npy", "inst_tif": labels / f"{stem}_inst.tif",
             "type_npy": labels / f"{stem}_type.npy", "type_png": labels / f"{stem}_type.png"}
    inst = nuclei.instances.astype(np.int32)
    types = nuclei.type_map().astype(np.uint8)

    def write(tmp):
        imsave(tmp["image"], image, check_contrast=False)
        with open(tmp["mask"], "wb") as fh:
            np.savez_compressed(fh, **_mask_arrays(nuclei))  # type: ignore[arg-type]
        with open(tmp["inst_npy"], "wb") as fh:
            np.save(fh, inst)
        tifffile.imwrite(tmp["inst_tif"], inst)
        with open(tmp["type_npy"], "wb") as fh:
            np.save(fh, types)
        imsave(tmp["type_png"], types, check_contrast=False)

    return write_file_set(files, write)


def _check_out(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HistogenInputError(f"{out} exists and is not a folder; give a folder for the output.")
    return out


def generate_masks(types, n: int, *, mask_model=None, seed: int = 0, steps=None, guidance=None, mpp=None,
                   device: str = "auto", engine=None, progress: ProgressCallback = None, cancel=None):
    """``n`` generated masks (:class:`SynthesisResult` of the mask engine) for the nucleus ``types``.

    ``engine``: an already loaded :class:`~napari_histogen.core.engines.maskgen.MaskGenEngine`
    (the dock keeps one); else ``mask_model`` is loaded.
    """
    from .engines.maskgen import MaskGenEngine, MaskGenRequest

    request = MaskGenRequest(types=list(types or []), n_samples=int(n), seed=int(seed), steps=steps,
                             guidance=guidance, mpp=mpp)
    request.check()
    engine = engine or MaskGenEngine(mask_model, device=device)
    return engine.run(request, progress=progress, cancel=cancel)


def generate_pairs(types, n: int, out_dir, *, mask_model=None, image_model=None, seed: int = 0, steps=None,
                   guidance=None, image_steps=None, image_guidance=None, masks_only: bool = False,
                   mpp: float | None = None, device: str = "auto", progress: ProgressCallback = None, cancel=None,
                   log_fn=None) -> BatchReport:
    """Generate ``n`` masks for ``types`` and (unless ``masks_only``) an image for each; write them.

    Parameters
    ----------
    types : list of str or int
        Nucleus types to include (names or ids of the mask model's scheme); empty = any.
    n : int
        Pairs to make; pair ``k`` uses seed ``seed + k`` for its mask and its image.
    out_dir : path
        Output folder (see the module docstring for the layout).
    mask_model, image_model : str or path, optional
        The models (None: the embedded defaults).
    steps, guidance : optional
        Mask sampling (None: the mask model's recommendation).
    image_steps, image_guidance : optional
        Image sampling (None: the image model's recommendation).
    masks_only : bool
        Write the masks only (no image model).
    mpp : float, optional
        Scale of the masks; None: the image model's (with ``masks_only``, the scale recorded in
        the image model's config, so the masks fit it later; else the mask model's own).

    Returns
    -------
    BatchReport
        ``written``: (name, role -> path) per pair.

    Raises
    ------
    HistogenInputError
        Bad types or settings, a model that cannot be loaded, or masks whose scheme the image
        model does not know (checked before anything is written).
    Cancelled
        Pairs written before the cancel stay; none is half written.
    """
    from .engines.maskgen import MaskGenEngine, MaskGenRequest, parse_types
    from .io.synthesis import write_synthesis_pair

    say = log_fn or log.info
    out = _check_out(out_dir)
    request = MaskGenRequest(types=list(types or []), n_samples=int(n), seed=int(seed), steps=steps,
                             guidance=guidance)
    request.check()
    mask_engine = MaskGenEngine(mask_model, device=device)
    problems = mask_engine.check(request)
    if problems:
        raise HistogenInputError(" ".join(problems))
    image_engine = None
    if not masks_only:
        from .engines.nasdm import NasdmEngine

        image_engine = NasdmEngine(image_model, device=device)
        if image_engine.scheme.name != mask_engine.scheme.name:
            raise HistogenInputError(
                f"The mask model makes '{mask_engine.scheme.name}' masks but the image model was trained on "
                f"'{image_engine.scheme.name}'; choose models of one class scheme.")
        request.mpp = float(image_engine.config.mpp)  # masks at the image model's scale
    elif mpp is None:
        from .engines.nasdm import read_model_config

        try:
            config = read_model_config(image_model)
            request.mpp = float(config.mpp) if config is not None else None
        except HistogenInputError:
            request.mpp = None  # no image model to fit: the mask model's own scale
    if mpp is not None:
        request.mpp = float(mpp)
        request.check()
    mask_info = mask_engine.describe()
    image_info = image_engine.describe() if image_engine is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    run = {"types": [mask_engine.scheme.name_of(c) for c in parse_types(request.types, mask_engine.scheme)],
           "n": int(n), "seed": int(seed), "mask_model": mask_info, "image_model": image_info or None,
           "masks_only": bool(masks_only), "steps": steps, "guidance": guidance, "image_steps": image_steps,
           "image_guidance": image_guidance}
    (out / "generate.json").write_text(json.dumps(make_provenance("generate pairs", **run), indent=2,
                                                  default=json_default))
    if image_engine is not None:
        scheme = image_engine.scheme
        (out / "dataset").mkdir(exist_ok=True)
        (out / "dataset" / "classes.json").write_text(json.dumps(
            {"scheme": scheme.name, "classes": {str(c.id): c.name for c in scheme.classes}, "background": 0},
            indent=2))
    report = BatchReport()
    per_pair = 2 if image_engine is not None else 1
    for k in range(int(n)):
        check_cancel(cancel)
        name = f"generated_s{int(seed) + k:06d}"
        one = MaskGenRequest(types=request.types, n_samples=1, seed=int(seed) + k, steps=steps, guidance=guidance,
                             mpp=request.mpp)
        mask_result = mask_engine.run(one, cancel=cancel)[0]
        if progress is not None:
            progress(k * per_pair + 1, int(n) * per_pair)
        if mask_result.nuclei.n_nuclei == 0 and image_engine is not None:
            report.skipped.append((name, "the generated mask holds no nucleus (NASDM needs at least one)"))
            continue
        if image_engine is None:
            report.written.append((name, write_mask_files(out / "masks", name, mask_result.nuclei,
                                                          mask_result.provenance)))
            continue
        from .engines.nasdm import NasdmRequest

        image_result = image_engine.run(
            NasdmRequest(nuclei=mask_result.nuclei, n_samples=1, seed=int(seed) + k, steps=image_steps,
                         guidance=image_guidance), cancel=cancel)[0]
        if progress is not None:
            progress(k * per_pair + 2, int(n) * per_pair)
        prov = make_provenance("generated pair (mask model -> image model)", mask=mask_result.provenance,
                               image=image_result.provenance, mask_model=mask_info["model"],
                               mask_model_sha256=mask_info["sha256"], image_model=image_info["model"],
                               image_model_sha256=image_info["sha256"], seed=int(seed) + k)
        files = dict(write_synthesis_pair(out / "pairs", name, image_result.image, image_result.nuclei, prov))
        files.update({f"dataset_{role}": path for role, path in
                      write_dataset_item(out / "dataset", name, image_result.image, image_result.nuclei).items()})
        report.written.append((name, files))
        say(f"{name}: {mask_result.nuclei.n_nuclei} nuclei")
    return report

