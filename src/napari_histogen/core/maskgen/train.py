"""Training a mask-generation model: a resumable run folder like NASDM's.

::

    RUN_DIR/run.json                  settings, data summary, model config
    RUN_DIR/log.csv                   step, loss, unweighted mse, lr, seconds, windows/s
    RUN_DIR/samples/step_000500.png   generated masks for fixed type vectors, and real ones
    RUN_DIR/checkpoints/last/         raw + EMA weights, optimizer, step (to resume)
    RUN_DIR/model/maskgen.safetensors EMA weights for sampling, with maskgen.json (sha256)

Data: the windows of :func:`~napari_histogen.core.nasdm.data.build_patch_set` (the NASDM
pipeline: resampled to ``mpp``, tissue-filtered, split by source image, so the CoNSeP
validation tiles are held out exactly as for the image models), each encoded once as the
``(K + 2, P, P)`` target of :mod:`.target`. A training item is a random ``crop`` px square of
a window in one of the 8 dihedral transforms (the target is equivariant to them), and its type
vector lists the classes with at least :data:`MIN_TYPE_PIXELS` pixels in the crop. Training on
crops smaller than the window is for CPU throughput (measured in docs/mask_generation.md); the
network is fully convolutional, so it samples whole windows.

The batch of a step, its crops, transforms, timesteps, noise and condition dropout come from
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

__all__ = ["MaskGenTrainSettings", "train_maskgen", "MIN_TYPE_PIXELS", "GRID_TYPE_SETS"]

log = logging.getLogger(__name__)

#: pixels of a class in a training crop for the class to count as present in its type vector
MIN_TYPE_PIXELS = 12
#: type vectors (indices into the class ids) of the rows of the sample grids
GRID_TYPE_SETS = ((), (1,), (2,), (1, 2), (0, 1, 2, 3))

# The settings that fix the model and the data: a resumed run must keep them.
_FIXED = ("data", "fmt", "image_size", "mpp", "overlap", "min_tissue", "val_fraction", "seed", "scheme", "source_mpp",
          "block_out_channels", "layers_per_block", "attention_levels", "crop")


@dataclass
class MaskGenTrainSettings:
    """Settings of a mask-generation training run (recorded in ``run.json``).

    Parameters
    ----------
    data, fmt, scheme, source_mpp, overlap, min_tissue, val_fraction
        The NASDM data pipeline's (:func:`~napari_histogen.core.nasdm.data.build_patch_set`).
    out : str
        Run folder (created; an existing run there is resumed).
    image_size : int
        Window side in px at ``mpp`` (the size masks are generated at).
    mpp : float
        µm/px of the model (0.5 = 20x).
    crop : int
        Side of the random training crops (<= ``image_size``, a multiple of the network's
        downscale).
    steps : int
        Total optimisation steps to reach.
    cond_drop : float
        Probability of the null (zero) type vector: classifier-free guidance.
    block_out_channels, layers_per_block, attention_levels
        The network (:class:`~napari_histogen.core.maskgen.model.MaskGenNetConfig`).
    precision : {"auto", "fp32", "bf16"}
        As latent NASDM's trainer ("auto": bf16 where the CPU/GPU has fast bf16 kernels).
    """

    data: str
    out: str
    fmt: str = "auto"
    scheme: str | None = None
    source_mpp: float | None = None
    image_size: int = 128
    mpp: float = 0.5
    overlap: float = 0.5
    min_tissue: float = 0.5
    val_fraction: float = 0.1
    crop: int = 64
    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_drop: float = 0.15
    grad_clip: float = 1.0
    block_out_channels: list = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_levels: list = field(default_factory=lambda: [2])
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 100
    sample_every: int = 1000
    log_every: int = 10
    sample_steps: int = 20
    sample_guidance: float = 1.0
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    precision: str = "auto"

    def check(self) -> None:
        from ..nasdm.train import check_optimisation_settings
        from ..nasdm.trainkit import check_precision

        check_optimisation_settings(self)
        down = 2 ** (len(self.block_out_channels) - 1)
        if self.image_size < 8 or self.image_size % down:
            raise HistogenInputError(f"The window size must be a multiple of {down}, not {self.image_size}.")
        if not down <= self.crop <= self.image_size or self.crop % down:
            raise HistogenInputError(f"The crop must be a multiple of {down} between {down} and the window size "
                                     f"{self.image_size}, not {self.crop}.")
        check_precision(self.precision)
        if self.mpp <= 0:
            raise HistogenInputError(f"Microns per pixel must be positive, not {self.mpp}.")


def read_windows(settings: MaskGenTrainSettings, log_fn=None):
    """The patch set of ``settings.data`` at the model's scale and window size (split as NASDM's)."""
    from ..nasdm.data import build_patch_set

    if log_fn:
        log_fn(f"Reading {settings.data} ...")
    return build_patch_set(settings.data, settings.fmt, target_mpp=settings.mpp, patch_size=settings.image_size,
                           overlap=settings.overlap, min_tissue=settings.min_tissue,
                           val_fraction=settings.val_fraction, seed=settings.seed, scheme=settings.scheme,
                           source_mpp=settings.source_mpp, unclassified="drop")


def encode_windows(patches, refs) -> Any:
    """``(N, K + 2, P, P)`` float16 tensor of the windows' targets."""
    import torch

    from .target import encode_mask

    out = []
    for ref in refs:
        _, inst, classes = patches.crop(ref)
        out.append(torch.from_numpy(encode_mask(inst, classes, patches.class_ids)).to(torch.float16))
    return torch.stack(out)


def crop_types(x0, n_types: int, min_pixels: int = MIN_TYPE_PIXELS):
    """Multi-hot ``(N, K)`` of the classes with at least ``min_pixels`` pixels in each target crop."""
    counts = (x0[:, 1: n_types + 1] > 0).sum(dim=(2, 3))
    return (counts >= min_pixels).float()


def training_batch(stack, step: int, settings: MaskGenTrainSettings, num_timesteps: int, n_types: int):
    """``(x0, y, t, noise)`` of a step, drawn from ``(seed, step)`` alone (exact resume)."""
    import torch

    from ..nasdm.train import _batch_indices

    gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    idx = _batch_indices(step, settings.batch_size, len(stack), settings.seed)
    size, crop = stack.shape[-1], int(settings.crop)
    ks = torch.randint(0, 8, (len(idx),), generator=gen).tolist()
    offs = torch.randint(0, size - crop + 1, (len(idx), 2), generator=gen).tolist()
    items = []
    for i, k, (r, c) in zip(idx, ks, offs):
        x = stack[i, :, r: r + crop, c: c + crop].float()
        x = torch.rot90(x, k % 4, dims=(1, 2))
        items.append(torch.flip(x, dims=(2,)) if k >= 4 else x)
    x0 = torch.stack(items)
    y = crop_types(x0, n_types)
    y[torch.rand(len(idx), generator=gen) < settings.cond_drop] = 0
    t = torch.randint(0, num_timesteps, (len(idx),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return x0, y, t, noise


def train_maskgen(settings: MaskGenTrainSettings, *, progress: ProgressCallback = None, cancel=None, log_fn=None):
    """Train (or continue) a mask-generation model; returns the NASDM ``TrainResult`` record."""

    from ..devices import describe_device
    from ..latent.train import training_dtype
    from ..nasdm.trainkit import (LossLog, autocast_context, build_model_pair, open_run, start_or_resume,
                                  train_loop)
    from .checkpoint import MaskGenConfig, save_maskgen
    from .diffusion import MaskDiffusion, default_diffusion
    from .model import MaskGenNet, MaskGenNetConfig
    from .target import n_channels

    log_fn = log_fn or log.info
    folder = open_run(settings, _FIXED)
    run_dir, device = folder.run_dir, folder.device
    patches = read_windows(settings, log_fn)
    refs = list(patches.train)
    if not refs:
        raise HistogenInputError(f"No training windows in {settings.data} (after the tissue filter); check the data.")
    class_ids = [int(c) for c in patches.class_ids]
    stack = encode_windows(patches, refs)
    net_cfg = MaskGenNetConfig(channels=n_channels(class_ids), n_types=len(class_ids),
                               block_out_channels=[int(c) for c in settings.block_out_channels],
                               layers_per_block=int(settings.layers_per_block),
                               attention_levels=[int(v) for v in settings.attention_levels])
    diffusion_cfg = default_diffusion(settings.min_snr_gamma)
    diffusion = MaskDiffusion(diffusion_cfg)
    amp_dtype = training_dtype(settings.precision, device)
    model, ema, optimizer, layout = build_model_pair(MaskGenNet, net_cfg, settings, device)
    config = MaskGenConfig(net=net_cfg.to_dict(), diffusion=diffusion_cfg, scheme=patches.scheme.to_dict(),
                           class_ids=class_ids, mpp=float(settings.mpp), image_size=int(settings.image_size))
    step = start_or_resume(folder, model, ema, optimizer, device, settings=settings, data_summary=patches.summary,
                           model_config=config.to_dict(), log_fn=log_fn)
    config.training = {"data": settings.data, "run": run_dir.name, "data_summary": patches.summary,
                       "device": describe_device(device), "batch_size": settings.batch_size, "lr": settings.lr,
                       "crop": settings.crop, "cond_drop": settings.cond_drop, "ema_decay": settings.ema_decay,
                       "seed": settings.seed, "windows": len(refs), "min_type_pixels": MIN_TYPE_PIXELS,
                       "precision": "bf16" if amp_dtype is not None else "fp32", "sampler": "dpmpp",
                       "default_steps": settings.sample_steps, "default_guidance": settings.sample_guidance}
    log_fn(f"{model.n_parameters() / 1e6:.2f} M parameters, {len(refs)} training windows, {len(patches.val)} "
           f"validation windows, classes {class_ids}, {describe_device(device)}, "
           f"{'bf16 autocast' if amp_dtype is not None else 'fp32'}")
    val_refs = list(patches.val)
    model_path = run_dir / "model" / "maskgen.safetensors"

    def save_model(at_step: int) -> None:
        config.training["steps"] = at_step
        save_maskgen(ema, config, model_path)

    def losses(step: int) -> dict:
        x0, y, t, noise = training_batch(stack, step, settings, diffusion.num_timesteps, len(class_ids))
        x0, noise = (v.to(device).contiguous(memory_format=layout) for v in (x0, noise))
        with autocast_context(device, amp_dtype):
            return diffusion.training_loss(model, x0, t.to(device), y.to(device), noise)

    def sample(step: int) -> Path:
        return sample_grid(ema.eval(), config, patches, val_refs, run_dir / "samples" / f"step_{step:06d}.png",
                           settings)

    return train_loop(settings, folder, model, ema, optimizer, step=step, losses=losses,
                      log_values=lambda loss, terms: (loss, float(terms["mse"].mean())),
                      loss_log=LossLog(run_dir / "log.csv", settings.batch_size, ("loss", "mse")),
                      save_model=save_model, model_path=model_path, sample=sample, progress=progress, cancel=cancel,
                      log_fn=log_fn)


def sample_grid(model, config, patches, val_refs, path: Path, settings: MaskGenTrainSettings, *,
                per_row: int = 3) -> Path:
    """PNG of generated masks: one row per type set of :data:`GRID_TYPE_SETS` (first cell: the
    vector as coloured squares), then a row of real validation masks."""
    import torch
    from skimage.io import imsave

    from ..render import render_labels
    from .diffusion import sample_masks
    from .target import decode_mask

    scheme = config.class_scheme()
    k = len(config.class_ids)
    size = int(config.image_size)
    sets = [s for s in GRID_TYPE_SETS if all(i < k for i in s)]
    ys = torch.zeros((len(sets) * per_row, k))
    for r, s in enumerate(sets):
        for i in s:
            ys[r * per_row:(r + 1) * per_row, i] = 1
    gens = [torch.Generator().manual_seed(settings.seed + j) for j in range(len(ys))]
    out = sample_masks(model, ys, config.diffusion, size=size, steps=settings.sample_steps,
                       guidance=settings.sample_guidance, generators=gens).cpu().numpy()
    masks = [decode_mask(o, config.class_ids, scheme, mpp=config.mpp) for o in out]
    rows = []
    gap = 4
    for r, s in enumerate(sets):
        key = np.full((size, 16, 3), 255, np.uint8)
        for j, i in enumerate(s):
            key[j * 16:(j + 1) * 16 - 2] = scheme.color(int(config.class_ids[i]))
        cells = [key] + [render_labels(m.type_map(), scheme) for m in masks[r * per_row:(r + 1) * per_row]]
        rows.append(np.concatenate([c for cell in cells for c in (cell, np.full((size, gap, 3), 200, np.uint8))],
                                   axis=1))
    if val_refs:
        from .target import semantic_from_instances

        cells = [np.full((size, 16, 3), 0, np.uint8)]
        for ref in val_refs[:per_row]:
            _, inst, classes = patches.crop(ref)
            cells.append(render_labels(semantic_from_instances(inst, classes), scheme))
        while len(cells) < per_row + 1:
            cells.append(np.full((size, size, 3), 255, np.uint8))
        rows.append(np.concatenate([c for cell in cells for c in (cell, np.full((size, gap, 3), 200, np.uint8))],
                                   axis=1))
    grid = np.concatenate([r for row in rows for r in (row, np.full((gap, row.shape[1], 3), 200, np.uint8))],
                          axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, grid, check_contrast=False)
    return path
