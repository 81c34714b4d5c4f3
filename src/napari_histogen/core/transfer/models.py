"""Loading Stable Diffusion 1.5 parts once: UNet, VAE and scheduler with diffusers, CLIP with transformers.

:func:`load_stable_diffusion` resolves a spec to a local folder (no network, see
:mod:`napari_histogen.core.models.stable_diffusion`), loads the parts with
``local_files_only=True`` and keeps them in a process-wide cache keyed by folder, device and
dtype, so the dock and the CLI load a model once while they run. :func:`free_stable_diffusion`
drops it (and the GPU memory it held).

Prompt embeddings come from the tokenizer + CLIP text encoder (computed once per prompt), or
from ``prompt_embeds.safetensors`` in the model folder when it has no text encoder (tensors
``cond`` and optionally ``uncond``, the prompt in the file's metadata; write one with
:func:`save_prompt_embeddings`).
"""

from __future__ import annotations

from typing import Any

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HistogenInputError

__all__ = ["StableDiffusionParts", "load_stable_diffusion", "free_stable_diffusion", "loaded_models",
           "save_prompt_embeddings", "encode_with_clip", "PROMPT_EMBEDS_FILE"]

PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"
_LOADED: dict = {}
_LOCK = threading.Lock()


@dataclass
class StableDiffusionParts:
    """The loaded parts of one Stable Diffusion model on one device."""

    unet: Any
    vae: Any
    scheduler_config: dict
    device: Any
    dtype: Any  # torch dtype of the networks (float32 on CPU; bf16/fp16 on CUDA)
    tokenizer: Any = None
    text_encoder: Any = None
    stored_embeds: dict | None = None  # {"prompt": str, "cond": tensor, "uncond": tensor | None}
    spec: str = "in-memory"
    path: Path | None = None
    source: str = "memory"
    sha256: str | None = None
    _prompts: dict = field(default_factory=dict)
    lock: Any = field(default_factory=threading.RLock)  # one run at a time per loaded model

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """Image size the UNet was trained at (512 for SD 1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def encode_prompt(self, prompt: str):
        """``(1, 77, D)`` embeddings of ``prompt`` on the model's device and dtype (cached)."""
        if prompt in self._prompts:
            return self._prompts[prompt]
        if self.text_encoder is not None and self.tokenizer is not None:
            emb = encode_with_clip(self.tokenizer, self.text_encoder, prompt)
        elif self.stored_embeds is not None:
            key = "cond" if prompt == self.stored_embeds.get("prompt") else "uncond" if prompt == "" else None
            emb = self.stored_embeds.get(key) if key else None
            if emb is None:
                raise HistogenInputError(
                    f"This model folder has no text encoder and its {PROMPT_EMBEDS_FILE} holds embeddings only for "
                    f"the prompt {self.stored_embeds.get('prompt')!r}; use that prompt, or add text_encoder/ and "
                    "tokenizer/ to the folder.")
        else:
            raise HistogenInputError("This model has neither a text encoder nor stored prompt embeddings.")
        emb = emb.to(self.device, self.dtype)
        self._prompts[prompt] = emb
        return emb

    def describe(self) -> dict:
        return {"model": self.spec, "path": str(self.path) if self.path else None, "source": self.source,
                "sha256": self.sha256, "native_size": self.native_size, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device)}


def encode_with_clip(tokenizer, text_encoder, prompt: str):
    """CLIP last hidden states of ``prompt`` padded to the tokenizer's length (SD 1.5's conditioning)."""
    import torch

    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    with torch.inference_mode():
        return text_encoder(ids.to(device))[0].detach().clone()


def save_prompt_embeddings(folder, prompt: str, cond, uncond=None) -> Path:
    """Write ``prompt_embeds.safetensors`` (the alternative to shipping a text encoder)."""
    from safetensors.torch import save_file

    tensors = {"cond": cond.detach().float().cpu().contiguous()}
    if uncond is not None:
        tensors["uncond"] = uncond.detach().float().cpu().contiguous()
    path = Path(folder) / PROMPT_EMBEDS_FILE
    save_file(tensors, str(path), metadata={"prompt": prompt})
    return path


def _read_prompt_embeddings(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        data = {key: fh.get_tensor(key) for key in fh.keys()}
        data["prompt"] = (fh.metadata() or {}).get("prompt", "")
    return data


def load_stable_diffusion(spec=None, *, device="cpu", dtype=None) -> StableDiffusionParts:
    """Load (or return the already loaded) Stable Diffusion parts for ``spec`` on ``device``.

    Raises
    ------
    HistogenInputError
        The weights are not on this machine (at once, with how to provide them), or a folder
        that diffusers/transformers cannot read.
    """
    from ..models.stable_diffusion import resolve_stable_diffusion

    resolved = resolve_stable_diffusion(spec)  # file system only: fails fast when absent, before torch loads
    import torch

    device = torch.device(device)
    dtype = dtype or torch.float32
    key = (str(resolved.path), str(device), str(dtype))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        parts = _load(resolved, device, dtype)
        _LOADED[key] = parts
        return parts


def _load(resolved, device, dtype) -> StableDiffusionParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..models.stable_diffusion import weights_sha256, weights_variant

    folder = resolved.path
    # without accelerate diffusers builds random weights before loading (slower) and says so on every load
    fast = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, local_files_only=True,
                                                    variant=weights_variant(folder, "unet"), **fast)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, local_files_only=True,
                                            variant=weights_variant(folder, "vae"), **fast)
        import json

        sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError, KeyError) as err:
        raise HistogenInputError(f"The Stable Diffusion folder {folder} could not be loaded: {err}") from None
    tokenizer = text_encoder = stored = None
    if (folder / "text_encoder" / "config.json").is_file() and (folder / "tokenizer").is_dir():
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype,
                                                         local_files_only=True,
                                                         variant=weights_variant(folder, "text_encoder"))
        except (OSError, ValueError) as err:
            raise HistogenInputError(f"The text encoder/tokenizer in {folder} could not be loaded: {err}") from None
        text_encoder.to(device).eval()
    if (folder / PROMPT_EMBEDS_FILE).is_file():
        stored = _read_prompt_embeddings(folder / PROMPT_EMBEDS_FILE)
    unet.to(device).eval()
    vae.to(device).eval()
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.requires_grad_(False)
    return StableDiffusionParts(unet=unet, vae=vae, scheduler_config=sched_cfg, device=device, dtype=dtype,
                                tokenizer=tokenizer, text_encoder=text_encoder, stored_embeds=stored,
                                spec=resolved.spec, path=folder, source=resolved.source,
                                sha256=weights_sha256(folder, "unet"))


def loaded_models() -> list[StableDiffusionParts]:
    return list(_LOADED.values())


def free_stable_diffusion(parts: StableDiffusionParts | None = None) -> None:
    """Forget ``parts`` (None = every loaded model) and release the GPU memory they held."""
    import gc

    import torch

    with _LOCK:
        for key, value in list(_LOADED.items()):
            if parts is None or value is parts:
                del _LOADED[key]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
