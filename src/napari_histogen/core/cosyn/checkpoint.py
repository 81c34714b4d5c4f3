"""Co-synthesis model files: ``cosyn.safetensors`` (weights) + ``cosyn.json`` (config, sha256).

The JSON records the network shape, the diffusion (schedule, loss weights), the class scheme and
its class ids, the scale (µm/px), the TAEF2 latent statistics and the training record.
:func:`load_cosyn` checks the sha256 and returns a :class:`CosynModel` that generates
``(image, label, distance)`` from point maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import HistogenInputError
from ..nasdm.checkpoint import file_sha256, read_model_json, read_weights, write_model_files
from ..schemes import ClassScheme
from .model import CosynConfig, CosynNet

__all__ = ["CosynModelConfig", "CosynModel", "save_cosyn", "load_cosyn", "find_cosyn_files"]

FAMILY = "cosyn"


@dataclass
class CosynModelConfig:
    """Everything needed to rebuild and use a co-synthesis model (its JSON)."""

    net: dict
    diffusion: dict
    scheme: dict
    class_ids: list
    mpp: float
    latent: dict
    family: str = FAMILY
    training: dict = field(default_factory=dict)

    def class_scheme(self) -> ClassScheme:
        return ClassScheme.from_dict(self.scheme)

    def net_config(self) -> CosynConfig:
        return CosynConfig.from_dict(self.net)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "model config") -> "CosynModelConfig":
        if not isinstance(data, dict) or data.get("family") != FAMILY:
            raise HistogenInputError(f"{source} is not a co-synthesis model (family "
                                     f"{data.get('family') if isinstance(data, dict) else None!r}); give a cosyn model.")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and k != "weights"})


def find_cosyn_files(path) -> tuple[Path, Path]:
    """``(weights, json)`` of a model given as its folder, its .json or its .safetensors."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.safetensors")) or sorted((path / "model").glob("*.safetensors"))
        if len(found) != 1:
            raise HistogenInputError(f"{path} holds {len(found)} .safetensors files; give the co-synthesis model file.")
        path = found[0]
    if not path.exists():
        raise HistogenInputError(f"No co-synthesis model at {path}; give a cosyn .safetensors, its .json or their folder.")
    weights = path.with_suffix(".safetensors")
    sidecar = path.with_suffix(".json")
    if not weights.is_file() or not sidecar.is_file():
        raise HistogenInputError(f"A co-synthesis model needs both {weights.name} and {sidecar.name} side by side.")
    return weights, sidecar


def save_cosyn(net, config: CosynModelConfig, path, *, dtype=None) -> Path:
    """Write ``path`` (.safetensors, atomically) and its .json with the weights' sha256; return the weights path."""
    return write_model_files(net, config.to_dict(), Path(path).with_suffix(".safetensors"), dtype=dtype,
                             embed_config=False)


class CosynModel:
    """A loaded co-synthesis model: network (eval), TAEF2 decoder, config; :meth:`generate` makes outputs."""

    def __init__(self, net: CosynNet, taef2, config: CosynModelConfig, *, weights_path: Path | None = None,
                 sha256: str | None = None):
        self.net = net
        self.taef2 = taef2
        self.config = config
        self.weights_path = weights_path
        self.sha256 = sha256
        self.mean = torch.tensor(config.latent["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(config.latent["std"], dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def device(self):
        return next(self.net.parameters()).device

    @property
    def class_ids(self) -> list[int]:
        return [int(c) for c in self.config.class_ids]

    @property
    def model_id(self) -> str:
        return str(self.config.training.get("model_id") or (self.weights_path.stem if self.weights_path else "cosyn"))

    def decode(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latents -> ``(N, H, W, 3)`` uint8 RGB."""
        with torch.inference_mode():
            z = z.float() * self.std.to(z.device) + self.mean.to(z.device)
            rgb = self.taef2.decode(z.to(next(self.taef2.parameters()).dtype)).float().clamp(0, 1)
        return np.round(rgb.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)

    def generate(self, point_maps: np.ndarray, prompts: np.ndarray, *, seeds, steps: int = 20, guidance: float = 1.0,
                 progress=None, cancel=None, autocast_dtype=None):
        """``(images (N, H, W, 3) uint8, labels (N, H, W) int64 0..K, distances (N, H, W) float32)``."""
        from .diffusion import sample_joint

        device = self.device
        pts = torch.as_tensor(np.asarray(point_maps), dtype=torch.long, device=device)
        pr = torch.as_tensor(np.asarray(prompts), dtype=torch.float32, device=device)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        z, dist, label = sample_joint(self.net, pts, pr, self.config.diffusion, steps=steps, guidance=guidance,
                                      generators=gens, progress=progress, cancel=cancel,
                                      autocast_dtype=autocast_dtype)
        return self.decode(z), label.cpu().numpy(), dist.float().cpu().numpy()


def load_cosyn(path, *, device="cpu", taef2=None) -> CosynModel:
    """Load a co-synthesis model for sampling (eval mode, float32 on ``device``); sha256 checked."""
    weights, sidecar = find_cosyn_files(path)
    meta = read_model_json(sidecar)
    sha = file_sha256(weights)
    recorded = (meta.get("weights") or {}).get("sha256") if isinstance(meta, dict) else None
    if recorded and recorded != sha:
        raise HistogenInputError(f"{weights.name} does not match the sha256 recorded in {sidecar.name}: the weights "
                                 "were changed or damaged. Copy the model again.")
    config = CosynModelConfig.from_dict(meta, source=str(sidecar))
    net = CosynNet(config.net_config())
    state, _ = read_weights(weights)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise HistogenInputError(f"The weights in {weights.name} do not fit its config "
                                 f"({str(err).splitlines()[0]}...).") from None
    net.eval().requires_grad_(False).to(device)
    if taef2 is None:
        from ..latent.taef2 import load_taef2

        taef2 = load_taef2(device=device)
    return CosynModel(net, taef2, config, weights_path=weights, sha256=sha)
