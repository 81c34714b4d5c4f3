"""Where models come from: the embedded default, the cache folder, or a path.

- ``"default"`` is the NASDM model shipped inside the package (``napari_histogen/models/
  nasdm_default/``) and ``"pixel"`` the pixel-space NASDM model shipped beside it
  (``nasdm_pixel/``, the earlier default); their sha256 is checked on load.
- a bare name is looked up in the cache folder ``$HISTOGEN_HOME/models/nasdm/<name>/``
  (``~/.cache/napari-histogen`` when ``HISTOGEN_HOME`` is unset), where users put models they
  trained or copied from another machine;
- anything else is a path to a model file or folder (a training run's ``model/``).

Resolving never touches the network, so it answers at once on an offline workstation.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HistogenInputError
from ..schemes import histogen_home

__all__ = ["DEFAULT_NASDM", "EMBEDDED_NASDM", "embedded_nasdm_dir", "model_cache_dir", "resolve_nasdm",
           "list_nasdm_models", "embedded_sha256", "EMBEDDED_MASKGEN", "embedded_maskgen_dir", "resolve_maskgen",
           "list_maskgen_models", "embedded_maskgen_sha256"]

DEFAULT_NASDM = "default"
#: names of the NASDM models shipped inside the package -> their folder under napari_histogen/models
EMBEDDED_NASDM = {"default": "nasdm_default", "pixel": "nasdm_pixel"}


def embedded_nasdm_dir(name: str = DEFAULT_NASDM) -> Path:
    """Folder of an embedded NASDM model (may be absent in a source tree)."""
    return Path(__file__).resolve().parents[2] / "models" / EMBEDDED_NASDM[name]


def embedded_sha256(spec) -> str | None:
    """The sha256 the package records for embedded model ``spec`` (None when it is not one)."""
    import json

    text = str(spec).strip() if spec not in (None, "") else DEFAULT_NASDM
    if text not in EMBEDDED_NASDM:
        return None
    record = embedded_nasdm_dir(text) / "SHA256.json"
    if record.is_file():
        return json.loads(record.read_text()).get("sha256")
    return None


def model_cache_dir(kind: str = "nasdm") -> Path:
    """The cache folder of ``kind`` models (created on demand by whoever writes there)."""
    return histogen_home() / "models" / kind


def resolve_nasdm(spec: str | None = None) -> Path:
    """The model file or folder for ``spec`` (``None`` = the embedded default).

    Raises
    ------
    HistogenInputError
        With what to do, when nothing matches.
    """
    text = str(spec).strip() if spec not in (None, "") else DEFAULT_NASDM
    if text in EMBEDDED_NASDM:
        folder = embedded_nasdm_dir(text)
        if not any(folder.glob("*.safetensors")):
            raise HistogenInputError(
                "This installation has no embedded NASDM model. Choose a checkpoint: a training run's "
                "model/nasdm.safetensors (histogen train nasdm ...), or a model folder copied into "
                f"{model_cache_dir()}/<name>/.")
        return folder
    path = Path(text).expanduser()
    if path.exists():
        return path
    cached = model_cache_dir() / text
    if cached.exists():
        return cached
    known = ", ".join(sorted(list_nasdm_models())) or "none"
    raise HistogenInputError(
        f"No NASDM model '{text}': not a file or folder, and not in the cache {model_cache_dir()} "
        f"(models there: {known}). Give the path of a .safetensors model or its folder.")


def list_nasdm_models() -> dict[str, Path]:
    """Named models: the embedded default (if present) and the cache folder's entries."""
    out = {}
    for name in EMBEDDED_NASDM:
        if any(embedded_nasdm_dir(name).glob("*.safetensors")):
            out[name] = embedded_nasdm_dir(name)
    cache = model_cache_dir()
    if cache.is_dir():
        for sub in sorted(cache.iterdir()):
            if sub.is_dir() and any(sub.glob("*.safetensors")):
                out[sub.name] = sub
    return out


# -- mask-generation models (core.maskgen): the same three sources, their own folders --------------
#: names of the mask-generation models shipped inside the package -> their folder under napari_histogen/models
EMBEDDED_MASKGEN = {"default": "maskgen_default"}


def embedded_maskgen_dir(name: str = "default") -> Path:
    """Folder of an embedded mask-generation model (may be absent)."""
    return Path(__file__).resolve().parents[2] / "models" / EMBEDDED_MASKGEN[name]


def embedded_maskgen_sha256(spec) -> str | None:
    """The sha256 the package records for embedded mask-generation model ``spec`` (None when it is not one)."""
    import json

    text = str(spec).strip() if spec not in (None, "") else "default"
    if text not in EMBEDDED_MASKGEN:
        return None
    record = embedded_maskgen_dir(text) / "SHA256.json"
    return json.loads(record.read_text()).get("sha256") if record.is_file() else None


def resolve_maskgen(spec: str | None = None) -> Path:
    """The mask-generation model file or folder for ``spec`` (``None`` = the embedded default)."""
    text = str(spec).strip() if spec not in (None, "") else "default"
    if text in EMBEDDED_MASKGEN:
        folder = embedded_maskgen_dir(text)
        if not any(folder.glob("*.safetensors")):
            raise HistogenInputError(
                "This installation has no embedded mask-generation model. Give one with --mask-model: a training "
                "run's model/ folder (histogen train maskgen ...), or a model folder copied into "
                f"{model_cache_dir('maskgen')}/<name>/.")
        return folder
    path = Path(text).expanduser()
    if path.exists():
        return path
    cached = model_cache_dir("maskgen") / text
    if cached.exists():
        return cached
    known = ", ".join(sorted(list_maskgen_models())) or "none"
    raise HistogenInputError(
        f"No mask-generation model '{text}': not a file or folder, and not in the cache "
        f"{model_cache_dir('maskgen')} (models there: {known}). Give the path of a maskgen model or its folder.")


def list_maskgen_models() -> dict[str, Path]:
    """Named mask-generation models: the embedded one (if present) and the cache folder's entries."""
    out = {}
    for name in EMBEDDED_MASKGEN:
        if any(embedded_maskgen_dir(name).glob("*.safetensors")):
            out[name] = embedded_maskgen_dir(name)
    cache = model_cache_dir("maskgen")
    if cache.is_dir():
        for sub in sorted(cache.iterdir()):
            if sub.is_dir() and any(sub.glob("*.safetensors")):
                out[sub.name] = sub
    return out
