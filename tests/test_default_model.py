"""The NASDM model shipped in the package: present, hash-checked on load, samples offline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.models import registry  # noqa: E402


def test_shipped_model_is_listed_and_small():
    folder = registry.embedded_nasdm_dir()
    assert "default" in registry.list_nasdm_models()
    weights = folder / "nasdm.safetensors"
    assert weights.stat().st_size < 40 * 2**20
    meta = json.loads((folder / "nasdm.json").read_text())
    assert meta["scheme"]["name"] == "consep" and meta["mpp"] == 0.5 and meta["unet"]["image_size"] == 128
    assert (folder / "MODEL_CARD.md").is_file()


def test_shipped_model_loads_with_its_hash_checked_and_samples_a_patch(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = NasdmEngine(device="cpu")
    assert engine.loaded.sha256_checked
    recorded = json.loads((registry.embedded_nasdm_dir() / "SHA256.json").read_text())["sha256"]
    assert engine.loaded.sha256 == recorded
    from napari_histogen.core.demo import demo_masks

    name, mask, _ = demo_masks()[0]
    result = engine.run(NasdmRequest(nuclei=mask, steps=2, seed=0))[0]
    assert result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8
    assert result.provenance["parameters"]["model"] == "default"
    assert result.provenance["parameters"]["model_sha256"] == recorded


def test_damaged_shipped_model_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "nasdm_default"
    shutil.copytree(registry.embedded_nasdm_dir(), copy)
    weights = copy / "nasdm.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(registry, "embedded_nasdm_dir", lambda name="default": copy)
    with pytest.raises(HistogenInputError, match="sha256"):
        NasdmEngine(device="cpu")
