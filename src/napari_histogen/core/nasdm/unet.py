"""The SDM-style UNet of NASDM (Wang et al. 2022; Shrivastava & Fletcher 2023).

- The encoder is ordinary residual blocks (GroupNorm, SiLU, conv, timestep scale/shift):
  it never sees the mask.
- Middle and decoder blocks normalise with spatially adaptive GroupNorm: GroupNorm without
  affine, then the condition (nearest-resized to the feature size) -> conv3x3 to
  ``spade_hidden`` channels -> ReLU -> two conv3x3 giving gamma and beta;
  ``x * (1 + gamma) + beta``, then the timestep scale/shift.
- Self-attention at the feature-map sizes in ``attention_resolutions`` (32, 16, 8 px for a
  128 px model), ``num_head_channels`` per head, computed with PyTorch's fused SDPA.
- The output has ``2 * in_channels`` channels: epsilon and the learned-variance
  interpolation ``v`` (see :mod:`napari_histogen.core.diffusion.gaussian`).

Last convolutions of each residual branch, of attention and of the output are
zero-initialised, so a fresh network is the identity plus a zero prediction.

The SPADE modulation (gamma, beta) depends on the condition only, not on the noisy image or
the step: about a third of the network's work. Within :meth:`NasdmUNet.reuse_condition` (the
samplers use it) it is computed once and reused for as long as the same condition tensor comes
back, so the images are exactly those without it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HistogenInputError

__all__ = ["UNetConfig", "NasdmUNet", "PRESETS", "preset_config"]


@dataclass
class UNetConfig:
    """Shape of a NASDM UNet.

    Parameters
    ----------
    image_size : int
        Patch size in pixels (square) the model is trained at.
    cond_channels : int
        Condition channels: background + K classes + instance edges.
    model_channels : int
        Base width (the paper: 256).
    channel_mult : tuple of int
        Width multiplier per resolution level (the paper: 1, 1, 2, 3, 4).
    num_res_blocks : int
        Residual blocks per level (the paper: 2).
    attention_resolutions : tuple of int
        Feature-map sizes (px) with self-attention (the paper: 32, 16, 8).
    num_head_channels : int
        Channels per attention head (64).
    spade_hidden : int
        Hidden width of the spatially adaptive normalisation (128).
    dropout : float
    groups : int
        GroupNorm groups (32; must divide every width).
    learn_sigma : bool
        Predict the variance interpolation as well as epsilon.
    cond_resize : {"nearest", "area"}
        How the condition reaches each SPADE layer's size: "nearest" (SDM/NASDM, for
        one-hot masks at the image's resolution) or "area" (averaging, for learned condition
        features that a latent model computes from the full-resolution mask: nearest
        subsampling would drop what lies between the kept pixels).
    """

    image_size: int = 128
    cond_channels: int = 6
    in_channels: int = 3
    model_channels: int = 256
    channel_mult: tuple = (1, 1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (32, 16, 8)
    num_head_channels: int = 64
    spade_hidden: int = 128
    dropout: float = 0.0
    groups: int = 32
    learn_sigma: bool = True
    cond_resize: str = "nearest"

    def __post_init__(self):
        if self.cond_resize not in ("nearest", "area"):
            raise HistogenInputError(f"cond_resize must be 'nearest' or 'area', not {self.cond_resize!r}.")
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        widths = {self.model_channels * m for m in self.channel_mult}
        bad = sorted(w for w in widths if w % self.groups)
        if bad:
            raise HistogenInputError(f"UNet widths {bad} are not divisible by {self.groups} GroupNorm groups.")
        if self.image_size % (2 ** (len(self.channel_mult) - 1)):
            raise HistogenInputError(
                f"image_size {self.image_size} must be divisible by 2^{len(self.channel_mult) - 1} "
                f"for {len(self.channel_mult)} resolution levels.")

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HistogenInputError(f"Unknown UNet config keys {sorted(unknown)}; is this a NASDM checkpoint?")
        return cls(**data)


#: Named sizes. "paper" is NASDM's Lizard configuration (453 M parameters at 6 condition
#: channels); "small" (130 M) suits one GPU; "cpu" (7 M) trains and samples on a
#: workstation without a GPU (one 128 px patch with guidance in under a minute at 75
#: steps on 2 cores); "tiny" is for tests.
PRESETS: dict[str, dict] = {
    "paper": dict(model_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2,
                  attention_resolutions=(32, 16, 8)),
    "small": dict(model_channels=128, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2,
                  attention_resolutions=(32, 16, 8)),
    "cpu": dict(model_channels=32, channel_mult=(1, 2, 2, 4, 4), num_res_blocks=1,
                attention_resolutions=(32, 16, 8), num_head_channels=32, spade_hidden=32, groups=8),
    "tiny": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,),
                 num_head_channels=32, spade_hidden=16, groups=8),
}


def preset_config(name: str, **overrides) -> UNetConfig:
    """A :class:`UNetConfig` from a preset name, with overrides."""
    if name not in PRESETS:
        raise HistogenInputError(f"Unknown model size '{name}'. Choose one of {', '.join(PRESETS)}.")
    return UNetConfig(**{**PRESETS[name], **overrides})


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``(N,) -> (N, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (stable under fp16/bf16 autocast)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class SpadeGroupNorm(nn.Module):
    """GroupNorm without affine, modulated per pixel by the condition map."""

    def __init__(self, channels: int, cond_channels: int, hidden: int, groups: int, resize: str = "nearest"):
        super().__init__()
        self.resize = resize
        self.norm = GroupNorm32(groups, channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)
        #: (1 + gamma, beta) kept for the condition of NasdmUNet.reuse_condition; None: not kept
        self.kept: tuple | None = None
        self.keep = False

    def forward(self, x, cond):
        kept = self.kept
        if kept is not None and kept[0].shape[0] == x.shape[0] and kept[0].shape[-2:] == x.shape[-2:]:
            scale, shift = kept
        else:
            if cond.shape[-2:] != x.shape[-2:]:
                if self.resize == "area" and cond.shape[-1] >= x.shape[-1]:
                    cond = F.adaptive_avg_pool2d(cond, x.shape[-2:])
                else:
                    cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
            act = self.shared(cond)
            scale, shift = 1 + self.gamma(act), self.beta(act)
            if self.keep:
                self.kept = (scale, shift)
        return self.norm(x) * scale + shift


class ResBlock(nn.Module):
    """Residual block with timestep scale/shift; SPADE normalisation when ``cond_channels``."""

    def __init__(self, channels, emb_channels, out_channels, *, dropout, groups,
                 cond_channels: int | None = None, spade_hidden: int = 128, cond_resize: str = "nearest"):
        super().__init__()
        self.spade = cond_channels is not None
        if self.spade:
            self.in_norm = SpadeGroupNorm(channels, cond_channels, spade_hidden, groups, cond_resize)
            self.out_norm = SpadeGroupNorm(out_channels, cond_channels, spade_hidden, groups, cond_resize)
        else:
            self.in_norm = GroupNorm32(groups, channels)
            self.out_norm = GroupNorm32(groups, out_channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, 2 * out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb, cond=None):
        h = self.in_norm(x, cond) if self.spade else self.in_norm(x)
        h = self.in_conv(F.silu(h))
        scale, shift = self.emb(F.silu(emb))[..., None, None].chunk(2, dim=1)
        h = self.out_norm(h, cond) if self.spade else self.out_norm(h)
        h = h * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels of a feature map (fused SDPA)."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x, emb=None, cond=None):
        b, c, hgt, wid = x.shape
        flat = x.reshape(b, c, hgt * wid)
        qkv = self.qkv(self.norm(flat))
        # (b, 3c, n) -> 3 x (b, heads, n, c/heads)
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, hgt * wid).permute(1, 0, 2, 4, 3)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 1, 3, 2).reshape(b, c, hgt * wid)
        return (flat + self.proj(out)).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None, cond=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb=None, cond=None):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.ModuleList):
    """A sequence of blocks that all take ``(x, emb, cond)``."""

    def forward(self, x, emb, cond):
        for block in self:
            x = block(x, emb, cond)
        return x


class NasdmUNet(nn.Module):
    """Noise predictor ``eps, v = f(x_t, t, condition)``.

    Parameters
    ----------
    config : UNetConfig
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.model_channels
        emb_ch = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        res_kw = dict(dropout=cfg.dropout, groups=cfg.groups)
        spade_kw = dict(res_kw, cond_channels=cfg.cond_channels, spade_hidden=cfg.spade_hidden,
                        cond_resize=cfg.cond_resize)

        self.input_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        size = cfg.image_size
        width = ch
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

        self.middle = _Level([
            ResBlock(width, emb_ch, width, **spade_kw),
            AttentionBlock(width, cfg.num_head_channels, cfg.groups),
            ResBlock(width, emb_ch, width, **spade_kw),
        ])

        self.up = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                blocks = _Level([ResBlock(width + skips.pop(), emb_ch, ch * mult, **spade_kw)])
                width = ch * mult
                if size in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(width, cfg.num_head_channels, cfg.groups))
                if level and i == cfg.num_res_blocks:
                    blocks.append(Upsample(width))
                    size *= 2
                self.up.append(blocks)

        self.out = nn.Sequential(GroupNorm32(cfg.groups, width), nn.SiLU(),
                                 _zero(nn.Conv2d(width, cfg.out_channels, 3, padding=1)))

    def _spade_layers(self) -> list:
        return [m for m in self.modules() if isinstance(m, SpadeGroupNorm)]

    @contextmanager
    def reuse_condition(self):
        """Within: the SPADE modulation is computed once per condition tensor and reused.

        For sampling (no gradients), where every step passes the same condition tensor; a
        different tensor (another object, shape, dtype or device) computes it afresh. Left
        on exit. Outputs are exactly those without it.
        """
        self._reuse_key = None
        self._reusing = True
        try:
            yield self
        finally:
            self._reusing = False
            self._reuse_key = None
            for layer in self._spade_layers():
                layer.kept, layer.keep = None, False

    def _track_condition(self, cond: torch.Tensor, x: torch.Tensor) -> None:
        # the tensor itself is part of the key, so its id cannot be recycled while it is kept
        key = (cond, cond.data_ptr(), tuple(cond.shape), cond.dtype, x.dtype, x.device, torch.is_grad_enabled())
        old = self._reuse_key
        if old is not None and old[0] is cond and old[1:] == key[1:]:
            return
        self._reuse_key = key
        keep = not torch.is_grad_enabled()  # never keep activations a backward pass would need
        for layer in self._spade_layers():
            layer.kept, layer.keep = None, keep

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predict ``[eps, v]`` (``2 * in_channels`` channels) for noisy images ``x`` at steps ``t``."""
        if getattr(self, "_reusing", False):
            self._track_condition(cond, x)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        cond = cond.to(x.dtype)
        h = self.input_conv(x)
        hs = [h]
        for blocks in self.down:
            h = blocks(h, emb, cond)
            hs.append(h)
        h = self.middle(h, emb, cond)
        for blocks in self.up:
            h = blocks(torch.cat([h, hs.pop()], dim=1), emb, cond)
        return self.out(h)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
