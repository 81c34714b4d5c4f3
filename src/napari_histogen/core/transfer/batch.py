"""Folder mode: N in-silico images per annotated image of a dataset of image + mask pairs.

The paper's augmentation: each annotated patch is the appearance source of ``n`` new images;
their target masks are the masks of *other* patches of the same dataset (so class areas and
shapes are realistic for that tissue), each randomly flipped/rotated. With ``targets`` a
separate folder of masks is used instead. Every source's inversion is computed once (cache)
and its ``n`` targets are denoised in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HistogenInputError
from ..progress import ProgressCallback, check_cancel

__all__ = ["FolderReport", "transfer_folder", "choose_targets"]


@dataclass
class FolderReport:
    written: list = field(default_factory=list)  # (name, files)
    skipped: list = field(default_factory=list)  # (input, reason)


def choose_targets(n_sources: int, pool: int, n: int, seed: int, *, same_pool: bool) -> list[list[int]]:
    """For each source ``i``, ``n`` target indices into the pool, drawn with seed ``seed + i``.

    With ``same_pool`` (targets are the sources' own masks) source ``i``'s own mask is avoided
    while the pool has another one; draws are without replacement while the pool lasts.
    """
    out = []
    for i in range(n_sources):
        rng = np.random.default_rng(int(seed) + i)
        candidates = [j for j in range(pool) if not (same_pool and j == i and pool > 1)]
        picks = []
        while len(picks) < n:
            order = rng.permutation(candidates).tolist()
            picks.extend(order[: n - len(picks)])
        out.append([int(j) for j in picks])
    return out


def transfer_folder(dataset, out_dir, engine, *, n: int = 4, seed: int = 0, settings=None, targets=None,
                    augment: bool = True, scheme=None, progress: ProgressCallback = None, cancel=None,
                    log=print) -> FolderReport:
    """Make ``n`` images per pair of ``dataset`` and write them (with masks and provenance) to ``out_dir``.

    Parameters
    ----------
    dataset : path
        Folder of image + mask pairs (see :func:`napari_histogen.core.io.tissue.find_tissue_pairs`).
    engine : TransferEngine
    targets : path, optional
        Folder of target masks (default: the dataset's own masks, never a source's own one when
        there are others).
    """
    from ..engines.transfer import TransferRequest
    from ..io.pairs import read_rgb_image
    from ..io.tissue import MASK_SUFFIXES, find_tissue_pairs, read_label_map, write_transfer_result
    from .settings import TransferSettings

    pairs = find_tissue_pairs(dataset)
    if targets is not None:
        tdir = Path(targets)
        if not tdir.is_dir():
            raise HistogenInputError(f"No target mask folder at {tdir}.")
        pool_paths = sorted(p for p in tdir.iterdir() if p.is_file() and p.name.lower().endswith(MASK_SUFFIXES))
        if not pool_paths:
            raise HistogenInputError(f"{tdir} holds no mask files ({', '.join(MASK_SUFFIXES)}).")
    else:
        pool_paths = [m for _, m in pairs]
    picks = choose_targets(len(pairs), len(pool_paths), int(n), int(seed), same_pool=targets is None)
    report = FolderReport()
    settings = settings or TransferSettings()
    total_sources = len(pairs)
    for i, (image_path, mask_path) in enumerate(pairs):
        check_cancel(cancel)
        try:
            source = read_rgb_image(image_path, name="source image")
            source_mask, info = read_label_map(mask_path, name="source mask")
            tmasks, tnames = [], []
            for j in picks[i]:
                tmask, _ = read_label_map(pool_paths[j], name="target mask")
                tmasks.append(tmask)
                tnames.append(pool_paths[j].name)
        except HistogenInputError as err:
            report.skipped.append((str(image_path), str(err)))
            log(f"skipped {image_path.name}: {err}")
            continue
        request = TransferRequest(source_image=source, source_mask=source_mask, target_mask=tmasks, n_outputs=int(n),
                                  augment=augment, seed=int(seed), settings=settings,
                                  scheme=_scheme(scheme or info.get("scheme")), source_name=image_path.name,
                                  target_name=tnames)

        def step_progress(done, total, _i=i):
            if progress is not None:
                progress(_i * total + done, total_sources * total)

        try:
            results = engine.run(request, progress=step_progress, cancel=cancel)
        except HistogenInputError as err:
            report.skipped.append((str(image_path), str(err)))
            log(f"skipped {image_path.name}: {err}")
            continue
        for k, result in enumerate(results):
            name = f"{image_path.stem}_transfer_s{int(seed) + k}"
            files = write_transfer_result(out_dir, name, result.image, result.mask, result.provenance, source=source,
                                          scheme=_scheme(scheme or info.get("scheme")))
            report.written.append((name, files))
        log(f"{image_path.name}: {len(results)} image(s) (targets {', '.join(dict.fromkeys(tnames))})")
    return report


def _scheme(spec):
    if spec is None:
        return None
    from ..schemes import get_scheme

    try:
        return get_scheme(spec)
    except HistogenInputError:
        return None
