"""Training latent NASDM: a resumable run folder like pixel NASDM's.

::

    RUN_DIR/run.json                  settings, data summary, model config
    RUN_DIR/log.csv                   step, loss, unweighted mse, lr, seconds, patches/s
    RUN_DIR/latents/                  TAEF2 latents of the training windows (see latent.data)
    RUN_DIR/samples/step_000500.png   mask | EMA sample | real, for validation windows
    RUN_DIR/checkpoints/last/         raw + EMA weights, optimizer, step (to resume)
    RUN_DIR/model/nasdm.safetensors   EMA weights for sampling, with nasdm.json (sha256)

The batch of a step, its timesteps, noise, transforms and condition dropout come from
``(seed, step)``, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HistogenInputError
from ..progress import ProgressCallback

__all__ = ["LatentTrainSettings", "train_latent_nasdm"]

log = logging.getLogger(__name__)


@dataclass
class LatentTrainSettings:
    """Settings of a latent NASDM training run (recorded in ``run.json``).

    Parameters
    ----------
    data, out, fmt, scheme, source_mpp
        As for pixel NASDM (:class:`~napari_histogen.core.nasdm.train.TrainSettings`).
    size : str
        Latent denoiser preset (:data:`~napari_histogen.core.latent.model.LATENT_PRESETS`).
    steps : int
        Total optimisation steps to reach.
    batch_size : int
    lr : float
        Peak AdamW learning rate, reached after ``warmup`` steps (linear from 0).
    ema_decay : float
        EMA decay, warmed up as ``min(decay, (1 + step) / (10 + step))``.
    cond_drop : float
        Probability of the null condition (classifier-free guidance) once ``step >=
        cond_drop_from``: the reference trains without dropout first, then with 0.2.
    prediction : {"v", "epsilon"}
    min_snr_gamma : float
        Min-SNR-gamma loss weighting (0 = plain MSE).
    image_size : int
        Window side in pixels at ``mpp`` (256 at 40x: a 32 x 32 latent).
    mpp : float
        Microns per pixel the model works at (0.25 = 40x, TAEF2's best reconstruction).
    transforms : int
        How many of the 8 dihedral transforms to encode and train on (1-8).
    precision : {"auto", "fp32", "bf16"}
        Autocast dtype of the network. "auto": bf16 on CUDA, and on CPUs whose oneDNN has bf16
        kernels (AVX512-BF16/AMX: 4x faster than fp32 on this project's 2-core Xeon), else fp32.
    """

    data: str
    out: str
    fmt: str = "auto"
    size: str = "cpu"
    steps: int = 4000
    batch_size: int = 16
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_drop: float = 0.15
    cond_drop_from: int = 0
    prediction: str = "v"
    min_snr_gamma: float = 5.0
    image_size: int = 256
    mpp: float = 0.25
    overlap: float = 0.0
    min_tissue: float = 0.5
    val_fraction: float = 0.1
    transforms: int = 8
    sample_every: int = 500
    checkpoint_every: int = 100
    log_every: int = 10
    sample_steps: int = 20
    sample_guidance: float = 1.0
    device: str = "auto"
    seed: int = 0
    scheme: str | None = None
    source_mpp: float | None = None
    grad_clip: float = 1.0
    threads: int | None = None
    precision: str = "auto"
    model_overrides: dict = field(default_factory=dict)

    def check(self) -> None:
        from ..nasdm.train import check_optimisation_settings
        from ..nasdm.trainkit import check_latent_window, check_precision

        check_optimisation_settings(self)
        check_latent_window(self)
        check_precision(self.precision)


#: The order in which dihedral transforms are used: the first four form a group (identity,
#: half turn and the two diagonal flips), so a run with 4 still sees every orientation class.
TRANSFORM_ORDER = (0, 5, 2, 7, 1, 4, 3, 6)

# The settings that fix the model and the data: a resumed run must keep them.
_FIXED = ("size", "image_size", "mpp", "data", "fmt", "overlap", "min_tissue", "val_fraction", "seed", "scheme",
          "source_mpp", "model_overrides", "prediction", "transforms")


def _latent_stats(latents: dict):
    """Per-channel mean and std over every encoded window (float64 accumulation)."""
    import torch

    allz = torch.cat([z.float() for z in latents.values()])
    mean = allz.mean(dim=(0, 2, 3), dtype=torch.float64)
    std = allz.std(dim=(0, 2, 3)).double()
    return mean.tolist(), std.clamp_min(1e-3).tolist()


def training_dtype(precision: str, device):
    """The autocast dtype for training (None = fp32); see :class:`LatentTrainSettings`."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


@dataclass
class _TrainingLatents:
    """The training windows, their cached latents (all transforms) and the normalisation."""

    patches: Any  # PatchSet
    refs: list
    stack: Any  # tensor (n_transforms * n_windows, C, h, w) fp16; item i: transform i // n, window i % n
    transforms: list
    mean: list
    std: list

    @property
    def class_ids(self) -> list:
        return list(self.patches.class_ids)

    def latents_of_step(self, step: int, settings):
        """``(generator, indices, z0)``: the step's generator (from ``(seed, step)``), its stack indices
        (item ``i``: transform ``i // n`` of window ``i % n``) and their normalised latents."""
        import torch

        from ..nasdm.train import _batch_indices

        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        idx = _batch_indices(step, settings.batch_size, len(self.stack), settings.seed)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return gen, idx, (self.stack[idx].float() - mean) / std

    def batch(self, step: int, settings: LatentTrainSettings, num_timesteps: int):
        """``(z0, cond, t, noise)`` of a step, drawn from ``(seed, step)`` alone (exact resume)."""
        import torch

        from ..nasdm.condition import make_condition
        from ..nasdm.data import dihedral

        n = len(self.refs)
        gen, idx, z0 = self.latents_of_step(step, settings)
        conds = []
        for i in idx:
            _, inst, classes = self.patches.crop(self.refs[i % n])
            k = self.transforms[i // n]
            conds.append(make_condition(np.ascontiguousarray(dihedral(inst, k)), classes, self.class_ids))
        cond = torch.from_numpy(np.stack(conds))
        p_drop = settings.cond_drop if step >= settings.cond_drop_from else 0.0
        cond[torch.rand(len(idx), generator=gen) < p_drop] = 0
        t = torch.randint(0, num_timesteps, (len(idx),), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        return z0, cond, t, noise


def _training_latents(settings, run_dir: Path, taef2, device, cancel, log_fn) -> _TrainingLatents:
    """Read the data, cut the windows, encode (or reuse) their latents; see :mod:`.data`.

    ``settings``: a :class:`LatentTrainSettings` or another trainer's settings with the same data fields.
    """
    import torch

    from ..nasdm.data import build_patch_set
    from .data import encode_all
    from .taef2 import TAEF2_SHA256

    log_fn(f"Reading {settings.data} ...")
    patches = build_patch_set(settings.data, settings.fmt, target_mpp=settings.mpp, patch_size=settings.image_size,
                              overlap=settings.overlap, min_tissue=settings.min_tissue,
                              val_fraction=settings.val_fraction, seed=settings.seed, scheme=settings.scheme,
                              source_mpp=settings.source_mpp)
    refs = list(patches.train)
    if not refs:
        raise HistogenInputError(f"No training windows in {settings.data} (after the tissue filter); check the "
                                 "format and the tissue threshold.")
    latents = encode_all(patches, refs, taef2, TAEF2_SHA256, run_dir / "latents",
                         transforms=TRANSFORM_ORDER[: int(settings.transforms)], device=device, cancel=cancel,
                         log_fn=log_fn)
    mean, std = _latent_stats(latents)
    return _TrainingLatents(patches=patches, refs=refs, stack=torch.cat([latents[k] for k in latents]),
                            transforms=list(latents), mean=mean, std=std)


def _training_record(settings: LatentTrainSettings, run_dir: Path, data: _TrainingLatents, device,
                     amp_dtype) -> dict:
    """What the model JSON records about its training."""
    from ..devices import describe_device

    return {"data": settings.data, "run": run_dir.name, "data_summary": data.patches.summary,
            "device": describe_device(device), "batch_size": settings.batch_size, "lr": settings.lr,
            "warmup": settings.warmup, "cond_drop": settings.cond_drop, "cond_drop_from": settings.cond_drop_from,
            "ema_decay": settings.ema_decay, "seed": settings.seed, "transforms": len(data.transforms),
            "windows": len(data.refs), "precision": "bf16" if amp_dtype is not None else "fp32",
            "sampler": "dpmpp", "default_steps": 20, "default_guidance": settings.sample_guidance}


def train_latent_nasdm(settings: LatentTrainSettings, *, progress: ProgressCallback = None, cancel=None,
                       log_fn=None):
    """Train (or continue) a latent NASDM model; returns the nasdm ``TrainResult``.

    ``log_fn`` receives progress messages (default: this module's logger).
    """

    from ..devices import describe_device
    from ..nasdm.checkpoint import NasdmModelConfig, save_nasdm
    from ..nasdm.condition import condition_channels
    from ..nasdm.trainkit import (LossLog, autocast_context, build_model_pair, open_run, start_or_resume,
                                  train_loop)
    from .diffusion import LatentDiffusion, default_diffusion
    from .model import LatentNasdmNet, latent_preset
    from .taef2 import describe, load_taef2

    log_fn = log_fn or log.info
    folder = open_run(settings, _FIXED)
    run_dir, device = folder.run_dir, folder.device
    taef2 = load_taef2(device=device)
    data = _training_latents(settings, run_dir, taef2, device, cancel, log_fn)

    net_cfg = latent_preset(settings.size, cond_channels=condition_channels(data.class_ids),
                            latent_size=settings.image_size // 8, **settings.model_overrides)
    diffusion_cfg = default_diffusion(settings.prediction, settings.min_snr_gamma)
    diffusion = LatentDiffusion(diffusion_cfg)
    amp_dtype = training_dtype(settings.precision, device)
    model, ema, optimizer, layout = build_model_pair(LatentNasdmNet, net_cfg, settings, device)
    latent_info = {"autoencoder": describe(), "channels": 32, "downscale": 8, "mean": data.mean, "std": data.std}
    model_config = NasdmModelConfig(unet=net_cfg.to_dict(), diffusion=diffusion_cfg,
                                    scheme=data.patches.scheme.to_dict(), class_ids=data.class_ids, mpp=settings.mpp,
                                    family="latent", latent=latent_info)
    step = start_or_resume(folder, model, ema, optimizer, device, settings=settings,
                           data_summary=data.patches.summary, model_config=model_config.to_dict(), log_fn=log_fn)
    model_config.training = _training_record(settings, run_dir, data, device, amp_dtype)
    log_fn(f"{model.n_parameters() / 1e6:.2f} M parameters, {len(data.refs)} training windows x "
           f"{len(data.transforms)} transforms, {len(data.patches.val)} validation windows, classes "
           f"{data.class_ids}, {describe_device(device)}, {'bf16 autocast' if amp_dtype is not None else 'fp32'}")
    model_path = run_dir / "model" / "nasdm.safetensors"

    def save_model(at_step: int) -> None:
        model_config.training["steps"] = at_step
        save_nasdm(ema, model_config, model_path)

    def losses(step: int) -> dict:
        z0, cond, t, noise = data.batch(step, settings, diffusion.num_timesteps)
        z0, noise = (x.to(device).contiguous(memory_format=layout) for x in (z0, noise))
        with autocast_context(device, amp_dtype):
            return diffusion.training_loss(model, z0, t.to(device), cond.to(device), noise)

    def sample(step: int) -> Path:
        return _sample_grid(ema, taef2, data.patches, list(data.patches.val)[:4] or data.refs[:4], model_config,
                            run_dir / "samples" / f"step_{step:06d}.png", settings, device)

    return train_loop(settings, folder, model, ema, optimizer, step=step, losses=losses,
                      log_values=lambda loss, terms: (loss, float(terms["mse"].mean())),
                      loss_log=LossLog(run_dir / "log.csv", settings.batch_size, ("loss", "mse")),
                      save_model=save_model, model_path=model_path, sample=sample, progress=progress, cancel=cancel,
                      log_fn=log_fn)


def _sample_grid(ema, taef2, patches, refs, model_config, path: Path, settings: LatentTrainSettings,
                 device) -> Path:
    """Rows of ``mask | EMA sample | real`` for a few validation windows, saved as PNG."""
    import torch
    from skimage.io import imsave

    from ..nasdm.render import condition_to_rgb
    from .sampling import decode_latents, LatentModel

    wrapper = LatentModel(ema.eval(), taef2, model_config)
    conds, reals = [], []
    for ref in refs:
        image, inst, classes = patches.crop(ref)
        conds.append(patches.condition(ref))
        reals.append(np.asarray(image))
    cond = torch.from_numpy(np.stack(conds)).to(device)
    gens = [torch.Generator().manual_seed(settings.seed + i) for i in range(len(refs))]
    z = wrapper.sample_latents(cond, steps=settings.sample_steps, guidance=settings.sample_guidance,
                               sampler="dpmpp", generators=gens)
    images = decode_latents(wrapper, z)
    scheme = model_config.class_scheme()
    rows = []
    for c, img, real in zip(conds, images, reals):
        rows.append(np.concatenate([condition_to_rgb(c, model_config.class_ids, scheme), img, real], axis=1))
    pad = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, pad)][:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, grid, check_contrast=False)
    return path
