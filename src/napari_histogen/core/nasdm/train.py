"""Training a NASDM model: resumable, with EMA, sample grids and safetensors checkpoints.

A run folder holds everything about one training run::

    RUN_DIR/run.json                  the training settings and the data summary
    RUN_DIR/log.csv                   step, losses, learning rate, seconds
    RUN_DIR/samples/step_000500.png   sample grids: mask | EMA sample | real patch
    RUN_DIR/checkpoints/last/         raw + EMA weights, optimizer, step (to resume)
    RUN_DIR/model/nasdm.safetensors   the EMA weights for sampling, with nasdm.json (sha256)

Running :func:`train_nasdm` again on the same folder continues from ``checkpoints/last``
(``steps`` is the total to reach). The batches a step sees do not depend on where a run
was resumed: the patch order of every epoch comes from ``seed + epoch``, and the
timesteps, noise, condition dropout and augmentations of a step from ``(seed, step)``, so
a resumed run continues exactly as an uninterrupted one would.

Data parallel: run inside a process group (:func:`~napari_histogen.core.distributed.launch`,
``histogen train nasdm --num-processes N``, or ``torchrun``), every process takes an equal
slice of each step's batch (``batch_size`` is the global batch) and the gradients are averaged
before the step, so N processes train the weights one process would with the same global batch
(up to float rounding), and resuming keeps that guarantee. Only the first process writes files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import HistogenInputError
from ..progress import ProgressCallback, check_cancel

__all__ = ["TrainSettings", "train_nasdm", "TrainResult"]

_log = logging.getLogger(__name__)


def check_optimisation_settings(settings) -> None:
    """The checks every NASDM family's training settings share (steps, batch, dropout, EMA, lr)."""
    if settings.steps < 1 or settings.batch_size < 1:
        raise HistogenInputError("Steps and batch size must be at least 1.")
    if not 0 <= settings.cond_drop < 1:
        raise HistogenInputError(f"Condition dropout must be in [0, 1), not {settings.cond_drop}.")
    if not 0 < settings.ema_decay < 1:
        raise HistogenInputError(f"EMA decay must be in (0, 1), not {settings.ema_decay}.")
    if settings.lr <= 0:
        raise HistogenInputError(f"Learning rate must be positive, not {settings.lr}.")


@dataclass
class TrainSettings:
    """Settings of a training run (all recorded in ``run.json``).

    Parameters
    ----------
    data : str
        Dataset file or folder (see :func:`~napari_histogen.core.nasdm.patchset.build_patch_set`).
    fmt : str
        Dataset format or ``auto``.
    out : str
        Run folder.
    size : str
        Model size preset (``paper``, ``small``, ``cpu``, ``tiny``).
    steps : int
        Total optimisation steps to reach.
    batch_size : int
    lr : float
        AdamW learning rate (1e-4; 2e-5 to fine-tune).
    weight_decay : float
    ema_decay : float
        EMA decay (0.999), warmed up as ``min(decay, (1 + step) / (10 + step))``.
    cond_drop : float
        Probability of replacing a condition by the null condition (classifier-free guidance).
    vlb_weight : float
        ``lambda`` of the hybrid loss.
    image_size : int
        Patch size (px).
    mpp : float
        Microns per pixel the model works at (0.5 = 20x).
    overlap, min_tissue, val_fraction : float
        Patch extraction and the validation split (by source image).
    stain_norm : str or None
        ``macenko`` or None.
    init : str or None
        Start from these NASDM weights (fine-tuning).
    sample_every, checkpoint_every, log_every : int
        Intervals in steps.
    sample_steps : int
        Respaced DDPM steps for the sample grids.
    sample_guidance : float
    device : str
    precision : str
        ``auto`` (bf16/fp16 on CUDA, fp32 on CPU), ``fp32``, ``bf16``, ``fp16``.
    seed : int
    scheme : str or None
        Class scheme for formats that do not record one.
    source_mpp : float or None
        Microns per pixel of the data when the format does not say.
    grad_clip : float
    workers : int
        DataLoader worker processes.
    max_patches : int or None
        Use only this many training patches (quick trials).
    """

    data: str
    out: str
    fmt: str = "auto"
    size: str = "small"
    steps: int = 10000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_drop: float = 0.2
    vlb_weight: float = 0.001
    image_size: int = 128
    mpp: float = 0.5
    overlap: float = 0.5
    min_tissue: float = 0.5
    val_fraction: float = 0.1
    stain_norm: str | None = None
    init: str | None = None
    sample_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 10
    sample_steps: int = 50
    sample_guidance: float = 1.5
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    scheme: str | None = None
    source_mpp: float | None = None
    grad_clip: float = 1.0
    workers: int = 0
    max_patches: int | None = None
    model_overrides: dict = field(default_factory=dict)

    def check(self) -> None:
        check_optimisation_settings(self)


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    step: int
    seconds: float
    last_loss: float | None
    sample_grids: list


# The settings that fix the model and the data: a resumed run must have the same ones.
_FIXED = ("size", "image_size", "mpp", "data", "fmt", "overlap", "min_tissue", "val_fraction", "stain_norm", "seed",
          "scheme", "source_mpp", "model_overrides", "max_patches")


def train_nasdm(settings: TrainSettings, *, progress: ProgressCallback = None, cancel=None,
                log: Callable[[str], object] | None = None) -> TrainResult:
    """Train (or continue training) a NASDM model; see the module docstring for the run folder.

    Parameters
    ----------
    settings : TrainSettings
    progress : callable(step, total), optional
    cancel : CancelToken or callable, optional
        Checked every step; a cancelled run saves a checkpoint and returns.
    log : callable(str), optional
        Where messages go; by default this module's logger (level INFO).
    """
    from ..progress import Cancelled
    from .checkpoint import save_nasdm

    from ..distributed import barrier, world

    say = log if log is not None else _log.info
    settings.check()
    group = world()
    if settings.batch_size % group.size:
        raise HistogenInputError(f"The batch size ({settings.batch_size}) must be a multiple of the number of "
                                 f"processes ({group.size}): it is the global batch, split evenly.")
    if not group.main:
        say = _quiet
    run = _start_run(settings, say)
    losses_csv = _LossLog(run.run_dir / "log.csv", settings, enabled=group.main)
    grids: list[Path] = []
    last_loss = None
    run.model.train()
    try:
        while run.step < settings.steps:
            check_cancel(cancel)
            last_loss, losses = _train_step(run)
            losses_csv.add(last_loss)
            grid = _periodic_work(run, losses, losses_csv)
            if grid is not None:
                grids.append(grid)
            if progress is not None:
                progress(run.step, settings.steps)
    except Cancelled:
        say(f"Stopped at step {run.step}; saving a checkpoint to resume from.")
        run.save()
    finally:
        losses_csv.close()
    if group.main and not run.model_path.is_file():  # resumed at or past the target: make sure the model file exists
        save_nasdm(run.ema, run.model_config, run.model_path)
    barrier()  # the other processes wait until the first has written everything
    return TrainResult(run_dir=run.run_dir, model_path=run.model_path, step=run.step,
                       seconds=time.perf_counter() - losses_csv.t_start, last_loss=last_loss, sample_grids=grids)


# -- the steps of train_nasdm ------------------------------------------------------------------


@dataclass
class _Run:
    """What a training run holds while it trains."""

    settings: TrainSettings
    run_dir: Path
    device: Any
    amp_dtype: Any
    dataset: Any  # NasdmPatchDataset of the training windows (augmented)
    preview: Any  # NasdmPatchDataset of a few validation windows for the sample grids
    diffusion: Any
    model: Any
    ema: Any
    optimizer: Any
    scaler: Any
    model_config: Any
    step: int = 0

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "last"

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model" / "nasdm.safetensors"

    def autocast(self):
        import torch

        if self.amp_dtype:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return nullcontext()

    def save(self) -> None:
        """The resumable checkpoint and the EMA model file (the first process of a group only)."""
        from ..distributed import world
        from .checkpoint import save_nasdm

        if not world().main:
            return
        _save_state(self.ckpt_dir, self.model, self.ema, self.optimizer, self.step)
        save_nasdm(self.ema, self.model_config, self.model_path)


def _start_run(settings: TrainSettings, log: Callable[[str], object]) -> _Run:
    """The run folder, device, data, model and optimizer; resumed from ``checkpoints/last`` if there."""
    import torch

    from ..devices import autocast_dtype, describe_device, resolve_device

    run_dir = Path(settings.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    resuming = (run_dir / "checkpoints" / "last" / "state.json").is_file()
    if resuming:
        _check_same_run(run_dir / "run.json", settings)
    from ..distributed import world

    device = resolve_device(settings.device)
    if device.type == "cuda" and world().size > 1:  # one GPU per process (launch / torchrun set it)
        device = torch.device("cuda", torch.cuda.current_device())
    amp_dtype = autocast_dtype(device, settings.precision)
    torch.manual_seed(settings.seed)
    patches, train_refs = _read_patches(settings, log)
    run = _build_model(settings, run_dir, device, amp_dtype, patches, train_refs)
    if resuming:
        run.step = _load_state(run.ckpt_dir, run.model, run.ema, run.optimizer, device)
        log(f"Resuming {run_dir} at step {run.step}.")
    else:
        _init_weights(run, patches, log)
    run.model_config.training = {"data": settings.data, "format": settings.fmt, "run": run_dir.name,
                                 "data_summary": patches.summary, "device": describe_device(device),
                                 "batch_size": settings.batch_size, "lr": settings.lr,
                                 "cond_drop": settings.cond_drop, "ema_decay": settings.ema_decay,
                                 "seed": settings.seed}
    log(f"{run.model.n_parameters() / 1e6:.1f} M parameters, {len(train_refs)} training patches, "
        f"{len(patches.val)} validation patches, classes {list(patches.class_ids)}, device {describe_device(device)}"
        + (f", autocast {str(amp_dtype).replace('torch.', '')}" if amp_dtype else ""))
    return run


def _read_patches(settings: TrainSettings, log: Callable[[str], object]):
    """``(patch set, training windows)``: the windows capped at ``max_patches`` by a seeded sample."""
    from .patchset import build_patch_set

    log(f"Reading {settings.data} ...")
    patches = build_patch_set(settings.data, settings.fmt, target_mpp=settings.mpp, patch_size=settings.image_size,
                              overlap=settings.overlap, min_tissue=settings.min_tissue,
                              val_fraction=settings.val_fraction, seed=settings.seed, scheme=settings.scheme,
                              source_mpp=settings.source_mpp, stain_normalizer=settings.stain_norm)
    train_refs = list(patches.train)
    if settings.max_patches:  # a seeded sample across sources (refs are ordered by source)
        keep = np.sort(np.random.default_rng(settings.seed).permutation(len(train_refs))[: settings.max_patches])
        train_refs = [train_refs[i] for i in keep]
    if not train_refs:
        raise HistogenInputError(f"No training patches in {settings.data} (after the tissue filter); "
                                 "check the format and --min-tissue.")
    return patches, train_refs


def _build_model(settings: TrainSettings, run_dir: Path, device, amp_dtype, patches, train_refs) -> _Run:
    """Datasets, diffusion, fresh model + EMA copy, optimizer and (fp16) grad scaler."""
    import torch

    from ..diffusion.gaussian import GaussianDiffusion
    from .checkpoint import NasdmModelConfig
    from .condition import condition_channels
    from .dataset import NasdmPatchDataset
    from .unet import NasdmUNet, preset_config

    class_ids = list(patches.class_ids)
    dataset = NasdmPatchDataset(patches, train_refs, augment=True)
    val_refs = list(patches.val) or train_refs
    preview = NasdmPatchDataset(patches, val_refs[:4], augment=False)
    unet_cfg = preset_config(settings.size, image_size=settings.image_size,
                             cond_channels=condition_channels(class_ids), **settings.model_overrides)
    diffusion = GaussianDiffusion(vlb_weight=settings.vlb_weight)
    model = NasdmUNet(unet_cfg).to(device)
    ema = NasdmUNet(unet_cfg).to(device).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    model_config = NasdmModelConfig(unet=unet_cfg.to_dict(), diffusion=diffusion.config(),
                                    scheme=patches.scheme.to_dict(), class_ids=class_ids, mpp=settings.mpp)
    return _Run(settings, run_dir, device, amp_dtype, dataset, preview, diffusion, model, ema, optimizer, scaler,
                model_config)


def _init_weights(run: _Run, patches, log: Callable[[str], object]) -> None:
    """A new run: weights from ``--init`` if given, the EMA a copy of them, and ``run.json``."""
    from .checkpoint import load_nasdm

    settings = run.settings
    if settings.init:
        init = load_nasdm(settings.init, device=run.device)
        class_ids = list(patches.class_ids)
        if init.config.unet != run.model_config.unet or list(init.config.class_ids) != class_ids:
            raise HistogenInputError(f"--init {settings.init} has another architecture or classes than this run "
                                     f"(size '{settings.size}', classes {class_ids}); choose the matching size.")
        run.model.load_state_dict(init.model.state_dict())
        log(f"Starting from the weights of {init.weights_path} (sha256 {init.sha256[:12]}...).")
    run.ema.load_state_dict(run.model.state_dict())
    from ..distributed import world

    if not world().main:
        return
    _write_json(run.run_dir / "run.json", {"settings": asdict(settings), "data": patches.summary,
                                           "model": run.model_config.to_dict(),
                                           "parameters": run.model.n_parameters()})


def _train_step(run: _Run) -> tuple[float, dict]:
    """One optimisation step and the EMA update; ``(loss, loss terms)``. Advances ``run.step``."""
    import torch

    from ..distributed import all_mean, average_gradients, world

    settings, step, device = run.settings, run.step, run.device
    # per-step randomness from (seed, step): a resumed run draws what an uninterrupted one would
    gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    torch.manual_seed(settings.seed * 1_000_033 + step)  # the augmentations' RNG
    idx = _batch_indices(step, settings.batch_size, len(run.dataset), settings.seed)
    # every process draws the whole global batch (so its augmentations and noise are those of one
    # process) and trains on its own equal slice of it
    items = [run.dataset[i] for i in idx]
    x0 = torch.stack([it["image"] for it in items])
    cond = torch.stack([it["condition"] for it in items])
    drop = torch.rand(len(idx), generator=gen) < settings.cond_drop
    cond[drop] = 0
    t = torch.randint(0, run.diffusion.num_timesteps, (len(idx),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    group = world()
    part = slice(group.rank * len(idx) // group.size, (group.rank + 1) * len(idx) // group.size)
    x0, cond, t, noise = (v[part].to(device) for v in (x0, cond, t, noise))
    with run.autocast():
        losses = run.diffusion.training_losses(run.model, x0, t, cond, noise=noise)
    loss = losses["loss"]
    mean_loss = all_mean(loss)  # the global batch's loss: the same on every process
    if not torch.isfinite(mean_loss):
        raise HistogenInputError(f"The loss became {loss.item()} at step {step}; lower --lr or use fp32 "
                                 "(--precision fp32), then resume.")
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        average_gradients(run.model.parameters())
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), settings.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        average_gradients(run.model.parameters())
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), settings.grad_clip)
        run.optimizer.step()
    # warm-up as diffusers' EMAModel: early on the average would be mostly the random init
    _ema_update(run.ema, run.model, min(settings.ema_decay, (1 + step) / (10 + step)))
    run.step = step + 1
    return float(mean_loss.detach()), losses


def _periodic_work(run: _Run, losses: dict, losses_csv: "_LossLog") -> Path | None:
    """After a step: a log row, a checkpoint, a sample grid, each at its interval (and at the last step)."""
    settings, step = run.settings, run.step
    last = step == settings.steps
    if step % settings.log_every == 0 or last:
        losses_csv.write(step, losses)
    if step % settings.checkpoint_every == 0 or last:
        run.save()
    from ..distributed import world

    if (step % settings.sample_every == 0 or last) and world().main:
        return _sample_grid(run.ema, run.preview, run.model_config, run.run_dir / "samples" / f"step_{step:06d}.png",
                            settings, run.device, run.amp_dtype)
    return None


def _quiet(message: str) -> None:
    """Where the messages of the other processes of a group go: nowhere (the first one says it)."""


class _LossLog:
    """``log.csv``: a row every ``log_every`` steps with the mean loss since the previous row."""

    def __init__(self, path: Path, settings: TrainSettings, *, enabled: bool = True):
        new = not path.is_file()
        self.settings = settings
        self.enabled = enabled  # only the first process of a group writes the log
        self.file = open(path if enabled else os.devnull, "a", newline="")
        self.writer = csv.writer(self.file)
        if new and enabled:
            self.writer.writerow(["step", "loss", "mse", "vb", "lr", "seconds", "patches_per_s"])
        self.t_start = time.perf_counter()
        self.window: list[float] = []
        self.t_window = time.perf_counter()

    def add(self, loss: float) -> None:
        self.window.append(loss)

    def write(self, step: int, losses: dict) -> None:
        elapsed = time.perf_counter() - self.t_window
        self.writer.writerow([step, f"{np.mean(self.window):.5f}", f"{losses['mse'].mean().item():.5f}",
                              f"{losses['vb'].mean().item():.5f}", self.settings.lr,
                              f"{time.perf_counter() - self.t_start:.1f}",
                              f"{len(self.window) * self.settings.batch_size / max(elapsed, 1e-9):.2f}"])
        self.file.flush()
        self.window, self.t_window = [], time.perf_counter()

    def close(self) -> None:
        self.file.close()


def _batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The dataset indices of a step: epoch permutations seeded by ``seed + epoch``."""
    out = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng(seed + epoch).permutation(n)
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset: offset + take].tolist())
        pos += take
    return out


def _ema_update(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - decay)


def _save_state(folder: Path, model, ema, optimizer, step: int) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    _write_json(tmp / "state.json", {"step": step})
    # swap in the new checkpoint only once it is complete
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        _rmtree(old)
    folder.replace(old)
    tmp.replace(folder)
    _rmtree(old)


def _load_state(folder: Path, model, ema, optimizer, device) -> int:
    import torch
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
        ema.load_state_dict(load_file(str(folder / "ema.safetensors"), device=str(device)))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
        return int(json.loads((folder / "state.json").read_text())["step"])
    except Exception as err:  # noqa: BLE001 - any damage means the same advice
        raise HistogenInputError(f"Cannot resume from {folder} ({err}). Move that folder away to start afresh, "
                                 "or restore it from a backup.") from None


def _check_same_run(run_json: Path, settings, fixed=_FIXED) -> None:
    try:
        previous = json.loads(run_json.read_text())["settings"]
    except (OSError, KeyError, json.JSONDecodeError):
        raise HistogenInputError(f"{run_json} is missing or damaged, so this run cannot be resumed safely; "
                                 "use a new --out folder.") from None
    now = asdict(settings)
    changed = [k for k in fixed if previous.get(k) != now.get(k)]
    if changed:
        raise HistogenInputError(
            f"{run_json.parent} is a run with other {', '.join(changed)} "
            f"({', '.join(f'{k}={previous.get(k)!r}' for k in changed)}); resume it with the same settings "
            "or use a new --out folder.")


def _write_json(path: Path, data) -> None:
    from ..provenance import json_default

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default))
    tmp.replace(path)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _sample_grid(ema, preview, model_config, path: Path, settings: TrainSettings, device, amp_dtype) -> Path:
    """Rows of ``mask | EMA sample | real`` for a few validation patches, saved as PNG."""
    import torch
    from skimage.io import imsave

    from .render import condition_to_rgb, to_uint8_image
    from .sampling import sample

    items = [preview[i] for i in range(len(preview))]
    cond = torch.stack([it["condition"] for it in items]).to(device)
    gens = [torch.Generator().manual_seed(settings.seed + i) for i in range(len(items))]
    ema.eval()
    images = sample(ema, cond, model_config.diffusion, steps=settings.sample_steps, guidance=settings.sample_guidance,
                    generators=gens, autocast_dtype=amp_dtype,
                    variance="fixed_small")  # the variance head is untrained early on: no speckle
    scheme = model_config.class_scheme()
    rows = []
    for it, img in zip(items, images):
        rows.append(np.concatenate([condition_to_rgb(it["condition"].numpy(), model_config.class_ids, scheme),
                                    to_uint8_image(img), to_uint8_image(it["image"])], axis=1))
    pad = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, pad)][:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, grid, check_contrast=False)
    return path

