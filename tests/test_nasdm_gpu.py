"""NASDM on CUDA (bf16/fp16 autocast): run whenever a GPU is present, skipped otherwise."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_engine_on_cuda_matches_cpu_closely(tiny_nasdm, precision):
    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
    from napari_histogen.core.masks import NucleiMask

    inst = np.zeros((32, 32), np.int32)
    inst[4:12, 4:12] = 1
    inst[16:24, 10:20] = 2
    mask = NucleiMask.create(inst, {1: 3, 2: 4}, "consep", mpp=0.5)
    req = NasdmRequest(nuclei=mask, steps=10, seed=1, n_samples=2)
    gpu = NasdmEngine(tiny_nasdm, device="cuda", precision=precision).run(req)
    again = NasdmEngine(tiny_nasdm, device="cuda", precision=precision).run(req)
    cpu = NasdmEngine(tiny_nasdm, device="cpu").run(req)
    assert np.array_equal(gpu[0].image, again[0].image)  # reproducible on the device
    diff = np.abs(gpu[0].image.astype(float) - cpu[0].image.astype(float)).mean()
    assert diff < (12 if precision != "fp32" else 2), diff
    assert gpu[0].provenance["parameters"]["device"].startswith("cuda")


def test_training_steps_on_cuda_with_autocast(tmp_path):
    from napari_histogen.core.nasdm.train import TrainSettings, train_nasdm
    from test_nasdm_train import _dataset  # tests/ is on sys.path (pytest prepend import mode)

    data = _dataset(tmp_path / "data")
    result = train_nasdm(TrainSettings(data=str(data), out=str(tmp_path / "run"), size="tiny", steps=3, batch_size=2,
                                       image_size=32, val_fraction=0.25, sample_every=3, checkpoint_every=3,
                                       sample_steps=2, device="cuda", precision="bf16", min_tissue=0.1),
                         log=lambda m: None)
    assert result.step == 3 and np.isfinite(result.last_loss)
