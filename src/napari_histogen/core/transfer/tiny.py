"""Random-weight models in the Stable Diffusion 1.5 layout: tiny ones for tests, full-size ones for benchmarks.

:func:`save_tiny_stable_diffusion` writes a folder exactly as ``StableDiffusionPipeline.
save_pretrained`` does (``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``,
``text_encoder/``, ``tokenizer/``), with a CLIP tokenizer built from a small vocabulary
written here (no download), so tests load it through the same code path as real weights.
:func:`sd15_unet_config` and :func:`sd15_vae_config` are Stable Diffusion 1.5's own
configurations (written out; random weights cost the same time and memory as the real ones).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "sd15_unet_config", "sd15_vae_config", "sd15_scheduler_config", "tiny_unet_config", "tiny_vae_config",
    "build_unet_vae", "save_tiny_stable_diffusion",
]


def sd15_scheduler_config() -> dict:
    """Stable Diffusion 1.5's noise schedule (its ``scheduler_config.json``) as a DDIM scheduler."""
    return {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "clip_sample": False,
            "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
            "timestep_spacing": "leading"}


def sd15_unet_config() -> dict:
    """Stable Diffusion 1.5's UNet (860 M parameters)."""
    return {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5,
            "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
            "mid_block_scale_factor": 1, "center_input_sample": False}


def sd15_vae_config() -> dict:
    """Stable Diffusion 1.5's VAE (84 M parameters, 8x downsampling, 4 latent channels)."""
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "act_fn": "silu",
            "sample_size": 512, "scaling_factor": 0.18215}


def tiny_unet_config(latent_size: int = 8, cross_attention_dim: int = 32) -> dict:
    """Two levels with cross-attention blocks in encoder and decoder: decoder self-attention at
    ``latent_size`` and ``latent_size / 2`` tokens per side (like SD's 64x64 and 32x32 levels)."""
    return {"sample_size": latent_size, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": cross_attention_dim,
            "attention_head_dim": 4, "norm_num_groups": 16}


def tiny_vae_config(image_size: int = 64) -> dict:
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "block_out_channels": [16, 16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 8, "sample_size": image_size,
            "scaling_factor": 0.18215}


def build_unet_vae(kind: str = "tiny", *, seed: int = 0, image_size: int = 64):
    """A random ``(unet, vae, scheduler_config)`` of ``kind`` ``"tiny"`` or ``"sd15"`` (in memory)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    if kind == "sd15":
        unet = UNet2DConditionModel(**sd15_unet_config())
        vae = AutoencoderKL(**sd15_vae_config())
    elif kind == "tiny":
        unet = UNet2DConditionModel(**tiny_unet_config(image_size // 8))
        vae = AutoencoderKL(**tiny_vae_config(image_size))
        _wake(unet)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return unet.eval(), vae.eval(), sd15_scheduler_config()  # type: ignore[attr-defined]


def _wake(module) -> None:
    """Give zero-initialised layers small random weights (else a random UNet's output ignores its input)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)


_TINY_WORDS = ["a", "photo", "of", "histopathology", "tissue", "section", "stained", "the", "an", "image", "ihc"]


def _write_tiny_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer over single letters and a few whole words; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,-'"
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
    for ch in letters:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for word in _TINY_WORDS:  # merge each word left to right: "p h" -> "ph", "ph o" -> "pho", ...
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merges.append(f"{left} {right}")
            left = left + right
            vocab.setdefault(left, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}))
    return len(vocab)


def save_tiny_stable_diffusion(folder, *, image_size: int = 64, seed: int = 0, text_encoder: bool = True,
                               prompt_embeds: bool = False) -> Path:
    """Save a tiny random Stable Diffusion to ``folder`` in the diffusers layout; return the folder.

    Parameters
    ----------
    image_size : int
        Native image size (latent = image_size / 8).
    text_encoder : bool
        Write ``text_encoder/`` and ``tokenizer/`` (a tiny CLIP); False leaves them out.
    prompt_embeds : bool
        Also write ``prompt_embeds.safetensors`` for the default prompt (the alternative to a
        text encoder), computed with the tiny CLIP when there is one, else random.
    """
    import torch
    from diffusers import DDIMScheduler

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet, vae, sched_cfg = build_unet_vae("tiny", seed=seed, image_size=image_size)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    DDIMScheduler.from_config({k: v for k, v in sched_cfg.items() if not k.startswith("_")}).save_pretrained(
        folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _version("diffusers"),
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    encoder = tokenizer = None
    if text_encoder:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        n_vocab = _write_tiny_tokenizer(folder / "tokenizer")
        torch.manual_seed(seed + 1)
        config = CLIPTextConfig(vocab_size=n_vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                pad_token_id=1, projection_dim=32)
        encoder = CLIPTextModel(config).eval()
        encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        index.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    if prompt_embeds:
        from .models import save_prompt_embeddings
        from .settings import DEFAULT_PROMPT

        if encoder is not None:
            from .models import encode_with_clip

            cond = encode_with_clip(tokenizer, encoder, DEFAULT_PROMPT)
            uncond = encode_with_clip(tokenizer, encoder, "")
        else:
            gen = torch.Generator().manual_seed(seed + 2)
            cond, uncond = (torch.randn(1, 77, 32, generator=gen) for _ in range(2))
        save_prompt_embeddings(folder, DEFAULT_PROMPT, cond, uncond)
    return folder


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
