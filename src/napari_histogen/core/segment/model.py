"""The segmenter's network: a small U-Net with three heads (foreground, type, HoVer maps), and its files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HistogenInputError

__all__ = ["SegmenterConfig", "NucleiUNet", "save_segmenter", "load_segmenter"]

FORMAT = "histogen-segmenter-1"


@dataclass
class SegmenterConfig:
    """Shape of a :class:`NucleiUNet` and what it was made for.

    Attributes
    ----------
    base_channels : int
        Features of the first level; each deeper level doubles them.
    depth : int
        Down-sampling steps (an input side must be a multiple of ``2 ** depth``; the
        predictor pads).
    class_ids : list of int
        The scheme's nucleus class ids, in type-output order (type ``k + 1`` = ``class_ids[k]``).
    scheme : str
        Class scheme name.
    mpp : float
        Microns per pixel of the training patches (the scale the segmenter expects).
    training : dict
        What it was trained on and how (free-form record).
    """

    base_channels: int = 24
    depth: int = 3
    class_ids: list = field(default_factory=lambda: [1, 2, 3, 4])
    scheme: str = "consep"
    mpp: float = 0.5
    training: dict = field(default_factory=dict)

    @property
    def n_types(self) -> int:
        """Type outputs: background + one per class."""
        return len(self.class_ids) + 1


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # BatchNorm as HoVer-Net; GroupNorm measured 3x slower per step on CPU (its backward pass)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class NucleiUNet(nn.Module):
    """U-Net with a shared decoder and three 1x1 heads.

    ``forward(x)`` takes RGB in ``[-1, 1]``, ``(N, 3, H, W)``, and returns
    ``{'foreground': (N, 1, H, W) logits, 'types': (N, K + 1, H, W) logits,
    'hover': (N, 2, H, W) in [-1, 1]}``.
    """

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        if config.depth < 1 or config.base_channels < 1:
            raise HistogenInputError("The segmenter needs depth >= 1 and base_channels >= 1.")
        self.config = config
        widths = [config.base_channels * 2**k for k in range(config.depth + 1)]
        self.down = nn.ModuleList([_block(3, widths[0])] + [_block(widths[k - 1], widths[k])
                                                             for k in range(1, len(widths))])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[k], widths[k - 1], 2, stride=2)
                                 for k in range(len(widths) - 1, 0, -1)])
        self.merge = nn.ModuleList([_block(2 * widths[k - 1], widths[k - 1]) for k in range(len(widths) - 1, 0, -1)])
        self.head_foreground = nn.Conv2d(widths[0], 1, 1)
        self.head_types = nn.Conv2d(widths[0], config.n_types, 1)
        self.head_hover = nn.Conv2d(widths[0], 2, 1)

    def forward(self, x: torch.Tensor) -> dict:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return {"foreground": self.head_foreground(x), "types": self.head_types(x),
                "hover": torch.tanh(self.head_hover(x))}


def save_segmenter(model: NucleiUNet, path) -> Path:
    """Write ``segmenter.safetensors`` (fp32 weights) and ``segmenter.json`` (config) into folder ``path``."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "segmenter.safetensors"))
    (folder / "segmenter.json").write_text(json.dumps({"format": FORMAT, **asdict(model.config)}, indent=2))
    return folder


def load_segmenter(path, *, device: str = "cpu") -> NucleiUNet:
    """A segmenter saved by :func:`save_segmenter` (the folder or either of its files), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    config_path, weights_path = folder / "segmenter.json", folder / "segmenter.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise HistogenInputError(f"No segmenter in {path}: expected segmenter.json and segmenter.safetensors "
                                 "(written by histogen evaluate downstream or core.segment.train).")
    try:
        record = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise HistogenInputError(f"{config_path} is not a readable segmenter config ({err}).") from None
    if record.pop("format", None) != FORMAT:
        raise HistogenInputError(f"{config_path} is not a histogen segmenter config (format {FORMAT}).")
    try:
        model = NucleiUNet(SegmenterConfig(**record))
        model.load_state_dict(load_file(str(weights_path)))
    except (TypeError, RuntimeError) as err:
        raise HistogenInputError(f"The segmenter in {folder} does not match its config ({err}).") from None
    return model.to(device).eval()
