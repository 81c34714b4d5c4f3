"""FreeU on the UNet's backbone path, the way the cross-image attention reference applies it.

The reference (garibida/cross-image-attention) runs a UNet whose forward pass changes the
backbone features (the decoder's running ``sample``, not the skip connections) just before each
up-block, on every call, inversions included:

- features with the deepest width (Stable Diffusion 1.5: 1280 channels, entering up-blocks 0-2):
  the first half of the channels times 1.2, then the lowest spatial frequencies of all channels
  times 0.9;
- features with half that width (SD 1.5: 640 channels, entering up-block 3): the first half
  times 1.4, the lowest frequencies times 0.2.

"Lowest frequencies" is the reference's box filter: in the centred 2-D spectrum of each channel,
the ``2 x 2`` cells at rows and columns ``[n // 2 - 1, n // 2 + 1)`` (the zero frequency and the
one below it) are multiplied by the factor, and the real part of the inverse transform is kept.

diffusers' ``UNet2DConditionModel.enable_freeu`` is a different variant: it filters the *skip*
features, inside each resnet of the first two up-blocks, and leaves the backbone's spectrum
alone, so it cannot reproduce the reference's outputs. Here forward pre-hooks on the up-blocks
of an unmodified diffusers UNet do what the reference's modified forward does; the rule is the
reference's, keyed by channel width, written relative to ``block_out_channels`` so that a
smaller UNet of the same shape (the tiny test model) gets the same treatment at the same places.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FreeUFactors", "DEEP_FACTORS", "HALF_FACTORS", "freeu_plan", "low_frequency_scale", "freeu_backbone",
           "FreeUHooks"]


@dataclass(frozen=True)
class FreeUFactors:
    """``backbone`` multiplies the first half of the channels; ``low_freq`` the lowest frequencies."""

    backbone: float
    low_freq: float
    threshold: int = 1


#: Features of the deepest width (SD 1.5: 1280 channels; the reference's values for SD 1.x).
DEEP_FACTORS = FreeUFactors(1.2, 0.9)
#: Features of half the deepest width (SD 1.5: 640 channels).
HALF_FACTORS = FreeUFactors(1.4, 0.2)


def freeu_plan(unet_config) -> dict[int, tuple[int, FreeUFactors]]:
    """Up-block index -> (channels of the backbone features entering it, factors), for the blocks FreeU changes.

    ``unet_config`` is a UNet's config (a mapping or an object with ``block_out_channels``).
    The features entering up-block 0 come from the mid-block (the deepest width); those
    entering up-block ``i > 0`` are up-block ``i - 1``'s output, whose width is
    ``reversed(block_out_channels)[i - 1]``. Stable Diffusion 1.5 gives
    ``{0: (1280, DEEP), 1: (1280, DEEP), 2: (1280, DEEP), 3: (640, HALF)}``.
    """
    widths = list(unet_config["block_out_channels"] if isinstance(unet_config, dict)
                  else unet_config.block_out_channels)
    deepest = int(widths[-1])
    rev = list(reversed(widths))
    plan: dict[int, tuple[int, FreeUFactors]] = {}
    for i in range(len(widths)):
        channels = deepest if i == 0 else int(rev[i - 1])
        if channels == deepest:
            plan[i] = (channels, DEEP_FACTORS)
        elif 2 * channels == deepest:
            plan[i] = (channels, HALF_FACTORS)
    return plan


def low_frequency_scale(x, scale: float, threshold: int = 1):
    """``x`` (B, C, H, W) with its lowest spatial frequencies multiplied by ``scale`` (a new tensor, x's dtype).

    The FFT runs in float32 (no bf16 FFT; fp16 FFT is unstable), as the reference's box around
    the centre of the shifted spectrum.
    """
    import torch

    xf = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = xf.shape[-2:]
    ch, cw = h // 2, w // 2
    gain = torch.ones((h, w), device=x.device)
    gain[max(ch - threshold, 0):ch + threshold, max(cw - threshold, 0):cw + threshold] = float(scale)
    out = torch.fft.ifftn(torch.fft.ifftshift(xf * gain, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)


def freeu_backbone(x, factors: FreeUFactors):
    """The reference's change to backbone features ``x`` (B, C, H, W): first half x backbone, then the filter."""
    half = x.shape[1] // 2
    y = x.clone()
    y[:, :half] = y[:, :half] * factors.backbone
    return low_frequency_scale(y, factors.low_freq, factors.threshold)


class FreeUHooks:
    """Forward pre-hooks that apply :func:`freeu_backbone` to the features entering the planned up-blocks.

    A context manager: ``with FreeUHooks(unet): ...`` hooks every UNet call made inside it and
    removes the hooks on exit (the UNet itself is never modified). ``record`` (a list) receives
    one ``{"block", "channels", "backbone", "low_freq"}`` dict per change made.
    """

    def __init__(self, unet, *, record: list | None = None):
        self.unet = unet
        self.record = record
        self.plan = freeu_plan(unet.config)
        self._handles: list = []

    def _hook(self, index: int, channels: int, factors: FreeUFactors):
        def hook(_module, args, kwargs):
            if "hidden_states" in kwargs:
                x = kwargs["hidden_states"]
            else:
                x = args[0]
            if x.shape[1] != channels:  # not the layout the plan was made for: leave it alone
                return None
            y = freeu_backbone(x, factors)
            if self.record is not None:
                self.record.append({"block": index, "channels": int(x.shape[1]), "backbone": factors.backbone,
                                    "low_freq": factors.low_freq})
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": y}
            return (y, *args[1:]), kwargs

        return hook

    def __enter__(self) -> "FreeUHooks":
        for index, (channels, factors) in self.plan.items():
            block = self.unet.up_blocks[index]
            self._handles.append(block.register_forward_pre_hook(self._hook(index, channels, factors),
                                                                 with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
