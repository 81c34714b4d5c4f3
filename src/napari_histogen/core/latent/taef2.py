"""TAEF2: a tiny pretrained autoencoder between RGB and a 32-channel latent at 1/8 size.

TAEF2 (Ollin Boer Bohan, MIT licence; ``madebyollin/taesd``) is distilled to the latent space
of the FLUX.2 VAE: 1.34 M parameters per half. The weights ship inside the package
(``napari_histogen/models/taef2/``, with the MIT notice) and their sha256 is checked on
every load. The module below is written from the state dicts' layout (one sequential stack
per half, keys ``<index>.<...>``):

- ``Block``: conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv3x3, added to the input, then ReLU.
  Blocks with a ``pool`` branch first add a global branch to their input: 1x1 conv 64->256
  -> GroupNorm(4) -> ReLU -> 1x1 conv 256->64 (GroupNorm's statistics span the whole image).
- encoder: conv 3->64, Block, [stride-2 conv, 3 Blocks] x 3 (the last three with pool),
  conv 64->32;
- decoder: soft clamp ``3 tanh(x / 3)``, conv 32->64, ReLU, 3 pool Blocks, [nearest x2, conv,
  3 Blocks] x 2, nearest x2, conv, Block, conv 64->3.

Images are RGB in [0, 1]; decoded images are clamped to [0, 1].
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CorruptFileError, HistogenInputError

__all__ = ["LATENT_CHANNELS", "DOWNSCALE", "TAEF2_SHA256", "taef2_dir", "TinyEncoder", "TinyDecoder",
           "load_taef2", "Taef2"]

LATENT_CHANNELS = 32
DOWNSCALE = 8
#: sha256 of the shipped weight files (as published in the source's SOURCE record).
TAEF2_SHA256 = {
    "encoder": "304275fd4e71ebbe58b5ad6fcaa4262513941f4cd5a4c3eda0f56f81dd4328e4",
    "decoder": "a307a31a456973b018a6a7ed889a2d91b98f72744a463414ecad0186c6c8fa17",
}


def taef2_dir() -> Path:
    """Folder of the TAEF2 weights shipped with the package."""
    return Path(__file__).resolve().parents[2] / "models" / "taef2"


def _conv(c_in: int, c_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """Residual block of three 3x3 convs, optionally with a global (GroupNorm) branch first."""

    def __init__(self, channels: int = 64, *, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(),
                                  _conv(channels, channels))
        self.pool = (nn.Sequential(nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.GroupNorm(4, 4 * channels),
                                   nn.ReLU(), nn.Conv2d(4 * channels, channels, 1, bias=False))
                     if pool else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + x)


class _SoftClamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class TinyEncoder(nn.Sequential):
    """RGB ``(N, 3, H, W)`` in [0, 1] -> latent ``(N, 32, H/8, W/8)``."""

    def __init__(self, channels: int = 64):
        c = channels
        layers: list[nn.Module] = [_conv(3, c), Block(c)]
        for level in range(3):
            layers.append(_conv(c, c, stride=2, bias=False))
            layers.extend(Block(c, pool=level == 2) for _ in range(3))
        layers.append(_conv(c, LATENT_CHANNELS))
        super().__init__(*layers)


class TinyDecoder(nn.Sequential):
    """Latent ``(N, 32, h, w)`` -> RGB ``(N, 3, 8h, 8w)`` (unclamped; see :meth:`Taef2.decode`)."""

    def __init__(self, channels: int = 64):
        c = channels
        layers: list[nn.Module] = [_SoftClamp(), _conv(LATENT_CHANNELS, c), nn.ReLU()]
        layers.extend(Block(c, pool=True) for _ in range(3))
        for _ in range(2):
            layers.extend([_Upsample(), _conv(c, c, bias=False)])
            layers.extend(Block(c) for _ in range(3))
        layers.extend([_Upsample(), _conv(c, c, bias=False), Block(c), _conv(c, 3)])
        super().__init__(*layers)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_half(module: nn.Module, path: Path, expected_sha256: str | None) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise HistogenInputError(f"The TAEF2 autoencoder file {path} is missing; reinstall napari-histogen "
                                 "(it ships inside the package).")
    if expected_sha256 is not None:
        sha = _sha256(path)
        if sha != expected_sha256:
            raise HistogenInputError(f"{path.name} has sha256 {sha[:12]}..., expected {expected_sha256[:12]}...: "
                                     "the file is damaged. Reinstall napari-histogen.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({err}).") from None
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise HistogenInputError(f"{path.name} does not hold TAEF2 weights ({str(err).splitlines()[0]}).") from None


class Taef2(nn.Module):
    """The pair of TAEF2 halves with image <-> latent helpers.

    ``encode`` takes RGB in [0, 1]; ``decode`` returns RGB in [0, 1]. Both keep the batch and
    work at any size divisible by 8.
    """

    def __init__(self):
        super().__init__()
        self.encoder = TinyEncoder()
        self.decoder = TinyDecoder()

    def encode(self, rgb01: torch.Tensor) -> torch.Tensor:
        if rgb01.shape[-1] % DOWNSCALE or rgb01.shape[-2] % DOWNSCALE:
            raise HistogenInputError(f"TAEF2 needs image sides divisible by {DOWNSCALE}, not {tuple(rgb01.shape[-2:])}.")
        return self.encoder(rgb01)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent).clamp(0, 1)


def load_taef2(folder=None, *, device="cpu", dtype=torch.float32, check_sha256: bool = True) -> Taef2:
    """Load TAEF2 (eval mode, no gradients) from ``folder`` (default: the shipped copy).

    Parameters
    ----------
    folder : path-like, optional
        Holds ``taef2_encoder.safetensors`` and ``taef2_decoder.safetensors``.
    device : str or torch.device
    dtype : torch.dtype
        float32 (default) or float16/bfloat16 on a GPU.
    check_sha256 : bool
        Compare the files with :data:`TAEF2_SHA256` (the shipped weights).
    """
    folder = taef2_dir() if folder is None else Path(folder)
    model = Taef2()
    _load_half(model.encoder, folder / "taef2_encoder.safetensors",
               TAEF2_SHA256["encoder"] if check_sha256 else None)
    _load_half(model.decoder, folder / "taef2_decoder.safetensors",
               TAEF2_SHA256["decoder"] if check_sha256 else None)
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)


def describe() -> dict:
    """Provenance of the shipped autoencoder (for model cards and result metadata)."""
    return {"name": "TAEF2", "licence": "MIT (c) 2023 Ollin Boer Bohan", "source": "madebyollin/taesd@5cccb12",
            "sha256": dict(TAEF2_SHA256)}


if __name__ == "__main__":  # pragma: no cover - quick manual check
    print(json.dumps(describe(), indent=2))
