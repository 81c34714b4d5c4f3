"""The appearance-transfer engine: a real source patch + its tissue mask and target masks in, labelled images out.

Zero-shot (nothing is trained): the method of the AstraZeneca paper (mask-guided cross-image
attention on Stable Diffusion 1.5, see :mod:`napari_histogen.core.transfer`). The engine
loads the model once and keeps it (``free()`` releases it); ``run`` checks the request,
brings the images to the model's working size, draws each output's flip/rotation and
structure image, and hands the denoising to
:meth:`~napari_histogen.core.transfer.pipeline.TransferRunner.generate` (the source's inversion
is cached: many targets from one source pay for it once). It returns one
:class:`~.base.SynthesisResult` per output: the image, the (flipped/rotated)
:class:`~napari_histogen.core.masks.TissueMask` it matches pixel for pixel, and its provenance.
It reports ``(step, total)`` and checks the cancel flag before every UNet call; a cancelled
run raises :class:`~napari_histogen.core.progress.Cancelled` and returns nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import HistogenInputError
from ..images import resize_image, to_rgb_uint8
from ..masks import ClassMatch, TissueMask, describe_class, match_classes, resize_labels
from ..progress import ProgressCallback
from ..provenance import array_sha256, make_provenance
from ..transfer.settings import TransferSettings
from .base import CancelFlag, EngineRequest, SynthesisResult

__all__ = ["TransferRequest", "TransferEngine", "SynthesisResult", "ENGINE_NAME", "MAX_OUTPUTS", "model_lines"]

ENGINE_NAME = "transfer"
MAX_OUTPUTS = 256


@dataclass(kw_only=True)
class TransferRequest(EngineRequest):
    """What to make (the defaults here are the CLI's and the dock's).

    Parameters
    ----------
    source_image : ndarray (H, W, 3) uint8
        The real patch whose appearance (stain, scanner, tissue) the outputs take
        (:func:`~napari_histogen.core.images.to_rgb_uint8` converts other images once, in
        :meth:`from_arrays` or by the caller).
    target_masks : list of TissueMask
        The masks the outputs follow (any class ids, 0 = unlabelled); output ``k`` follows
        mask ``k mod len(target_masks)`` (folder mode: other images' masks).
    source_mask : TissueMask, optional
        The source's mask, same class ids as the targets'; needed for masked AdaIN.
    n_outputs : int
        Images to make (the paper: 4 per annotated image); output ``k`` uses seed ``seed + k``.
    augment : bool
        Flip/rotate the target mask randomly for each output (the paper's augmentation).
    settings : TransferSettings
    source_mpp : float, optional
        The source's scale, checked against the targets'.
    source_name : str
        For provenance.
    """

    source_image: np.ndarray | None = None
    target_masks: list[TissueMask] = field(default_factory=list)
    source_mask: TissueMask | None = None
    n_outputs: int = 4
    augment: bool = True
    settings: TransferSettings = field(default_factory=TransferSettings)
    source_mpp: float | None = None
    source_name: str = "source"

    @classmethod
    def from_arrays(cls, source_image, target_mask, source_mask=None, *, scheme=None, target_mpp=None,
                    target_name="target", **fields) -> "TransferRequest":
        """A request from plain arrays (an image, one label map or a list of them, a label map):
        converted once here to the request's types; ``scheme`` names the classes of all masks."""
        given = list(target_mask) if isinstance(target_mask, (list, tuple)) else [target_mask]
        names = list(target_name) if isinstance(target_name, (list, tuple)) else [target_name] * len(given)
        targets = [TissueMask.create(t, scheme, mpp=target_mpp, name=str(nm)) for t, nm in zip(given, names)]
        source = None
        if source_mask is not None:
            source = TissueMask.create(source_mask, scheme, mpp=fields.get("source_mpp"), name="source mask")
        return cls(source_image=to_rgb_uint8(source_image, name="appearance image"), target_masks=targets,
                   source_mask=source, **fields)

    @property
    def scheme(self):
        """The scheme naming the classes: the first target's, else the source mask's."""
        for mask in (*self.target_masks, self.source_mask):
            if mask is not None and mask.scheme is not None:
                return mask.scheme
        return None

    def problems(self) -> list[str]:
        out = super().problems()
        if not 1 <= int(self.n_outputs) <= MAX_OUTPUTS:
            out.append(f"Number of outputs must be between 1 and {MAX_OUTPUTS}, not {self.n_outputs}.")
        try:
            self.settings.check()
        except HistogenInputError as err:
            out.append(str(err))
        image = None if self.source_image is None else np.asarray(self.source_image)
        if image is None or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            out.append("Give the appearance image as an RGB uint8 array (HxWx3).")
        if not self.target_masks:
            out.append("No target mask given.")
        elif any(t.is_empty for t in self.target_masks):
            out.append("The target mask is empty (all 0): paint or choose a mask with labelled regions.")
        if self.source_mask is not None and image is not None and self.source_mask.shape != image.shape[:2]:
            h, w = self.source_mask.shape
            out.append(f"The source mask is {w}x{h} px but the appearance image is {image.shape[1]}x{image.shape[0]}; "
                       "they must cover each other pixel for pixel.")
        if self.settings.adain == "masked" and self.source_mask is None:
            out.append("Mask-guided AdaIN needs the appearance image's own mask: choose the source mask "
                       "(or use global AdaIN, the paper's baseline).")
        return out

    def class_match(self) -> ClassMatch:
        """Target classes the source mask has (matched by id) and lacks; all matched without one."""
        return match_classes(self.target_masks, self.source_mask)


class TransferEngine:
    """Keeps one Stable Diffusion model loaded and runs appearance transfers with it.

    Parameters
    ----------
    model : str or path, optional
        A model folder, a name in the model cache, or a hub id present in the local Hugging Face
        cache (default ``$HISTOGEN_SD_MODEL`` or Stable Diffusion 1.5); never downloaded here.
    device : {"auto", "cpu", "cuda"}
    precision : {"auto", "fp32", "bf16", "fp16"}
        Network weights' dtype on CUDA (``auto`` = bf16 where supported); CPU runs fp32.
    mode : {"optimised", "straightforward"}
        ``straightforward`` is the reference's cost (fp32, explicit attention, two passes per
        step); for benchmarks and checks.
    parts : StableDiffusionParts, optional
        Already loaded parts (benchmarks build them in memory).
    """

    name = ENGINE_NAME

    def __init__(self, model=None, *, device: str = "auto", precision: str = "auto", mode: str = "optimised",
                 parts=None):
        from ..transfer.pipeline import MODES

        if mode not in MODES:
            raise HistogenInputError(f"Unknown mode '{mode}'; choose {' or '.join(MODES)}.")
        self.mode = mode
        if parts is None:
            from ..models.stable_diffusion import resolve_stable_diffusion

            resolve_stable_diffusion(model)  # fails in well under a second when the weights are absent
        from ..devices import autocast_dtype, resolve_device

        self.device = resolve_device(device)
        import torch

        dtype = None if mode == "straightforward" else autocast_dtype(self.device, precision)
        self.dtype = dtype or torch.float32
        if parts is None:
            from ..transfer.models import load_stable_diffusion

            parts = load_stable_diffusion(model, device=self.device, dtype=self.dtype)
        self.parts = parts
        self.model_spec = parts.spec

    def describe(self) -> dict:
        return self.parts.describe() if self.parts is not None else {"model": self.model_spec, "freed": True}

    def free(self) -> None:
        """Release the model (and its GPU memory)."""
        from ..transfer.models import free_stable_diffusion

        if self.parts is not None:
            free_stable_diffusion(self.parts)
        self.parts = None

    def check(self, request: TransferRequest) -> list[str]:
        """The request's problems (images, masks, settings), and a freed engine."""
        problems = request.problems()
        if self.parts is None:
            problems.append("This engine was freed; create a new one.")
        return problems

    # -- the run -------------------------------------------------------------------------------
    def run(self, request: TransferRequest, *, progress: ProgressCallback = None, cancel: CancelFlag = None,
            record=None) -> list[SynthesisResult]:
        """Make ``request.n_outputs`` images that follow the target masks with the source's appearance.

        Raises
        ------
        HistogenInputError
            Bad images or masks, masked AdaIN without a source mask, a freed engine.
        Cancelled
            ``cancel`` was set; nothing is returned.
        """
        import torch

        from ..devices import describe_device
        from ..transfer.pipeline import TransferRunner
        from ..transfer.render import augment, choose_augmentation, class_colours, render_structure

        problems = self.check(request)
        if problems:
            raise HistogenInputError(" ".join(problems))
        s = request.settings
        started = time.perf_counter()
        source, source_mask, targets = request.source_image, request.source_mask, request.target_masks
        assert source is not None  # check() refuses a request without an image
        scheme = request.scheme
        runner = TransferRunner(self.parts, s, mode=self.mode, record=record)
        size = runner.size
        match = request.class_match()
        notes = self._notes(request, runner, match)
        src_w = resize_image(source, (size, size))
        src_mask_w = None if source_mask is None else resize_labels(source_mask.labels.astype(np.int64), (size, size))

        colours = class_colours(source, None if source_mask is None else source_mask.labels.astype(np.int64))
        n, seed = int(request.n_outputs), int(request.seed)
        bases = [k % len(targets) for k in range(n)]
        augs = [choose_augmentation(seed + k, targets[b].shape) if request.augment else "identity"
                for k, b in enumerate(bases)]
        masks = [augment(targets[b].labels.astype(np.int64), a) for b, a in zip(bases, augs)]
        masks_w = [resize_labels(m, (size, size)) for m in masks]
        structures = [render_structure(m, colours, scheme=scheme, mode=s.render) for m in masks_w]
        plans: list = [None] * n
        if s.adain == "masked":
            plans, left = runner.adain_plan(src_mask_w, masks_w)
            small = sorted({c for lo in left for c in lo.get("too_small", [])})
            if small:
                notes.append(f"Classes {', '.join(describe_class(scheme, c) for c in small)} cover under 2 latent "
                             f"pixels ({runner.latent_side}x{runner.latent_side} grid) in a mask; no AdaIN for them.")

        per_group = int(s.batch_targets) or (4 if self.device.type == "cuda" else 1)
        images_w, cached = runner.generate(src_w, structures, [seed + k for k in range(n)], source_mask_w=src_mask_w,
                                           masks_w=masks_w, per_group=per_group,
                                           cache_key=(str(self.device), str(self.dtype)), progress=progress,
                                           cancel=cancel)
        images = [resize_image(img, masks[k].shape) for k, img in enumerate(images_w)]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started

        source_hash = array_sha256(source)
        source_mask_hash = None if source_mask is None else array_sha256(source_mask.labels.astype(np.int64))
        target_hashes = [array_sha256(t.labels.astype(np.int64)) for t in targets]
        precision = str(self.dtype).replace("torch.", "")
        results = []
        for k in range(n):
            target = targets[bases[k]]
            prov = make_provenance(
                "appearance transfer", engine=ENGINE_NAME, method="mask-guided cross-image attention (AstraZeneca)",
                model=self.parts.spec, model_path=str(self.parts.path) if self.parts.path else None,
                model_sha256=self.parts.sha256, mode=self.mode, settings=s.to_dict(),
                inversion_guidance_used=s.inversion_guidance_used, seed=seed + k,
                request_seed=seed, output_index=k, n_outputs=n, augmentation=augs[k],
                source=request.source_name, target=target.name, source_sha256=source_hash,
                source_mask_sha256=source_mask_hash, target_mask_sha256=target_hashes[bases[k]],
                mask_sha256=array_sha256(masks[k]), working_size=size, classes_matched=match.matched,
                classes_unmatched=match.unmatched, adain_classes=plans[k],
                scheme=None if scheme is None else scheme.name, appearance_inversion_cached=cached,
                device=describe_device(self.device), precision=precision, seconds_total=round(seconds, 3),
                notes=list(notes))
            mask = TissueMask(masks[k], scheme, target.mpp, target.name, {"augmentation": augs[k]})
            results.append(SynthesisResult(image=images[k], mask=mask, provenance=prov, notes=list(notes),
                                           extras={"structure": structures[k], "augmentation": augs[k]}))
        return results

    def _notes(self, request: TransferRequest, runner, match: ClassMatch) -> list[str]:
        """What the user should know before the outputs: skipped swaps, scales, resizing, missing classes."""
        size, scheme = runner.size, request.scheme
        source, targets = request.source_image, request.target_masks
        assert source is not None
        notes: list[str] = []
        if request.settings.swap and runner.missing_sides:
            notes.append("No decoder self-attention layer of this model has "
                         f"{', '.join(f'{m}x{m}' for m in runner.missing_sides)} tokens at {size} px; "
                         "those swaps were skipped.")
        target_mpp = targets[0].mpp
        if request.source_mpp and target_mpp and abs(float(request.source_mpp) / float(target_mpp) - 1) > 0.1:
            notes.append(f"The target mask is at {target_mpp:g} µm/px but the source at {request.source_mpp:g}; "
                         "textures are copied at the source's scale, so structures will not match the target's size.")
        if source.shape[:2] != (size, size):
            notes.append(f"The {source.shape[1]}x{source.shape[0]} px source was resized to the model's {size}x{size}.")
        for shape in dict.fromkeys(t.shape for t in targets):
            if shape != (size, size):
                notes.append(f"The {shape[1]}x{shape[0]} px target mask was resized to {size}x{size} "
                             "for the model and each output back to the mask's size.")
        if match.unmatched:
            notes.append(f"Target classes not in the source mask: "
                         f"{', '.join(describe_class(scheme, c) for c in match.unmatched)}; "
                         "they have no source statistics (no AdaIN) and are drawn in the structure image in "
                         "their scheme colour, else the source's mean colour.")
        return notes


def model_lines() -> list[str]:
    """What ``histogen models`` prints for appearance transfer: the Stable Diffusion models usable offline."""
    from ..models.stable_diffusion import list_sd_models, sd_cache_dir

    models = list_sd_models()
    lines = [f"{name:20s} {path}  (stable diffusion)" for name, path in models.items()]
    if not models:
        lines.append("No Stable Diffusion model on this machine (appearance transfer): run `histogen models fetch` "
                     "where there is internet and copy the folder here.")
    lines.append(f"(Stable Diffusion cache folder: {sd_cache_dir()})")
    return lines


def seconds_per_output(results) -> float:
    """Wall time of the run per output (from the provenance)."""
    if not results:
        return math.nan
    return results[0].provenance["parameters"]["seconds_total"] / len(results)
