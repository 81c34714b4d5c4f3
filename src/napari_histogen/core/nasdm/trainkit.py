"""What the single-process trainers of the NASDM family share: run folder, loss log, loop.

Latent NASDM (:mod:`napari_histogen.core.latent.train`), mask generation
(:mod:`napari_histogen.core.maskgen.train`) and co-synthesis
(:mod:`napari_histogen.core.cosyn.train`) train the same way: a resumable run folder
(``run.json``, ``log.csv``, ``checkpoints/last``, ``model/``), a network and its EMA copy with
AdamW, a linear learning-rate warm-up, autocast, gradient clipping and a checkpoint, a log row
and a sample grid at their intervals. They differ in their data, their batch and their loss,
which they hand to :func:`train_loop` as a function of the step. The checkpoint format and the
helpers below it (``_save_state``, ``_load_state``, ``_check_same_run``) are pixel NASDM's
(:mod:`.train`), so all the family's run folders resume alike.
"""

from __future__ import annotations

import csv
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import HistogenInputError
from ..progress import ProgressCallback, check_cancel

__all__ = ["check_precision", "check_latent_window", "RunFolder", "open_run", "build_model_pair", "start_or_resume",
           "LossLog", "autocast_context", "train_loop"]


def check_precision(precision: str) -> None:
    """The ``precision`` setting of the single-process trainers: auto, fp32 or bf16."""
    if precision not in ("auto", "fp32", "bf16"):
        raise HistogenInputError(f"Precision must be auto, fp32 or bf16, not {precision!r}.")


def check_latent_window(settings) -> None:
    """Settings of trainers on TAEF2 latents: a patch side TAEF2 can encode and 1-8 transforms."""
    if settings.image_size % 8:
        raise HistogenInputError(f"The patch size must be a multiple of 8 for TAEF2, not {settings.image_size}.")
    if not 1 <= int(settings.transforms) <= 8:
        raise HistogenInputError(f"Transforms must be 1 to 8, not {settings.transforms}.")


@dataclass
class RunFolder:
    """Where a run lives, whether it resumes (``checkpoints/last/state.json`` exists) and its torch device."""

    run_dir: Path
    resuming: bool
    device: Any = None

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "last"


def open_run(settings, fixed: Sequence[str]) -> RunFolder:
    """Check the settings, set the thread count, create the run folder, check a resumed run, pick the
    device and seed torch's global generator with ``settings.seed``.

    A resumed run must keep the settings named in ``fixed`` (those that fix the model and the
    data).
    """
    import torch

    from ..devices import resolve_device
    from .train import _check_same_run

    settings.check()
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    run_dir = Path(settings.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir, (run_dir / "checkpoints" / "last" / "state.json").is_file())
    if folder.resuming:
        _check_same_run(run_dir / "run.json", settings, fixed=tuple(fixed))
    folder.device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    return folder


def build_model_pair(net_class, net_cfg, settings, device):
    """``(model, ema, optimizer, layout)``: the network and its EMA copy (channels-last on CPU) and AdamW."""
    import torch

    # channels-last lets oneDNN's (bf16/AMX) convolutions run without layout conversions
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = net_class(net_cfg).to(device, memory_format=layout)
    ema = net_class(net_cfg).to(device, memory_format=layout).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return model, ema, optimizer, layout


def start_or_resume(folder: RunFolder, model, ema, optimizer, device, *, settings, data_summary, model_config: dict,
                    log_fn: Callable[[str], object]) -> int:
    """The step to start at: a resumed run's checkpoint, or 0 with the EMA a copy and ``run.json`` written."""
    from .train import _load_state, _write_json

    if folder.resuming:
        step = _load_state(folder.ckpt_dir, model, ema, optimizer, device)
        log_fn(f"Resuming {folder.run_dir} at step {step}.")
        return step
    ema.load_state_dict(model.state_dict())
    _write_json(folder.run_dir / "run.json", {"settings": asdict(settings), "data": data_summary,
                                              "model": model_config, "parameters": model.n_parameters()})
    return 0


class LossLog:
    """``log.csv``: one row every ``log_every`` steps with the window's mean losses, lr and speed.

    ``columns`` names the loss columns (the first is the loss); the row is ``step``, their means
    (5 decimals), ``lr``, ``seconds`` since the start and ``patches_per_s`` of the window.
    """

    def __init__(self, path: Path, batch_size: int, columns: Sequence[str]):
        new = not path.is_file()
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(["step", *columns, "lr", "seconds", "patches_per_s"])
        self.batch_size = batch_size
        self.t_start = self.t_window = time.perf_counter()
        self.rows: list[list[float]] = []

    def add(self, values: Sequence[float]) -> None:
        self.rows.append([float(v) for v in values])

    def write(self, step: int, lr: float) -> None:
        now = time.perf_counter()
        means = [np.mean([row[i] for row in self.rows]) for i in range(len(self.rows[0]))]
        self.writer.writerow([step, *(f"{v:.5f}" for v in means), f"{lr:.3g}", f"{now - self.t_start:.1f}",
                              f"{len(self.rows) * self.batch_size / max(now - self.t_window, 1e-9):.2f}"])
        self.file.flush()
        self.rows, self.t_window = [], now

    def close(self) -> None:
        self.file.close()


def autocast_context(device, amp_dtype):
    """``torch.autocast`` in ``amp_dtype`` on the device, or nothing for fp32 (``amp_dtype`` None)."""
    import torch

    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_loop(settings, folder: RunFolder, model, ema, optimizer, *, step: int,
               losses: Callable[[int], dict], log_values: Callable[[float, dict], Sequence[float]],
               loss_log: LossLog, save_model: Callable[[int], None], model_path: Path,
               sample: Callable[[int], Path], progress: ProgressCallback = None, cancel=None,
               log_fn: Callable[[str], object], save_on_interrupt: bool = False):
    """Train from ``step`` to ``settings.steps``; return the NASDM ``TrainResult``.

    Parameters
    ----------
    losses : callable(step) -> dict
        The batch of the step and its loss terms (``"loss"`` is minimised), under autocast.
    log_values : callable(loss, terms) -> values
        The values of a step for ``loss_log`` (the loss first).
    save_model : callable(step)
        Write the EMA model file, recording ``step``.
    sample : callable(step) -> Path
        Draw a sample grid with the EMA weights (the model is put back in training mode after).
    save_on_interrupt : bool
        Also save a checkpoint on Ctrl+C / SIGINT (then re-raise), as on a cancel.
    """
    import torch

    from ..progress import Cancelled
    from .train import TrainResult, _ema_update, _save_state

    def save(at_step: int) -> None:
        _save_state(folder.ckpt_dir, model, ema, optimizer, at_step)
        save_model(at_step)

    grids: list[Path] = []
    last_loss = None
    model.train()
    try:
        while step < settings.steps:
            check_cancel(cancel)
            lr = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup))
            for group in optimizer.param_groups:
                group["lr"] = lr
            terms = losses(step)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise HistogenInputError(f"The loss became {loss.item()} at step {step}; lower the learning "
                                         "rate, then resume.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            # warm-up as diffusers' EMAModel: early on the average would be mostly the random init
            _ema_update(ema, model, min(settings.ema_decay, (1 + step) / (10 + step)))
            step += 1
            last_loss = float(loss.detach())
            loss_log.add(log_values(last_loss, terms))
            if step % settings.log_every == 0 or step == settings.steps:
                loss_log.write(step, lr)
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                save(step)
            if step % settings.sample_every == 0 or step == settings.steps:
                grids.append(sample(step))
                model.train()
            if progress is not None:
                progress(step, settings.steps)
    except Cancelled:
        log_fn(f"Stopped at step {step}; saving a checkpoint to resume from.")
        save(step)
    except KeyboardInterrupt:  # Ctrl+C / SIGINT from a time-boxed job: keep the steps done, then stop
        if not save_on_interrupt:
            raise
        log_fn(f"Interrupted at step {step}; saving a checkpoint to resume from.")
        save(step)
        raise
    finally:
        loss_log.close()
    if not model_path.is_file():
        save_model(step)
    return TrainResult(run_dir=folder.run_dir, model_path=model_path, step=step,
                       seconds=time.perf_counter() - loss_log.t_start, last_loss=last_loss, sample_grids=grids)
