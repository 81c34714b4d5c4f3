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
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HistogenInputError
from ..progress import ProgressCallback, check_cancel

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

        check_optimisation_settings(self)
        if self.image_size % 8:
            raise HistogenInputError(f"The patch size must be a multiple of 8 for TAEF2, not {self.image_size}.")
        if not 1 <= int(self.transforms) <= 8:
            raise HistogenInputError(f"Transforms must be 1 to 8, not {self.transforms}.")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise HistogenInputError(f"Precision must be auto, fp32 or bf16, not {self.precision!r}.")
        if min(self.lambda_i, self.lambda_d, self.lambda_l, self.label_ce) < 0:
            raise HistogenInputError("Loss weights must not be negative.")


_FIXED = ("size", "image_size", "mpp", "data", "fmt", "overlap", "min_tissue", "val_fraction", "seed", "scheme",
          "source_mpp", "model_overrides", "transforms")


@dataclass
class _Data:
    patches: Any
    refs: list
    stack: Any        # (n_transforms * n_windows, C, h, w) fp16 latents
    transforms: list
    mean: list
    std: list
    labels: np.ndarray     # (n_windows, H, W) uint8
    distances: np.ndarray  # (n_windows, H, W) float16
    points: np.ndarray     # (n_windows, H, W) uint8 class index at centroids

    @property
    def class_ids(self) -> list:
        return list(self.patches.class_ids)

    def batch(self, step: int, settings: CosynTrainSettings, num_timesteps: int):
        """``(z0, d0, label0, points, prompt, t, noise_z, noise_d, generator)`` of a step."""
        import torch

        from ..nasdm.data import dihedral
        from ..nasdm.train import _batch_indices

        n = len(self.refs)
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        idx = _batch_indices(step, settings.batch_size, len(self.stack), settings.seed)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        z0 = (self.stack[idx].float() - mean) / std
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
    import torch

    from ..latent.data import encode_all
    from ..latent.taef2 import TAEF2_SHA256
    from ..latent.train import TRANSFORM_ORDER, _latent_stats
    from ..nasdm.data import build_patch_set

    log_fn(f"Reading {settings.data} ...")
    patches = build_patch_set(settings.data, settings.fmt, target_mpp=settings.mpp, patch_size=settings.image_size,
                              overlap=settings.overlap, min_tissue=settings.min_tissue,
                              val_fraction=settings.val_fraction, seed=settings.seed, scheme=settings.scheme,
                              source_mpp=settings.source_mpp)
    refs = list(patches.train)
    if not refs:
        raise HistogenInputError(f"No training windows in {settings.data}; check the format and the tissue threshold.")
    latents = encode_all(patches, refs, taef2, TAEF2_SHA256, run_dir / "latents",
                         transforms=TRANSFORM_ORDER[: int(settings.transforms)], device=device, cancel=cancel,
                         log_fn=log_fn)
    mean, std = _latent_stats(latents)
    labels, dists, pts = _targets(patches, refs, list(patches.class_ids))
    return _Data(patches=patches, refs=refs, stack=torch.cat([latents[k] for k in latents]), transforms=list(latents),
                 mean=mean, std=std, labels=labels, distances=dists, points=pts)


class _Log:
    COLUMNS = ["step", "loss", "image", "distance", "label", "label_ce", "lr", "seconds", "patches_per_s"]

    def __init__(self, path: Path, batch_size: int):
        import csv

        new = not path.is_file()
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(self.COLUMNS)
        self.batch_size = batch_size
        self.t_start = self.t_window = time.perf_counter()
        self.rows: list[list[float]] = []

    def add(self, parts: dict) -> None:
        self.rows.append([float(parts[k]) for k in ("loss", "image", "distance", "label", "ce")])

    def write(self, step: int, lr: float) -> None:
        now = time.perf_counter()
        means = np.mean(self.rows, axis=0)
        self.writer.writerow([step, *(f"{v:.5f}" for v in means), f"{lr:.3g}", f"{now - self.t_start:.1f}",
                              f"{len(self.rows) * self.batch_size / max(now - self.t_window, 1e-9):.2f}"])
        self.file.flush()
        self.rows, self.t_window = [], now

    def close(self) -> None:
        self.file.close()


def train_cosyn(settings: CosynTrainSettings, *, progress: ProgressCallback = None, cancel=None, log_fn=None,
                taef2=None):
    """Train (or continue) a co-synthesis model; returns a :class:`~napari_histogen.core.nasdm.train.TrainResult`."""
    import torch

    from ..devices import describe_device, resolve_device
    from ..latent.taef2 import describe, load_taef2
    from ..latent.train import training_dtype
    from ..nasdm.train import TrainResult, _check_same_run, _ema_update, _load_state, _save_state, _write_json
    from ..progress import Cancelled
    from .checkpoint import CosynModelConfig, save_cosyn
    from .diffusion import JointDiffusion, default_cosyn_diffusion
    from .model import CosynNet, cosyn_preset

    log_fn = log_fn or log.info
    settings.check()
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    run_dir = Path(settings.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints" / "last"
    resuming = (ckpt_dir / "state.json").is_file()
    if resuming:
        _check_same_run(run_dir / "run.json", settings, fixed=_FIXED)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    taef2 = taef2 if taef2 is not None else load_taef2(device=device)
    data = _training_data(settings, run_dir, taef2, device, cancel, log_fn)
    class_ids = data.class_ids
    net_cfg = cosyn_preset(settings.size, num_classes=len(class_ids), latent_size=settings.image_size // 8,
                           **settings.model_overrides)
    diffusion_cfg = default_cosyn_diffusion(settings.lambda_i, settings.lambda_d, settings.lambda_l,
                                            settings.label_ce, settings.min_snr_gamma)
    diffusion = JointDiffusion(diffusion_cfg, len(class_ids) + 1)
    amp_dtype = training_dtype(settings.precision, device)
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = CosynNet(net_cfg).to(device, memory_format=layout)  # type: ignore[call-overload]
    ema = CosynNet(net_cfg).to(device, memory_format=layout).requires_grad_(False)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model_config = CosynModelConfig(net=net_cfg.to_dict(), diffusion=diffusion_cfg,
                                    scheme=data.patches.scheme.to_dict(), class_ids=class_ids, mpp=settings.mpp,
                                    latent={"autoencoder": describe(), "channels": 32, "downscale": 8,
                                            "mean": data.mean, "std": data.std})
    step = 0
    if resuming:
        step = _load_state(ckpt_dir, model, ema, optimizer, device)
        log_fn(f"Resuming {run_dir} at step {step}.")
    else:
        ema.load_state_dict(model.state_dict())
        _write_json(run_dir / "run.json", {"settings": asdict(settings), "data": data.patches.summary,
                                           "model": model_config.to_dict(), "parameters": model.n_parameters()})
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

    def save(at_step: int) -> None:
        _save_state(ckpt_dir, model, ema, optimizer, at_step)
        model_config.training["steps"] = at_step
        save_cosyn(ema, model_config, model_path)

    loss_log = _Log(run_dir / "log.csv", settings.batch_size)
    grids: list[Path] = []
    last_loss = None
    model.train()
    try:
        while step < settings.steps:
            check_cancel(cancel)
            lr = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup))
            for group in optimizer.param_groups:
                group["lr"] = lr
            z0, d0, label0, points, prompt, t, noise_z, noise_d, gen = data.batch(step, settings,
                                                                                 diffusion.num_timesteps)
            z0, noise_z = (x.to(device).contiguous(memory_format=layout) for x in (z0, noise_z))
            with (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                  else nullcontext()):
                parts = diffusion.training_loss(model, z0, d0.to(device), label0.to(device), t.to(device),
                                                points.to(device), prompt.to(device), noise_z, noise_d.to(device),
                                                generator=gen)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise HistogenInputError(f"The loss became {loss.item()} at step {step}; lower the learning rate, "
                                         "then resume.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            _ema_update(ema, model, min(settings.ema_decay, (1 + step) / (10 + step)))
            step += 1
            last_loss = float(loss.detach())
            loss_log.add({**parts, "loss": last_loss})
            if step % settings.log_every == 0 or step == settings.steps:
                loss_log.write(step, lr)
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                save(step)
            if step % settings.sample_every == 0 or step == settings.steps:
                grids.append(sample_grid(ema, taef2, model_config, data.patches,
                                         list(data.patches.val)[:3] or data.refs[:3],
                                         run_dir / "samples" / f"step_{step:06d}.png", settings))
                model.train()
            if progress is not None:
                progress(step, settings.steps)
    except Cancelled:
        log_fn(f"Stopped at step {step}; saving a checkpoint to resume from.")
        save(step)
    except KeyboardInterrupt:  # Ctrl+C / SIGINT from a time-boxed job: keep the steps done, then stop
        log_fn(f"Interrupted at step {step}; saving a checkpoint to resume from.")
        save(step)
        raise
    finally:
        loss_log.close()
    if not model_path.is_file():
        model_config.training["steps"] = step
        save_cosyn(ema, model_config, model_path)
    return TrainResult(run_dir=run_dir, model_path=model_path, step=step,
                       seconds=time.perf_counter() - loss_log.t_start, last_loss=last_loss, sample_grids=grids)


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
