"""NASDM training data, the whole pipeline: a dataset cut into windows, split by source image.

:func:`build_patch_set` reads the sources (:mod:`.sources`), resamples them, tiles them and
filters the windows (:mod:`.windows`), normalises the stain on request (:mod:`.stain`) and
splits by source image; see :mod:`.data` for the steps and the source ids. Patches are
:class:`PatchRef` windows into the kept sources, cropped when read, so no pixel is copied
per patch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HistogenInputError
from ..io.annotated import AnnotatedImage
from ..masks import class_counts, instance_ids
from ..schemes import UNCLASSIFIED, ClassScheme
from .condition import make_condition
from .sources import DEFAULT_MPP, _as_paths, _finish, _plan, resample_to_mpp
from .stain import METHODS as STAIN_METHODS
from .stain import StainNormalizer
from .windows import _check_window, patch_grid, split_sources, tissue_mask, window_fractions

__all__ = ["PatchRef", "PatchSet", "build_patch_set", "format_summary"]

_UNCLASSIFIED_POLICIES = ("error", "drop")


@dataclass(frozen=True)
class PatchRef:
    """One training window: ``size`` px at ``(row, col)`` of source ``source`` of a :class:`PatchSet`."""

    source: int
    row: int
    col: int
    size: int
    source_id: str


@dataclass
class PatchSet:
    """Resampled sources, their kept windows split by source, and what was done.

    Attributes
    ----------
    sources : list of AnnotatedImage
        The kept sources at the model's scale (stain-normalised if asked).
    train, val : list of PatchRef
        Windows of the training and validation sources, in source order, row-major.
    scheme : ClassScheme
        Class scheme of every source.
    class_ids : tuple of int
        The model's class ids in condition channel order (the scheme's ids).
    summary : dict
        Counts and settings (see :func:`build_patch_set`; :func:`format_summary` prints it).
    """

    sources: list[AnnotatedImage]
    train: list[PatchRef]
    val: list[PatchRef]
    scheme: ClassScheme
    class_ids: tuple[int, ...]
    summary: dict = field(default_factory=dict)

    def crop(self, ref: PatchRef) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(image (P, P, 3) uint8, instances (P, P) int32, classes)`` of a window.

        The arrays are read-only views into the source: copy before changing them.
        """
        src = self.sources[ref.source]
        window = (slice(ref.row, ref.row + ref.size), slice(ref.col, ref.col + ref.size))
        image, inst = src.image[window], src.nuclei.instances[window]
        image.flags.writeable = False
        inst.flags.writeable = False
        return image, inst, src.nuclei.classes

    def condition(self, ref: PatchRef) -> np.ndarray:
        """The ``(K + 2, P, P)`` NASDM condition of a window (no augmentation)."""
        _, inst, classes = self.crop(ref)
        return make_condition(inst, classes, self.class_ids)


def _resolve_normalizer(stain_normalizer, sources: list[AnnotatedImage], fractions: list[float]):
    """(callable image -> image, description) or (None, None)."""
    if stain_normalizer is None or stain_normalizer is False:
        return None, None
    if isinstance(stain_normalizer, str):
        method, _, ref_path = stain_normalizer.partition(":")
        method = method.strip().lower()
        if method in ("", "none"):
            return None, None
        if method not in STAIN_METHODS:
            raise HistogenInputError(f"Unknown stain normalisation '{stain_normalizer}'; choose one of "
                                     f"{', '.join(STAIN_METHODS)} (optionally 'method:reference.png').")
        if ref_path.strip():
            from ..io.pairs import read_rgb_image

            reference, ref_name = read_rgb_image(ref_path.strip(), name="stain reference image"), Path(ref_path).name
        else:
            # the source with the most tissue (first on ties): deterministic and typical
            best = int(np.argmax(fractions))
            reference, ref_name = sources[best].image, sources[best].name
        normalizer = StainNormalizer(method).fit(reference)
        return normalizer.transform, f"{method} (reference {ref_name})"
    if hasattr(stain_normalizer, "transform"):
        return stain_normalizer.transform, repr(stain_normalizer)
    if callable(stain_normalizer):
        return stain_normalizer, getattr(stain_normalizer, "__name__", repr(stain_normalizer))
    raise HistogenInputError(
        f"stain_normalizer must be None, a method name ({', '.join(STAIN_METHODS)}), a fitted StainNormalizer "
        f"or a function image -> image, not {type(stain_normalizer).__name__}.")


def _count_nuclei(sources, refs, scheme) -> dict[str, int]:
    """Nuclei touched by the windows, each nucleus counted once per source."""
    covered: dict[int, np.ndarray] = {}
    for ref in refs:
        src = sources[ref.source]
        cov = covered.setdefault(ref.source, np.zeros(src.nuclei.shape, dtype=bool))
        cov[ref.row: ref.row + ref.size, ref.col: ref.col + ref.size] = True
    counts = {c.name: 0 for c in scheme.classes}
    for index, cov in covered.items():
        nuclei = sources[index].nuclei
        present = instance_ids(nuclei.instances[cov])
        for name, n in class_counts({int(i): nuclei.classes[int(i)] for i in present}, scheme).items():
            counts[name] = counts.get(name, 0) + n
    return counts


def build_patch_set(data, fmt: str = "auto", *, target_mpp: float = DEFAULT_MPP, patch_size: int = 128,
                    overlap: float = 0.5, min_tissue: float = 0.5, val_fraction: float = 0.1, seed: int = 0,
                    scheme=None, source_mpp: float | None = None, stain_normalizer=None,
                    unclassified: str = "error", progress=None) -> PatchSet:
    """Read a dataset and cut it into NASDM training windows, split by source image.

    Parameters
    ----------
    data, fmt, scheme, source_mpp
        As :func:`iter_sources`.
    target_mpp : float
        The model's scale in µm/px (0.5 = 20x).
    patch_size : int
        Window side in pixels at ``target_mpp``.
    overlap : float
        Overlap of neighbouring windows, in ``[0, 1)`` (see :func:`patch_grid`).
    min_tissue : float
        Windows whose tissue fraction (:func:`tissue_mask`) is below this are dropped.
    val_fraction : float
        Fraction of source images held out for validation (:func:`split_sources`).
    seed : int
        Seed of the split.
    stain_normalizer : None, str, StainNormalizer or callable
        ``'macenko'`` or ``'vahadane'``: fitted on the source with the largest tissue
        fraction, or on the image in ``'macenko:/path/reference.png'``; a fitted
        :class:`~napari_histogen.core.nasdm.stain.StainNormalizer`; or any function
        ``uint8 RGB -> uint8 RGB``. Applied to every kept source after resampling.
    unclassified : {'error', 'drop'}
        What to do with nuclei without a class (NASDM needs a class per nucleus):
        refuse the dataset, or drop the windows that contain any.
    progress : callable, optional
        ``progress(done, total)`` after each source is read.

    Returns
    -------
    PatchSet
        ``summary`` holds: ``data``, ``formats``, ``scheme``, ``class_ids``,
        ``class_names``, ``mpp_in`` (scales read), ``mpp_out``, ``patch_size``,
        ``overlap``, ``min_tissue``, ``val_fraction``, ``seed``, ``stain_normalization``,
        ``sources`` (kept), ``sources_read``, ``sources_skipped`` (name, reason),
        ``sources_train``, ``sources_val``, ``val_source_ids``, ``patches_total``,
        ``patches_kept``, ``patches_dropped_tissue``, ``patches_dropped_unclassified``,
        ``patches_train``, ``patches_val``, ``nuclei_dropped_by_resampling``,
        ``nuclei_per_class`` (``{'train': {...}, 'val': {...}}``, nuclei inside kept
        windows, each once per source), ``seconds``.

    Raises
    ------
    HistogenInputError
        Bad settings, unreadable or unsuitable data, mixed class schemes, unclassified
        nuclei (with ``unclassified='error'``), or no window left.
    """
    start = time.perf_counter()
    settings = _check_settings(target_mpp, patch_size, overlap, min_tissue, val_fraction, seed, unclassified)
    tasks, skipped = _plan(data, fmt, scheme)
    found = _read_and_tile(tasks, skipped, settings, scheme=scheme, source_mpp=source_mpp, progress=progress)
    if not found.sources:
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3]) or "no sources found"
        raise HistogenInputError(
            f"No training patches in {data}: {reasons}. Check the data, or lower min_tissue / patch_size.")
    stain_text = _normalize_stain(stain_normalizer, found)
    train_ids, val_ids = split_sources([s.provenance["source_id"] for s in found.sources], val_fraction, seed)
    train, val = _split_windows(found, set(val_ids), settings.patch_size)
    assert found.scheme is not None  # set with the first kept source
    summary = {
        "data": [str(p) for p in _as_paths(data)],
        "formats": sorted(found.formats),
        "scheme": found.scheme.name,
        "class_ids": list(found.scheme.ids),
        "class_names": list(found.scheme.names),
        "mpp_in": sorted(found.mpp_in),
        "mpp_out": settings.target_mpp,
        "patch_size": settings.patch_size,
        "overlap": settings.overlap,
        "min_tissue": settings.min_tissue,
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "stain_normalization": stain_text,
        "sources_read": len(tasks),
        "sources": len(found.sources),
        "sources_skipped": skipped,
        "sources_train": len(train_ids),
        "sources_val": len(val_ids),
        "val_source_ids": val_ids,
        "patches_total": found.n_total,
        "patches_kept": len(train) + len(val),
        "patches_dropped_tissue": found.n_tissue,
        "patches_dropped_unclassified": found.n_unclassified,
        "patches_train": len(train),
        "patches_val": len(val),
        "nuclei_dropped_by_resampling": found.n_resample_dropped,
        "nuclei_per_class": {"train": _count_nuclei(found.sources, train, found.scheme),
                             "val": _count_nuclei(found.sources, val, found.scheme)},
    }
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return PatchSet(found.sources, train, val, found.scheme, tuple(found.scheme.ids), summary)


# -- the steps of build_patch_set ---------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """The checked window settings of one :func:`build_patch_set` run."""

    target_mpp: float
    patch_size: int
    overlap: float
    min_tissue: float
    unclassified: str


@dataclass
class _Found:
    """What reading and tiling collected: the kept sources with their windows, and the counts."""

    sources: list[AnnotatedImage] = field(default_factory=list)
    windows_of: list[list[tuple[int, int]]] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)  # tissue fraction of each kept source
    scheme: ClassScheme | None = None
    mpp_in: set[float] = field(default_factory=set)
    formats: set[str] = field(default_factory=set)
    n_total: int = 0
    n_tissue: int = 0
    n_unclassified: int = 0
    n_resample_dropped: int = 0


def _check_settings(target_mpp, patch_size, overlap, min_tissue, val_fraction, seed, unclassified) -> _Settings:
    """Check every setting before the slow part; raise the first problem."""
    target_mpp = float(target_mpp) if isinstance(target_mpp, (int, float, np.number)) else float("nan")
    if not target_mpp > 0 or not np.isfinite(target_mpp):
        raise HistogenInputError("The target scale (target_mpp) must be a positive number of µm/px, e.g. 0.5 for 20x.")
    patch_size, overlap = _check_window(patch_size, overlap)
    if not isinstance(min_tissue, (int, float, np.number)) or not 0.0 <= float(min_tissue) <= 1.0:
        raise HistogenInputError(f"The minimum tissue fraction must be between 0 and 1, not {min_tissue!r}.")
    if unclassified not in _UNCLASSIFIED_POLICIES:
        raise HistogenInputError(
            f"unclassified must be one of {', '.join(_UNCLASSIFIED_POLICIES)}, not {unclassified!r}.")
    split_sources([], val_fraction, seed)  # checks val_fraction
    return _Settings(target_mpp, patch_size, overlap, float(min_tissue), unclassified)


def _read_and_tile(tasks, skipped: list[dict], settings: _Settings, *, scheme, source_mpp, progress) -> _Found:
    """Read every source, resample, tile and filter it; sources left without a window go to ``skipped``."""
    found = _Found()
    for done, task in enumerate(tasks, start=1):
        item = _finish(task.load(), task, scheme, source_mpp)
        if item.image is None:
            skipped.append({"name": task.label, "reason": "no image found next to the labels (mask only)"})
        else:
            reason = _add_source(found, item, task.label, settings)
            if reason is not None:
                skipped.append({"name": task.label, "reason": reason})
        if progress is not None:
            progress(done, len(tasks))
    return found


def _add_source(found: _Found, item: AnnotatedImage, label: str, settings: _Settings) -> str | None:
    """Resample, tile and filter one source; keep it in ``found``, or say why not."""
    if found.scheme is None:
        found.scheme = item.nuclei.scheme
    elif item.nuclei.scheme.name != found.scheme.name:
        raise HistogenInputError(
            f"{label} uses class scheme '{item.nuclei.scheme.name}' but earlier sources use "
            f"'{found.scheme.name}'; train on one scheme at a time.")
    found.mpp_in.add(round(float(item.mpp), 6))
    found.formats.add(str(item.provenance.get("format", "?")))
    item = resample_to_mpp(item, settings.target_mpp)
    found.n_resample_dropped += int(item.provenance.get("resample_dropped_nuclei", 0))
    size = settings.patch_size
    windows = patch_grid(item.image.shape, size, settings.overlap)
    if not windows:
        h, w = item.image.shape[:2]
        return f"{w}x{h} px at {settings.target_mpp} µm/px is smaller than the {size}-px patch"
    found.n_total += len(windows)
    tissue = tissue_mask(item.image)
    keep = window_fractions(tissue, windows, size) >= settings.min_tissue
    found.n_tissue += int((~keep).sum())
    keep = _drop_unclassified(found, item, label, windows, keep, settings)
    kept = [win for win, k in zip(windows, keep) if k]
    if not kept:
        return "no window passed the tissue/class filters"
    found.sources.append(item)
    found.windows_of.append(kept)
    found.fractions.append(float(tissue.mean()))
    return None


def _drop_unclassified(found: _Found, item: AnnotatedImage, label: str, windows, keep: np.ndarray,
                       settings: _Settings) -> np.ndarray:
    """``keep`` without the windows that hold unclassified nuclei, or an error (``unclassified='error'``)."""
    ids = [i for i, c in item.nuclei.classes.items() if c == UNCLASSIFIED]
    if not ids:
        return keep
    if settings.unclassified == "error":
        raise HistogenInputError(
            f"{len(ids)} nuclei of {label} have no class, and NASDM needs a class "
            "for every nucleus. Classify them, or drop the patches that contain them "
            "(unclassified='drop'; histogen: --unclassified drop).")
    hit = window_fractions(np.isin(item.nuclei.instances, ids), windows, settings.patch_size) > 0
    found.n_unclassified += int((keep & hit).sum())
    return keep & ~hit


def _normalize_stain(stain_normalizer, found: _Found) -> str | None:
    """Normalise the stain of every kept source in place; the description of what was done."""
    normalize, stain_text = _resolve_normalizer(stain_normalizer, found.sources, found.fractions)
    if normalize is not None:
        for item in found.sources:
            new = np.asarray(normalize(item.image))
            if new.shape != item.image.shape:
                raise HistogenInputError(f"The stain normaliser changed the shape of {item.name} "
                                         f"from {item.image.shape} to {new.shape}; it must keep it.")
            item.image = np.clip(np.rint(new), 0, 255).astype(np.uint8) if new.dtype != np.uint8 else new
    return stain_text


def _split_windows(found: _Found, val_ids: set, patch_size: int) -> tuple[list[PatchRef], list[PatchRef]]:
    """The kept windows as training and validation :class:`PatchRef` lists, by source id."""
    train: list[PatchRef] = []
    val: list[PatchRef] = []
    for index, (item, windows) in enumerate(zip(found.sources, found.windows_of)):
        sid = item.provenance["source_id"]
        refs = [PatchRef(index, int(r), int(c), patch_size, sid) for r, c in windows]
        (val if sid in val_ids else train).extend(refs)
    return train, val


def format_summary(summary: dict) -> str:
    """A few human-readable lines of a :func:`build_patch_set` summary."""
    s = summary
    lines = [
        f"data: {', '.join(s['data'])} ({', '.join(s['formats'])}, scheme {s['scheme']})",
        f"scale: {', '.join(str(m) for m in s['mpp_in'])} -> {s['mpp_out']} µm/px; "
        f"{s['patch_size']} px patches, {s['overlap']:.0%} overlap, tissue >= {s['min_tissue']:.0%}",
        f"sources: {s['sources']} kept of {s['sources_read']} read ({len(s['sources_skipped'])} skipped); "
        f"train {s['sources_train']}, validation {s['sources_val']}",
        f"patches: {s['patches_kept']} kept of {s['patches_total']} (dropped: {s['patches_dropped_tissue']} too little "
        f"tissue, {s['patches_dropped_unclassified']} unclassified nuclei); train {s['patches_train']}, "
        f"validation {s['patches_val']}",
    ]
    for part in ("train", "val"):
        counts = s["nuclei_per_class"][part]
        lines.append(f"nuclei ({part}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if s.get("stain_normalization"):
        lines.append(f"stain normalisation: {s['stain_normalization']}")
    lines.append(f"took {s['seconds']} s")
    return "\n".join(lines)
