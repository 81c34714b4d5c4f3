"""Shared fixtures and helpers: tiny random models (NASDM, Stable Diffusion), notification capture.

Tests never import other test modules: what several of them need lives here.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
# reader-study keys go to the user's key folder by default: never the real one during tests
os.environ.setdefault("HISTOGEN_KEY_DIR", tempfile.mkdtemp(prefix="histogen-test-keys-"))


def save_tiny_nasdm(folder, *, image_size=32, scheme="consep", seed=0, mpp=0.5):
    """Save a tiny random NASDM model (non-zero output layers) to ``folder``; return its path."""
    import torch

    from napari_histogen.core.diffusion.gaussian import GaussianDiffusion
    from napari_histogen.core.nasdm.checkpoint import NasdmModelConfig, save_nasdm
    from napari_histogen.core.nasdm.condition import condition_channels
    from napari_histogen.core.nasdm.unet import NasdmUNet, preset_config
    from napari_histogen.core.schemes import get_scheme

    scheme = get_scheme(scheme)
    torch.manual_seed(seed)
    model = NasdmUNet(preset_config("tiny", image_size=image_size, cond_channels=condition_channels(scheme.ids)))
    with torch.no_grad():  # zero-initialised layers would make the output constant
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    config = NasdmModelConfig(unet=model.config.to_dict(), diffusion=GaussianDiffusion().config(),
                              scheme=scheme.to_dict(), class_ids=list(scheme.ids), mpp=mpp,
                              training={"model_id": "tiny-test"})
    return save_nasdm(model, config, folder / "nasdm.safetensors")


def write_pairs_dataset(folder, n=4, size=64, seed=0, *, mpp=0.5, nucleus_px=5):
    """Image + mask pairs (``imgK.png`` + ``imgK.npz``): dark nuclei on pink tissue, CoNSeP classes."""
    import numpy as np
    from skimage.io import imsave

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        inst = np.zeros((size, size), np.int32)
        classes = {}
        for i in range(1, 6):
            r, c = rng.integers(4, size - 8, 2)
            inst[r: r + nucleus_px, c: c + nucleus_px] = i
            classes[i] = int(rng.integers(1, 5))
        image = np.empty((size, size, 3), np.uint8)
        image[:] = (230, 150, 200)
        image[inst > 0] = (90, 40, 140)
        imsave(folder / f"img{k}.png", image, check_contrast=False)
        np.savez(folder / f"img{k}.npz", inst_map=inst, classes=np.array(sorted(classes.items())),
                 scheme=np.array("consep"), mpp=np.array(mpp))
    return folder


def pytest_collection_modifyitems(config, items):
    """GUI tests drive a real viewer (seconds each): they count as slow too (`pytest -m "not slow"`)."""
    for item in items:
        if item.get_closest_marker("gui") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_nasdm(tmp_path_factory):
    """Path of a tiny 32 px CoNSeP-scheme NASDM model at 0.5 µm/px."""
    pytest.importorskip("torch")
    return save_tiny_nasdm(tmp_path_factory.mktemp("tiny_nasdm"))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """Folder of a tiny random Stable Diffusion (64 px) in the SD 1.5 layout."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from napari_histogen.core.transfer.tiny import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


def capture_notifications(monkeypatch, *modules) -> dict:
    """Route the docks' error/info notifications into lists (``{"error": [...], "info": [...]}``)."""
    from napari_histogen.widgets import _guard

    shown: dict = {"error": [], "info": []}
    monkeypatch.setattr(_guard, "notify_error", shown["error"].append)
    for module in modules:
        monkeypatch.setattr(module, "notify_error", shown["error"].append)
        monkeypatch.setattr(module, "notify_info", shown["info"].append)
    return shown


def wait_idle(qtbot, widget, timeout: int = 120000) -> None:
    """Wait until a dock's background run has finished."""
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
