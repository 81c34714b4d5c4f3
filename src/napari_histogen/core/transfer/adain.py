"""AdaIN on latents: global (the baseline) and per class under the real masks (the paper's method).

After each denoising step in the AdaIN range the output latent is renormalised per channel:

- **global**: its mean and standard deviation over all pixels become the appearance latent's;
- **masked** (AstraZeneca): one class per step, alternating, class = ``classes[step mod len(classes)]``;
  inside that class of the target mask the output takes the mean and standard deviation of the
  appearance latent inside the same class of the source mask; pixels of other classes are left
  as they are. Masks are nearest-downsampled to the latent grid (pixel centres).

The order of the classes is the paper's: "in a two-class appearance transfer scenario, the mask
of the foreground class was used in every even denoising step, while the mask of the background
class was used in every odd denoising step". Foreground comes first: the labelled classes by
ascending id (the tissue scheme: 1 epithelium before 2 stroma), then label 0 (unlabelled, the
background of a binary mask) last. Steps count the denoising steps run (the reference's callback
index), so with two classes the first one acts after steps 20, 22, ...

Statistics follow the reference: per channel, unbiased variance plus 1e-5 under the square root.
Classes are matched by id; a class of the target mask that the source mask lacks (or that covers
fewer than 2 latent pixels) has no statistics to copy and is left out of the alternation
(reported by :func:`adain_classes`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["adain", "masked_adain", "latent_mask", "adain_classes", "class_for_step", "AdainStep", "EPS"]

EPS = 1e-5


def _mean_std(feat, mask=None):
    """Per-channel mean and std of ``feat`` (C, h, w), over ``mask`` (h, w bool) when given."""
    c = feat.shape[0]
    flat = feat.reshape(c, -1)
    if mask is not None:
        flat = flat[:, mask.reshape(-1)]
    var = flat.var(dim=1) + EPS
    return flat.mean(dim=1).view(c, 1, 1), var.sqrt().view(c, 1, 1)


def adain(content, style):
    """``content`` (C, h, w) with the per-channel mean/std of ``style`` (C, h, w)."""
    c_mean, c_std = _mean_std(content)
    s_mean, s_std = _mean_std(style)
    return (content - c_mean) / c_std * s_std + s_mean


def masked_adain(content, style, content_mask, style_mask):
    """AdaIN of the ``content_mask`` pixels of ``content`` to the ``style_mask`` pixels of ``style``.

    Pixels outside ``content_mask`` are returned unchanged. Masks are (h, w) bool tensors.
    """
    c_mean, c_std = _mean_std(content, content_mask)
    s_mean, s_std = _mean_std(style, style_mask)
    styled = (content - c_mean) / c_std * s_std + s_mean
    m = content_mask.to(content.dtype)[None]
    return content * (1 - m) + styled * m


def latent_mask(mask: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """Nearest downsampling of an (H, W) label map to the latent grid (the label at each cell's centre)."""
    mask = np.asarray(mask)
    h, w = mask.shape
    lh, lw = latent_hw
    rows = np.minimum(((np.arange(lh) + 0.5) * h / lh).astype(int), h - 1)
    cols = np.minimum(((np.arange(lw) + 0.5) * w / lw).astype(int), w - 1)
    return mask[np.ix_(rows, cols)]


def adain_classes(target_latent_mask: np.ndarray, source_latent_mask: np.ndarray, *,
                  include_unlabelled: bool = True) -> tuple[list[int], dict]:
    """Classes that take turns in masked AdaIN, and the ones left out with the reason.

    Returns
    -------
    classes : list of int
        Ids present (at least 2 latent pixels) in both masks in the paper's order: labelled ids
        ascending (the foreground first), then 0 (only with ``include_unlabelled``) last.
    left_out : dict
        ``{"not_in_source": [...], "too_small": [...]}`` (ids of the target mask).
    """
    t_ids, t_counts = np.unique(target_latent_mask, return_counts=True)
    s_ids, s_counts = np.unique(source_latent_mask, return_counts=True)
    t_count = dict(zip(t_ids.tolist(), t_counts.tolist()))
    s_count = dict(zip(s_ids.tolist(), s_counts.tolist()))
    classes, missing, small = [], [], []
    for cid in sorted(t_count):
        if cid == 0 and not include_unlabelled:
            continue
        if cid not in s_count:
            missing.append(cid)
        elif t_count[cid] < 2 or s_count[cid] < 2:
            small.append(cid)
        else:
            classes.append(cid)
    classes = [c for c in classes if c != 0] + [c for c in classes if c == 0]  # foreground first, 0 last
    return classes, {"not_in_source": missing, "too_small": small}


def class_for_step(classes: list[int], step: int) -> int | None:
    """The class masked AdaIN uses after ``step``: ``classes[step mod len(classes)]``."""
    return classes[step % len(classes)] if classes else None


class AdainStep:
    """The AdaIN step callback: ``callback(step, out, app)`` after each denoising step.

    ``out`` (G, C, h, w) are the output latents (changed in place), ``app`` (1, C, h, w) the
    appearance latent. ``mode`` ``"global"`` or ``"masked"``; ``steps`` the steps it acts on;
    for masked AdaIN ``classes[i]`` the classes of target ``i`` and ``target_masks[i]`` /
    ``source_mask`` the latent-grid label maps. ``record`` (a list) receives one dict per
    application (step, target, class and, with ``keep_tensors``, the latents and masks).
    """

    def __init__(self, mode: str, steps, *, classes=None, target_masks=None, source_mask=None, record=None,
                 keep_tensors: bool = True):
        self.mode = mode
        self.steps = set(steps)
        self.classes = classes
        self.target_masks = target_masks
        self.source_mask = source_mask
        self.record = record
        self.keep_tensors = keep_tensors

    def __call__(self, step: int, out, app) -> None:
        import torch

        if step not in self.steps or self.mode == "off":
            return
        for i in range(out.shape[0]):
            tmask = smask = None
            if self.mode == "global":
                out[i] = adain(out[i], app[0])
                cls = "global"
            else:
                cls = class_for_step(self.classes[i], step)  # type: ignore[assignment]
                if cls is None:
                    continue
                tmask = torch.from_numpy(self.target_masks[i] == cls).to(out.device)
                smask = torch.from_numpy(self.source_mask == cls).to(out.device)
                out[i] = masked_adain(out[i], app[0], tmask, smask)
            if self.record is not None:
                entry = {"step": step, "target": i, "class": cls}
                if self.keep_tensors:
                    entry.update(out=out[i].clone().cpu(), app=app[0].clone().cpu(),
                                 target_mask=None if tmask is None else tmask.cpu().numpy(),
                                 source_mask=None if smask is None else smask.cpu().numpy())
                self.record.append(entry)
