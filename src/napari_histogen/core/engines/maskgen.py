"""The mask-generation engine (NASDM++): nucleus types in, nuclei masks out.

The engine keeps one mask-generation model loaded (:mod:`napari_histogen.core.maskgen`).
``run`` draws ``n_samples`` masks for the request's type vector (the classes to include, a
multi-hot vector of the model's scheme; an empty list is the unconditional null vector),
decodes each into a :class:`~napari_histogen.core.masks.NucleiMask` at the requested scale
(argmax classes, marker-controlled watershed of the generated distance map) and returns one
:class:`SynthesisResult` per mask. Mask generation draws no H&E: a result's ``image`` is the
mask drawn in its class colours on white (``extras["image_kind"] == "mask rendering"``); the
mask is what :func:`napari_histogen.core.generate.generate_pairs` hands to the NASDM engine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HistogenInputError
from ..progress import ProgressCallback, check_cancel, sub_progress
from ..provenance import array_sha256, make_provenance
from .base import CancelFlag, EngineRequest, SynthesisResult

__all__ = ["MaskGenRequest", "MaskGenEngine", "parse_types", "model_lines", "ENGINE_NAME"]

log = logging.getLogger(__name__)

ENGINE_NAME = "maskgen"
#: largest output side in pixels at the requested scale
MAX_SIDE_PX = 1024


def parse_types(types, scheme) -> list[int]:
    """Class ids of ``scheme`` from names (case-insensitive), ids, or a comma-separated string.

    Raises
    ------
    HistogenInputError
        A name or id the scheme does not have.
    """
    if types is None:
        return []
    items = [t.strip() for t in types.split(",")] if isinstance(types, str) else list(types)
    out: list[int] = []
    names = {n.lower(): cid for cid, n in zip(scheme.ids, scheme.names)}
    for item in items:
        if isinstance(item, str):
            if not item:
                continue
            if item.lower() in names:
                cid = names[item.lower()]
            elif item.lstrip("-").isdigit():
                cid = int(item)
            else:
                raise HistogenInputError(f"Unknown nucleus type '{item}' for scheme '{scheme.name}'; choose from "
                                         f"{', '.join(scheme.names)} (or their ids {', '.join(map(str, scheme.ids))}).")
        else:
            cid = int(item)
        if cid not in scheme.ids:
            raise HistogenInputError(f"Class id {cid} is not in scheme '{scheme.name}' "
                                     f"({', '.join(f'{i}={n}' for i, n in zip(scheme.ids, scheme.names))}).")
        if cid not in out:
            out.append(cid)
    return out


@dataclass(kw_only=True)
class MaskGenRequest(EngineRequest):
    """What masks to generate (the defaults here are the CLI's and the dock's).

    Parameters
    ----------
    types : list of str or int
        Nucleus types to include (names or ids of the model's scheme); empty = no types given
        (the unconditional model).
    n_samples : int
        Masks to draw; mask ``k`` uses seed ``seed + k``.
    steps : int or None
        Sampling steps; None = the model's recommendation.
    sampler : {"dpmpp", "dpmpp_sde", "ddim", "ddpm"} or None
        DPM-Solver++ as an ODE or an SDE (few steps), DDIM, or the ancestral DDPM chain (the
        long reference ``benchmarks/mask_generation.py --sampler ddpm`` compares with); None =
        the model's recommendation (the embedded default: ``dpmpp_sde``, which follows the
        long chain closely where the ODE merges more nuclei; docs/performance.md).
    guidance : float or None
        Classifier-free guidance ``s`` in ``out(y) + s (out(y) - out(null))``; None = the
        model's recommendation.
    mpp : float or None
        µm/px of the masks returned (None: the model's own scale). The model generates at its
        scale and the channels are resized before decoding (e.g. 0.25 for the default 40x
        image model).
    batch_size : int
        Masks per network call.
    """

    types: list = field(default_factory=list)
    n_samples: int = 1
    steps: int | None = None
    guidance: float | None = None
    mpp: float | None = None
    batch_size: int = 8
    sampler: str | None = None

    def problems(self) -> list[str]:
        out = super().problems()
        if not isinstance(self.types, (list, tuple)):
            out.append("Give the nucleus types as a list of names or ids.")
        if not 1 <= int(self.n_samples) <= 100000:
            out.append(f"Number of masks must be between 1 and 100000, not {self.n_samples}.")
        if self.steps is not None and not 1 <= int(self.steps) <= 1000:
            out.append(f"Steps must be between 1 and 1000, not {self.steps}.")
        if self.guidance is not None and (not math.isfinite(self.guidance) or not 0 <= self.guidance <= 20):
            out.append(f"Guidance must be between 0 and 20, not {self.guidance}.")
        if self.mpp is not None and (not math.isfinite(self.mpp) or not 0.05 <= self.mpp <= 10):
            out.append(f"Microns per pixel must be between 0.05 and 10, not {self.mpp}.")
        if int(self.batch_size) < 1:
            out.append("Batch size must be at least 1.")
        from ..maskgen.diffusion import SAMPLERS

        if self.sampler is not None and self.sampler not in SAMPLERS:
            out.append(f"Unknown sampler '{self.sampler}'; choose one of {', '.join(SAMPLERS)}.")
        return out


class MaskGenEngine:
    """Keeps one mask-generation model loaded and samples masks from it.

    Parameters
    ----------
    model : str or path, optional
        ``"default"`` / None (the embedded model), a cached model name, or a model path.
    device : {"auto", "cpu", "cuda"}
    precision : {"auto", "fp32", "bf16"}
        Autocast of the network: "auto" = bf16 on CUDA and on CPUs with bf16 kernels (AMX /
        AVX512-BF16: 2.3x faster here), else fp32. Masks are decoded by argmax and watershed,
        which bf16 rounding does not disturb.
    """

    name = ENGINE_NAME

    def __init__(self, model=None, *, device: str = "auto", precision: str = "auto"):
        from ..devices import resolve_device
        from ..maskgen.checkpoint import load_maskgen
        from ..models.registry import embedded_maskgen_sha256, resolve_maskgen

        self.model_spec = "default" if model in (None, "") else str(model)
        self.device = resolve_device(device)
        self.precision = precision
        from ..latent.train import training_dtype

        if precision not in ("auto", "fp32", "bf16"):
            raise HistogenInputError(f"Precision must be auto, fp32 or bf16 for mask generation, not {precision!r}.")
        self.autocast_dtype = training_dtype(precision, self.device)
        self.loaded: Any = load_maskgen(resolve_maskgen(model), device=self.device,
                                        expected_sha256=embedded_maskgen_sha256(self.model_spec))
        self.config = self.loaded.config

    @property
    def scheme(self):
        return self.config.class_scheme()

    def recommended(self) -> dict:
        """Steps, guidance and sampler the model was validated with (its training record;
        ``recommended_sampler`` where a measurement after training chose another sampler
        than the one its training previews used)."""
        from ..maskgen.diffusion import DEFAULT_GUIDANCE, DEFAULT_STEPS

        tr = self.config.training or {}
        return {"steps": int(tr.get("default_steps", DEFAULT_STEPS)),
                "guidance": float(tr.get("default_guidance", DEFAULT_GUIDANCE)),
                "sampler": str(tr.get("recommended_sampler", tr.get("sampler", "dpmpp")))}

    def describe(self) -> dict:
        cfg = self.config
        return {"engine": ENGINE_NAME, "model": self.model_spec,
                "weights": self.loaded.weights_path.name if self.loaded else None,
                "sha256": self.loaded.sha256 if self.loaded else None,
                "sha256_checked": bool(self.loaded and self.loaded.sha256_checked), "scheme": cfg.scheme["name"],
                "class_ids": list(cfg.class_ids), "mpp": cfg.mpp, "image_size": cfg.image_size}

    def free(self) -> None:
        """Release the network (and its GPU memory)."""
        import torch

        self.loaded = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def check(self, request: MaskGenRequest) -> list[str]:
        problems = request.problems()
        if self.loaded is None:
            problems.append("This engine was freed; create a new one.")
        if not problems:
            try:
                parse_types(request.types, self.scheme)
            except HistogenInputError as err:
                problems.append(str(err))
            side = self.config.image_size * self.config.mpp / float(request.mpp or self.config.mpp)
            if side > MAX_SIDE_PX:
                problems.append(f"Masks at {request.mpp:g} µm/px would be {side:.0f} px per side, above "
                                f"{MAX_SIDE_PX}; choose a coarser scale.")
        return problems

    def type_vector(self, class_ids) -> np.ndarray:
        """Multi-hot ``(K,)`` over the model's class ids."""
        return np.array([1.0 if int(c) in set(class_ids) else 0.0 for c in self.config.class_ids], np.float32)

    def run(self, request: MaskGenRequest, *, progress: ProgressCallback = None,
            cancel: CancelFlag = None) -> list[SynthesisResult]:
        """Generate ``request.n_samples`` nuclei masks.

        Raises
        ------
        HistogenInputError
            Bad request (unknown types, out-of-range settings).
        Cancelled
            ``cancel`` was set; no result is returned.
        """
        import torch

        from ..maskgen.diffusion import sample_masks
        from ..maskgen.target import decode_mask

        problems = self.check(request)
        if problems:
            raise HistogenInputError(" ".join(problems))
        class_ids = parse_types(request.types, self.scheme)
        rec = self.recommended()
        steps = int(request.steps or rec["steps"])
        guidance = float(rec["guidance"] if request.guidance is None else request.guidance)
        sampler = str(request.sampler or rec["sampler"])
        out_mpp = float(request.mpp or self.config.mpp)
        vector = self.type_vector(class_ids)
        n, bs = int(request.n_samples), int(request.batch_size)
        batches = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        masks = []
        for b, batch in enumerate(batches):
            check_cancel(cancel)
            gens = [torch.Generator().manual_seed(int(request.seed) + k) for k in batch]
            y = torch.from_numpy(np.tile(vector, (len(batch), 1)))
            out = sample_masks(self.loaded.model, y, self.config.diffusion, size=int(self.config.image_size),
                               steps=steps, guidance=guidance, sampler=sampler, generators=gens,
                               progress=sub_progress(progress, b * steps, len(batches) * steps), cancel=cancel,
                               autocast_dtype=self.autocast_dtype)
            for arr in out.cpu().numpy():
                masks.append(decode_mask(arr, self.config.class_ids, self.scheme, mpp=float(self.config.mpp),
                                         out_mpp=out_mpp))
        return self._results(request, masks, class_ids, vector, (steps, guidance, sampler), out_mpp)

    def _results(self, request, masks, class_ids, vector, settings, out_mpp) -> list[SynthesisResult]:
        from ..devices import describe_device
        from ..render import render_overlay

        steps, guidance, sampler = settings
        names = [self.scheme.name_of(c) for c in class_ids]
        results = []
        for k, mask in enumerate(masks):
            prov = make_provenance(
                "mask generation", engine=ENGINE_NAME, model=self.model_spec,
                model_file=self.loaded.weights_path.name, model_sha256=self.loaded.sha256,
                model_sha256_checked=self.loaded.sha256_checked, scheme=self.config.scheme["name"],
                types=names, type_ids=list(class_ids), type_vector=[float(v) for v in vector],
                type_vector_classes=list(self.config.class_ids), steps=steps, guidance=guidance, sampler=sampler,
                seed=int(request.seed) + k, request_seed=int(request.seed), sample_index=k,
                mask_sha256=array_sha256(mask.instances), mask_shape=list(mask.shape), mpp=out_mpp,
                model_mpp=self.config.mpp, n_nuclei=mask.n_nuclei, device=describe_device(self.device),
                precision=str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "fp32")
            notes = [] if mask.n_nuclei else ["The generated mask holds no nucleus."]
            white = np.full(mask.shape + (3,), 255, np.uint8)
            results.append(SynthesisResult(image=render_overlay(white, nuclei=mask, alpha=1.0), mask=mask,
                                           provenance=prov, notes=notes,
                                           extras={"image_kind": "mask rendering"}))
        return results


def model_lines() -> list[str]:
    """What ``histogen models`` prints for mask generation: the models usable offline and the cache folder."""
    from ..models.registry import list_maskgen_models, model_cache_dir

    models = list_maskgen_models()
    lines = [f"maskgen {name:12s} {path}" for name, path in models.items()]
    if not models:
        lines.append("No mask-generation models installed (train one: histogen train maskgen).")
    lines.append(f"(mask-generation cache folder: {model_cache_dir('maskgen')})")
    return lines
