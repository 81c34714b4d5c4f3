"""The engine contract: registry, request defaults and checks, the model cache, the shared result type."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histogen.core.engines.base import (
    ENGINES,
    BatchReport,
    Engine,
    EngineCache,
    SynthesisResult,
    engine_info,
    request_defaults,
)
from napari_histogen.core.errors import HistogenInputError
from napari_histogen.core.masks import NucleiMask, TissueMask, match_classes
from napari_histogen.core.progress import sub_progress


def test_registry_names_both_engines_and_loads_their_classes():
    assert list(ENGINES)[:4] == ["nasdm", "transfer", "exemplar", "maskgen"]
    for name, info in ENGINES.items():
        assert info.engine_class().name == name
        assert "seed" in request_defaults(info.request_class())
        assert info.model_lines()  # at least the cache-folder line
    with pytest.raises(HistogenInputError, match="Unknown engine"):
        engine_info("nope")


def test_requests_carry_the_defaults_and_say_what_is_wrong():
    from napari_histogen.core.engines.nasdm import NasdmRequest
    from napari_histogen.core.engines.transfer import TransferRequest

    d = request_defaults(NasdmRequest)
    assert (d["n_samples"], d["variance"], d["seed"], d["batch_size"]) == (1, None, 0, 8)
    assert request_defaults(TransferRequest)["n_outputs"] == 4
    problems = NasdmRequest(steps=0, guidance=99, variance="wild", seed=-1).problems()
    assert len(problems) == 5  # seed, no mask, steps, guidance, variance
    with pytest.raises(HistogenInputError, match="Steps must be between"):
        NasdmRequest(nuclei=NucleiMask.create(np.ones((4, 4), int), {1: 1}, "consep"), steps=0).check()
    assert "No target mask given." in TransferRequest(source_image=np.zeros((8, 8, 3), np.uint8)).problems()


class _Fake:
    name = "fake"

    def __init__(self, model=None, **options):
        self.model, self.options, self.freed = model, options, False

    def describe(self):
        return {"model": self.model}

    def check(self, request):
        return []

    def run(self, request, *, progress=None, cancel=None):
        return []

    def free(self):
        self.freed = True


def test_cache_loads_once_per_key_and_releases():
    made = []

    def factory(name, model=None, **options):
        made.append((name, model, options))
        return _Fake(model, **options)

    cache = EngineCache(factory)
    a = cache.get("fake", "m", device="cpu")
    assert cache.get("fake", "m", device="cpu") is a and len(made) == 1
    b = cache.get("fake", "m", device="cuda")
    assert b is not a and cache.has("fake", "m", device="cuda") and len(cache) == 2
    assert isinstance(a, Engine)
    assert cache.release() == 2 and a.freed and b.freed and len(cache) == 0


def test_one_result_type_for_both_mask_kinds():
    nuclei = NucleiMask.create(np.ones((4, 4), int), {1: 1}, "consep")
    prov = {"parameters": {"seed": 7}}
    r = SynthesisResult(image=np.zeros((4, 4, 3), np.uint8), mask=nuclei, provenance=prov)
    assert r.nuclei is nuclei and r.seed == 7
    t = SynthesisResult(image=np.zeros((4, 4, 3), np.uint8), mask=TissueMask.create(np.ones((4, 4), int)),
                        provenance=prov)
    with pytest.raises(AttributeError):
        t.nuclei  # noqa: B018
    assert BatchReport().written == []


def test_class_matching_and_sub_progress():
    target = TissueMask.create(np.array([[0, 1], [2, 3]]), "tissue")
    match = match_classes([target], np.array([[0, 1], [1, 1]]))
    assert (match.matched, match.unmatched) == ([0, 1], [2, 3])
    assert target.describe_class(1).startswith("1 (") and target.describe_class(0).startswith("0 (")
    seen = []
    report = sub_progress(lambda d, t: seen.append((d, t)), 10, 30)
    report(5, 10)
    assert seen == [(15, 30)]
