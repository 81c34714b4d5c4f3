"""The engine contract: requests, one result type, the engine protocol, the registry, the model cache.

Every synthesis engine of the product has the same shape (docs/ARCHITECTURE.md, "Add an engine"):

- a **request** dataclass derived from :class:`EngineRequest`: typed fields with the product's
  defaults (the CLI and the docks read their defaults from it), validated in one place,
  :meth:`EngineRequest.problems` (user-facing sentences) / :meth:`EngineRequest.check`;
- an **engine** class following :class:`Engine`: ``describe()``, ``check(request)`` (the
  request's problems plus those against the loaded model), ``run(request, progress, cancel)``
  returning a list of :class:`SynthesisResult`, and ``free()``;
- an entry in :data:`ENGINES` (:class:`EngineInfo`): the name the CLI, the docks and
  ``histogen models`` use;
- batch folder runs (:mod:`.batch`) report with one :class:`BatchReport`.

Loaded models are kept by :class:`EngineCache` (one per dock, or per CLI run) and released
explicitly with :meth:`EngineCache.release`.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import HistogenInputError
from ..masks import NucleiMask, TissueMask
from ..progress import ProgressCallback

__all__ = ["EngineRequest", "SynthesisResult", "BatchReport", "Engine", "EngineInfo", "ENGINES", "engine_info",
           "engine_names", "create_engine", "EngineCache", "request_defaults", "CancelFlag"]

#: what engines accept as a cancel flag: a CancelToken, a threading.Event, a callable, or None
CancelFlag = Any


# -- requests ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class EngineRequest:
    """Base of every engine's request: what to make, with the product's defaults.

    Subclasses add their typed fields (with defaults: the one place defaults are written) and
    extend :meth:`problems`. ``seed`` is common (keyword-only): output ``k`` uses ``seed + k``.
    """

    seed: int = 0

    def problems(self) -> list[str]:
        """User-facing sentences saying what is wrong with the request (empty: nothing)."""
        try:
            seed = int(self.seed)
        except (TypeError, ValueError):
            return [f"Seed must be a whole number, not {self.seed!r}."]
        return [] if seed >= 0 else [f"Seed must be non-negative, not {self.seed}."]

    def check(self):
        """Raise :class:`HistogenInputError` with the first problem; return the request when there is none."""
        problems = self.problems()
        if problems:
            raise HistogenInputError(problems[0] if len(problems) == 1 else " ".join(problems))
        return self


def request_defaults(request_type) -> dict[str, Any]:
    """Field name -> default of a request dataclass (fields without a default are left out).

    The CLI's argument defaults and the docks' initial values come from here, so a default is
    written once, in the request.
    """
    out = {}
    for f in dataclasses.fields(request_type):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


# -- results -------------------------------------------------------------------------------------
@dataclass
class SynthesisResult:
    """One generated image and the mask it matches pixel for pixel, with its provenance.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8
    mask : NucleiMask or TissueMask
        The mask the image follows (after the engine's own resampling or flips).
    provenance : dict
        :func:`~napari_histogen.core.provenance.make_provenance` record (engine, model, sha256,
        every parameter, seed, mask hash, device, time).
    notes : list of str
        What the engine changed or noticed, for the user.
    extras : dict
        Engine-specific by-products (e.g. the transfer's ``structure`` image and ``augmentation``).
    """

    image: np.ndarray
    mask: NucleiMask | TissueMask
    provenance: dict
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def nuclei(self) -> NucleiMask:
        """The nuclei mask of a nuclei-conditioned engine (NASDM)."""
        if not isinstance(self.mask, NucleiMask):
            raise AttributeError("this result follows a tissue mask, not a nuclei mask (use .mask)")
        return self.mask

    @property
    def seed(self) -> int:
        return int(self.provenance["parameters"]["seed"])


@dataclass
class BatchReport:
    """What a batch (folder) run did: files written per output, inputs skipped with the reason."""

    written: list[tuple[str, dict]] = field(default_factory=list)   # (name, role -> path)
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (input, reason)


# -- the protocol --------------------------------------------------------------------------------
@runtime_checkable
class Engine(Protocol):
    """What every engine offers (structural: engines do not need to inherit anything)."""

    name: ClassVar[str]

    def describe(self) -> dict:
        """The loaded model: id, file, sha256, scheme, scale, size (for logs and the docks)."""

    def check(self, request) -> list[str]:
        """User-facing problems of ``request`` for this engine and its model (empty: it can run)."""

    def run(self, request, *, progress: ProgressCallback = None, cancel: CancelFlag = None) -> list[SynthesisResult]:
        """Make the request's outputs; report ``(done, total)``; raise ``Cancelled`` when cancelled."""

    def free(self) -> None:
        """Release the model and its (GPU) memory; the engine cannot run afterwards."""


# -- the registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineInfo:
    """A registry entry: names an engine without importing it (its module may pull in torch)."""

    name: str
    title: str
    summary: str
    engine: str     # "module:Class" of the engine
    request: str    # "module:Class" of its request
    models: str     # "module:function" returning the lines `histogen models` prints for it

    def _load(self, spec: str):
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)

    def engine_class(self):
        return self._load(self.engine)

    def request_class(self):
        return self._load(self.request)

    def model_lines(self) -> list[str]:
        return list(self._load(self.models)())


_PKG = "napari_histogen.core.engines"

#: the engines the product knows; the CLI (`synthesize`, `models`), the docks and
#: docs/ARCHITECTURE.md's "Add an engine" start here
ENGINES: dict[str, EngineInfo] = {
    "nasdm": EngineInfo(
        name="nasdm", title="NASDM", summary="H&E patches that follow a nuclei mask (nuclei-aware diffusion)",
        engine=f"{_PKG}.nasdm:NasdmEngine", request=f"{_PKG}.nasdm:NasdmRequest", models=f"{_PKG}.nasdm:model_lines"),
    "transfer": EngineInfo(
        name="transfer", title="Appearance transfer",
        summary="a real patch's look on new tissue masks, zero-shot (Stable Diffusion 1.5)",
        engine=f"{_PKG}.transfer:TransferEngine", request=f"{_PKG}.transfer:TransferRequest",
        models=f"{_PKG}.transfer:model_lines"),
    "exemplar": EngineInfo(
        name="exemplar", title="Example-based transfer",
        summary="a real patch's own pixels on new nuclei or tissue masks, on the CPU in seconds (no model)",
        engine=f"{_PKG}.exemplar:ExemplarEngine", request=f"{_PKG}.exemplar:ExemplarRequest",
        models=f"{_PKG}.exemplar:model_lines"),
    "maskgen": EngineInfo(
        name="maskgen", title="Mask generation (NASDM++)",
        summary="nuclei masks from the nucleus types wanted (a diffusion model over masks)",
        engine=f"{_PKG}.maskgen:MaskGenEngine", request=f"{_PKG}.maskgen:MaskGenRequest",
        models=f"{_PKG}.maskgen:model_lines"),
    "cosyn": EngineInfo(
        name="cosyn", title="Co-synthesis",
        summary="H&E patch + typed nuclei mask + distance map generated together from a point layout",
        engine=f"{_PKG}.cosyn:CosynEngine", request=f"{_PKG}.cosyn:CosynRequest", models=f"{_PKG}.cosyn:model_lines"),
}


def engine_names() -> list[str]:
    return list(ENGINES)


def engine_info(name: str) -> EngineInfo:
    try:
        return ENGINES[name]
    except KeyError:
        raise HistogenInputError(f"Unknown engine '{name}'; the engines are {', '.join(ENGINES)}.") from None


def create_engine(name: str, model=None, **options):
    """Load engine ``name`` with ``model`` (its default when None); ``options``: device, precision, …"""
    return engine_info(name).engine_class()(model, **options)


# -- the loaded-model cache ----------------------------------------------------------------------
class EngineCache:
    """Keeps loaded engines by (name, model, options) and releases them on request.

    Loading a model takes seconds to minutes; a dock keeps one cache for its lifetime and
    calls :meth:`release` when it closes. Thread-safe: a worker thread may load while the GUI
    thread asks :meth:`has`.
    """

    def __init__(self, factory: Callable[..., Any] = create_engine):
        self._factory = factory
        self._engines: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str, model=None, **options) -> tuple:
        return (name, None if model in (None, "") else str(model), tuple(sorted(options.items())))

    def has(self, name: str, model=None, **options) -> bool:
        with self._lock:
            return self.key(name, model, **options) in self._engines

    def get(self, name: str, model=None, **options):
        """The loaded engine for these arguments, loading it on first use."""
        key = self.key(name, model, **options)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self._engines[key] = self._factory(name, model, **options)
            return engine

    def put(self, engine, name: str, model=None, **options) -> None:
        """Keep an engine built elsewhere (benchmarks, tests with in-memory models)."""
        with self._lock:
            self._engines[self.key(name, model, **options)] = engine

    def release(self, name: str | None = None) -> int:
        """Free and forget the engines (all, or those of engine ``name``); returns how many."""
        with self._lock:
            keys = [k for k in self._engines if name is None or k[0] == name]
            engines = [self._engines.pop(k) for k in keys]
        for engine in engines:
            engine.free()
        return len(engines)

    def __len__(self) -> int:
        return len(self._engines)
