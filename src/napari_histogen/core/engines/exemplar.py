"""The example-based transfer engine: a source patch + its mask and target masks in, labelled images out, on a CPU.

The second appearance-transfer method beside :mod:`.transfer` (Stable Diffusion): no model, no
GPU, seconds per image. It fills each target mask with the source image's own pixels
(:func:`~napari_histogen.core.exemplar.exemplar_transfer`): regions by class-guided image
quilting, nuclei copied from source nuclei of the same class and similar shape, warped onto
the target outlines. Targets may be nuclei masks (H&E) or tissue masks (IHC epithelium/stroma).
Output ``k`` follows target ``k mod len(target_masks)`` with seed ``seed + k``; it reports
``(done, total)`` per quilted block and pasted nucleus and checks the cancel flag as often.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import HistogenInputError
from ..exemplar import ExemplarSettings, exemplar_transfer, missing_classes
from ..masks import NucleiMask, TissueMask
from ..progress import ProgressCallback, check_cancel
from ..provenance import array_sha256, make_provenance
from .base import CancelFlag, EngineRequest, SynthesisResult

__all__ = ["ExemplarRequest", "ExemplarEngine", "ENGINE_NAME", "MAX_OUTPUTS", "METHOD", "model_lines"]

ENGINE_NAME = "exemplar"
MAX_OUTPUTS = 256
METHOD = "example-based (texture by numbers + nuclei copied by class and shape)"
#: progress units per output
_UNITS = 1000


@dataclass(kw_only=True)
class ExemplarRequest(EngineRequest):
    """What to make (the defaults here are the CLI's and the dock's).

    Parameters
    ----------
    source_image : ndarray (H, W, 3) uint8
        The real patch whose pixels the outputs are built from.
    target_masks : list of NucleiMask or TissueMask
        The masks the outputs follow; output ``k`` follows mask ``k mod len(target_masks)``.
    source_nuclei : NucleiMask, optional
        The source's nuclei mask (needed for nuclei targets).
    source_tissue : TissueMask, optional
        The source's tissue mask (needed for tissue targets; class ids matched by id).
    n_outputs : int
        Images to make; output ``k`` uses seed ``seed + k``.
    settings : ExemplarSettings
    source_mpp : float, optional
        The source's scale; the source is resampled to a target's known scale.
    source_name : str
        For provenance.
    """

    source_image: np.ndarray | None = None
    target_masks: list[NucleiMask | TissueMask] = field(default_factory=list)
    source_nuclei: NucleiMask | None = None
    source_tissue: TissueMask | None = None
    n_outputs: int = 4
    settings: ExemplarSettings = field(default_factory=ExemplarSettings)
    source_mpp: float | None = None
    source_name: str = "source"

    @property
    def scheme(self):
        """The scheme naming the classes: the first target's, else the source mask's."""
        for mask in (*self.target_masks, self.source_nuclei, self.source_tissue):
            if mask is not None and mask.scheme is not None:
                return mask.scheme
        return None

    def problems(self) -> list[str]:
        out = super().problems()
        if not 1 <= int(self.n_outputs) <= MAX_OUTPUTS:
            out.append(f"Number of outputs must be between 1 and {MAX_OUTPUTS}, not {self.n_outputs}.")
        out.extend(self.settings.problems())
        image = None if self.source_image is None else np.asarray(self.source_image)
        if image is None or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            out.append("Give the appearance image as an RGB uint8 array (HxWx3).")
        if not self.target_masks:
            out.append("No target mask given.")
        for t in self.target_masks:
            if isinstance(t, TissueMask) and t.is_empty:
                out.append("The target mask is empty (all 0): paint or choose a mask with labelled regions.")
                break
            if isinstance(t, NucleiMask) and self.source_nuclei is None:
                out.append("A nuclei target needs the appearance image's nuclei mask: choose it as its mask.")
                break
            if isinstance(t, TissueMask) and self.source_tissue is None:
                out.append("A tissue target needs the appearance image's tissue mask: choose it as its mask.")
                break
        for mask, what in ((self.source_nuclei, "nuclei"), (self.source_tissue, "tissue")):
            if mask is not None and image is not None and image.ndim == 3 and mask.shape != image.shape[:2]:
                h, w = mask.shape
                out.append(f"The source {what} mask is {w}x{h} px but the appearance image is "
                           f"{image.shape[1]}x{image.shape[0]}; they must cover each other pixel for pixel.")
        return out

    def unmatched_classes(self) -> list[int]:
        """Target classes the source mask of the same kind lacks (over all targets)."""
        out: set[int] = set()
        for t in self.target_masks:
            out.update(missing_classes(t, self.source_nuclei, self.source_tissue)[1])
        return sorted(out)


class ExemplarEngine:
    """Runs example-based transfers (nothing to load: ``model`` and ``precision`` are accepted and ignored).

    Parameters
    ----------
    model : None
        The method has no model; anything else is refused.
    device : {"auto", "cpu"}
        CPU only ("auto" means the CPU).
    """

    name = ENGINE_NAME

    def __init__(self, model=None, *, device: str = "auto", precision: str = "auto"):
        if model not in (None, ""):
            raise HistogenInputError("Example-based transfer uses no model; leave the model empty.")
        if str(device) not in ("auto", "cpu"):
            raise HistogenInputError(f"Example-based transfer runs on the CPU; device '{device}' is not used by it "
                                     "(choose auto or cpu).")
        self.device = "cpu"
        self._freed = False

    def describe(self) -> dict:
        return {"model": "none (example-based, no model)", "path": None, "sha256": None, "device": "cpu",
                "method": METHOD, "freed": self._freed}

    def free(self) -> None:
        self._freed = True

    def check(self, request: ExemplarRequest) -> list[str]:
        problems = request.problems()
        if self._freed:
            problems.append("This engine was freed; create a new one.")
        return problems

    def run(self, request: ExemplarRequest, *, progress: ProgressCallback = None,
            cancel: CancelFlag = None) -> list[SynthesisResult]:
        """Make ``request.n_outputs`` images from the source's pixels that follow the target masks.

        Raises
        ------
        HistogenInputError
            Bad images or masks, a target kind without the source's mask of that kind.
        Cancelled
            ``cancel`` was set; nothing is returned.
        """
        problems = self.check(request)
        if problems:
            raise HistogenInputError(" ".join(problems))
        source = request.source_image
        assert source is not None
        started = time.perf_counter()
        n, seed = int(request.n_outputs), int(request.seed)
        targets = request.target_masks
        scheme = request.scheme
        source_hash = array_sha256(source)
        hashes = [array_sha256(t.instances if isinstance(t, NucleiMask) else t.labels.astype(np.int64))
                  for t in targets]
        outputs = []
        for k in range(n):
            check_cancel(cancel)
            target = targets[k % len(targets)]

            def part(done, total, _k=k):
                if progress is not None:
                    progress(_k * _UNITS + int(_UNITS * done / max(total, 1)), n * _UNITS)

            out = exemplar_transfer(source, target, source_nuclei=request.source_nuclei,
                                    source_tissue=request.source_tissue, settings=request.settings, seed=seed + k,
                                    source_mpp=request.source_mpp, progress=part, cancel=cancel)
            outputs.append(out)
        seconds = time.perf_counter() - started
        notes = list(dict.fromkeys(note for o in outputs for note in o.notes))
        results = []
        for k, out in enumerate(outputs):
            target = targets[k % len(targets)]
            info = dict(out.info)
            info.pop("nucleus_sources", None)
            name = getattr(target, "name", None) or target.metadata.get("name", "target")
            prov = make_provenance(
                "appearance transfer", engine=ENGINE_NAME, method=METHOD, model=None, settings=request.settings.to_dict(),
                seed=seed + k, request_seed=seed, output_index=k, n_outputs=n, source=request.source_name,
                target=str(name), source_sha256=source_hash, target_mask_sha256=hashes[k % len(targets)],
                mask_sha256=hashes[k % len(targets)], classes_matched=info.pop("classes_matched"),
                classes_unmatched=info.pop("classes_unmatched"), scheme=None if scheme is None else scheme.name,
                device="cpu", cpu=platform.processor() or platform.machine(), seconds_total=round(seconds, 3),
                seconds=info.pop("seconds"), details=info, notes=list(out.notes))
            results.append(SynthesisResult(image=out.image, mask=target, provenance=prov, notes=list(notes),
                                           extras={"nucleus_sources": out.info.get("nucleus_sources", {})}))
        if progress is not None:
            progress(n * _UNITS, n * _UNITS)
        return results


def model_lines() -> list[str]:
    """What ``histogen models`` prints for example-based transfer: it needs no model."""
    return ["(no model: example-based transfer builds images from the source's own pixels, on the CPU)"]
