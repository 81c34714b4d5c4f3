"""Batch synthesis with NASDM: masks from files or folders in, image + mask pairs out.

The headless twin of the NASDM dock (``histogen synthesize nasdm``): every mask is read
with :func:`~napari_histogen.core.io.dispatch.read_annotated`, checked against the model,
optionally cut into model-size tiles, synthesized ``n`` times and written with
:func:`~napari_histogen.core.io.synthesis.write_synthesis_pair`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HistogenInputError
from ..masks import NucleiMask, relabel_sequential
from ..progress import ProgressCallback

__all__ = ["MASK_SUFFIXES", "collect_masks", "tile_nuclei", "synthesize_masks", "BatchReport"]

MASK_SUFFIXES = (".npz", ".mat", ".geojson", ".ome.tif", ".ome.tiff")


@dataclass
class BatchReport:
    written: list = field(default_factory=list)   # (name, files dict)
    skipped: list = field(default_factory=list)   # (input, reason)


def collect_masks(path) -> list[Path]:
    """The mask files to synthesize from: one file, or every mask file in a folder (sorted)."""
    from ..io.dispatch import split_index

    base, _ = split_index(path)
    if base.is_dir():
        files = sorted(p for p in base.iterdir() if p.is_file() and p.name.lower().endswith(MASK_SUFFIXES))
        if not files:
            raise HistogenInputError(f"{base} holds no mask files ({', '.join(MASK_SUFFIXES)}).")
        return files
    if not base.exists():
        raise HistogenInputError(f"No mask file or folder at {base}.")
    return [Path(str(path))]


def tile_nuclei(nuclei: NucleiMask, size: int) -> list[tuple[str, NucleiMask]]:
    """Cut a large mask into ``size`` x ``size`` tiles (the last row/column shifted back inside).

    Tiles are independent patches (no blending); nuclei cut by a tile border keep the part
    inside. Tiles without nuclei are left out.
    """
    h, w = nuclei.shape
    if h <= size and w <= size:
        return [("", nuclei)]
    rows = sorted({min(r, max(h - size, 0)) for r in range(0, h, size)})
    cols = sorted({min(c, max(w - size, 0)) for c in range(0, w, size)})
    tiles = []
    for r in rows:
        for c in cols:
            inst = nuclei.instances[r: r + size, c: c + size]
            if not inst.any():
                continue
            inst, classes = relabel_sequential(inst, nuclei.classes)
            tiles.append((f"_r{r}_c{c}", NucleiMask.create(inst, classes, nuclei.scheme, mpp=nuclei.mpp)))
    return tiles


def synthesize_masks(mask_paths, out_dir, engine, *, n_samples: int = 1, steps: int | None = None, guidance: float = 1.5,
                     sampler: str = "ddpm", seed: int = 0, batch_size: int = 8, tile: bool = False,
                     scheme=None, progress: ProgressCallback = None, cancel=None, log=print) -> BatchReport:
    """Synthesize ``n_samples`` images per mask and write the pairs to ``out_dir``.

    A mask that cannot be used (wrong scheme, empty, too large without ``tile``) is skipped
    with its reason; the others go on. Output names are ``<mask>_s<seed>`` (plus the tile).

    Returns
    -------
    BatchReport
    """
    from ..io.dispatch import read_annotated
    from ..io.synthesis import write_synthesis_pair
    from ..engines.nasdm import NasdmRequest, prepare_mask

    report = BatchReport()
    jobs = []
    for path in mask_paths:
        try:
            item = read_annotated(path, scheme=scheme)
            if item.nuclei is None:
                raise HistogenInputError("it has no nuclei mask")
            nuclei = item.nuclei
            if nuclei.mpp is None and item.mpp is not None:
                nuclei = NucleiMask.create(nuclei.instances, nuclei.classes, nuclei.scheme, mpp=item.mpp)
            if tile:
                pieces = tile_nuclei(_at_model_scale(nuclei, engine), engine.config.image_size)
            else:
                pieces = [("", nuclei)]
            for suffix, piece in pieces:
                prepare_mask(piece, engine.config)  # fail early, before any sampling
                jobs.append((item.name + suffix, piece, item, path))
        except HistogenInputError as err:
            report.skipped.append((str(path), str(err)))
            log(f"skipped {path}: {err}")
    from ..engines.nasdm import default_steps

    steps = steps if steps is not None else default_steps(engine.device)
    per_job = -(-n_samples // batch_size) * steps  # the engine reports batches x steps
    total = len(jobs) * per_job
    done = 0
    for name, nuclei, item, path in jobs:
        request = NasdmRequest(nuclei=nuclei, n_samples=n_samples, steps=steps, guidance=guidance, sampler=sampler,
                               seed=seed, batch_size=batch_size)

        def sub_progress(i, _t, _base=done):
            if progress is not None:
                progress(_base + i, total)

        results = engine.run(request, progress=sub_progress, cancel=cancel)
        done += per_job
        real = item.image if (item.image is not None and item.image.shape[:2] == results[0].nuclei.shape) else None
        for res in results:
            stem = f"{name}_s{res.provenance['parameters']['seed']}"
            res.provenance["parameters"]["mask_source"] = Path(str(path)).name
            files = write_synthesis_pair(out_dir, stem, res.image, res.nuclei, res.provenance, real=real)
            report.written.append((stem, files))
            log(f"{stem}: {files['image']}")
    return report


def _at_model_scale(nuclei: NucleiMask, engine) -> NucleiMask:
    from ..engines.nasdm import resample_nuclei

    if nuclei.n_nuclei == 0:
        raise HistogenInputError("the nuclei mask is empty")
    if nuclei.mpp is None or abs(nuclei.mpp / engine.config.mpp - 1) <= 0.1:
        return nuclei
    return resample_nuclei(nuclei, engine.config.mpp)
