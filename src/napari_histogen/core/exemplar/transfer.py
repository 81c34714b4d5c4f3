"""Example-based appearance transfer: a target mask filled with a source image's own pixels.

No model and no training. Given a source image with its nuclei mask and/or tissue mask and a
target mask:

- **tissue target** (:class:`~napari_histogen.core.masks.TissueMask`): every class of the
  target (0 included: unlabelled regions are a region too) is quilted from source blocks of
  the same class (:mod:`.quilting`), the class canvases composed by the target with a narrow
  feather; needs the source's tissue mask;
- **nuclei target** (:class:`~napari_histogen.core.masks.NucleiMask`): the background is
  quilted from the source's pixels outside its nuclei (nuclei removed from the source first),
  then every target nucleus gets a source nucleus of its class and similar shape, warped onto
  its outline and feathered into the background (:mod:`.nuclei`); needs the source's nuclei mask.

Target classes the source lacks (matched by id, as the Stable Diffusion method matches them)
are reported and filled by a fallback: a tissue class from blocks anywhere in the source, a
nucleus from the source nuclei of all classes (closest shape). When both scales are known and
differ, the source is resampled to the target's scale first. The same seed gives the same image.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import HistogenInputError
from ..images import resize_image
from ..masks import NucleiMask, TissueMask, describe_class, resize_labels
from ..progress import ProgressCallback, check_cancel
from .nuclei import nucleus_shapes, paste_all
from .quilting import block_candidates, class_plate, compose_classes, quilt

__all__ = ["ExemplarSettings", "ExemplarOutput", "exemplar_transfer", "missing_classes", "SCALE_TOLERANCE"]

#: source and target scales further apart than this (relative) are reconciled by resampling the source
SCALE_TOLERANCE = 0.1


@dataclass(frozen=True)
class ExemplarSettings:
    """The example-based method's settings (the defaults are the product's).

    Parameters
    ----------
    patch_px : int
        Side of the quilted blocks, in target pixels: large enough to hold the texture's
        structure (a few nuclei widths at 40x), small enough for narrow class regions.
    overlap_px : int
        Overlap of neighbouring blocks, where the minimum-error cut runs.
    candidates : int
        Random source blocks compared per block (more: better seams, slower).
    tolerance : float
        A block is drawn among the candidates within this relative margin of the best match.
    feather_px : float
        Gaussian sigma of the blend between tissue classes at their borders (0: hard borders).
    ring_px : int
        Width of the feathered ring around each pasted nucleus.
    nucleus_choices : int
        A target nucleus takes one of this many closest-shaped source nuclei, at random.
    """

    patch_px: int = 32
    overlap_px: int = 8
    candidates: int = 96
    tolerance: float = 0.1
    feather_px: float = 1.0
    ring_px: int = 3
    nucleus_choices: int = 5

    def problems(self) -> list[str]:
        out = []
        if not 4 <= int(self.patch_px) <= 256:
            out.append(f"Patch size must be between 4 and 256 px, not {self.patch_px}.")
        elif not 1 <= int(self.overlap_px) <= int(self.patch_px) // 2:
            out.append(f"Patch overlap must be between 1 px and half the patch ({int(self.patch_px) // 2} px), "
                       f"not {self.overlap_px}.")
        if not 1 <= int(self.candidates) <= 10000:
            out.append(f"Candidates per patch must be between 1 and 10000, not {self.candidates}.")
        if not 0 <= float(self.tolerance) <= 10:
            out.append(f"Tolerance must be between 0 and 10, not {self.tolerance}.")
        if not 0 <= float(self.feather_px) <= 20:
            out.append(f"Class feather must be between 0 and 20 px, not {self.feather_px}.")
        if not 0 <= int(self.ring_px) <= 20:
            out.append(f"Nucleus ring must be between 0 and 20 px, not {self.ring_px}.")
        if not 1 <= int(self.nucleus_choices) <= 1000:
            out.append(f"Nucleus choices must be between 1 and 1000, not {self.nucleus_choices}.")
        return out

    def check(self) -> "ExemplarSettings":
        problems = self.problems()
        if problems:
            raise HistogenInputError(" ".join(problems))
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExemplarOutput:
    """One image made by :func:`exemplar_transfer`, with what it did."""

    image: np.ndarray                  # (H, W, 3) uint8, the target's size
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _target_ids(target: NucleiMask | TissueMask) -> list[int]:
    if isinstance(target, NucleiMask):
        return sorted({int(c) for c in target.classes.values() if c})
    return [int(c) for c in np.unique(target.labels)]


def missing_classes(target: NucleiMask | TissueMask, source_nuclei: NucleiMask | None,
                    source_tissue: TissueMask | None) -> tuple[list[int], list[int]]:
    """``(matched, unmatched)`` class ids of the target against the source mask of the same kind.

    Nuclei targets: the nucleus classes (unclassified nuclei match any); tissue targets: every
    id, 0 included.
    """
    ids = _target_ids(target)
    if isinstance(target, NucleiMask):
        have = set() if source_nuclei is None else {int(c) for c in source_nuclei.classes.values()}
    else:
        have = set() if source_tissue is None else {int(c) for c in np.unique(source_tissue.labels)}
    return [c for c in ids if c in have], [c for c in ids if c not in have]


def _check(source_image, target, source_nuclei, source_tissue) -> None:
    image = np.asarray(source_image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise HistogenInputError("Give the source image as an RGB uint8 array (HxWx3).")
    for mask, what in ((source_nuclei, "nuclei"), (source_tissue, "tissue")):
        if mask is not None and mask.shape != image.shape[:2]:
            h, w = mask.shape
            raise HistogenInputError(f"The source's {what} mask is {w}x{h} px but the source image is "
                                     f"{image.shape[1]}x{image.shape[0]}; they must cover each other pixel for pixel.")
    if isinstance(target, NucleiMask):
        if source_nuclei is None:
            raise HistogenInputError("A nuclei target needs the source's nuclei mask (its nuclei are copied): "
                                     "choose the source's nuclei mask.")
        if target.n_nuclei and source_nuclei.n_nuclei == 0:
            raise HistogenInputError("The source's nuclei mask has no nuclei to copy: choose a source with nuclei.")
    elif isinstance(target, TissueMask):
        if source_tissue is None:
            raise HistogenInputError("A tissue target needs the source's tissue mask (its regions are copied by "
                                     "class): choose the source's tissue mask.")
        if target.is_empty:
            raise HistogenInputError("The target mask is empty (all 0): paint or choose a mask with labelled regions.")
    else:
        raise HistogenInputError("The target must be a nuclei mask or a tissue mask.")
    if min(image.shape[:2]) < 8 or min(target.shape) < 8:
        raise HistogenInputError("The source image and the target mask must be at least 8x8 px.")


def _to_target_scale(image, nuclei, tissue, source_mpp, target_mpp, notes):
    """The source (image and masks) resampled to the target's scale when both are known and differ."""
    if not source_mpp or not target_mpp or abs(float(source_mpp) / float(target_mpp) - 1) <= SCALE_TOLERANCE:
        return image, nuclei, tissue, 1.0
    factor = float(source_mpp) / float(target_mpp)
    shape = tuple(max(8, int(round(s * factor))) for s in image.shape[:2])
    notes.append(f"The source ({source_mpp:g} µm/px) was resampled to the target's scale ({target_mpp:g} µm/px).")
    image = resize_image(image, shape)
    if nuclei is not None:
        inst = resize_labels(nuclei.instances, shape)
        present = {int(i) for i in np.unique(inst) if i}
        nuclei = NucleiMask(inst.astype(np.int32), {k: v for k, v in nuclei.classes.items() if k in present},
                            nuclei.scheme, float(target_mpp), dict(nuclei.metadata))
    if tissue is not None:
        tissue = tissue.with_labels(resize_labels(tissue.labels, shape))
    return image, nuclei, tissue, factor


def exemplar_transfer(source_image: np.ndarray, target: NucleiMask | TissueMask, *,
                      source_nuclei: NucleiMask | None = None, source_tissue: TissueMask | None = None,
                      settings: ExemplarSettings | None = None, seed: int = 0, source_mpp: float | None = None,
                      progress: ProgressCallback = None, cancel=None) -> ExemplarOutput:
    """Build an image that follows ``target`` from ``source_image``'s own pixels.

    Parameters
    ----------
    source_image : ndarray (H, W, 3) uint8
    target : NucleiMask or TissueMask
        The mask the output follows pixel for pixel (the output has its size).
    source_nuclei, source_tissue : NucleiMask or TissueMask, optional
        The source's masks; the one of the target's kind is required.
    settings : ExemplarSettings
    seed : int
        The same seed gives the same image.
    source_mpp : float, optional
        The source's scale (else its mask's); resampled to the target's when both are known.
    progress, cancel
        ``progress(done, total)`` per block and nucleus; ``cancel`` is checked as often.

    Raises
    ------
    HistogenInputError
        Bad image, masks of the wrong size or kind, an empty target, a source without nuclei.
    Cancelled
    """
    from scipy import ndimage as ndi  # here: 0.2 s to import, paid when the transfer dock opens otherwise

    settings = (settings or ExemplarSettings()).check()
    _check(source_image, target, source_nuclei, source_tissue)
    started = time.perf_counter()
    rng = np.random.default_rng(int(seed))
    notes: list[str] = []
    nuclei_target = isinstance(target, NucleiMask)
    # the target as each kind (one of them None), for the type checker
    nuclei_t = target if isinstance(target, NucleiMask) else None
    tissue_t = target if isinstance(target, TissueMask) else None
    src_mask = source_nuclei if nuclei_target else source_tissue
    mpp = source_mpp or (src_mask.mpp if src_mask is not None else None)
    image, src_nuclei, src_tissue, factor = _to_target_scale(np.asarray(source_image), source_nuclei, source_tissue,
                                                             mpp, target.mpp, notes)
    matched, unmatched = missing_classes(target, src_nuclei, src_tissue)
    scheme = target.scheme
    h, w = target.shape
    block = int(min(settings.patch_px, h, w, *image.shape[:2]))
    overlap = max(1, min(int(settings.overlap_px), block // 2))
    if block < int(settings.patch_px):
        notes.append(f"Quilting blocks of {block} px (the image or mask is smaller than {settings.patch_px} px).")

    # what to quilt: class id -> (source member map, target region)
    plan: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if nuclei_target:
        assert src_nuclei is not None
        background = ~ndi.binary_dilation(src_nuclei.instances > 0, iterations=1)
        if background.mean() < 0.02:
            background = src_nuclei.instances == 0
        if not background.any():
            raise HistogenInputError("The source has no background outside its nuclei to copy.")
        plan[0] = (background, np.ones((h, w), bool))
    else:
        assert src_tissue is not None
        reach = int(np.ceil(3 * settings.feather_px)) + 1
        for c in _target_ids(target):
            member = src_tissue.labels == c
            if not member.any():
                member = np.ones(image.shape[:2], bool)  # fallback: the whole source
            assert tissue_t is not None
            region = tissue_t.labels == c
            if len(_target_ids(target)) > 1:
                region = ndi.binary_dilation(region, iterations=reach)
            plan[c] = (member, region)
    if unmatched:
        names = ", ".join(describe_class(scheme, c) for c in unmatched)
        if nuclei_target:
            notes.append(f"Target classes not in the source mask: {names}; those nuclei were copied from the "
                         "source's nuclei of all classes (closest shape).")
        else:
            notes.append(f"Target classes not in the source mask: {names}; those regions were quilted from the "
                         "whole source image.")

    targets = nucleus_shapes(nuclei_t.instances, nuclei_t.classes) if nuclei_t is not None else []
    n_blocks = 0
    step = max(1, block - overlap)
    for _member, region in plan.values():
        ys = range(0, max(1, h - block), step)
        xs = range(0, max(1, w - block), step)
        n_blocks += (len(ys) + 1) * (len(xs) + 1)  # an upper bound (blocks outside the region are skipped)
    total = n_blocks + len(targets)
    done = 0

    def tick():
        nonlocal done
        check_cancel(cancel)
        done += 1
        if progress is not None and done % 16 == 0:
            progress(min(done, total), total)

    check_cancel(cancel)
    canvases = {}
    blocks_laid = 0
    for c, (member, region) in plan.items():
        plate = class_plate(image, member)
        cands = block_candidates(member, block)
        canvas, stats = quilt(plate, cands, region, block=block, overlap=overlap, n_candidates=settings.candidates,
                              tolerance=settings.tolerance, rng=rng, tick=tick)
        canvases[c] = canvas
        blocks_laid += stats.blocks
    labels = tissue_t.labels if tissue_t is not None else np.zeros((h, w), np.int64)
    out = compose_classes(canvases, labels, settings.feather_px)
    chosen: dict[int, int] = {}
    if nuclei_target:
        assert src_nuclei is not None
        done = n_blocks
        sources = nucleus_shapes(src_nuclei.instances, src_nuclei.classes)
        pools: dict[int, list] = {}
        for s in sources:
            pools.setdefault(s.cls, []).append(s)
        assert nuclei_t is not None
        chosen = paste_all(out, nuclei_t.instances, targets, image.astype(np.float32), pools, sources,
                           ring_px=int(settings.ring_px), choices=int(settings.nucleus_choices), rng=rng, tick=tick)
    if progress is not None:
        progress(total, total)
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    info = {"mask_kind": "nuclei" if nuclei_target else "tissue", "classes_matched": matched,
            "classes_unmatched": unmatched, "block_px": block, "overlap_px": overlap, "blocks": blocks_laid,
            "source_rescale": round(factor, 4), "nuclei_pasted": len(chosen),
            "nucleus_sources": {int(k): int(v) for k, v in chosen.items()},
            "seconds": round(time.perf_counter() - started, 3)}
    return ExemplarOutput(result, notes, info)
