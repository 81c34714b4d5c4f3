"""Training and inference of the nuclei segmenter on ``(image, instances, classes)`` patches.

Losses as HoVer-Net's (Graham et al. 2019, section 3.3), on one shared decoder: foreground
binary cross-entropy + soft Dice; type cross-entropy + soft Dice (background included); HoVer maps MSE
+ the MSE of their Sobel gradients inside nuclei (MSGE), which sharpens the maps where
nuclei touch. Augmentation: the 8 flips/quarter turns (targets recomputed after the
transform, so the HoVer maps stay right) and a mild per-channel brightness/contrast jitter.
On CPU the step runs under bf16 autocast with channels-last tensors when asked
(``precision='bf16'``), which uses AMX/AVX-512-BF16 where the CPU has them.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HistogenInputError
from ..progress import check_cancel
from .model import NucleiUNet, SegmenterConfig
from .postprocess import instances_from_maps, types_of_instances
from .targets import make_targets

__all__ = ["TrainSettings", "train_segmenter", "predict_maps", "segment_nuclei", "segment_batch"]

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """How to train (the defaults fit 128 px patches at 20x on one CPU thread).

    Attributes
    ----------
    steps : int
        Optimiser steps (every arm of a comparison gets the same number).
    batch_size : int
    lr : float
        AdamW learning rate, cosine-decayed to 5 % after a 5 % linear warm-up.
    weight_decay : float
    seed : int
        Seeds the weights, the batch order and the augmentation.
    precision : {'fp32', 'bf16'}
        'bf16': autocast + channels-last (fastest on CPUs with AMX).
    base_channels, depth : int
        Network size (:class:`~napari_histogen.core.segment.model.SegmenterConfig`).
    augment : bool
    """

    steps: int = 1500
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    precision: str = "bf16"
    base_channels: int = 24
    depth: int = 3
    augment: bool = True


def _check_patches(patches) -> list:
    items = list(patches)
    if not items:
        raise HistogenInputError("No training patches for the segmenter.")
    shape = None
    for image, inst, _classes in items:
        image, inst = np.asarray(image), np.asarray(inst)
        if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != inst.shape:
            raise HistogenInputError(f"A segmenter patch needs an RGB image and an instance map of the same size, "
                                     f"not {image.shape} and {inst.shape}.")
        if shape is None:
            shape = inst.shape
        elif inst.shape != shape:
            raise HistogenInputError(f"Segmenter patches must share one size ({shape} and {inst.shape}); crop them.")
    return items


def _augment(image, inst, rng: np.random.Generator, augment: bool):
    if augment:
        k = int(rng.integers(8))
        image, inst = np.rot90(image, k % 4), np.rot90(inst, k % 4)
        if k >= 4:
            image, inst = image[:, ::-1], inst[:, ::-1]
    x = np.ascontiguousarray(image, dtype=np.float32) / 127.5 - 1.0
    if augment:  # stain intensity varies between slides: a mild per-channel contrast/brightness jitter
        x = x * rng.uniform(0.9, 1.1, 3).astype(np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    return x, np.ascontiguousarray(inst)


def _batch(items, indices, class_ids, rng, augment):
    images, fg, types, hover = [], [], [], []
    for i in indices:
        image, inst, classes = items[i]
        x, inst = _augment(np.asarray(image), np.asarray(inst), rng, augment)
        t = make_targets(inst, classes, class_ids)
        images.append(x.transpose(2, 0, 1))
        fg.append(t["foreground"])
        types.append(t["types"])
        hover.append(t["hover"])
    return (torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(fg))[:, None],
            torch.from_numpy(np.stack(types)), torch.from_numpy(np.stack(hover)))


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _sobel(hover: torch.Tensor) -> torch.Tensor:
    """d/dx of the horizontal map and d/dy of the vertical map (HoVer-Net's MSGE)."""
    kx = _SOBEL.to(hover)[None, None]
    gx = F.conv2d(hover[:, :1], kx, padding=1)
    gy = F.conv2d(hover[:, 1:], kx.transpose(-1, -2), padding=1)
    return torch.cat([gx, gy], dim=1)


def segmenter_loss(out: dict, fg, types, hover) -> tuple[torch.Tensor, dict]:
    """HoVer-Net's loss terms (unit weights, MSGE x 2 as in HoVer-Net's config); their sum and values."""
    logits = out["foreground"].float()
    bce = F.binary_cross_entropy_with_logits(logits, fg)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * fg).sum() + 1) / (prob.sum() + fg.sum() + 1)
    type_logits = out["types"].float()
    ce = F.cross_entropy(type_logits, types)
    # HoVer-Net's type branch adds a soft Dice over the type channels: rare types weigh as much as common ones
    type_prob = torch.softmax(type_logits, dim=1)
    one_hot = F.one_hot(types, type_logits.shape[1]).permute(0, 3, 1, 2).to(type_prob)
    overlap = (type_prob * one_hot).sum(dim=(0, 2, 3))
    type_dice = 1 - ((2 * overlap + 1) / (type_prob.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3)) + 1)).mean()
    pred_hv = out["hover"].float()
    mse = F.mse_loss(pred_hv, hover)
    inside = fg.expand_as(hover)
    msge = (((_sobel(pred_hv) - _sobel(hover)) ** 2) * inside).sum() / inside.sum().clamp(min=1)
    total = bce + dice + ce + type_dice + mse + 2 * msge
    values = {"bce": bce, "dice": dice, "ce": ce, "type_dice": type_dice, "mse": mse, "msge": msge}
    return total, {k: float(v.detach()) for k, v in values.items()}


def train_segmenter(patches, class_ids, settings: TrainSettings | None = None, *, scheme: str = "consep",
                    mpp: float = 0.5, record: dict | None = None, progress=None, cancel=None):
    """Train a :class:`NucleiUNet` from scratch.

    Parameters
    ----------
    patches : sequence of (image (H, W, 3) uint8, instances (H, W) int, classes {id: class id})
        One size for all; ``H`` and ``W`` multiples of ``2 ** depth``.
    class_ids : sequence of int
        The scheme's nucleus classes (type outputs in this order).
    settings : TrainSettings
    scheme, mpp
        Recorded in the config (the scale the segmenter expects).
    record : dict, optional
        Extra lines for ``config.training`` (what the patches were).
    progress : callable, optional
        ``progress(step, steps)`` after every step.
    cancel : CancelToken or callable, optional
        Checked every step; raises :class:`~napari_histogen.core.progress.Cancelled`.

    Returns
    -------
    model : NucleiUNet
        In eval mode, fp32, on the CPU.
    history : dict
        ``loss`` (per step), ``parts`` (the last step's loss terms), ``seconds``,
        ``patches_per_second``.
    """
    settings = settings or TrainSettings()
    items = _check_patches(patches)
    side = 2 ** settings.depth
    if any(s % side for s in np.asarray(items[0][1]).shape):
        raise HistogenInputError(f"Segmenter patches must be a multiple of {side} px per side "
                                 f"(depth {settings.depth}), not {np.asarray(items[0][1]).shape}.")
    if settings.steps < 1 or settings.batch_size < 1:
        raise HistogenInputError("The segmenter needs at least one step and a batch of at least one patch.")
    if settings.precision not in ("fp32", "bf16"):
        raise HistogenInputError(f"The segmenter's precision is 'fp32' or 'bf16', not {settings.precision!r}.")
    class_ids = [int(c) for c in class_ids]
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    config = SegmenterConfig(base_channels=settings.base_channels, depth=settings.depth, class_ids=class_ids,
                             scheme=scheme, mpp=float(mpp),
                             training={**(record or {}), "patches": len(items), "steps": settings.steps,
                                       "batch_size": settings.batch_size, "lr": settings.lr,
                                       "seed": settings.seed, "precision": settings.precision})
    model = NucleiUNet(config)
    bf16 = settings.precision == "bf16"
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, settings.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, settings.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    parts: dict = {}
    order = rng.permutation(len(items))
    cursor = 0
    start = time.perf_counter()
    for step in range(settings.steps):
        check_cancel(cancel)
        indices: list[int] = []
        while len(indices) < settings.batch_size:
            if cursor == len(order):
                order, cursor = rng.permutation(len(items)), 0
            indices.append(int(order[cursor]))
            cursor += 1
        x, fg, types, hover = _batch(items, indices, class_ids, rng, settings.augment)
        x = x.contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            out = model(x)
        loss, parts = segmenter_loss(out, fg, types, hover)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, settings.steps)
    seconds = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    history = {"loss": losses, "parts": parts, "seconds": seconds,
               "patches_per_second": settings.steps * settings.batch_size / max(seconds, 1e-9)}
    log.info("segmenter: %d steps in %.0f s (%.1f patches/s), final loss %.3f", settings.steps, seconds,
             history["patches_per_second"], losses[-1])
    return model, history


@torch.no_grad()
def predict_maps(model: NucleiUNet, images, *, batch_size: int = 16) -> list[dict]:
    """The network's maps for RGB uint8 images of one size: ``foreground`` (H, W) probability,
    ``types`` (K + 1, H, W) probabilities, ``hover`` (2, H, W); images are reflect-padded to a
    multiple of ``2 ** depth`` and cropped back."""
    model.eval()
    side = 2 ** model.config.depth
    out: list[dict] = []
    images = [np.asarray(im) for im in images]
    for begin in range(0, len(images), batch_size):
        chunk = images[begin: begin + batch_size]
        h, w = chunk[0].shape[:2]
        ph, pw = (-h) % side, (-w) % side
        x = torch.from_numpy(np.stack([im[..., :3].astype(np.float32) / 127.5 - 1.0 for im in chunk]))
        x = x.permute(0, 3, 1, 2)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        y = model(x.to(next(model.parameters()).device))
        fg = torch.sigmoid(y["foreground"][:, 0, :h, :w]).cpu().numpy()
        types = torch.softmax(y["types"][:, :, :h, :w], dim=1).cpu().numpy()
        hover = y["hover"][:, :, :h, :w].cpu().numpy()
        out += [{"foreground": fg[i], "types": types[i], "hover": hover[i]} for i in range(len(chunk))]
    return out


def segment_batch(model: NucleiUNet, images, **post) -> list[tuple[np.ndarray, dict]]:
    """``[(instances, {id: class id})]`` for RGB images at the segmenter's scale.

    ``post`` goes to :func:`~napari_histogen.core.segment.postprocess.instances_from_maps`.
    """
    results = []
    for maps in predict_maps(model, images):
        inst = instances_from_maps(maps["foreground"], maps["hover"], **post)
        results.append((inst, types_of_instances(inst, maps["types"], model.config.class_ids)))
    return results


def segment_nuclei(model: NucleiUNet, image, **post) -> tuple[np.ndarray, dict]:
    """``(instances, classes)`` of one RGB image at the segmenter's scale (``model.config.mpp``)."""
    return segment_batch(model, [image], **post)[0]
