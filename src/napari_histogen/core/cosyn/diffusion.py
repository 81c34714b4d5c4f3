"""Joint diffusion of [latent, distance map] (Gaussian) and the label (categorical), one timestep for all.

- Schedule: the latent model's (T = 1000, scaled-linear betas); the label's categorical
  process uses the same ``abar_t`` (:mod:`.categorical`).
- Latent: v-prediction with Min-SNR-gamma weighting
  (:class:`~napari_histogen.core.latent.diffusion.LatentDiffusion`).
- Distance map (scaled to [-1, 1]): the network predicts the clean map (``x_0``), plain MSE;
  the sampler derives the noise from ``d_t`` (see :mod:`.model` for why).
- Label: the multinomial diffusion loss (KL of posteriors, NLL at t = 0) plus
  ``label_ce`` times the cross-entropy of the predicted clean label (the "hybrid" loss of
  D3PM, Austin et al. 2021: the KL alone gives a weak signal early in training).
- Total: ``lambda_i * image + lambda_d * distance + lambda_l * label``.
- Sampling: DDIM (eta = 0) for the Gaussian parts and the categorical posterior
  ``q(x_s | x_t, x0_hat)`` for the label, on the same respaced timesteps; the last step keeps
  the most likely label. Classifier-free guidance ``out(c) + s (out(c) - out(null))`` on all
  three outputs (on the label's logits), cond and null in one batched forward.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HistogenInputError
from ..latent.diffusion import LatentDiffusion, _alphas_cumprod, default_diffusion
from ..progress import ProgressCallback, check_cancel
from .categorical import CategoricalDiffusion, sample_one_hot

__all__ = ["default_cosyn_diffusion", "JointDiffusion", "sample_joint", "respaced_timesteps"]


def default_cosyn_diffusion(lambda_i: float = 1.0, lambda_d: float = 1.0, lambda_l: float = 1.0,
                            label_ce: float = 0.5, min_snr_gamma: float = 5.0) -> dict:
    """The diffusion config recorded in a co-synthesis model's JSON."""
    return {**default_diffusion("v", min_snr_gamma), "distance_prediction": "x0", "lambda_i": float(lambda_i), "lambda_d": float(lambda_d),
            "lambda_l": float(lambda_l), "label_ce": float(label_ce)}


class JointDiffusion:
    """Training loss of the joint model (see the module docstring)."""

    def __init__(self, config: dict, num_label_classes: int):
        self.config = dict(config)
        self.gauss = LatentDiffusion(config)
        self.num_timesteps = self.gauss.num_timesteps
        self.cat = CategoricalDiffusion(_alphas_cumprod(config), num_label_classes)

    def training_loss(self, model, z0, d0, label0, t, points, prompt, noise_z, noise_d, generator=None) -> dict:
        """Weighted loss and its parts.

        Parameters
        ----------
        z0 : (N, C, h, w) normalised latents; d0 : (N, 1, H, W) distance in [0, 1];
        label0 : (N, H, W) long label 0..K; t : (N,) long; points : (N, H, W) long; prompt : (N, K)
        noise_z, noise_d : Gaussian noise like z0 and d0; generator : for the label's noise draw.
        """
        cfg = self.config
        k1 = self.cat.num_classes
        d0 = d0 * 2 - 1
        x0 = F.one_hot(label0.long(), k1).movedim(-1, 1).float()
        z_t = self.gauss.q_sample(z0, t, noise_z)
        d_t = self.gauss.q_sample(d0, t, noise_d)
        l_t = self.cat.q_sample(x0, t, generator)
        v_z, d0_hat, logits = model(z_t, d_t, l_t, t, points, prompt)
        w = self.gauss.loss_weight(t)
        mse_z = ((v_z.float() - self.gauss.target(z0, t, noise_z)) ** 2).flatten(1).mean(1)
        mse_d = ((d0_hat.float() - d0) ** 2).flatten(1).mean(1)
        vb = self.cat.loss(logits, x0, l_t, t)
        ce = F.cross_entropy(logits.float(), label0.long(), reduction="none").flatten(1).mean(1)
        image = (w * mse_z).mean()
        distance = mse_d.mean()
        label = (vb + float(cfg.get("label_ce", 0.5)) * ce).mean()
        loss = float(cfg["lambda_i"]) * image + float(cfg["lambda_d"]) * distance + float(cfg["lambda_l"]) * label
        return {"loss": loss, "image": image.detach(), "distance": distance.detach(), "label": label.detach(),
                "ce": ce.mean().detach()}


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps from ``T - 1`` down to 0 ("trailing" spacing, as the latent samplers use)."""
    if not 1 <= int(steps) <= num_timesteps:
        raise HistogenInputError(f"Steps must be between 1 and {num_timesteps}, not {steps}.")
    ts = np.round(np.arange(num_timesteps, 0, -num_timesteps / int(steps))).astype(int) - 1
    return sorted({int(t) for t in ts}, reverse=True)


def _guided(model, z, d, lab, t, points, prompt, guidance: float):
    n = z.shape[0]
    if guidance == 0:
        return tuple(o.float() for o in model(z, d, lab, t, points, prompt))
    both = model(torch.cat([z, z]), torch.cat([d, d]), torch.cat([lab, lab]), torch.cat([t, t]),
                 torch.cat([points, torch.zeros_like(points)]), torch.cat([prompt, torch.zeros_like(prompt)]))
    return tuple(o[:n].float() + guidance * (o[:n].float() - o[n:].float()) for o in both)


def sample_joint(model, points: torch.Tensor, prompt: torch.Tensor, diffusion: dict, *, steps: int = 20,
                 guidance: float = 1.0, generators=None, progress: ProgressCallback = None, cancel=None,
                 autocast_dtype=None):
    """Draw ``(z0, distance in [0, 1], label 0..K)`` for each point map.

    Parameters
    ----------
    model : CosynNet (eval mode)
    points : (N, H, W) long point maps; prompt : (N, K) float
    generators : list of torch.Generator, one per sample (its initial noise and label draws)

    Returns
    -------
    z0 : (N, C, H/d, W/d) normalised latents; distance : (N, H, W) float; label : (N, H, W) long
    """
    from ..nasdm.sampling import per_sample_generators

    cfg = model.config
    device = points.device
    n, height, width = points.shape
    d = int(cfg.downscale)
    if height % d or width % d:
        raise HistogenInputError(f"Co-synthesis needs sides divisible by {d}, not {(height, width)}.")
    generators = per_sample_generators(n, generators)
    gauss = LatentDiffusion(diffusion)
    abar = _alphas_cumprod(diffusion).float()
    k1 = cfg.label_channels
    cat = CategoricalDiffusion(abar.double(), k1)
    z = torch.stack([torch.randn((cfg.latent_channels, height // d, width // d), generator=g) for g in generators])
    dist = torch.stack([torch.randn((1, height, width), generator=g) for g in generators])
    lab = torch.stack([sample_one_hot(torch.full((1, k1, height, width), 1.0 / k1), g)[0] for g in generators])
    z, dist, lab = z.to(device), dist.to(device), lab.to(device)
    timesteps = respaced_timesteps(gauss.num_timesteps, steps)
    amp = torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    logits = None
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            check_cancel(cancel)
            s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            tt = torch.full((n,), t, dtype=torch.long, device=device)
            with amp:
                v_z, d0_hat, logits = _guided(model, z, dist, lab, tt, points, prompt.float(), guidance)
            a_t = float(abar[t])
            a_s = float(abar[s]) if s >= 0 else 1.0
            z = _ddim_step(z, v_z, a_t, a_s)
            d0_hat = d0_hat.clamp(-1, 1)
            eps_d = (dist - a_t ** 0.5 * d0_hat) / (1 - a_t) ** 0.5
            dist = a_s ** 0.5 * d0_hat + (1 - a_s) ** 0.5 * eps_d
            x0_hat = torch.softmax(logits, dim=1)
            if s >= 0:
                post = cat.posterior(lab.float(), x0_hat, tt, torch.full((n,), s, dtype=torch.long, device=device))
                lab = torch.stack([sample_one_hot(post[j:j + 1].cpu(), generators[j])[0] for j in range(n)]).to(device)
            if progress is not None:
                progress(i + 1, len(timesteps))
    label = logits.argmax(dim=1) if logits is not None else lab.argmax(dim=1)
    return z, ((dist[:, 0] + 1) / 2).clamp(0, 1), label


def _ddim_step(x_t: torch.Tensor, v: torch.Tensor, a_t: float, a_s: float) -> torch.Tensor:
    """Deterministic DDIM step from ``t`` to ``s`` for a v-prediction (``a_s = 1``: the clean estimate)."""
    x0 = a_t ** 0.5 * x_t - (1 - a_t) ** 0.5 * v
    eps = (1 - a_t) ** 0.5 * x_t + a_t ** 0.5 * v
    return a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * eps
