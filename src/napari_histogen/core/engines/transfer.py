"""The appearance-transfer engine: a real source patch + its mask and a target mask in, labelled images out.

Zero-shot (nothing is trained): the method of the AstraZeneca paper (mask-guided cross-image
attention on Stable Diffusion 1.5, see :mod:`napari_histogen.core.transfer`). The engine
loads the model once and keeps it (``free()`` releases it); ``run`` checks the request,
brings the images to the model's working size, inverts the source (cached: many targets from
one source pay for its inversion once) and each target mask's structure image, runs the
transfer, and returns one result per output: the image, the (flipped/rotated) target mask it
matches pixel for pixel, and its provenance. It reports ``(step, total)`` and checks the cancel
flag before every UNet call; a cancelled run raises
:class:`~napari_histogen.core.progress.Cancelled` and returns nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import HistogenInputError
from ..progress import ProgressCallback, check_cancel
from ..provenance import array_sha256, make_provenance
from ..transfer.settings import TransferSettings

__all__ = ["TransferRequest", "TransferResult", "TransferEngine", "ENGINE_NAME", "MAX_OUTPUTS"]

ENGINE_NAME = "transfer"
MAX_OUTPUTS = 256


@dataclass
class TransferRequest:
    """What to make.

    Parameters
    ----------
    source_image : ndarray (H, W, 3)
        The real patch whose appearance (stain, scanner, tissue) the outputs take.
    target_mask : ndarray (H2, W2) int, or a list of them
        The label map the outputs follow (0 = unlabelled; any class ids). With a list,
        output ``k`` follows mask ``k mod len(list)`` (folder mode: other images' masks).
    source_mask : ndarray (H, W) int, optional
        The source's label map, same class ids as the target's; needed for masked AdaIN.
    n_outputs : int
        Images to make; output ``k`` uses seed ``seed + k``.
    augment : bool
        Flip/rotate the target mask randomly for each output (the paper's augmentation).
    scheme : ClassScheme or str, optional
        Names and colours of the classes (reports, the ``scheme`` rendering).
    source_mpp, target_mpp : float, optional
        Scales, checked against each other.
    source_name : str
    target_name : str or list of str
        Names for provenance (one per target mask with a list).
    """

    source_image: np.ndarray
    target_mask: object
    source_mask: np.ndarray | None = None
    n_outputs: int = 1
    augment: bool = True
    seed: int = 0
    settings: TransferSettings = field(default_factory=TransferSettings)
    scheme: object = None
    source_mpp: float | None = None
    target_mpp: float | None = None
    source_name: str = "source"
    target_name: object = "target"

    def check(self) -> None:
        if not 1 <= int(self.n_outputs) <= MAX_OUTPUTS:
            raise HistogenInputError(f"Number of outputs must be between 1 and {MAX_OUTPUTS}, not {self.n_outputs}.")
        if int(self.seed) < 0:
            raise HistogenInputError(f"Seed must be non-negative, not {self.seed}.")
        self.settings.check()


@dataclass
class TransferResult:
    """One in-silico image and the label map it matches pixel for pixel."""

    image: np.ndarray
    mask: np.ndarray
    provenance: dict
    notes: list = field(default_factory=list)
    structure: np.ndarray | None = None  # the rendered structure image (working size)
    augmentation: str = "identity"


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

    # -- the run -------------------------------------------------------------------------------
    def run(self, request: TransferRequest, *, progress: ProgressCallback = None, cancel=None,
            record=None) -> list[TransferResult]:
        """Make ``request.n_outputs`` images that follow the target mask with the source's appearance.

        Raises
        ------
        HistogenInputError
            Bad images or masks, masked AdaIN without a source mask, a freed engine.
        Cancelled
            ``cancel`` was set; nothing is returned.
        """
        import torch

        from ..devices import describe_device
        from ..images import to_rgb_uint8
        from ..masks import as_label_image
        from ..schemes import get_scheme
        from ..transfer.inversion import image_sha256, inversion_cache
        from ..transfer.pipeline import TransferRunner
        from ..transfer.render import (augment, choose_augmentation, class_colours, render_structure, resize_image,
                                       resize_mask)

        if self.parts is None:
            raise HistogenInputError("This engine was freed; create a new one.")
        request.check()
        s = request.settings
        started = time.perf_counter()
        source = to_rgb_uint8(request.source_image, name="appearance image")
        given = request.target_mask if isinstance(request.target_mask, (list, tuple)) else [request.target_mask]
        if not given:
            raise HistogenInputError("No target mask given.")
        targets = [as_label_image(t, name="target mask").astype(np.int64) for t in given]
        target_names = (list(request.target_name) if isinstance(request.target_name, (list, tuple))
                        else [request.target_name] * len(targets))
        source_mask = None
        if request.source_mask is not None:
            source_mask = as_label_image(request.source_mask, name="source mask").astype(np.int64)
            if source_mask.shape != source.shape[:2]:
                raise HistogenInputError(f"The source mask is {source_mask.shape[1]}x{source_mask.shape[0]} px but the "
                                         f"appearance image is {source.shape[1]}x{source.shape[0]}; they must cover "
                                         "each other pixel for pixel.")
        if s.adain == "masked" and source_mask is None:
            raise HistogenInputError("Mask-guided AdaIN needs the appearance image's own mask: choose the source mask "
                                     "(or use global AdaIN, the paper's baseline).")
        for target in targets:
            if not target.any():
                raise HistogenInputError("The target mask is empty (all 0): paint or choose a mask with labelled regions.")
        scheme = get_scheme(request.scheme) if request.scheme is not None else None

        runner = TransferRunner(self.parts, s, mode=self.mode, record=record)
        size = runner.size
        notes: list[str] = []
        if s.swap and runner.missing_sides:
            notes.append("No decoder self-attention layer of this model has "
                         f"{', '.join(f'{m}x{m}' for m in runner.missing_sides)} tokens at {size} px; "
                         "those swaps were skipped.")
        if (request.source_mpp and request.target_mpp
                and abs(float(request.source_mpp) / float(request.target_mpp) - 1) > 0.1):
            notes.append(f"The target mask is at {request.target_mpp:g} µm/px but the source at {request.source_mpp:g}; "
                         "textures are copied at the source's scale, so structures will not match the target's size.")
        if source.shape[:2] != (size, size):
            notes.append(f"The {source.shape[1]}x{source.shape[0]} px source was resized to the model's {size}x{size}.")
        for shape in dict.fromkeys(t.shape for t in targets):
            if shape != (size, size):
                notes.append(f"The {shape[1]}x{shape[0]} px target mask was resized to {size}x{size} "
                             "for the model and each output back to the mask's size.")
        src_w = resize_image(source, (size, size))
        src_mask_w = None if source_mask is None else resize_mask(source_mask, (size, size))

        def name_of(cid):
            if scheme is not None and cid in scheme:
                return f"{cid} ({scheme.name_of(cid)})"
            return "0 (unlabelled)" if cid == 0 else str(cid)

        target_ids = sorted({int(i) for t in targets for i in np.unique(t)})
        matched, unmatched = target_ids, []
        if source_mask is not None:
            source_ids = set(int(i) for i in np.unique(source_mask))
            matched = [c for c in target_ids if c in source_ids]
            unmatched = [c for c in target_ids if c not in source_ids]
            if unmatched:
                notes.append(f"Target classes not in the source mask: {', '.join(name_of(c) for c in unmatched)}; "
                             "they have no source statistics (no AdaIN) and are drawn in the structure image in "
                             "their scheme colour, else the source's mean colour.")

        colours = class_colours(source, source_mask)
        n = int(request.n_outputs)
        bases = [k % len(targets) for k in range(n)]
        augs = [choose_augmentation(int(request.seed) + k, targets[b].shape) if request.augment else "identity"
                for k, b in enumerate(bases)]
        masks = [augment(targets[b], a) for b, a in zip(bases, augs)]
        masks_w = [resize_mask(m, (size, size)) for m in masks]
        structures = [render_structure(m, colours, scheme=scheme, mode=s.render) for m in masks_w]
        if s.adain == "masked":
            plans, left = runner.adain_plan(src_mask_w, masks_w)
            small = sorted({c for lo in left for c in lo.get("too_small", [])})
            if small:
                notes.append(f"Classes {', '.join(name_of(c) for c in small)} cover under 2 latent pixels "
                             f"({runner.latent_side}x{runner.latent_side} grid) in a mask; no AdaIN for them.")
        else:
            plans = [None] * n

        per_group = int(s.batch_targets) or (4 if self.device.type == "cuda" else 1)
        groups = [list(range(i, min(i + per_group, n))) for i in range(0, n, per_group)]
        k_run = len(runner.schedule)
        cache = inversion_cache()
        key = ("app", str(self.parts.path or id(self.parts)), str(self.device), str(self.dtype), self.mode,
               image_sha256(src_w), s.inversion_key(), int(s.inversion_seed), size)
        app_inv = cache.get(key)
        cached = app_inv is not None
        total = (0 if cached else k_run) + len(groups) * 2 * k_run
        done = [0]

        def tick(steps: int) -> None:
            done[0] += int(steps)
            if progress is not None:
                progress(min(done[0], total), total)

        if not cached:
            app_inv = runner.invert(runner.encode(src_w), [s.inversion_seed], tick=tick, cancel=cancel)
            cache.put(key, app_inv)
        images: list[np.ndarray] = [None] * n
        for group in groups:
            check_cancel(cancel)
            struct_inv = runner.invert(runner.encode(np.stack([structures[k] for k in group])),
                                       [int(request.seed) + k for k in group], tick=tick, cancel=cancel)
            out = runner.transfer(app_inv, struct_inv, source_mask=src_mask_w,
                                  target_masks=[masks_w[k] for k in group], tick=tick, cancel=cancel)
            check_cancel(cancel)
            for k, img in zip(group, runner.decode(out)):
                images[k] = resize_image(img, masks[k].shape)
        check_cancel(cancel)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started

        results = []
        source_hash = array_sha256(source)
        source_mask_hash = None if source_mask is None else array_sha256(source_mask)
        target_hashes = [array_sha256(t) for t in targets]
        precision = str(self.dtype).replace("torch.", "")
        for k in range(n):
            prov = make_provenance(
                "appearance transfer", engine=ENGINE_NAME, method="mask-guided cross-image attention (AstraZeneca)",
                model=self.parts.spec, model_path=str(self.parts.path) if self.parts.path else None,
                model_sha256=self.parts.sha256, mode=self.mode, settings=s.to_dict(), seed=int(request.seed) + k,
                request_seed=int(request.seed), output_index=k, n_outputs=n, augmentation=augs[k],
                source=request.source_name, target=target_names[bases[k]], source_sha256=source_hash,
                source_mask_sha256=source_mask_hash, target_mask_sha256=target_hashes[bases[k]],
                mask_sha256=array_sha256(masks[k]), working_size=size, classes_matched=matched,
                classes_unmatched=unmatched, adain_classes=plans[k], scheme=None if scheme is None else scheme.name,
                appearance_inversion_cached=cached, device=describe_device(self.device), precision=precision,
                seconds_total=round(seconds, 3), notes=list(notes))
            results.append(TransferResult(image=images[k], mask=masks[k], provenance=prov, notes=list(notes),
                                          structure=structures[k], augmentation=augs[k]))
        return results


def seconds_per_output(results) -> float:
    """Wall time of the run per output (from the provenance)."""
    if not results:
        return math.nan
    return results[0].provenance["parameters"]["seconds_total"] / len(results)
