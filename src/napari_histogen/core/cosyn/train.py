"""Training the co-synthesis model: a resumable run folder like latent NASDM's.

::

    RUN_DIR/run.json                  settings, data summary, model config
    RUN_DIR/log.csv                   step, loss, parts (image, distance, label, label CE), lr, seconds
    RUN_DIR/latents/                  TAEF2 latents of the training windows (shared cache format,
                                      :mod:`napari_histogen.core.latent.data`)
    RUN_DIR/samples/step_000500.png   real + points | generated image | generated label | distance
    RUN_DIR/checkpoints/last/         raw + EMA weights, optimizer, step (to resume)
    RUN_DIR/model/cosyn.safetensors   EMA weights for sampling, with cosyn.json (sha256)

Data: the windows of :func:`~napari_histogen.core.nasdm.data.build_patch_set` (its split by
source tile: with CoNSeP, seed 0 and 10 % validation, tiles train_3, train_13 and train_19 are
held out). Per window, once: the semantic label, the normalised distance map and the point map
of the nuclei centroids (:mod:`.layout`); per step they take the dihedral transform of the
cached latent they go with (distance maps and point maps commute with flips and quarter turns).
The batch, timesteps, noise, label noise and condition dropout of a step come from
``(seed, step)``, so a resumed run continues as an uninterrupted one would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HistogenInputError
from ..latent.train import _TrainingLatents
from ..progress import ProgressCallback

__all__ = ["CosynTrainSettings", "train_cosyn"]

log = logging.getLogger(__name__)


@dataclass
class CosynTrainSettings:
    """Settings of a co-synthesis training run (recorded in ``run.json``).

    Parameters
    ----------
    data, out, fmt, scheme, source_mpp, image_size, mpp, val_fraction, transforms, precision
        As for latent NASDM (:class:`~napari_histogen.core.latent.train.LatentTrainSettings`).
    size : str
        Network preset (:data:`~napari_histogen.core.cosyn.model.COSYN_PRESETS`).
    cond_drop : float
        Probability of dropping both the point layout and the type prompt (classifier-free guidance).
    lambda_i, lambda_d, lambda_l : float
        Weights of the image, distance-map and label losses.
    label_ce : float
        Weight of the clean-label cross-entropy added to the categorical loss (D3PM's hybrid loss).
    """

    data: str
    out: str
    fmt: str = "auto"
    size: str = "cpu"
    steps: int = 4000
    batch_size: int = 8
    lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_drop: float = 0.15
    lambda_i: float = 1.0
    lambda_d: float = 1.0
    lambda_l: float = 1.0
    label_ce: float = 0.5
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
        if min(self.lambda_i, self.lambda_d, self.lambda_l, self.label_ce) < 0:
            raise HistogenInputError("Loss weights must not be negative.")


_FIXED = ("size", "image_size", "mpp", "data", "fmt", "overlap", "min_tissue", "val_fraction", "seed", "scheme",
          "source_mpp", "model_overrides", "transforms")


@dataclass
class _Data(_TrainingLatents):
    """The latent trainer's windows and latents, with the co-synthesis targets of every window."""

    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))  # (n_windows, H, W) uint8
    distances: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float16))  # (n_windows, H, W)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))  # class index at centroids

    def batch(self, step: int, settings: CosynTrainSettings, num_timesteps: int):  # type: ignore[override]
        """``(z0, d0, label0, points, prompt, t, noise_z, noise_d, generator)`` of a step."""
        import torch

        from ..nasdm.data import dihedral

        n = len(self.refs)
        gen, idx, z0 = self.latents_of_step(step, settings)
        labels, dists, pts = [], [], []
        for i in idx:
            w, k = i % n, self.transforms[i // n]
            labels.append(np.ascontiguousarray(dihedral(self.labels[w], k)))
            dists.append(np.ascontiguousarray(dihedral(self.distances[w], k)))
            pts.append(np.ascontiguousarray(dihedral(self.points[w], k)))
        label0 = torch.from_numpy(np.stack(labels).astype(np.int64))
        d0 = torch.from_numpy(np.stack(dists).astype(np.float32))[:, None]
        points = torch.from_numpy(np.stack(pts).astype(np.int64))
        k_classes = len(self.class_ids)
        prompt = torch.zeros(len(idx), k_classes)
        for j in range(len(idx)):
            present = torch.unique(points[j])
            present = present[present > 0]
            prompt[j, present - 1] = 1.0
        drop = torch.rand(len(idx), generator=gen) < settings.cond_drop
        points[drop] = 0
        prompt[drop] = 0
        t = torch.randint(0, num_timesteps, (len(idx),), generator=gen)
        noise_z = torch.randn(z0.shape, generator=gen)
        noise_d = torch.randn(d0.shape, generator=gen)
        return z0, d0, label0, points, prompt, t, noise_z, noise_d, gen


def _targets(patches, refs, class_ids):
    from .layout import centroids, point_map, training_targets

    labels, dists, pts = [], [], []
    for ref in refs:
        _, inst, classes = patches.crop(ref)
        label, dist = training_targets(inst, classes, class_ids)
        p, c = centroids(inst, classes)
        labels.append(label.astype(np.uint8))
        dists.append(dist.astype(np.float16))
        pts.append(point_map(p, c, inst.shape, class_ids).astype(np.uint8))
    return np.stack(labels), np.stack(dists), np.stack(pts)


def _training_data(settings: CosynTrainSettings, run_dir: Path, taef2, device, cancel, log_fn) -> _Data:
    from ..latent.train import _training_latents

    base = _training_latents(settings, run_dir, taef2, device, cancel, log_fn)
    labels, dists, pts = _targets(base.patches, base.refs, base.class_ids)
    return _Data(**vars(base), labels=labels, distances=dists, points=pts)


def train_cosyn(settings: CosynTrainSettings, *, progress: ProgressCallback = None, cancel=None, log_fn=None,
                taef2=None):
    """Train (or continue) a co-synthesis model; returns a :class:`~napari_histogen.core.nasdm.train.TrainResult`."""

    from ..devices import describe_device
    from ..latent.taef2 import describe, load_taef2
    from ..latent.train import training_dtype
    from ..nasdm.trainkit import (LossLog, autocast_context, build_model_pair, open_run, start_or_resume,
                                  train_loop)
    from .checkpoint import CosynModelConfig, save_cosyn
    from .diffusion import JointDiffusion, default_cosyn_diffusion
    from .model import CosynNet, cosyn_preset

    log_fn = log_fn or log.info
    folder = open_run(settings, _FIXED)
    run_dir, device = folder.run_dir, folder.device
    taef2 = taef2 if taef2 is not None else load_taef2(device=device)
    data = _training_data(settings, run_dir, taef2, device, cancel, log_fn)
    class_ids = data.class_ids
    net_cfg = cosyn_preset(settings.size, num_classes=len(class_ids), latent_size=settings.image_size // 8,
                           **settings.model_overrides)
    diffusion_cfg = default_cosyn_diffusion(settings.lambda_i, settings.lambda_d, settings.lambda_l,
                                            settings.label_ce, settings.min_snr_gamma)
    diffusion = JointDiffusion(diffusion_cfg, len(class_ids) + 1)
    amp_dtype = training_dtype(settings.precision, device)
    model, ema, optimizer, layout = build_model_pair(CosynNet, net_cfg, settings, device)
    model_config = CosynModelConfig(net=net_cfg.to_dict(), diffusion=diffusion_cfg,
                                    scheme=data.patches.scheme.to_dict(), class_ids=class_ids, mpp=settings.mpp,
                                    latent={"autoencoder": describe(), "channels": 32, "downscale": 8,
                                            "mean": data.mean, "std": data.std})
    step = start_or_resume(folder, model, ema, optimizer, device, settings=settings,
                           data_summary=data.patches.summary, model_config=model_config.to_dict(), log_fn=log_fn)
    model_config.training = {"data": Path(settings.data).name, "run": run_dir.name, "windows": len(data.refs),
                             "transforms": len(data.transforms), "batch_size": settings.batch_size,
                             "lr": settings.lr, "cond_drop": settings.cond_drop, "ema_decay": settings.ema_decay,
                             "seed": settings.seed, "device": describe_device(device),
                             "precision": "bf16" if amp_dtype is not None else "fp32",
                             "val_source_ids": data.patches.summary.get("val_source_ids"),
                             "default_steps": 20, "default_guidance": settings.sample_guidance}
    log_fn(f"{model.n_parameters() / 1e6:.2f} M parameters, {len(data.refs)} training windows x "
           f"{len(data.transforms)} transforms, {len(data.patches.val)} validation windows, classes {class_ids}, "
           f"{describe_device(device)}, {'bf16 autocast' if amp_dtype is not None else 'fp32'}")
    model_path = run_dir / "model" / "cosyn.safetensors"

    def save_model(at_step: int) -> None:
        model_config.training["steps"] = at_step
        save_cosyn(ema, model_config, model_path)

    def losses(step: int) -> dict:
        z0, d0, label0, points, prompt, t, noise_z, noise_d, gen = data.batch(step, settings, diffusion.num_timesteps)
        z0, noise_z = (x.to(device).contiguous(memory_format=layout) for x in (z0, noise_z))
        with autocast_context(device, amp_dtype):
            return diffusion.training_loss(model, z0, d0.to(device), label0.to(device), t.to(device),
                                           points.to(device), prompt.to(device), noise_z, noise_d.to(device),
                                           generator=gen)

    def sample(step: int) -> Path:
        return sample_grid(ema, taef2, model_config, data.patches, list(data.patches.val)[:3] or data.refs[:3],
                           run_dir / "samples" / f"step_{step:06d}.png", settings)

    return train_loop(settings, folder, model, ema, optimizer, step=step, losses=losses,
                      log_values=lambda loss, terms: (loss, *(terms[k] for k in ("image", "distance", "label", "ce"))),
                      loss_log=LossLog(run_dir / "log.csv", settings.batch_size,
                                       ("loss", "image", "distance", "label", "label_ce")),
                      save_model=save_model, model_path=model_path, sample=sample, progress=progress, cancel=cancel,
                      log_fn=log_fn, save_on_interrupt=True)


def label_rgb(label: np.ndarray) -> np.ndarray:
    """A label map 0..K as RGB (background black, classes from a fixed palette)."""
    palette = np.array([[0, 0, 0], [255, 255, 0], [255, 0, 0], [0, 160, 255], [0, 200, 0], [255, 0, 255],
                        [255, 128, 0], [128, 128, 255], [255, 255, 255]], np.uint8)
    return palette[np.minimum(np.asarray(label), len(palette) - 1)]


def sample_grid(ema, taef2, model_config, patches, refs, path: Path, settings: CosynTrainSettings) -> Path:
    """Rows of ``real + points | generated image | generated label | distance`` for a few windows (PNG)."""
    from skimage.io import imsave

    from .checkpoint import CosynModel
    from .layout import centroids, pixel_of, point_map, prompt_vector

    model = CosynModel(ema.eval(), taef2, model_config)
    class_ids = [int(c) for c in model_config.class_ids]
    maps, prompts, reals, pts_all = [], [], [], []
    for ref in refs:
        image, inst, classes = patches.crop(ref)
        p, c = centroids(inst, classes)
        maps.append(point_map(p, c, inst.shape, class_ids))
        prompts.append(prompt_vector(c, class_ids))
        reals.append(np.array(image, dtype=np.uint8))
        pts_all.append(p)
    images, labels, dists = model.generate(np.stack(maps), np.stack(prompts),
                                           seeds=[settings.seed + i for i in range(len(refs))],
                                           steps=settings.sample_steps, guidance=settings.sample_guidance)
    rows = []
    for real, p, img, lab, dist in zip(reals, pts_all, images, labels, dists):
        marked = real.copy()
        for r, c in pixel_of(p):
            marked[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = (0, 255, 0)
        dist_rgb = np.repeat(np.round(np.clip(dist, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        rows.append(np.concatenate([marked, img, label_rgb(lab), dist_rgb], axis=1))
    pad = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, pad)][:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, grid, check_contrast=False)
    return path
