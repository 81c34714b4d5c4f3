"""The co-synthesis engine: a typed point layout in, an H&E image + its nuclei mask + distance map out.

The model (:mod:`napari_histogen.core.cosyn`) generates the image, the semantic nuclei label
and the per-nucleus normalised distance map together; the nuclei instances come from the
distance map by marker-controlled watershed with one marker per input point, inside the
generated label's foreground (:func:`~napari_histogen.core.cosyn.layout.decode_instances`).
Each nucleus that holds a point takes that point's class; nuclei the watershed finds without a
point keep the generated label's majority class.

The request's points are in pixels at ``mpp``; when that differs from the model's scale, the
points and the image shape are scaled to the model's µm/px and the results are at the model's
scale (a note says so). Sides are padded to a multiple of 8 (TAEF2) times the UNet's downsampling
factor and cropped back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HistogenInputError
from ..masks import NucleiMask
from ..progress import ProgressCallback, check_cancel, sub_progress
from ..provenance import array_sha256, make_provenance
from .base import CancelFlag, EngineRequest, SynthesisResult

__all__ = ["CosynRequest", "CosynEngine", "resolve_cosyn", "list_cosyn_models", "model_lines", "DEFAULT_STEPS",
           "MAX_SIDE_PX"]

log = logging.getLogger(__name__)

ENGINE_NAME = "cosyn"
DEFAULT_STEPS = 20
#: largest side (px at the model's scale): the UNet attends over the whole latent grid
MAX_SIDE_PX = 1024
#: folder of the co-synthesis model shipped inside the package (may be absent)
EMBEDDED_FOLDER = "cosyn_default"


@dataclass(kw_only=True)
class CosynRequest(EngineRequest):
    """What to co-synthesize (the defaults here are the CLI's and the dock's).

    Parameters
    ----------
    points : ndarray (N, 2)
        Nucleus centres, row then column, in pixels at ``mpp`` (napari order).
    point_classes : ndarray (N,)
        Class id of each point, in the model's class scheme.
    shape : tuple of int
        ``(H, W)`` of the image to make, in pixels at ``mpp``.
    mpp : float or None
        Microns per pixel of ``points`` and ``shape``; None = the model's.
    prompt : list of int or None
        Nucleus types to ask for (the type prompt); None = the types present among the points.
    n_samples : int
        Images to draw for this layout (sample ``k`` uses seed ``seed + k``).
    steps : int
        Denoising steps (DDIM for image and distance, categorical posterior for the label).
    guidance : float
        Classifier-free guidance ``out(c) + s (out(c) - out(null))``.
    min_size : int
        Nuclei smaller than this many pixels are dropped after the watershed.
    """

    points: Any = None
    point_classes: Any = None
    shape: tuple = (256, 256)
    mpp: float | None = None
    prompt: list | None = None
    n_samples: int = 1
    steps: int = DEFAULT_STEPS
    guidance: float = 1.0
    min_size: int = 4

    def problems(self) -> list[str]:
        out = super().problems()
        pts = None
        try:
            pts = np.asarray(self.points, dtype=np.float64).reshape(-1, 2) if self.points is not None else None
        except (TypeError, ValueError):
            out.append("Points must be an (N, 2) array of row, column pixel coordinates.")
        if pts is None:
            if not out:
                out.append("Give a point layout (one point per nucleus, with its class).")
        elif len(pts) == 0:
            out.append("The point layout is empty: place at least one point (one per nucleus).")
        elif not np.all(np.isfinite(pts)):
            out.append("Point coordinates must be finite numbers.")
        elif self.point_classes is None or len(np.asarray(self.point_classes).reshape(-1)) != len(pts):
            out.append("Give one class per point.")
        try:
            h, w = (int(v) for v in self.shape)
            if h < 8 or w < 8:
                out.append(f"The image must be at least 8 x 8 px, not {w} x {h}.")
        except (TypeError, ValueError):
            out.append(f"Image shape must be two whole numbers (height, width), not {self.shape!r}.")
        if self.mpp is not None and not (math.isfinite(float(self.mpp)) and float(self.mpp) > 0):
            out.append(f"Microns per pixel must be positive, not {self.mpp}.")
        if not 1 <= int(self.steps) <= 1000:
            out.append(f"Steps must be between 1 and 1000, not {self.steps}.")
        if not 1 <= int(self.n_samples) <= 1000:
            out.append(f"Number of samples must be between 1 and 1000, not {self.n_samples}.")
        if not (math.isfinite(float(self.guidance)) and 0 <= float(self.guidance) <= 20):
            out.append(f"Guidance must be between 0 and 20, not {self.guidance}.")
        if int(self.min_size) < 0:
            out.append("The minimum nucleus size must not be negative.")
        return out


def _embedded_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "models" / EMBEDDED_FOLDER


def resolve_cosyn(spec=None) -> Path:
    """The model folder/file for ``spec``: None/"default" = the embedded model, else a path or a cache name."""
    from ..models.registry import model_cache_dir

    text = str(spec).strip() if spec not in (None, "") else "default"
    if text == "default":
        folder = _embedded_dir()
        if not any(folder.glob("*.safetensors")):
            raise HistogenInputError("This installation has no embedded co-synthesis model; give one with --model "
                                     "(a training run's model/ folder from `histogen train cosyn`).")
        return folder
    path = Path(text).expanduser()
    if path.exists():
        return path
    cached = model_cache_dir("cosyn") / text
    if cached.exists():
        return cached
    raise HistogenInputError(f"No co-synthesis model '{text}': not a file or folder, and not in "
                             f"{model_cache_dir('cosyn')}. Give the path of a cosyn model or its folder.")


def list_cosyn_models() -> dict[str, Path]:
    from ..models.registry import model_cache_dir

    out = {}
    if any(_embedded_dir().glob("*.safetensors")):
        out["default"] = _embedded_dir()
    cache = model_cache_dir("cosyn")
    if cache.is_dir():
        out.update({p.name: p for p in sorted(cache.iterdir()) if p.is_dir() and any(p.glob("*.safetensors"))})
    return out


def model_lines() -> list[str]:
    """What ``histogen models`` prints for co-synthesis."""
    from ..models.registry import model_cache_dir

    models = list_cosyn_models()
    lines = [f"{name:20s} {path}" for name, path in models.items()] or ["No co-synthesis models installed."]
    lines.append(f"(cache folder: {model_cache_dir('cosyn')}; put a model's .safetensors + .json in a subfolder)")
    return lines


class CosynEngine:
    """Loads a co-synthesis model once; :meth:`run` turns point layouts into image + mask + distance map.

    Parameters
    ----------
    model : str, path or CosynModel, optional
        A model spec (:func:`resolve_cosyn`) or an already loaded model (tests, benchmarks).
    device : {"auto", "cpu", "cuda"}
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast on CUDA; CPU runs fp32.
    """

    name = ENGINE_NAME

    def __init__(self, model=None, *, device: str = "auto", precision: str = "auto"):
        from ..cosyn.checkpoint import CosynModel, load_cosyn
        from ..devices import autocast_dtype, resolve_device

        self.device = resolve_device(device)
        self.autocast_dtype = autocast_dtype(self.device, precision)
        if isinstance(model, CosynModel):
            self.model_spec = "in-memory"
            self.loaded: Any = model
        else:
            self.model_spec = "default" if model in (None, "") else str(model)
            self.loaded = load_cosyn(resolve_cosyn(model), device=self.device)

    @property
    def config(self):
        return self.loaded.config

    @property
    def scheme(self):
        return self.config.class_scheme()

    def free(self) -> None:
        self.loaded = None

    def describe(self) -> dict:
        cfg = self.loaded.config if self.loaded else None
        return {"engine": ENGINE_NAME, "model": self.model_spec,
                "weights": self.loaded.weights_path.name if self.loaded and self.loaded.weights_path else None,
                "sha256": self.loaded.sha256 if self.loaded else None,
                "scheme": cfg.scheme["name"] if cfg else None, "class_ids": cfg.class_ids if cfg else None,
                "mpp": cfg.mpp if cfg else None, "image_size": cfg.net_config().image_size if cfg else None,
                "steps_trained": (cfg.training or {}).get("steps") if cfg else None}

    def check(self, request: CosynRequest) -> list[str]:
        problems = request.problems()
        if self.loaded is None:
            problems.append("This engine was freed; create a new one.")
            return problems
        if not problems:
            try:
                self._prepare(request)
            except HistogenInputError as err:
                problems.append(str(err))
        return problems

    def _prepare(self, request: CosynRequest):
        """Points, classes, prompt and shapes at the model's scale; notes for the user."""
        from ..cosyn.layout import class_index, point_map, prompt_vector

        cfg = self.loaded.config
        class_ids = [int(c) for c in cfg.class_ids]
        pts = np.asarray(request.points, dtype=np.float64).reshape(-1, 2)
        cls = np.asarray(request.point_classes, dtype=np.int64).reshape(-1)
        class_index(cls, class_ids)  # raises for classes the model lacks
        notes = []
        h, w = (int(v) for v in request.shape)
        model_mpp = float(cfg.mpp)
        if request.mpp is not None and abs(float(request.mpp) / model_mpp - 1) > 0.01:
            scale = float(request.mpp) / model_mpp
            pts = pts * scale
            h, w = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
            notes.append(f"Points at {float(request.mpp):g} µm/px were scaled to the model's {model_mpp:g} µm/px; "
                         f"the outputs are {w} x {h} px at {model_mpp:g} µm/px.")
        if max(h, w) > MAX_SIDE_PX:
            raise HistogenInputError(f"The image would be {w} x {h} px at the model's scale; co-synthesis makes at "
                                     f"most {MAX_SIDE_PX} px per side. Split the layout into regions.")
        inside = (pts[:, 0] > -0.5) & (pts[:, 0] < h - 0.5) & (pts[:, 1] > -0.5) & (pts[:, 1] < w - 0.5)
        if not inside.any():
            raise HistogenInputError("No point lies inside the image; check the image shape and the points.")
        if not inside.all():
            notes.append(f"{int((~inside).sum())} point(s) outside the {w} x {h} px image were left out.")
            pts, cls = pts[inside], cls[inside]
        net = cfg.net_config()
        multiple = int(net.downscale) * 2 ** (len(net.channel_mult) - 1)  # TAEF2's 8 x the UNet's downsamplings
        ch, cw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        if (ch, cw) != (h, w):
            notes.append(f"The {w} x {h} px canvas was padded to {cw} x {ch} (a multiple of {multiple}) and "
                         "cropped back.")
        present = sorted({int(c) for c in cls}) if request.prompt is None else [int(c) for c in request.prompt]
        prompt = prompt_vector(present, class_ids)
        pmap = point_map(pts, cls, (ch, cw), class_ids)
        return pts, cls, (h, w), pmap, prompt, present, notes

    def run(self, request: CosynRequest, *, progress: ProgressCallback = None,
            cancel: CancelFlag = None) -> list[SynthesisResult]:
        """Co-synthesize ``request.n_samples`` (image, nuclei mask, distance map) for the request's layout.

        Raises
        ------
        HistogenInputError
            Bad input, or classes the model does not know.
        Cancelled
            ``cancel`` was set; no result is returned.
        """
        from ..cosyn.layout import decode_instances
        from ..devices import describe_device

        if self.loaded is None:
            raise HistogenInputError("This engine was freed; create a new one.")
        request.check()
        pts, cls, (h, w), pmap, prompt, present, notes = self._prepare(request)
        cfg = self.loaded.config
        steps, n = int(request.steps), int(request.n_samples)
        results = []
        for k in range(n):
            check_cancel(cancel)
            images, labels, dists = self.loaded.generate(
                pmap[None], prompt[None], seeds=[int(request.seed) + k], steps=steps,
                guidance=float(request.guidance), progress=sub_progress(progress, k * steps, n * steps),
                cancel=cancel, autocast_dtype=self.autocast_dtype)
            image, label, dist = images[0][:h, :w], labels[0][:h, :w], dists[0][:h, :w]
            inst, table = decode_instances(label, dist, pts, cls, cfg.class_ids, min_size=int(request.min_size))
            mask = NucleiMask.create(inst, table, cfg.class_scheme(), mpp=float(cfg.mpp), name="generated nuclei")
            seed = int(request.seed) + k
            prov = make_provenance(
                "co-synthesis", engine=ENGINE_NAME, model=self.model_spec,
                weights=self.loaded.weights_path.name if self.loaded.weights_path else None,
                sha256=self.loaded.sha256, model_steps=(cfg.training or {}).get("steps"), seed=seed, steps=steps,
                guidance=float(request.guidance), prompt=present, n_points=int(len(pts)),
                points_sha256=array_sha256(np.ascontiguousarray(np.column_stack([pts, cls]))),
                shape=[h, w], mpp=float(cfg.mpp), request_mpp=request.mpp, min_size=int(request.min_size),
                instances="marker-controlled watershed of the generated distance map, one marker per point",
                device=describe_device(self.device))
            results.append(SynthesisResult(image=image, mask=mask, provenance=prov, notes=list(notes),
                                           extras={"distance": dist.astype(np.float32), "label": label}))
        log.debug("cosyn: %d output(s), %d steps", len(results), steps)
        return results
