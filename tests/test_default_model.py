"""The NASDM models shipped in the package: present, hash-checked on load, sample offline.

``default`` is the latent NASDM model (TAEF2 latents, 40x); ``pixel`` the earlier pixel-space
model (20x), kept selectable.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest, recommended_settings  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.models import registry  # noqa: E402

EXPECTED = {  # family, µm/px, patch px
    "default": ("latent", 0.25, 256),
    "pixel": ("pixel", 0.5, 128),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_model_is_listed_small_and_carded(name):
    family, mpp, size = EXPECTED[name]
    folder = registry.embedded_nasdm_dir(name)
    assert name in registry.list_nasdm_models()
    weights = folder / "nasdm.safetensors"
    assert weights.stat().st_size < 40 * 2**20
    meta = json.loads((folder / "nasdm.json").read_text())
    assert meta["scheme"]["name"] == "consep" and meta["mpp"] == mpp and meta.get("family", "pixel") == family
    assert (folder / "MODEL_CARD.md").is_file()
    from pathlib import Path

    # no machine paths in a shipped file: the data folders are recorded relative to the repository
    assert not any(Path(d).is_absolute() for d in meta["training"]["data_summary"]["data"])


def test_pixel_model_recommends_the_fixed_small_variance():
    config = NasdmEngine("pixel", device="cpu").config
    rec = recommended_settings(config, "cpu")
    assert rec["variance"] == "fixed_small" and rec["sampler"] == "ddpm"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_model_loads_with_its_hash_checked_and_samples_a_patch(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = NasdmEngine(name, device="cpu")
    assert engine.loaded.sha256_checked
    recorded = json.loads((registry.embedded_nasdm_dir(name) / "SHA256.json").read_text())["sha256"]
    assert engine.loaded.sha256 == recorded
    from napari_histogen.core.demo import demo_masks

    _, mask, _ = demo_masks(engine.config.image_size, engine.config.mpp)[0]
    result = engine.run(NasdmRequest(nuclei=mask, steps=2, seed=0))[0]
    assert result.image.shape == mask.shape + (3,) and result.image.dtype == np.uint8
    assert result.provenance["parameters"]["model"] == name
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
