"""Where the Stable Diffusion 1.5 weights for appearance transfer come from, without a network.

A model spec is resolved, in this order, to a local folder in the diffusers layout
(``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``):

1. an existing folder path;
2. a name in the cache folder ``$HISTOGEN_HOME/models/stable-diffusion/<name>/`` (where
   ``histogen models fetch`` puts models, and where users copy them);
3. a Hugging Face hub id (``org/name``; ``sd15`` is an alias of :data:`DEFAULT_SD_REPO`) that is
   already in the local Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``).

Resolution only looks at the file system (no torch, no diffusers, no network), so a missing
model is reported in well under a second with what to do, never after network retries.
The default spec is ``$HISTOGEN_SD_MODEL`` when set, else :data:`DEFAULT_SD_REPO`.

Instead of ``text_encoder/`` + ``tokenizer/`` a folder may hold ``prompt_embeds.safetensors``
(tensors ``cond`` (1, 77, D) and, optionally, ``uncond``; the prompt in its metadata): the
transfer then uses those embeddings and needs no CLIP model (see
:func:`napari_histogen.core.transfer.models.save_prompt_embeddings`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import HistogenInputError
from .registry import model_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SD_REPO",
    "SD_ALIASES",
    "SD_KIND",
    "ResolvedModel",
    "default_sd_spec",
    "sd_cache_dir",
    "resolve_stable_diffusion",
    "check_sd_folder",
    "list_sd_models",
    "fetch_stable_diffusion",
    "weights_sha256",
    "missing_model_message",
    "hf_hub_cache",
    "weights_variant",
]

#: The Stable Diffusion 1.5 repository on the Hugging Face hub (the original
#: ``runwayml/stable-diffusion-v1-5`` was withdrawn in 2024; this is its official mirror).
DEFAULT_SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD_ALIASES = {"sd15": DEFAULT_SD_REPO, "sd-1.5": DEFAULT_SD_REPO, "sd1.5": DEFAULT_SD_REPO,
              "runwayml/stable-diffusion-v1-5": DEFAULT_SD_REPO}
SD_KIND = "stable-diffusion"
ENV_MODEL = "HISTOGEN_SD_MODEL"

_SUBFOLDERS = ("unet", "vae", "scheduler")
_WEIGHT_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


@dataclass(frozen=True)
class ResolvedModel:
    """A Stable Diffusion folder on this machine and how it was found."""

    spec: str
    path: Path
    source: str  # "folder", "cache" or "hf-cache"


def default_sd_spec() -> str:
    return os.environ.get(ENV_MODEL, "").strip() or DEFAULT_SD_REPO


def sd_cache_dir() -> Path:
    """``$HISTOGEN_HOME/models/stable-diffusion`` (models fetched or copied by users)."""
    return model_cache_dir(SD_KIND)


def _weights_file(folder: Path, sub: str) -> Path | None:
    """The safetensors (or .bin) weights of a subfolder, preferring full precision."""
    stem = _WEIGHT_NAMES[sub]
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"):
        path = folder / sub / name
        if path.is_file():
            return path
    return None


def weights_variant(folder: Path, sub: str) -> str | None:
    """``"fp16"`` when a subfolder holds only the half-precision variant, else None."""
    path = _weights_file(Path(folder), sub)
    return "fp16" if path is not None and ".fp16." in path.name else None


def check_sd_folder(folder) -> list[str]:
    """What a folder lacks to be used as a Stable Diffusion model (empty list = usable)."""
    folder = Path(folder)
    missing = []
    for sub in _SUBFOLDERS:
        if not (folder / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")).is_file():
            missing.append(f"{sub}/ config")
        elif sub != "scheduler" and _weights_file(folder, sub) is None:
            missing.append(f"{sub}/ weights")
    has_text = (folder / "text_encoder" / "config.json").is_file() and _weights_file(folder, "text_encoder") is not None
    has_tok = (folder / "tokenizer").is_dir() and any((folder / "tokenizer").iterdir())
    if not (has_text and has_tok) and not (folder / "prompt_embeds.safetensors").is_file():
        missing.append("text_encoder/ + tokenizer/ (or prompt_embeds.safetensors)")
    return missing


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment now (not at import time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hf_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of ``repo_id`` in the Hugging Face cache, or None (file system only)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return None
    try:
        found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=str(hf_hub_cache()))
    except Exception:  # noqa: BLE001 - an invalid repo id is simply "not cached"
        return None
    if isinstance(found, str) and Path(found).is_file():
        return Path(found).parent
    return None


def missing_model_message(spec: str, looked: list[str] | None = None) -> str:
    looked_text = f" (looked in: {'; '.join(looked)})" if looked else ""
    return (
        f"Stable Diffusion weights '{spec}' are not on this machine{looked_text}. Appearance transfer needs "
        f"Stable Diffusion 1.5 (about 2-4 GB) and never downloads it by itself. On a machine with internet run "
        f"`histogen models fetch sd15 --out sd15` (add `--variant fp16` for half the size), copy the folder "
        f"to this workstation and choose it as the model (dock: 'Folder…'; CLI: --model FOLDER), or copy it "
        f"into {sd_cache_dir()}/sd15 (then --model sd15). A Hugging Face cache copied from another machine "
        f"works too (set HF_HOME to it). See docs/transfer.md, 'Stable Diffusion weights on an offline workstation'.")


def resolve_stable_diffusion(spec: str | None = None) -> ResolvedModel:
    """The local folder for ``spec`` (None = :func:`default_sd_spec`), found without any network.

    Raises
    ------
    HistogenInputError
        Nothing usable found (the message says how to provide the weights), or a folder
        that lacks parts of the model.
    """
    text = str(spec).strip() if spec not in (None, "") else default_sd_spec()
    path = Path(text).expanduser()
    if path.is_dir():
        _require_complete(path, text)
        return ResolvedModel(text, path.resolve(), "folder")
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path:
        raise HistogenInputError(f"No model folder at {path}. " + missing_model_message(text))
    looked = []
    repo_id = SD_ALIASES.get(text.lower(), text)
    names = ([text] if "/" not in text else []) + [repo_id.split("/")[-1]]
    if repo_id == DEFAULT_SD_REPO:
        names.append("sd15")  # where the instructions suggest copying it
    for name in dict.fromkeys(names):
        cached = sd_cache_dir() / name
        if cached.is_dir():
            _require_complete(cached, text)
            return ResolvedModel(text, cached, "cache")
        looked.append(str(cached))
    if repo_id.count("/") == 1:
        snapshot = _hf_snapshot(repo_id)
        looked.append(f"the Hugging Face cache {hf_hub_cache()} ({repo_id})")
        if snapshot is not None:
            missing = check_sd_folder(snapshot)
            if not missing:
                return ResolvedModel(text, snapshot, "hf-cache")
            looked[-1] += f", incomplete: lacks {', '.join(missing)}"
    raise HistogenInputError(missing_model_message(text, looked))


def _require_complete(folder: Path, spec: str) -> None:
    missing = check_sd_folder(folder)
    if missing:
        raise HistogenInputError(
            f"The model folder {folder} is not a complete Stable Diffusion model: it lacks {', '.join(missing)}. "
            "Expected the diffusers layout (model_index.json, unet/, vae/, scheduler/, text_encoder/, tokenizer/), "
            "as written by `histogen models fetch` or `save_pretrained`.")


def list_sd_models() -> dict[str, Path]:
    """Stable Diffusion models usable offline: the cache folder's entries and the default if cached."""
    out = {}
    cache = sd_cache_dir()
    if cache.is_dir():
        for sub in sorted(cache.iterdir()):
            if sub.is_dir() and not check_sd_folder(sub):
                out[sub.name] = sub
    snapshot = _hf_snapshot(DEFAULT_SD_REPO)
    if snapshot is not None and not check_sd_folder(snapshot):
        out[DEFAULT_SD_REPO] = snapshot
    return out


def fetch_stable_diffusion(repo_id: str = DEFAULT_SD_REPO, out=None, *, variant: str | None = None,
                           log=None) -> Path:
    """Download the parts of a Stable Diffusion repository the transfer needs (needs a network).

    Only ``model_index.json``, ``scheduler/``, ``tokenizer/`` and the safetensors weights and
    configs of ``unet/``, ``vae/`` and ``text_encoder/`` (fp32, about 4 GB, or with
    ``variant="fp16"`` about 2 GB) are fetched. ``out`` defaults to
    ``$HISTOGEN_HOME/models/stable-diffusion/<repo name>``.

    Raises
    ------
    HistogenInputError
        Offline (``HF_HUB_OFFLINE`` set, or the hub unreachable), or the repository lacks the files.
    """
    from huggingface_hub import snapshot_download

    log = log or logger.info
    repo_id = SD_ALIASES.get(str(repo_id).lower(), str(repo_id))
    if variant not in (None, "fp16"):
        raise HistogenInputError(f"Unknown weights variant '{variant}'; use fp16 or leave it out (fp32).")
    out = Path(out).expanduser() if out else sd_cache_dir() / repo_id.split("/")[-1]
    suffix = ".fp16" if variant else ""
    patterns = ["model_index.json", "scheduler/*", "tokenizer/*", "unet/config.json", "vae/config.json",
                "text_encoder/config.json", f"unet/diffusion_pytorch_model{suffix}.safetensors",
                f"vae/diffusion_pytorch_model{suffix}.safetensors", f"text_encoder/model{suffix}.safetensors"]
    if _hf_offline():
        raise HistogenInputError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded. Run `histogen models fetch` on a machine with "
            "internet access (unset HF_HUB_OFFLINE there) and copy the folder it writes to this workstation.")
    log(f"Fetching {repo_id} ({'fp16' if variant else 'fp32'} weights) into {out} ...")
    try:
        snapshot_download(repo_id, local_dir=str(out), allow_patterns=patterns, etag_timeout=20)
    except Exception as err:  # noqa: BLE001 - network, auth and missing-repo errors all end here
        raise HistogenInputError(
            f"Could not download {repo_id}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Check the internet connection (and a "
            "proxy: HTTPS_PROXY), or log in with `hf auth login` if the repository needs it.") from None
    missing = check_sd_folder(out)
    if missing:
        raise HistogenInputError(f"{repo_id} was downloaded to {out} but lacks {', '.join(missing)}.")
    return out


def weights_sha256(folder, sub: str = "unet") -> str | None:
    """sha256 of a subfolder's weights file (the model's identity in provenance).

    In a Hugging Face cache the file is a link to a blob named by its sha256, which is used
    directly; otherwise the hash is computed (about 3 s for SD 1.5's UNet) and, for files over
    100 MB, remembered in ``$HISTOGEN_HOME/models/stable-diffusion/sha256.json`` (keyed by path,
    size and mtime).
    """
    path = _weights_file(Path(folder), sub)
    if path is None:
        return None
    if path.is_symlink():
        blob = Path(os.path.realpath(path)).name
        if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
            return blob
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    record = sd_cache_dir() / "sha256.json"
    try:
        known = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    if stat.st_size < (100 << 20):
        return value  # small (test) models: hashing again is cheaper than remembering
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        known[key] = value
        record.write_text(json.dumps(known, indent=1))
    except OSError:
        pass  # a read-only home only costs the hash next time
    return value
