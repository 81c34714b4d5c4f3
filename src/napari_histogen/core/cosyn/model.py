"""The joint co-synthesis network: one UNet on the TAEF2 latent grid, three outputs.

Inputs at each denoising step, all on the latent grid (1/8 of the pixels):

- the noisy TAEF2 latent ``z_t`` (32 channels);
- the noisy pixel-resolution distance map, folded by space-to-depth (8 x 8 -> 64 channels);
- the noisy pixel-resolution label (background + K classes, one-hot, as ``2 x - 1``) folded
  the same way (``64 (K + 1)`` channels),

so the label and the distance map keep their full resolution although the UNet works at 32 x 32
for a 256 px patch (the latent NASDM's condition encoder folds its mask the same way).

Conditions:

- the **point layout**: an ``(H, W)`` map holding each nucleus's class id at its centroid
  (0 elsewhere), embedded per pixel (a learned vector per class, zero for "no point"),
  space-to-depth, and encoded by a small residual network; the features are added after the
  first convolution and again before the last decoder block (as the reference does);
- the **type prompt**: a multi-hot vector of the nucleus types present, through an MLP added
  to the timestep embedding (the reference's text caption, without text).

Classifier-free guidance drops both (all-zero point map and prompt) during training.

Outputs (three heads from the last features): v-prediction of the latent (plus a 1x1 skip from
``z_t``), the clean distance map (``x_0``-prediction) and ``x_0`` logits of the label, the last two
through depth-to-space back to full resolution. The two full-resolution outputs predict the clean
map rather than noise because 64 features per latent pixel cannot carry the noise of 64 distance
pixels and 64 (K + 1) label channels through the first layer; the sampler takes the noise from
``d_t`` and ``l_t`` themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HistogenInputError
from ..nasdm.unet import AttentionBlock, Downsample, GroupNorm32, ResBlock, Upsample, _Level, _zero, timestep_embedding

__all__ = ["CosynConfig", "CosynNet", "COSYN_PRESETS", "cosyn_preset"]


@dataclass
class CosynConfig:
    """Shape of a co-synthesis network.

    Parameters
    ----------
    num_classes : int
        Nucleus classes ``K`` (the label has ``K + 1`` categories, 0 = background).
    latent_size : int
        Latent side the model is trained at (256 px / 8 = 32).
    latent_channels : int
        TAEF2 latent channels (32).
    downscale : int
        Pixels per latent pixel (8).
    model_channels, channel_mult, num_res_blocks, attention_resolutions, num_head_channels, groups, dropout
        UNet shape (as :class:`~napari_histogen.core.nasdm.unet.UNetConfig`, on the latent grid).
    point_embed : int
        Width of the learned per-class point embedding (before space-to-depth).
    """

    num_classes: int
    latent_size: int = 32
    latent_channels: int = 32
    downscale: int = 8
    model_channels: int = 64
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple = (8,)
    num_head_channels: int = 64
    groups: int = 16
    dropout: float = 0.0
    point_embed: int = 4

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if int(self.num_classes) < 1:
            raise HistogenInputError(f"A co-synthesis model needs at least one nucleus class, not {self.num_classes}.")
        bad = sorted({self.model_channels * m for m in self.channel_mult if (self.model_channels * m) % self.groups})
        if bad:
            raise HistogenInputError(f"UNet widths {bad} are not divisible by {self.groups} GroupNorm groups.")
        if self.latent_size % (2 ** (len(self.channel_mult) - 1)):
            raise HistogenInputError(f"The latent side {self.latent_size} must be divisible by "
                                     f"2^{len(self.channel_mult) - 1}.")

    @property
    def image_size(self) -> int:
        """Patch side in pixels."""
        return self.latent_size * self.downscale

    @property
    def label_channels(self) -> int:
        return int(self.num_classes) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "CosynConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HistogenInputError(f"Unknown co-synthesis network config keys {sorted(unknown)}.")
        return cls(**data)


#: "cpu" trains on this project's CPU (a 256 px patch = 32 x 32 latent); "tiny" is for tests.
COSYN_PRESETS: dict[str, dict] = {
    "small": dict(model_channels=128, channel_mult=(1, 2, 3), num_res_blocks=2, attention_resolutions=(16, 8),
                  num_head_channels=64, groups=32),
    "cpu": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                num_head_channels=64, groups=16),
    "tiny": dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                 num_head_channels=16, groups=8),
}


def cosyn_preset(name: str, *, num_classes: int, latent_size: int = 32, **overrides) -> CosynConfig:
    """A :class:`CosynConfig` from a preset name."""
    if name not in COSYN_PRESETS:
        raise HistogenInputError(f"Unknown co-synthesis model size '{name}'. Choose one of {', '.join(COSYN_PRESETS)}.")
    return CosynConfig(num_classes=num_classes, latent_size=latent_size, **{**COSYN_PRESETS[name], **overrides})


class _ConvResidual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class PointEncoder(nn.Module):
    """Point map ``(N, H, W)`` of class ids -> features ``(N, F, H/d, W/d)``: embedding, space-to-depth, residual convs."""

    def __init__(self, num_classes: int, embed: int, downscale: int, features: int):
        super().__init__()
        self.downscale = downscale
        self.embed = nn.Embedding(num_classes + 1, embed, padding_idx=0)
        self.inp = nn.Conv2d(embed * downscale * downscale, features, 1)
        self.res = nn.Sequential(_ConvResidual(features), _ConvResidual(features))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        emb = self.embed(points.long()).movedim(-1, 1)
        return self.res(self.inp(F.pixel_unshuffle(emb, self.downscale)))


class CosynNet(nn.Module):
    """``(v_z, d0, label logits) = f(z_t, d_t, l_t, t, points, prompt)``; see the module docstring."""

    def __init__(self, config: CosynConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.model_channels
        emb_ch = 4 * ch
        d2 = cfg.downscale * cfg.downscale
        k1 = cfg.label_channels
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.prompt_embed = nn.Sequential(nn.Linear(cfg.num_classes, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.points = PointEncoder(cfg.num_classes, cfg.point_embed, cfg.downscale, ch)
        self.input_conv = nn.Conv2d(cfg.latent_channels + d2 + d2 * k1, ch, 3, padding=1)
        res_kw: dict = dict(dropout=cfg.dropout, groups=cfg.groups)

        self.down = nn.ModuleList()
        skips = [ch]
        size, width = cfg.latent_size, ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = _Level([ResBlock(width, emb_ch, ch * mult, **res_kw)])
                width = ch * mult
                if size in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(width, cfg.num_head_channels, cfg.groups))
                self.down.append(blocks)
                skips.append(width)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(_Level([Downsample(width)]))
                skips.append(width)
                size //= 2
        self.middle = _Level([ResBlock(width, emb_ch, width, **res_kw),
                              AttentionBlock(width, cfg.num_head_channels, cfg.groups),
                              ResBlock(width, emb_ch, width, **res_kw)])
        self.up = nn.ModuleList()
        last_in = width
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                last_in = width
                blocks = _Level([ResBlock(width + skips.pop(), emb_ch, ch * mult, **res_kw)])
                width = ch * mult
                if size in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(width, cfg.num_head_channels, cfg.groups))
                if level and i == cfg.num_res_blocks:
                    blocks.append(Upsample(width))
                    size *= 2
                self.up.append(blocks)
        # the point features again, before the last decoder block (the reference's second injection)
        self.points_late = nn.Conv2d(ch, last_in, 1)
        self.out_norm = nn.Sequential(GroupNorm32(cfg.groups, width), nn.SiLU())
        self.head_image = _zero(nn.Conv2d(width, cfg.latent_channels, 3, padding=1))
        # z_t straight to the image output: the noise part of v need not squeeze through the shared first layer
        self.skip_image = _zero(nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1))
        self.head_distance = _zero(nn.Conv2d(width, d2, 3, padding=1))
        self.head_label = _zero(nn.Conv2d(width, d2 * k1, 3, padding=1))

    def forward(self, z_t: torch.Tensor, d_t: torch.Tensor, l_t: torch.Tensor, t: torch.Tensor,
                points: torch.Tensor, prompt: torch.Tensor):
        """Predict the three outputs.

        Parameters
        ----------
        z_t : (N, C, h, w) noisy normalised latent
        d_t : (N, 1, H, W) noisy distance map (in [-1, 1] when clean)
        l_t : (N, K + 1, H, W) noisy one-hot label
        t : (N,) long timesteps
        points : (N, H, W) long point map (class id at each centroid, 0 elsewhere)
        prompt : (N, K) multi-hot types present

        Returns
        -------
        v_z : (N, C, h, w); d0 : (N, 1, H, W) clean distance in [-1, 1]; logits : (N, K + 1, H, W) of the clean label
        """
        cfg = self.config
        d = cfg.downscale
        expected = (z_t.shape[-2] * d, z_t.shape[-1] * d)
        for name, x in (("distance map", d_t), ("label", l_t), ("point map", points)):
            if tuple(x.shape[-2:]) != expected:
                raise HistogenInputError(f"The {name} is {tuple(x.shape[-2:])} px; this latent needs {expected}.")
        if t.ndim == 0:
            t = t.expand(z_t.shape[0])
        dtype = z_t.dtype
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(dtype))
        emb = emb + self.prompt_embed(prompt.to(dtype))
        x = torch.cat([z_t, F.pixel_unshuffle(d_t.to(dtype), d), F.pixel_unshuffle(l_t.to(dtype) * 2 - 1, d)], dim=1)
        pts = self.points(points).to(dtype)
        h = self.input_conv(x) + pts
        hs = [h]
        for blocks in self.down:
            h = blocks(h, emb, None)
            hs.append(h)
        h = self.middle(h, emb, None)
        n_up = len(self.up)
        for i, blocks in enumerate(self.up):
            if i == n_up - 1:
                h = h + self.points_late(pts)
            h = blocks(torch.cat([h, hs.pop()], dim=1), emb, None)
        h = self.out_norm(h)
        v_z = self.head_image(h) + self.skip_image(z_t)
        d0 = F.pixel_shuffle(self.head_distance(h), d)
        logits = F.pixel_shuffle(self.head_label(h), d)
        return v_z, d0, logits

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
