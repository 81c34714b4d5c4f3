"""The latent NASDM network: a condition encoder at full mask resolution + the SDM UNet.

Nuclei are 1-3 latent pixels across at 1/8 resolution, so a mask resized to the latent by
nearest neighbours loses small nuclei and most instance edges. Here the full-resolution
condition (background + one-hot types + instance edges, see
:func:`~napari_histogen.core.nasdm.condition.make_condition`) is folded into the latent grid
without loss by space-to-depth (every 8x8 block of the mask becomes 8 * 8 * (K + 2)
channels of one latent pixel), then mixed by a 1x1 and a 3x3 conv into ``cond_features``
learned channels. Each SPADE layer of the UNet gets those features area-averaged to its own
size (``UNetConfig.cond_resize = "area"``), so a one-pixel nucleus still reaches every layer.

The null condition of classifier-free guidance is the all-zero full-resolution condition,
as for pixel NASDM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HistogenInputError
from ..nasdm.unet import NasdmUNet, UNetConfig

__all__ = ["LatentNetConfig", "ConditionEncoder", "LatentNasdmNet", "LATENT_PRESETS", "latent_preset"]


@dataclass
class LatentNetConfig:
    """Shape of a latent NASDM network.

    Parameters
    ----------
    cond_channels : int
        Full-resolution condition channels (K + 2).
    downscale : int
        Pixels per latent pixel (TAEF2: 8).
    cond_features : int
        Learned condition channels fed to the SPADE layers.
    unet : dict
        :class:`~napari_histogen.core.nasdm.unet.UNetConfig` fields of the denoiser on the
        latent grid (``image_size`` = latent side, ``in_channels`` = latent channels).
    """

    cond_channels: int
    downscale: int = 8
    cond_features: int = 64
    unet: dict = field(default_factory=dict)

    def unet_config(self) -> UNetConfig:
        return UNetConfig(**{**self.unet, "cond_channels": self.cond_features, "cond_resize": "area",
                             "learn_sigma": False})

    @property
    def latent_size(self) -> int:
        return int(self.unet_config().image_size)

    @property
    def image_size(self) -> int:
        """Patch side in pixels."""
        return self.latent_size * self.downscale

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unet"] = self.unet_config().to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "LatentNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HistogenInputError(f"Unknown latent network config keys {sorted(unknown)}.")
        return cls(**data)


#: Named sizes of the latent denoiser (on a 32 x 32 x 32 latent of a 256 px patch at 40x).
#: "cpu" trains on a 2-core CPU and samples a patch in a few seconds; "small" is for a GPU;
#: "tiny" is for tests.
LATENT_PRESETS: dict[str, dict] = {
    "small": dict(model_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=2, attention_resolutions=(16, 8),
                  num_head_channels=64, spade_hidden=128, groups=32),
    "cpu": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(16, 8),
                num_head_channels=64, spade_hidden=32, groups=16),
    "tiny": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                 num_head_channels=32, spade_hidden=16, groups=8),
}


def latent_preset(name: str, *, cond_channels: int, latent_size: int = 32, latent_channels: int = 32,
                  downscale: int = 8, cond_features: int | None = None, **overrides) -> LatentNetConfig:
    """A :class:`LatentNetConfig` from a preset name."""
    if name not in LATENT_PRESETS:
        raise HistogenInputError(f"Unknown latent model size '{name}'. Choose one of {', '.join(LATENT_PRESETS)}.")
    unet = {**LATENT_PRESETS[name], "image_size": latent_size, "in_channels": latent_channels, **overrides}
    if cond_features is None:
        cond_features = 32 if name == "tiny" else 64
    return LatentNetConfig(cond_channels=cond_channels, downscale=downscale, cond_features=cond_features, unet=unet)


class ConditionEncoder(nn.Module):
    """Full-resolution condition ``(N, C, H, W)`` -> features ``(N, F, H/d, W/d)`` (space-to-depth)."""

    def __init__(self, cond_channels: int, downscale: int, features: int):
        super().__init__()
        self.downscale = downscale
        self.mix = nn.Sequential(nn.Conv2d(cond_channels * downscale * downscale, features, 1), nn.SiLU(),
                                 nn.Conv2d(features, features, 3, padding=1), nn.SiLU())

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.mix(F.pixel_unshuffle(cond, self.downscale))


class LatentNasdmNet(nn.Module):
    """Noise predictor on TAEF2 latents, conditioned on the full-resolution NASDM condition."""

    def __init__(self, config: LatentNetConfig):
        super().__init__()
        self.config = config
        self.cond_encoder = ConditionEncoder(config.cond_channels, config.downscale, config.cond_features)
        self.unet = NasdmUNet(config.unet_config())

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        expected = (x.shape[-2] * self.config.downscale, x.shape[-1] * self.config.downscale)
        if tuple(cond.shape[-2:]) != expected:
            raise HistogenInputError(f"The condition is {tuple(cond.shape[-2:])} px; this latent needs {expected}.")
        return self.unet(x, t, self.cond_encoder(cond.to(x.dtype)))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
