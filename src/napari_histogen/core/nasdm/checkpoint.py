"""NASDM model files: safetensors weights + a JSON config with their sha256.

A model is two files side by side::

    nasdm.safetensors   the (EMA) weights; the config is also in its metadata
    nasdm.json          {"format": "napari-histogen/nasdm", "unet": ..., "diffusion": ...,
                         "scheme": ..., "class_ids": ..., "mpp": ..., "weights": {"file": ...,
                         "sha256": ...}, "training": ...}

:func:`load_nasdm` takes either file or the folder holding them, checks the sha256 recorded
in the JSON against the weights and that the weights fit the config, and says what to do
when they do not. A lone ``.safetensors`` (no JSON) loads from its metadata; its hash is
reported but cannot be checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptFileError, HistogenInputError
from ..schemes import ClassScheme

__all__ = ["NasdmModelConfig", "LoadedNasdm", "save_nasdm", "load_nasdm", "file_sha256", "find_model_files",
           "write_model_files", "read_model_json", "read_weights", "FORMAT"]

FORMAT = "napari-histogen/nasdm"
FORMAT_VERSION = 1


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class NasdmModelConfig:
    """Everything needed to rebuild and use a NASDM model.

    Parameters
    ----------
    unet : dict
        :class:`~napari_histogen.core.nasdm.unet.UNetConfig` as a dict.
    diffusion : dict
        :meth:`GaussianDiffusion.config` (T, schedule, ...).
    scheme : dict
        The class scheme of the masks it was trained on (``ClassScheme.to_dict``).
    class_ids : list of int
        Class ids in condition-channel order.
    mpp : float
        Microns per pixel the model works at.
    training : dict
        What it was trained on and how (data, steps, hardware); free-form.
    family : {"pixel", "latent"}
        Pixel NASDM (``unet`` is a :class:`~napari_histogen.core.nasdm.unet.UNetConfig`) or
        latent NASDM on TAEF2 (``unet`` is a
        :class:`~napari_histogen.core.latent.model.LatentNetConfig`).
    latent : dict
        Latent models only: the autoencoder and the per-channel latent mean and std.
    """

    unet: dict
    diffusion: dict
    scheme: dict
    class_ids: list
    mpp: float
    training: dict = field(default_factory=dict)
    family: str = "pixel"
    latent: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """Patch side in pixels."""
        if self.family == "latent":
            return int(self.unet["unet"]["image_size"]) * int(self.unet.get("downscale", 8))
        return int(self.unet["image_size"])

    def class_scheme(self) -> ClassScheme:
        return ClassScheme.from_dict(self.scheme, source="the model's class scheme")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "unet": self.unet, "diffusion": self.diffusion,
                "scheme": self.scheme, "class_ids": [int(c) for c in self.class_ids], "mpp": float(self.mpp),
                "training": self.training, "family": self.family,
                **({"latent": self.latent} if self.family == "latent" else {})}

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "model config") -> "NasdmModelConfig":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptFileError(f"{source} is not a napari-histogen NASDM model config (no \"format\": \"{FORMAT}\").")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise HistogenInputError(f"{source} was written by a newer napari-histogen (format version "
                                     f"{data['format_version']}); upgrade napari-histogen to load it.")
        try:
            return cls(unet=dict(data["unet"]), diffusion=dict(data["diffusion"]), scheme=dict(data["scheme"]),
                       class_ids=[int(c) for c in data["class_ids"]], mpp=float(data["mpp"]),
                       training=dict(data.get("training") or {}), family=str(data.get("family", "pixel")),
                       latent=dict(data.get("latent") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"{source} is missing or has a bad field ({err!r}).") from None


@dataclass
class LoadedNasdm:
    """A model ready to sample: network (eval mode), its config, and where it came from."""

    model: object  # NasdmUNet
    config: NasdmModelConfig
    weights_path: Path
    sha256: str
    sha256_checked: bool

    @property
    def model_id(self) -> str:
        return self.config.training.get("model_id") or self.weights_path.stem


def find_model_files(path) -> tuple[Path, Path | None]:
    """``(weights, json or None)`` for a model given as a folder, a .json or a .safetensors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise HistogenInputError(f"No NASDM model at {path}. Give a .safetensors file, its .json, or their folder "
                                 "(a training run's model/ folder).")
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if not candidates and (path / "model").is_dir():
            candidates = sorted((path / "model").glob("*.safetensors"))
        if len(candidates) != 1:
            raise HistogenInputError(f"{path} holds {len(candidates)} .safetensors files; give the model file itself.")
        path = candidates[0]
    if path.suffix == ".json":
        weights = path.with_suffix(".safetensors")
        if not weights.is_file():
            raise HistogenInputError(f"{path} names no weights: {weights.name} is missing next to it.")
        return weights, path
    if path.suffix != ".safetensors":
        raise HistogenInputError(f"{path.name} is not a NASDM model: expected a .safetensors (with its .json).")
    sidecar = path.with_suffix(".json")
    return path, sidecar if sidecar.is_file() else None


def save_nasdm(model, config: NasdmModelConfig, path, *, dtype=None) -> Path:
    """Write ``path`` (.safetensors) and its .json; return the weights path.

    Parameters
    ----------
    model : torch.nn.Module or dict
        The network (or a state dict), e.g. the EMA weights.
    config : NasdmModelConfig
    path : path-like
        Weights file name (``.safetensors`` is added if missing).
    dtype : torch.dtype, optional
        Store floating-point weights in this dtype (e.g. ``torch.float16``).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return write_model_files(model, config.to_dict(), path, dtype=dtype)


def write_model_files(model, meta: dict, path: Path, *, dtype=None, embed_config: bool = True) -> Path:
    """Write the weights ``path`` (.safetensors) and the JSON ``meta`` next to it, with their sha256.

    The shared writer of the NASDM family's model files (NASDM, mask generation, co-synthesis).

    Parameters
    ----------
    model : torch.nn.Module or dict
        The network (or a state dict).
    meta : dict
        The config; written as the .json with a ``"weights"`` entry (file, sha256, dtype, bytes) added.
    path : Path
        The weights file, ending in ``.safetensors``.
    dtype : torch.dtype, optional
        Store floating-point weights in this dtype.
    embed_config : bool
        Also put ``meta`` (without ``"weights"``) in the safetensors metadata.
    """
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    meta = dict(meta)
    # Write to a temporary name first: a crash mid-write never leaves a truncated model.
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"napari_histogen": json.dumps(meta)} if embed_config else None)
    sha = file_sha256(tmp)
    tmp.replace(path)
    meta["weights"] = {"file": path.name, "sha256": sha, "dtype": str(dtype or torch.float32).replace("torch.", ""),
                       "bytes": path.stat().st_size}
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2))
    tmp_json.replace(path.with_suffix(".json"))
    return path


def read_model_json(sidecar: Path):
    """The parsed .json of a model file; :class:`CorruptFileError` when it is not valid JSON."""
    try:
        return json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{sidecar} is not valid JSON ({err}); restore it from the training run.") from None


def read_weights(weights: Path) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file; :class:`CorruptFileError` when it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{weights} is not a readable safetensors file ({err}).") from None


def load_nasdm(path, *, device="cpu", expected_sha256: str | None = None) -> LoadedNasdm:
    """Load a NASDM model for sampling (eval mode, float32 on ``device``).

    Raises
    ------
    HistogenInputError
        Missing files, a sha256 mismatch, weights that do not fit the config.
    CorruptFileError
        Unreadable safetensors or JSON.
    """
    from .unet import NasdmUNet, UNetConfig

    weights, sidecar = find_model_files(path)
    sha = file_sha256(weights)
    checked = False
    meta = None
    if sidecar is not None:
        meta = read_model_json(sidecar)
        recorded = (meta.get("weights") or {}).get("sha256") if isinstance(meta, dict) else None
        if recorded:
            if recorded != sha:
                raise HistogenInputError(
                    f"{weights.name} does not match the sha256 recorded in {sidecar.name} (file {sha[:12]}..., "
                    f"recorded {recorded[:12]}...): the weights were changed or damaged. Copy the model again.")
            checked = True
    if expected_sha256 is not None:
        if expected_sha256 != sha:
            raise HistogenInputError(f"{weights} has sha256 {sha[:12]}..., expected {expected_sha256[:12]}...; "
                                     "the file is damaged or not the expected model. Reinstall or copy it again.")
        checked = True
    state, file_meta = read_weights(weights)
    if meta is None:
        try:
            meta = json.loads(file_meta["napari_histogen"])
        except (KeyError, json.JSONDecodeError):
            raise CorruptFileError(f"{weights} has no NASDM config: put its .json next to it.") from None
    config = NasdmModelConfig.from_dict(meta, source=str(sidecar or weights))
    if config.family not in ("pixel", "latent"):
        raise HistogenInputError(f"{weights.name} is a NASDM model of family '{config.family}', which this version "
                                 "does not know; upgrade napari-histogen.")
    if config.family == "latent":
        from ..latent.model import LatentNasdmNet, LatentNetConfig

        model = LatentNasdmNet(LatentNetConfig.from_dict(config.unet))
    else:
        model = NasdmUNet(UNetConfig.from_dict(config.unet))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise HistogenInputError(
            f"The weights in {weights.name} do not fit the model described by its config ({first}...). "
            "The .json belongs to another model; use the pair written together by the same run.") from None
    model.eval().requires_grad_(False).to(device)
    if config.family == "latent":
        from ..latent.sampling import LatentModel
        from ..latent.taef2 import load_taef2

        model = LatentModel(model, load_taef2(device=device), config)
    return LoadedNasdm(model=model, config=config, weights_path=weights, sha256=sha, sha256_checked=checked)
