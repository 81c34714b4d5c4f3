"""The mask-generation network: a small diffusers ``UNet2DModel`` conditioned on a type vector.

NASDM++ (paper 001, section 3.1) conditions on the multi-hot vector ``y`` of the nucleus types
to include by adding a linear map of it to the time embedding: ``t_updated = t + f(y)``. Here
``f`` is :attr:`MaskGenNet.type_embed` (a ``Linear(K, time_embed_dim)``) and its output is
handed to the UNet as ``class_labels`` with ``class_embed_type="identity"``, which adds it to
the time embedding inside every residual block's conditioning path. The null condition of
classifier-free guidance is the all-zero vector (no types given), so ``f(null)`` is the
linear map's bias.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import HistogenInputError

__all__ = ["MaskGenNetConfig", "MaskGenNet"]


@dataclass
class MaskGenNetConfig:
    """Shape of a :class:`MaskGenNet` (recorded in the model JSON).

    Parameters
    ----------
    channels : int
        Input/output channels (``K + 2``: classes with background, and the distance map).
    n_types : int
        Length of the multi-hot type vector (``K``).
    block_out_channels : list of int
        Channels per UNet level (one downsampling between levels).
    layers_per_block : int
    attention_levels : list of int
        Levels (0 = full resolution) with self-attention blocks.
    norm_num_groups : int
    """

    channels: int
    n_types: int
    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_levels: list = field(default_factory=lambda: [2])
    norm_num_groups: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MaskGenNetConfig":
        try:
            return cls(channels=int(data["channels"]), n_types=int(data["n_types"]),
                       block_out_channels=[int(c) for c in data["block_out_channels"]],
                       layers_per_block=int(data.get("layers_per_block", 1)),
                       attention_levels=[int(v) for v in data.get("attention_levels", [])],
                       norm_num_groups=int(data.get("norm_num_groups", 8)))
        except (KeyError, TypeError, ValueError) as err:
            raise HistogenInputError(f"The mask-generation network config is incomplete or invalid ({err}).") from None

    @property
    def downscale(self) -> int:
        """Factor between the input and the lowest level (input sides must be multiples of it)."""
        return 2 ** (len(self.block_out_channels) - 1)


class MaskGenNet(nn.Module):
    """``forward(x_t, t, y) -> prediction``: x_t ``(N, C, H, W)``, t ``(N,)``, y ``(N, K)`` multi-hot."""

    def __init__(self, config: MaskGenNetConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config
        levels = len(config.block_out_channels)
        down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if (levels - 1 - i) in config.attention_levels else "UpBlock2D"
                   for i in range(levels))
        self.unet = UNet2DModel(in_channels=config.channels, out_channels=config.channels,
                                block_out_channels=tuple(config.block_out_channels),
                                layers_per_block=config.layers_per_block, down_block_types=down, up_block_types=up,
                                norm_num_groups=config.norm_num_groups, class_embed_type="identity",
                                attention_head_dim=8)
        time_embed_dim = config.block_out_channels[0] * 4
        self.type_embed = nn.Linear(config.n_types, time_embed_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 2 or y.shape[1] != self.config.n_types:
            raise HistogenInputError(f"The type vector must be (N, {self.config.n_types}), not {tuple(y.shape)}.")
        labels = self.type_embed(y.to(x.dtype))
        return self.unet(x, t, class_labels=labels).sample  # type: ignore[operator]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
