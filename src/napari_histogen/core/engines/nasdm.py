"""The NASDM synthesis engine: a nuclei mask in, H&E patches that follow it out.

The engine loads a model once and keeps it (``free()`` releases it). ``run`` checks the
mask against the model (class scheme, scale, size, empty), draws ``n_samples`` images in
batches, reports ``(step, total)`` and checks the cancel flag at every denoising step. A
cancelled run raises :class:`~napari_histogen.core.progress.Cancelled` and returns nothing.
Each result carries its provenance; the same request with the same seed on the same device
gives the same image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..diffusion.tiled import DEFAULT_OVERLAP, DEFAULT_TILE_BATCH, WEIGHTS
from ..errors import HistogenInputError
from ..masks import NucleiMask, resample_nuclei
from ..progress import ProgressCallback, check_cancel, sub_progress
from ..provenance import array_sha256, make_provenance
from .base import CancelFlag, EngineRequest, SynthesisResult

__all__ = ["NasdmRequest", "SynthesisResult", "NasdmEngine", "prepare_mask", "resample_nuclei", "default_steps",
           "model_lines", "model_summary", "read_model_config", "recommended_settings", "SAMPLERS", "VARIANCES"]

log = logging.getLogger(__name__)

ENGINE_NAME = "nasdm"
DEFAULT_STEPS_GPU = 250
DEFAULT_STEPS_CPU = 75
#: "ddpm" and "ddim" for pixel models; latent models take "dpmpp" (DPM-Solver++), "ddim", "ddpm"
SAMPLERS = ("ddpm", "ddim", "dpmpp", "dpmpp_sde")
#: variance of the pixel model's DDPM step; None in a request = the model's recommended one
VARIANCES = ("learned", "fixed_small")
#: guidance of pixel models whose record names none (NASDM paper form, eq. 7)
DEFAULT_GUIDANCE_PIXEL = 1.5
#: largest canvas side (px at the model's scale); larger masks are refused with a time estimate
MAX_CANVAS_PX = 4096
#: measured seconds per tile and denoising step (guided, one CPU thread; benchmarks/pathup_seams.py):
#: the embedded latent default (256 px tiles) and the embedded pixel model (128 px tiles)
SECONDS_PER_TILE_STEP_CPU = {"latent": 0.15, "pixel": 0.3}


def default_steps(device) -> int:
    """Respaced steps used when a request leaves them open."""
    return DEFAULT_STEPS_GPU if getattr(device, "type", str(device)) == "cuda" else DEFAULT_STEPS_CPU


@dataclass(kw_only=True)
class NasdmRequest(EngineRequest):
    """What to synthesize (the defaults here are the CLI's and the dock's).

    Parameters
    ----------
    nuclei : NucleiMask
        The conditioning mask (classes of the model's scheme).
    n_samples : int
        Images to draw for this mask.
    steps : int or None
        Sampling steps (1000 = the full chain). None: the model's recommendation
        (:func:`recommended_settings`: a latent model's validated few-step count; for pixel
        models :data:`DEFAULT_STEPS_GPU` (250) on CUDA, :data:`DEFAULT_STEPS_CPU` (75) on CPU).
    guidance : float or None
        Classifier-free guidance scale ``s`` in the NASDM paper's form ``eps(y) + s (eps(y) -
        eps(null))`` (the reference code's 1.5 is 0.5 here). None: the model's recommendation.
    sampler : {"ddpm", "ddim", "dpmpp", "dpmpp_sde"} or None
        None: the model's recommendation ("ddpm" for pixel models, "dpmpp" for latent ones).
    variance : {"learned", "fixed_small"} or None
        Variance of the DDPM step; None = the model's recommended one (its training record's
        ``sampler_variance``, else ``learned``).
    seed : int
        Sample ``k`` uses seed ``seed + k``.
    batch_size : int
        Samples per network call.
    resample : bool
        Resample a mask at another known scale to the model's µm/px (nearest); when False
        such a mask is refused.
    tile_overlap : float
        A mask larger than the model's patch is one canvas of overlapping patch-size tiles
        (PathUp patch-wise timestep tracking); the overlap is a fraction of a tile.
    tile_batch : int
        Tiles per network call on a large canvas (memory; the images do not depend on it).
    tile_weight : {"pathup", "cosine", "uniform"}
        How overlapping tiles are recombined (PathUp's eq. 6 distance weights by default).
    """

    nuclei: NucleiMask | None = None
    n_samples: int = 1
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    variance: str | None = None
    batch_size: int = 8
    resample: bool = True
    tile_overlap: float = DEFAULT_OVERLAP
    tile_batch: int = DEFAULT_TILE_BATCH
    tile_weight: str = "pathup"

    def problems(self) -> list[str]:
        out = super().problems()
        if not isinstance(self.nuclei, NucleiMask):
            out.append("Give a nuclei mask to synthesize from.")
        if self.steps is not None and not 1 <= int(self.steps) <= 1000:
            out.append(f"Steps must be between 1 and 1000, not {self.steps}.")
        if self.n_samples < 1 or self.n_samples > 10000:
            out.append(f"Number of samples must be between 1 and 10000, not {self.n_samples}.")
        if self.batch_size < 1:
            out.append("Batch size must be at least 1.")
        if self.guidance is not None and (not math.isfinite(self.guidance) or not (0 <= self.guidance <= 20)):
            out.append(f"Guidance must be between 0 and 20, not {self.guidance}.")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            out.append(f"Unknown sampler '{self.sampler}'; choose {' or '.join(SAMPLERS)}.")
        if self.variance is not None and self.variance not in VARIANCES:
            out.append(f"Unknown variance '{self.variance}'; choose {' or '.join(VARIANCES)}.")
        if not (math.isfinite(self.tile_overlap) and 0 <= self.tile_overlap <= 0.9):
            out.append(f"Tile overlap must be between 0 and 0.9 (a fraction of a tile), not {self.tile_overlap}.")
        if self.tile_batch < 1:
            out.append("Tile batch must be at least 1.")
        if self.tile_weight not in WEIGHTS:
            out.append(f"Unknown tile weight '{self.tile_weight}'; choose {' or '.join(WEIGHTS)}.")
        return out


def prepare_mask(nuclei: NucleiMask, config, *, resample: bool = True) -> tuple[NucleiMask, list[str]]:
    """Check ``nuclei`` against a model config; resample it to the model's scale if needed.

    Returns the mask to condition on (at the model's µm/px) and notes for the user.

    Raises
    ------
    HistogenInputError
        Empty mask, scheme mismatch, unclassified nuclei, a mask larger than the model's patch,
        or another scale with ``resample=False``.
    """
    from ..schemes import UNCLASSIFIED

    if nuclei is None or nuclei.n_nuclei == 0:
        raise HistogenInputError("The nuclei mask is empty: paint or load nuclei first (NASDM draws the tissue "
                                 "around the nuclei it is given).")
    model_scheme = config.class_scheme()
    if nuclei.scheme.name != model_scheme.name:
        raise HistogenInputError(
            f"The mask uses class scheme '{nuclei.scheme.name}' but the model was trained on '{model_scheme.name}' "
            f"({', '.join(f'{c.id}={c.name}' for c in model_scheme.classes)}). Convert the mask to "
            f"'{model_scheme.name}' classes, or choose a model trained on '{nuclei.scheme.name}'.")
    unclassified = [i for i, c in nuclei.classes.items() if c == UNCLASSIFIED]
    if unclassified:
        raise HistogenInputError(f"{len(unclassified)} nuclei have no class (e.g. id {unclassified[0]}); give every "
                                 "nucleus a class (palette / reclassify) before synthesis.")
    notes = []
    mask = nuclei
    model_mpp = float(config.mpp)
    if nuclei.mpp is None:
        notes.append(f"The mask has no scale; it was taken to be at the model's {model_mpp:g} µm/px.")
    elif abs(nuclei.mpp / model_mpp - 1) > 0.1:
        if not resample:
            raise HistogenInputError(
                f"The mask is at {nuclei.mpp:g} µm/px but the model works at {model_mpp:g} µm/px; resample it "
                "(allow resampling) or use a model trained at its scale.")
        mask = resample_nuclei(nuclei, model_mpp)
        notes.append(f"The mask was resampled from {nuclei.mpp:g} to {model_mpp:g} µm/px "
                     f"({nuclei.shape[1]}x{nuclei.shape[0]} -> {mask.shape[1]}x{mask.shape[0]} px, "
                     f"{mask.n_nuclei} of {nuclei.n_nuclei} nuclei kept).")
        if mask.n_nuclei == 0:
            raise HistogenInputError("No nucleus survives resampling the mask to the model's scale; "
                                     "check the mask's µm/px.")
    size = config.image_size
    h, w = mask.shape
    if h > MAX_CANVAS_PX or w > MAX_CANVAS_PX:
        minutes = estimate_seconds(config, (h, w)) / 60
        raise HistogenInputError(
            f"The mask is {w}x{h} px at {model_mpp:g} µm/px, above the {MAX_CANVAS_PX}x{MAX_CANVAS_PX} px limit "
            f"(about {minutes:.0f} min per image on one CPU thread); crop it into regions of at most "
            f"{MAX_CANVAS_PX} px per side.")
    if h > size or w > size:
        notes.append(f"The {w}x{h} px mask is larger than the model's {size}x{size} px patch: it is synthesized as "
                     f"one canvas of overlapping tiles (PathUp patch-wise timestep tracking).")
    return mask, notes


def canvas_shape(shape: tuple[int, int], config) -> tuple[int, int]:
    """The canvas a mask of ``shape`` (at the model's scale) is sampled on: at least one model patch
    per side, and a multiple of the latent downscale for latent models (padded with background)."""
    size = int(config.image_size)
    multiple = int(config.unet.get("downscale", 1)) if getattr(config, "family", "pixel") == "latent" else 1
    return tuple(max(size, -(-int(n) // multiple) * multiple) for n in shape)  # type: ignore[return-value]


def n_tiles_for(config, shape: tuple[int, int], overlap: float = DEFAULT_OVERLAP) -> int:
    """Tiles per denoising step for a mask of ``shape`` at the model's scale (1 = one patch)."""
    from ..diffusion.tiled import n_canvas_tiles

    ch, cw = canvas_shape(shape, config)
    size = int(config.image_size)
    if getattr(config, "family", "pixel") == "latent":
        d = int(config.unet.get("downscale", 8))
        return n_canvas_tiles(ch // d, cw // d, size // d, overlap)
    return n_canvas_tiles(ch, cw, size, overlap)


def estimate_seconds(config, shape: tuple[int, int], steps: int | None = None,
                     overlap: float = DEFAULT_OVERLAP) -> float:
    """Rough CPU time (one thread) for one image of a mask of ``shape`` at the model's scale."""
    steps = int(steps or recommended_settings(config)["steps"])
    per_tile_step = SECONDS_PER_TILE_STEP_CPU.get(getattr(config, "family", "pixel"), 0.2)
    return n_tiles_for(config, shape, overlap) * steps * per_tile_step


class NasdmEngine:
    """Keeps one NASDM model loaded and samples from it.

    Parameters
    ----------
    model : str or path, optional
        ``"default"`` / None (the embedded model), a cached model name, or a model path.
    device : {"auto", "cpu", "cuda"}
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast of the networks (denoiser and, for latent models, the TAEF2 decoder). ``auto``:
        bf16 on CUDA where supported (else fp16); on CPU bf16 where the CPU has native bf16
        (AVX-512 BF16 / AMX: 1.6-2.4x faster, realism and mask consistency unchanged within
        noise, docs/performance.md), else fp32.
    channels_last : bool, optional
        Keep the convolution weights channels-last (NHWC). None: on CPU, where oneDNN was
        measured faster with it; off on CUDA until measured there.
    compile : bool or str
        ``torch.compile`` the denoiser: True or a mode of ``torch.compile`` ("default",
        "reduce-overhead" = CUDA graphs on a GPU, "max-autotune"). See docs/performance.md for
        what it gave on CPU.
    """

    name = ENGINE_NAME

    def __init__(self, model=None, *, device: str = "auto", precision: str = "auto",
                 channels_last: bool | None = None, compile: bool | str = False):
        from ..devices import autocast_dtype, resolve_device
        from ..models.registry import embedded_sha256, resolve_nasdm
        from ..nasdm.checkpoint import load_nasdm

        self.model_spec = "default" if model in (None, "") else str(model)
        self.device = resolve_device(device)
        self.precision = precision
        self.autocast_dtype = autocast_dtype(self.device, precision, allow_cpu_bf16=True)
        expected = embedded_sha256(self.model_spec)
        self.loaded: Any = load_nasdm(resolve_nasdm(model), device=self.device, expected_sha256=expected)
        self.config = self.loaded.config
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        if self.channels_last:
            self._to_channels_last()
        self.compiled = str(compile) if isinstance(compile, str) else ("default" if compile else "")
        if self.compiled:
            self._compile(self.compiled)

    def _to_channels_last(self) -> None:
        import torch

        model = self.loaded.model
        if getattr(model, "is_latent", False):
            model.to_channels_last()
        else:
            model.to(memory_format=torch.channels_last)

    def _compile(self, mode: str) -> None:
        """``torch.compile`` the denoiser (the sampler calls it like the eager module)."""
        import torch

        modes = ("default", "reduce-overhead", "max-autotune")
        if mode not in modes:
            raise HistogenInputError(f"Unknown compile mode '{mode}'; choose one of {', '.join(modes)}.")
        if mode == "reduce-overhead" and self.device.type != "cuda":
            raise HistogenInputError("Compile mode reduce-overhead records CUDA graphs: it needs a CUDA device.")
        model = self.loaded.model
        if getattr(model, "is_latent", False):
            model.net.unet = torch.compile(model.net.unet, mode=mode, dynamic=False)
        else:
            self.loaded.model = torch.compile(model, mode=mode, dynamic=False)

    @property
    def scheme(self):
        return self.config.class_scheme()

    def free(self) -> None:
        """Release the network (and its GPU memory)."""
        import torch

        self.loaded = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        cfg = self.config
        return {"engine": ENGINE_NAME, "model": self.model_spec,
                "weights": str(self.loaded.weights_path.name) if self.loaded else None,
                "sha256": self.loaded.sha256 if self.loaded else None,
                "sha256_checked": bool(self.loaded and self.loaded.sha256_checked), "scheme": cfg.scheme["name"],
                "class_ids": cfg.class_ids, "mpp": cfg.mpp, "image_size": cfg.image_size,
                "variance": self.default_variance()}

    def default_variance(self) -> str:
        """The DDPM step variance this model recommends (its training record), else ``learned``."""
        return str(recommended_settings(self.config, self.device)["variance"])

    def recommended(self) -> dict:
        """Steps, guidance, sampler and variance this model was validated with."""
        return recommended_settings(self.config, self.device)

    def check(self, request: NasdmRequest) -> list[str]:
        """The request's problems, then the mask's against this model (scheme, scale, size)."""
        problems = request.problems()
        if self.loaded is None:
            problems.append("This engine was freed; create a new one.")
        if not problems and request.nuclei is not None:
            try:
                prepare_mask(request.nuclei, self.config, resample=request.resample)
            except HistogenInputError as err:
                problems.append(str(err))
        return problems

    def run(self, request: NasdmRequest, *, progress: ProgressCallback = None,
            cancel: CancelFlag = None) -> list[SynthesisResult]:
        """Synthesize ``request.n_samples`` images for the request's mask.

        Raises
        ------
        HistogenInputError
            The mask does not fit the model (see :func:`prepare_mask`).
        Cancelled
            ``cancel`` was set; no result is returned.
        """
        import torch

        from ..devices import describe_device
        from ..nasdm.condition import make_condition
        from ..nasdm.render import to_uint8_image
        from ..nasdm.sampling import sample

        if self.loaded is None:
            raise HistogenInputError("This engine was freed; create a new one.")
        request.check()
        rec = self.recommended()
        guidance = float(rec["guidance"] if request.guidance is None else request.guidance)
        sampler = str(request.sampler or rec["sampler"])
        request = replace(request, steps=request.steps or rec["steps"], guidance=guidance, sampler=sampler)
        variance = request.variance or rec["variance"]
        assert request.nuclei is not None  # check() refuses a request without a mask
        mask, notes = prepare_mask(request.nuclei, self.config, resample=request.resample)
        size = self.config.image_size
        h, w = mask.shape
        canvas = canvas_shape((h, w), self.config)
        padded = np.zeros(canvas, np.int32)  # background around the mask, cropped off after
        padded[:h, :w] = mask.instances
        if (h, w) != canvas:
            notes.append(f"The {w}x{h} px mask was padded with background to {canvas[1]}x{canvas[0]} for the model.")
        n_tiles = n_tiles_for(self.config, (h, w), request.tile_overlap)
        cond = torch.from_numpy(make_condition(padded, mask.classes, self.config.class_ids))[None].to(self.device)
        n, bs, steps = request.n_samples, request.batch_size, int(request.steps or default_steps(self.device))
        batches = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        total = len(batches) * steps * n_tiles  # progress counts tiles x steps
        images: list[np.ndarray] = []
        for b, batch in enumerate(batches):
            check_cancel(cancel)
            gens = [torch.Generator().manual_seed(int(request.seed) + k) for k in batch]
            out = sample(self.loaded.model, cond.expand(len(batch), -1, -1, -1), self.config.diffusion,
                         steps=steps, guidance=guidance, sampler=sampler, generators=gens,
                         progress=sub_progress(progress, b * steps * n_tiles, total), cancel=cancel,
                         autocast_dtype=self.autocast_dtype, variance=variance, tile=size,
                         tile_overlap=request.tile_overlap, tile_batch=request.tile_batch,
                         tile_weight=request.tile_weight)
            images.extend(to_uint8_image(img)[:h, :w] for img in out)
        log.debug("nasdm: %d image(s), %d steps, %s", len(images), steps, describe_device(self.device))
        return self._results(request, mask, notes, images, (steps, guidance, sampler, variance))

    def run_many(self, requests, *, progress: ProgressCallback = None,
                 cancel: CancelFlag = None) -> list:
        """Synthesize for several masks at once: the samples of all masks share network batches.

        Each request gets the images :meth:`run` gives it alone: sample ``k`` of a request uses
        seed ``request.seed + k`` whatever else is in its batch (one noise generator per sample,
        masks smaller than the patch padded with background as in :meth:`run`). Requests with the
        same sampling settings (steps, guidance, sampler, variance, batch size) are batched
        together, ``batch_size`` images per network call; a mask the sampler cannot batch (larger
        than the model's patch) is run alone with :meth:`run`.

        Returns
        -------
        list
            One entry per request, in order: its list of :class:`SynthesisResult`, or the
            :class:`HistogenInputError` that refused it (the other requests still run).

        Raises
        ------
        Cancelled
            ``cancel`` was set; no result is returned.
        """
        import torch

        from ..nasdm.condition import make_condition
        from ..nasdm.render import to_uint8_image
        from ..nasdm.sampling import sample

        if self.loaded is None:
            raise HistogenInputError("This engine was freed; create a new one.")
        size = self.config.image_size
        out: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, NasdmRequest, NucleiMask, list[str]]]] = {}
        alone: list[int] = []
        for i, request in enumerate(requests):
            try:
                request, settings = self._resolved(request)
                assert request.nuclei is not None  # check() refuses a request without a mask
                mask, notes = prepare_mask(request.nuclei, self.config, resample=request.resample)
            except HistogenInputError as err:
                out[i] = err
                continue
            if mask.shape[0] > size or mask.shape[1] > size:
                alone.append(i)
                continue
            groups.setdefault(settings + (int(request.batch_size),), []).append((i, request, mask, notes))
        plans = []  # (settings, jobs as (group position, sample index), batch size)
        for key, members in groups.items():
            jobs = [(m, k) for m, (_, req, _, _) in enumerate(members) for k in range(int(req.n_samples))]
            bs = key[-1]
            plans.append((key, members, [jobs[j: j + bs] for j in range(0, len(jobs), bs)]))
        total = sum(len(batches) * key[0] for key, _, batches in plans) or 1
        done = 0
        for (steps, guidance, sampler, variance, _bs), members, batches in plans:
            conds = []
            for _i, _req, mask, notes in members:
                h, w = mask.shape
                padded = np.zeros((size, size), np.int32)
                padded[:h, :w] = mask.instances
                if (h, w) != (size, size):
                    notes.append(f"The {w}x{h} px mask was padded with background to {size}x{size} for the model.")
                conds.append(torch.from_numpy(make_condition(padded, mask.classes, self.config.class_ids)))
            images: list[list[np.ndarray]] = [[] for _ in members]
            for batch in batches:
                check_cancel(cancel)
                cond = torch.stack([conds[m] for m, _ in batch]).to(self.device)
                gens = [torch.Generator().manual_seed(int(members[m][1].seed) + k) for m, k in batch]
                drawn = sample(self.loaded.model, cond, self.config.diffusion, steps=steps, guidance=guidance,
                               sampler=sampler, generators=gens, progress=sub_progress(progress, done, total),
                               cancel=cancel, autocast_dtype=self.autocast_dtype, variance=variance)
                done += steps
                for (m, _k), img in zip(batch, drawn):
                    h, w = members[m][2].shape
                    images[m].append(to_uint8_image(img)[:h, :w])
            for m, (i, req, mask, notes) in enumerate(members):
                out[i] = self._results(req, mask, notes, images[m], (steps, guidance, sampler, variance))
        for i in alone:
            try:
                out[i] = self.run(requests[i], cancel=cancel)
            except HistogenInputError as err:
                out[i] = err
        return out

    def _resolved(self, request: NasdmRequest) -> tuple[NasdmRequest, tuple]:
        """The request checked, and its ``(steps, guidance, sampler, variance)`` with the model's
        recommendations filled in (as :meth:`run` does)."""
        request.check()
        rec = self.recommended()
        guidance = float(rec["guidance"] if request.guidance is None else request.guidance)
        sampler = str(request.sampler or rec["sampler"])
        steps = int(request.steps or rec["steps"] or default_steps(self.device))
        variance = str(request.variance or rec["variance"])
        return request, (steps, guidance, sampler, variance)

    def _results(self, request: NasdmRequest, mask: NucleiMask, notes: list[str], images: list[np.ndarray],
                 settings: tuple) -> list[SynthesisResult]:
        """Results with provenance for the images of one request (as :meth:`run` makes them)."""
        from ..devices import describe_device

        steps, guidance, sampler, variance = settings
        original = request.nuclei
        assert original is not None
        notes = list(notes)
        if original.mpp is not None and mask is not original and original.mpp > float(self.config.mpp) * 1.1:
            from ..images import resize_image

            images = [resize_image(img, original.shape) for img in images]
            notes.append(f"The images were made at {self.config.mpp:g} µm/px and brought back to the mask's "
                         f"{original.mpp:g} µm/px.")
            mask = original
        mask_hash = array_sha256(mask.instances)
        # where the mask lies on its slide (a whole-slide annotation cut to its bounding box)
        slide = {"offset_xy": mask.metadata["offset_xy"]} if mask.metadata.get("offset_xy") is not None else {}
        results = []
        for k, image in enumerate(images):
            prov = make_provenance(
                "nasdm synthesis", engine=ENGINE_NAME, model=self.model_spec,
                model_file=self.loaded.weights_path.name, model_sha256=self.loaded.sha256,
                model_sha256_checked=self.loaded.sha256_checked, scheme=self.config.scheme["name"],
                steps=steps, guidance=guidance, sampler=sampler, variance=variance,
                seed=int(request.seed) + k, request_seed=int(request.seed), sample_index=k,
                mask_sha256=mask_hash, mask_shape=list(mask.shape), mpp=mask.mpp or self.config.mpp,
                model_mpp=self.config.mpp,
                device=describe_device(self.device),
                precision=str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "fp32",
                notes=list(notes), **slide)
            results.append(SynthesisResult(image=image, mask=mask, provenance=prov, notes=list(notes)))
        return results


def recommended_settings(config, device=None) -> dict:
    """``{"steps", "guidance", "sampler", "variance"}`` a model recommends (from its training record).

    Pixel models: ancestral DDPM with :func:`default_steps` and the recorded
    ``sampler_variance`` (else "learned") and ``default_guidance`` (else 1.5); latent models:
    DPM-Solver++ with the recorded ``default_steps`` and ``default_guidance``.
    """
    training = getattr(config, "training", None) or {}
    if getattr(config, "family", "pixel") == "latent":
        from ..latent.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS

        return {"steps": int(training.get("default_steps", DEFAULT_STEPS)),
                "guidance": float(training.get("default_guidance", 1.0)),
                "sampler": str(training.get("sampler", DEFAULT_SAMPLER)), "variance": "fixed_small"}
    return {"steps": int(training.get("default_steps", default_steps(device or "cpu"))),
            "guidance": float(training.get("default_guidance", DEFAULT_GUIDANCE_PIXEL)),
            "sampler": str(training.get("sampler", "ddpm")),
            "variance": str(training.get("sampler_variance", "learned"))}


def read_model_config(model=None):
    """The config of NASDM model ``model`` (as :class:`NasdmEngine` takes it) without loading its weights."""
    import json

    from ..models.registry import resolve_nasdm
    from ..nasdm.checkpoint import NasdmModelConfig, find_model_files

    _weights, sidecar = find_model_files(resolve_nasdm(model))
    if sidecar is None:
        return None
    return NasdmModelConfig.from_dict(json.loads(sidecar.read_text()), source=sidecar.name)


def model_summary(model=None) -> str:
    """One line for the dock: the model's classes, patch size and scale (empty when it has no config)."""
    cfg = read_model_config(model)
    if cfg is None:
        return ""
    scheme = cfg.class_scheme()
    names = ", ".join(c.name for c in scheme.classes)
    return f"{scheme.name} ({names}); {cfg.image_size} px at {cfg.mpp:g} µm/px"


def model_lines() -> list[str]:
    """What ``histogen models`` prints for NASDM: the models usable offline and the cache folder."""
    from ..models.registry import list_nasdm_models, model_cache_dir

    models = list_nasdm_models()
    lines = [f"{name:20s} {path}" for name, path in models.items()]
    if not models:
        lines.append("No NASDM models installed.")
    lines.append(f"(cache folder: {model_cache_dir()}; put a model's .safetensors + .json in a subfolder there)")
    return lines
