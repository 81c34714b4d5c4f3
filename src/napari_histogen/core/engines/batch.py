"""Batch (folder) runs of the engines: inputs from files or folders in, image + mask files out.

The headless twins of the docks (``histogen synthesize nasdm|transfer``):

- :func:`synthesize_masks` — NASDM: every nuclei mask (read with
  :func:`~napari_histogen.core.io.dispatch.read_annotated`) checked against the model,
  optionally cut into model-size tiles, synthesized ``n`` times, written with
  :func:`~napari_histogen.core.io.synthesis.write_synthesis_pair`;
- :func:`transfer_folder` — appearance transfer, the paper's augmentation: each annotated
  patch of a dataset is the appearance source of ``n`` new images whose target masks are the
  masks of *other* patches (or of a separate folder), each randomly flipped/rotated.

An input that cannot be used is skipped with its reason (:class:`~.base.BatchReport`); the
others go on. Progress covers the whole run (:func:`~napari_histogen.core.progress.sub_progress`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import HistogenInputError
from ..masks import NucleiMask, relabel_sequential, resample_nuclei
from ..progress import ProgressCallback, check_cancel, sub_progress
from .base import BatchReport, CancelFlag

__all__ = ["BatchReport", "collect_masks", "tile_nuclei", "synthesize_masks", "merge_shards", "choose_targets",
           "transfer_folder"]

logger = logging.getLogger(__name__)

Log = Callable[[str], None]


# -- NASDM -----------------------------------------------------------------------------------------
def collect_masks(path) -> list[Path]:
    """The mask files to synthesize from: one file, or every nuclei-mask file in a folder (sorted)."""
    from ..io.paths import NUCLEI_MASK_SUFFIXES, split_index

    base, _ = split_index(path)
    if base.is_dir():
        files = sorted(p for p in base.iterdir() if p.is_file() and p.name.lower().endswith(NUCLEI_MASK_SUFFIXES))
        if not files:
            raise HistogenInputError(f"{base} holds no mask files ({', '.join(NUCLEI_MASK_SUFFIXES)}).")
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


def _at_model_scale(nuclei: NucleiMask, engine) -> NucleiMask:
    if nuclei.n_nuclei == 0:
        raise HistogenInputError("the nuclei mask is empty")
    if nuclei.mpp is None or abs(nuclei.mpp / engine.config.mpp - 1) <= 0.1:
        return nuclei
    return resample_nuclei(nuclei, engine.config.mpp)


def synthesize_masks(mask_paths, out_dir, engine, request=None, *, tile: bool = False, scheme=None,
                     mask_batch: int | None = None, shard: tuple[int, int] | None = None,
                     progress: ProgressCallback = None, cancel: CancelFlag = None, log: Log | None = None,
                     **settings) -> BatchReport:
    """Synthesize ``request.n_samples`` images per mask and write the pairs to ``out_dir``.

    Parameters
    ----------
    engine : NasdmEngine
    request : NasdmRequest, optional
        The settings for every mask (its ``nuclei`` is replaced by each mask); default the
        request's defaults, updated with ``settings`` (``n_samples=``, ``steps=``, …).
    tile : bool
        Cut masks larger than the model's patch into tiles.
    mask_batch : int, optional
        Masks (or tiles) sampled together: their samples share network calls of
        ``request.batch_size`` images (:meth:`NasdmEngine.run_many`), which gives the same
        images as one mask at a time (up to float rounding). Default: enough masks to fill a
        batch (``batch_size // n_samples``, at least 1), measured faster per patch for latent
        models on CPU (1.1x at fp32, 1.6x at bf16) and meant for GPUs; pixel models on CPU one
        mask at a time (batches were slower there; docs/performance.md).
    shard : (i, n), optional
        Synthesize only shard ``i`` of ``n`` (masks ``i-1, i-1+n, ...`` of ``mask_paths``) and
        record it in ``shard_<i>_of_<n>.json`` once it is complete; :func:`merge_shards` checks
        that all shards are there. Each mask's images do not depend on the shard it is in.

    A mask that cannot be used (wrong scheme, empty, too large without ``tile``) is skipped
    with its reason; the others go on. Output names are ``<mask>_s<seed>`` (plus the tile).
    Each group of masks is written as soon as it is drawn.
    """
    from dataclasses import replace

    from ..io.dispatch import read_annotated
    from .nasdm import NasdmRequest, prepare_mask

    from ..distributed import shard_items

    log = log or logger.info
    all_paths = [Path(str(p)) for p in mask_paths]
    mask_paths = shard_items(all_paths, shard)
    request = replace(request or NasdmRequest(), **settings)
    if request.steps is None:  # the model's recommendation, as the engine takes it (it drives the progress total)
        request = replace(request, steps=engine.recommended()["steps"])
    if mask_batch is None:  # one network batch full where that was measured faster (docs/performance.md)
        on_cpu = getattr(engine.device, "type", "cpu") != "cuda"
        pixel = getattr(engine.config, "family", "pixel") == "pixel"
        mask_batch = 1 if on_cpu and pixel else max(1, int(request.batch_size) // int(request.n_samples))
    if int(mask_batch) < 1:
        raise HistogenInputError(f"The mask batch must be at least 1, not {mask_batch}.")
    report = BatchReport()
    jobs = []
    for path in mask_paths:
        try:
            item = read_annotated(path, scheme=scheme)
            if item.nuclei is None:
                raise HistogenInputError("it has no nuclei mask")
            nuclei = _compact_ids(item.nuclei)
            if nuclei.mpp is None and item.mpp is not None:
                nuclei = NucleiMask.create(nuclei.instances, nuclei.classes, nuclei.scheme, mpp=item.mpp)
            if tile:
                pieces = tile_nuclei(_at_model_scale(nuclei, engine), engine.config.image_size)
            else:
                pieces = [("", nuclei)]
            for suffix, piece in pieces:
                prepare_mask(piece, engine.config)  # fail early, before any sampling
                jobs.append((item.name + suffix, piece, item, path))
        except Exception as err:  # noqa: BLE001 - one bad file (any failure) never ends the batch
            reason = _reason(err)
            report.skipped.append((str(path), reason))
            log(f"skipped {path}: {reason}")
    groups = [jobs[g: g + int(mask_batch)] for g in range(0, len(jobs), int(mask_batch))]
    # the engine reports network batches x steps; a group's batches are its samples / batch size
    per_group = [-(-len(group) * request.n_samples // request.batch_size) * int(request.steps) for group in groups]
    total = sum(per_group)
    for g, group in enumerate(groups):
        outcomes = engine.run_many([replace(request, nuclei=nuclei) for _name, nuclei, _item, _path in group],
                                   progress=sub_progress(progress, sum(per_group[:g]), total), cancel=cancel)
        for (name, _nuclei, item, path), results in zip(group, outcomes):
            if isinstance(results, HistogenInputError):  # this mask, not the batch: the others still run
                report.skipped.append((str(path), str(results)))
                log(f"skipped {path}: {results}")
                continue
            _write_results(out_dir, name, item, path, results, report, log)
    if shard is not None:
        _write_shard_record(out_dir, shard, all_paths, mask_paths, report)
    return report


def _inputs_id(paths) -> str:
    """One id for the list of all masks of a sharded run (the shards must agree on it)."""
    import hashlib

    return hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:16]


def _write_shard_record(out_dir, shard: tuple[int, int], all_paths, paths, report: BatchReport) -> Path:
    import json

    i, n = shard
    record = {"shard": [i, n], "inputs": _inputs_id(all_paths), "n_inputs": len(all_paths),
              "masks": [p.name for p in paths], "written": [stem for stem, _ in report.written],
              "skipped": [[str(p), r] for p, r in report.skipped], "complete": True}
    path = Path(out_dir) / f"shard_{i}_of_{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # the record appears only once the shard is complete
    return path


def merge_shards(out_dir) -> dict:
    """Check that every shard of a sharded run in ``out_dir`` is complete; write ``shards.json``.

    Returns the merged record (``written`` stems, ``skipped`` masks, ``n_inputs``).

    Raises
    ------
    HistogenInputError
        No shard records, shards of different runs, missing shards (named, to rerun them), or
        a written image that is gone.
    """
    import json
    import re

    folder = Path(out_dir)
    records = {}
    for path in sorted(folder.glob("shard_*_of_*.json")):
        if re.fullmatch(r"shard_\d+_of_\d+\.json", path.name):
            record = json.loads(path.read_text())
            records[tuple(record["shard"])] = record
    if not records:
        raise HistogenInputError(f"{folder} holds no shard records (shard_I_of_N.json); run the shards with --shard "
                                 "I/N and this folder as --out.")
    counts = {n for _, n in records}
    inputs = {r["inputs"] for r in records.values()}
    if len(counts) > 1 or len(inputs) > 1:
        raise HistogenInputError(f"{folder} holds shards of different runs (shard counts {sorted(counts)}, "
                                 f"{len(inputs)} mask lists); keep one run's shards per folder.")
    n = counts.pop()
    missing = [i for i in range(1, n + 1) if (i, n) not in records]
    if missing:
        raise HistogenInputError(f"Shards {', '.join(f'{i}/{n}' for i in missing)} are missing or unfinished in "
                                 f"{folder}; run them (--shard I/{n}) and merge again.")
    ordered = [records[(i, n)] for i in range(1, n + 1)]
    masks = [m for r in ordered for m in r["masks"]]
    n_inputs = ordered[0]["n_inputs"]
    if len(masks) != n_inputs or len(set(masks)) != len(masks):
        raise HistogenInputError(f"The shards in {folder} cover {len(set(masks))} of {n_inputs} masks; rerun the "
                                 "shards with the same --mask input.")
    written = sorted(stem for r in ordered for stem in r["written"])
    gone = [stem for stem in written if not (folder / f"{stem}.png").is_file()]
    if gone:
        raise HistogenInputError(f"{len(gone)} image(s) recorded by the shards are gone from {folder} (e.g. "
                                 f"{gone[0]}.png); rerun their shard.")
    merged = {"shards": n, "n_inputs": n_inputs, "inputs": ordered[0]["inputs"], "written": written,
              "skipped": [s for r in ordered for s in r["skipped"]]}
    (folder / "shards.json").write_text(json.dumps(merged, indent=2))
    return merged


def _write_results(out_dir, name, item, path, results, report: BatchReport, log: Log) -> None:
    """Write one mask's synthesized pairs (with the real image beside them when it matches)."""
    from ..io.synthesis import write_synthesis_pair

    first = results[0].mask
    real = item.image if (item.image is not None and item.image.shape[:2] == first.shape) else None
    for res in results:
        stem = f"{name}_s{res.seed}"
        res.provenance["parameters"]["mask_source"] = Path(str(path)).name
        files = write_synthesis_pair(out_dir, stem, res.image, res.mask, res.provenance, real=real)
        report.written.append((stem, files))
        log(f"{stem}: {files['image']}")


#: Masks whose largest id is at least this are renumbered 1..N before synthesis (ids of any size are
#: valid in files; a model's condition needs small ones).
_RELABEL_FROM = 1_000_000


def _compact_ids(nuclei: NucleiMask) -> NucleiMask:
    """The mask with ids 1..N (in id order) when its ids are huge (e.g. 2**31 - 1 from another tool)."""
    inst = nuclei.instances
    if inst.size == 0 or int(inst.max()) < _RELABEL_FROM:
        return nuclei
    ids, inverse = np.unique(inst, return_inverse=True)
    new = np.arange(ids.size, dtype=np.int32) + (0 if ids[0] == 0 else 1)  # background stays 0
    relabelled = new[inverse.reshape(inst.shape)]
    classes = {int(new[k]): int(nuclei.classes.get(int(i), 0)) for k, i in enumerate(ids) if i != 0}
    return NucleiMask.create(relabelled, classes, nuclei.scheme, mpp=nuclei.mpp, metadata=dict(nuclei.metadata))


def _reason(err: BaseException) -> str:
    """One line for a skipped file: the message of an input error, else the error's kind and text."""
    if isinstance(err, HistogenInputError):
        return str(err)
    if isinstance(err, RecursionError):
        return "it is nested too deeply to read (a damaged or hostile file)"
    if isinstance(err, MemoryError):
        return "it is too large to read into memory"
    text = " ".join(str(err).split())[:200]
    return f"it cannot be read ({type(err).__name__}{': ' + text if text else ''})"


# -- appearance transfer ---------------------------------------------------------------------------
def choose_targets(n_sources: int, pool: int, n: int, seed: int, *, same_pool: bool) -> list[list[int]]:
    """For each source ``i``, ``n`` target indices into the pool, drawn with seed ``seed + i``.

    With ``same_pool`` (targets are the sources' own masks) source ``i``'s own mask is avoided
    while the pool has another one; draws are without replacement while the pool lasts.
    """
    out = []
    for i in range(n_sources):
        rng = np.random.default_rng(int(seed) + i)
        candidates = [j for j in range(pool) if not (same_pool and j == i and pool > 1)]
        picks: list[int] = []
        while len(picks) < n:
            order = rng.permutation(candidates).tolist()
            picks.extend(order[: n - len(picks)])
        out.append([int(j) for j in picks])
    return out


def transfer_folder(dataset, out_dir, engine, request=None, *, targets=None, scheme=None,
                    progress: ProgressCallback = None, cancel: CancelFlag = None, log: Log | None = None,
                    **settings) -> BatchReport:
    """Make ``request.n_outputs`` images per pair of ``dataset`` and write them (masks, provenance) to ``out_dir``.

    Parameters
    ----------
    dataset : path
        Folder of image + mask pairs (see :func:`napari_histogen.core.io.tissue.find_tissue_pairs`).
    engine : TransferEngine
    request : TransferRequest, optional
        The settings for every source (its images and masks are replaced); default the
        request's defaults, updated with ``settings`` (``n_outputs=``, ``seed=``, ``augment=``, …).
    targets : path, optional
        Folder of target masks (default: the dataset's own masks, never a source's own one when
        there are others).
    scheme : str or ClassScheme, optional
        Class scheme of the masks (default: the one each source mask records).
    """
    from dataclasses import replace

    from ..io.pairs import read_rgb_image
    from ..io.paths import TISSUE_MASK_SUFFIXES
    from ..io.tissue import find_tissue_pairs, read_tissue_mask, write_transfer_result
    from .transfer import TransferRequest

    log = log or logger.info
    base = replace(request or TransferRequest(), **settings)
    pairs = find_tissue_pairs(dataset)
    if targets is not None:
        tdir = Path(targets)
        if not tdir.is_dir():
            raise HistogenInputError(f"No target mask folder at {tdir}.")
        pool_paths = sorted(p for p in tdir.iterdir() if p.is_file() and p.name.lower().endswith(TISSUE_MASK_SUFFIXES))
        if not pool_paths:
            raise HistogenInputError(f"{tdir} holds no mask files ({', '.join(TISSUE_MASK_SUFFIXES)}).")
    else:
        pool_paths = [m for _, m in pairs]
    n = int(base.n_outputs)
    picks = choose_targets(len(pairs), len(pool_paths), n, int(base.seed), same_pool=targets is None)
    report = BatchReport()
    for i, (image_path, mask_path) in enumerate(pairs):
        check_cancel(cancel)
        try:
            source = read_rgb_image(image_path, name="source image")
            source_mask = read_tissue_mask(mask_path, name="source mask", scheme=scheme)
            tmasks = [read_tissue_mask(pool_paths[j], name="target mask", scheme=scheme) for j in picks[i]]
        except Exception as err:  # noqa: BLE001 - one bad file (any failure) never ends the batch
            reason = _reason(err)
            report.skipped.append((str(image_path), reason))
            log(f"skipped {image_path.name}: {reason}")
            continue
        # the source's scheme names the classes of its targets too (one dataset, one scheme)
        tmasks = [replace(t, scheme=source_mask.scheme) for t in tmasks]
        req = replace(base, source_image=source, source_mask=source_mask, target_masks=tmasks,
                      source_name=image_path.name)

        def step_progress(done, total, _i=i):
            if progress is not None:
                progress(_i * total + done, len(pairs) * total)

        try:
            results = engine.run(req, progress=step_progress, cancel=cancel)
        except HistogenInputError as err:
            report.skipped.append((str(image_path), str(err)))
            log(f"skipped {image_path.name}: {err}")
            continue
        for k, result in enumerate(results):
            name = f"{image_path.stem}_transfer_s{int(base.seed) + k}"
            files = write_transfer_result(out_dir, name, result.image, result.mask, result.provenance, source=source,
                                          scheme=source_mask.scheme)
            report.written.append((name, files))
        log(f"{image_path.name}: {len(results)} image(s) (targets {', '.join(dict.fromkeys(t.name for t in tmasks))})")
    return report
