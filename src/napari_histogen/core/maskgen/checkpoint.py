"""Saving and loading mask-generation models: ``maskgen.safetensors`` + ``maskgen.json``.

The JSON holds the network config, the diffusion config, the class scheme, the class ids of
the channels, the scale (µm/px), the training window size, the training record and the sha256
of the weights, which :func:`load_maskgen` checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, HistogenInputError
from ..nasdm.checkpoint import file_sha256, read_model_json, read_weights, write_model_files
from ..schemes import ClassScheme

__all__ = ["MaskGenConfig", "LoadedMaskGen", "save_maskgen", "load_maskgen", "find_maskgen_files", "FAMILY"]

FAMILY = "maskgen"


@dataclass
class MaskGenConfig:
    """Everything needed to rebuild and use a mask-generation model."""

    net: dict
    diffusion: dict
    scheme: dict
    class_ids: list
    mpp: float
    image_size: int
    training: dict = field(default_factory=dict)
    family: str = FAMILY

    def class_scheme(self) -> ClassScheme:
        return ClassScheme.from_dict(self.scheme)

    def to_dict(self) -> dict:
        return {"family": self.family, "net": self.net, "diffusion": self.diffusion, "scheme": self.scheme,
                "class_ids": list(self.class_ids), "mpp": float(self.mpp), "image_size": int(self.image_size),
                "training": self.training}

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "model config") -> "MaskGenConfig":
        if not isinstance(data, dict) or data.get("family") != FAMILY:
            raise HistogenInputError(f"{source} is not a mask-generation model (family "
                                     f"{data.get('family') if isinstance(data, dict) else None!r}); give a model "
                                     "written by `histogen train maskgen`.")
        try:
            return cls(net=dict(data["net"]), diffusion=dict(data["diffusion"]), scheme=dict(data["scheme"]),
                       class_ids=[int(c) for c in data["class_ids"]], mpp=float(data["mpp"]),
                       image_size=int(data["image_size"]), training=dict(data.get("training") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"{source} lacks a valid '{err}' entry; use the .json written with the weights.") \
                from None


@dataclass
class LoadedMaskGen:
    model: Any
    config: MaskGenConfig
    weights_path: Path
    sha256: str
    sha256_checked: bool


def find_maskgen_files(path) -> tuple[Path, Path]:
    """``(weights, json)`` of a model given as a folder (or a run folder), a .json or a .safetensors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise HistogenInputError(f"No mask-generation model at {path}. Give a maskgen .safetensors file, its .json, "
                                 "or their folder (a training run's model/ folder).")
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if not candidates and (path / "model").is_dir():
            candidates = sorted((path / "model").glob("*.safetensors"))
        if len(candidates) != 1:
            raise HistogenInputError(f"{path} holds {len(candidates)} .safetensors files; give the model file itself.")
        path = candidates[0]
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors" or not path.is_file():
        raise HistogenInputError(f"{path.name} is not a mask-generation model: expected a .safetensors with its .json.")
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise HistogenInputError(f"{path.name} has no {sidecar.name} next to it; copy the pair written together.")
    return path, sidecar


def save_maskgen(model, config: MaskGenConfig, path, *, dtype=None) -> Path:
    """Write ``path`` (.safetensors) and its .json (with the weights' sha256); return the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return write_model_files(model, config.to_dict(), path, dtype=dtype)


def load_maskgen(path, *, device="cpu", expected_sha256: str | None = None) -> LoadedMaskGen:
    """Load a mask-generation model for sampling (eval mode, float32 on ``device``).

    Raises
    ------
    HistogenInputError
        Missing files, a sha256 mismatch, weights that do not fit the config.
    CorruptFileError
        Unreadable safetensors or JSON.
    """
    from .model import MaskGenNet, MaskGenNetConfig

    weights, sidecar = find_maskgen_files(path)
    meta = read_model_json(sidecar)
    config = MaskGenConfig.from_dict(meta, source=sidecar.name)
    sha = file_sha256(weights)
    recorded = (meta.get("weights") or {}).get("sha256")
    for expected in (recorded, expected_sha256):
        if expected and expected != sha:
            raise HistogenInputError(f"{weights.name} does not match its recorded sha256 (file {sha[:12]}..., "
                                     f"expected {expected[:12]}...): the weights were changed or damaged. "
                                     "Copy the model again.")
    state, _ = read_weights(weights)
    model = MaskGenNet(MaskGenNetConfig.from_dict(config.net))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise HistogenInputError(f"The weights in {weights.name} do not fit the model its config describes "
                                 f"({first}...); use the pair written together by the same run.") from None
    model.eval().requires_grad_(False).to(device)
    return LoadedMaskGen(model=model, config=config, weights_path=weights, sha256=sha,
                         sha256_checked=bool(recorded or expected_sha256))
