"""Gaussian diffusion on normalised TAEF2 latents: training loss and samplers.

- Schedule: T = 1000, Stable Diffusion's "scaled_linear" betas (0.00085 -> 0.012), the
  usual choice for latent diffusion (the pixel model's linear 1e-4 -> 0.02 destroys a
  32 x 32 latent too early).
- Prediction: ``"v"`` (default; v = alpha_t eps - sigma_t x0) or ``"epsilon"``; fixed
  variances (no learned-variance head: the sampler is DPM-Solver++ or DDIM, which do not
  use one, and ancestral DDPM uses beta-tilde).
- Loss: MSE on the prediction target weighted by Min-SNR-gamma (Hang et al. 2023):
  ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v.
- Sampling: diffusers schedulers (``dpmpp`` = DPMSolverMultistepScheduler, 2nd-order
  DPM-Solver++; ``ddim``; ``ddpm`` = ancestral with fixed small variance) with
  classifier-free guidance in the NASDM paper's form ``out(y) + s (out(y) - out(null))``
  (the reference code's ``s' = 1 + s``), cond and null in one batched forward.
- Latents larger than the model's latent tile are sampled with patch-wise timestep tracking
  (:mod:`napari_histogen.core.diffusion.tiled`): guided outputs per tile with the tile's
  condition crop, recombined with a weight map, one scheduler step for the whole canvas.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Any

import torch

from ..diffusion.tiled import DEFAULT_OVERLAP, DEFAULT_TILE_BATCH, canvas_output, n_canvas_tiles
from ..errors import HistogenInputError
from ..nasdm.unet import NasdmUNet
from ..progress import ProgressCallback, check_cancel

__all__ = ["LATENT_SAMPLERS", "default_diffusion", "LatentDiffusion", "make_latent_scheduler", "sample_latents",
           "guided_latent_output"]

LATENT_SAMPLERS = ("dpmpp", "ddim", "ddpm", "dpmpp_sde")
PREDICTIONS = ("v", "epsilon")


def default_diffusion(prediction: str = "v", min_snr_gamma: float = 5.0) -> dict:
    """The diffusion config recorded in a latent model's JSON."""
    if prediction not in PREDICTIONS:
        raise HistogenInputError(f"Prediction must be one of {', '.join(PREDICTIONS)}, not {prediction!r}.")
    return {"num_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "prediction": prediction, "min_snr_gamma": float(min_snr_gamma)}


def _alphas_cumprod(cfg: dict) -> torch.Tensor:
    n = int(cfg["num_timesteps"])
    if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise HistogenInputError(f"Unknown latent beta schedule {cfg.get('beta_schedule')!r}.")
    betas = torch.linspace(float(cfg["beta_start"]) ** 0.5, float(cfg["beta_end"]) ** 0.5, n,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


class LatentDiffusion:
    """Forward process and training loss for a latent NASDM model."""

    def __init__(self, config: dict):
        self.config = dict(config)
        self.num_timesteps = int(config["num_timesteps"])
        self.prediction = config.get("prediction", "v")
        self.gamma = float(config.get("min_snr_gamma", 5.0))
        ac = _alphas_cumprod(config)
        self.sqrt_ac = ac.sqrt().float()
        self.sqrt_1m_ac = (1 - ac).sqrt().float()
        self.snr = (ac / (1 - ac)).float()

    def _at(self, buf: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return buf.to(x.device)[t].view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, z0, t, noise):
        return self._at(self.sqrt_ac, t, z0) * z0 + self._at(self.sqrt_1m_ac, t, z0) * noise

    def target(self, z0, t, noise):
        if self.prediction == "epsilon":
            return noise
        return self._at(self.sqrt_ac, t, z0) * noise - self._at(self.sqrt_1m_ac, t, z0) * z0

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        snr = self.snr.to(t.device)[t]
        clipped = torch.clamp(snr, max=self.gamma) if self.gamma > 0 else snr
        return clipped / (snr + 1) if self.prediction == "v" else clipped / snr

    def training_loss(self, model, z0, t, cond, noise) -> dict:
        """Min-SNR weighted MSE; returns ``{"loss": scalar, "mse": per-sample unweighted}``."""
        z_t = self.q_sample(z0, t, noise)
        out = model(z_t, t, cond).float()
        mse = ((out - self.target(z0, t, noise)) ** 2).mean(dim=tuple(range(1, out.ndim)))
        loss = (self.loss_weight(t) * mse).mean()
        return {"loss": loss, "mse": mse.detach()}


def make_latent_scheduler(sampler: str, diffusion: dict, steps: int):
    """A diffusers scheduler for a latent model's schedule, set to ``steps`` steps."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    num_train = int(diffusion["num_timesteps"])
    if not 1 <= int(steps) <= num_train:
        raise HistogenInputError(f"Steps must be between 1 and {num_train}, not {steps}.")
    prediction = "v_prediction" if diffusion.get("prediction", "v") == "v" else "epsilon"
    common = dict(num_train_timesteps=num_train, beta_schedule="scaled_linear",
                  beta_start=float(diffusion["beta_start"]), beta_end=float(diffusion["beta_end"]),
                  prediction_type=prediction, timestep_spacing="trailing")
    scheduler: Any
    if sampler in ("dpmpp", "dpmpp_sde"):
        scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++" if sampler == "dpmpp" else "sde-dpmsolver++",
                                                solver_order=2, final_sigmas_type="zero", **common)
    elif sampler == "ddim":
        scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    elif sampler == "ddpm":
        scheduler = DDPMScheduler(clip_sample=False, variance_type="fixed_small", **common)
    else:
        raise HistogenInputError(f"Unknown sampler '{sampler}' for a latent model; choose one of "
                                 f"{', '.join(LATENT_SAMPLERS)}.")
    scheduler.set_timesteps(int(steps))
    return scheduler


def sample_latents(model, cond: torch.Tensor, diffusion: dict, *, latent_shape: tuple, steps: int = 25,
                   guidance: float = 1.0, sampler: str = "dpmpp", generators=None,
                   progress: ProgressCallback = None, cancel=None, autocast_dtype=None, tile: int | None = None,
                   tile_overlap: float = DEFAULT_OVERLAP, tile_batch: int = DEFAULT_TILE_BATCH,
                   tile_weight: str = "pathup") -> torch.Tensor:
    """Draw one normalised latent per condition (see the module docstring for the options).

    Parameters
    ----------
    model : LatentNasdmNet
    cond : tensor (N, K + 2, H, W)
        Full-resolution conditions.
    latent_shape : tuple
        ``(C, h, w)`` of one latent.
    generators : list of torch.Generator
        One CPU generator per sample (its initial noise and, for ``ddpm``, its step noise).
    tile : int, optional
        The model's latent size: a larger ``latent_shape`` is sampled in overlapping tiles of
        this size (None, or exactly one tile: one network call for the whole latent).
    tile_overlap, tile_batch, tile_weight
        See :func:`~napari_histogen.core.diffusion.tiled.tiled_output`; progress then counts
        tiles x steps.
    """
    from ..nasdm.sampling import per_sample_generators

    device = cond.device
    n = cond.shape[0]
    generators = per_sample_generators(n, generators)
    scheduler = make_latent_scheduler(sampler, diffusion, steps)
    z = torch.stack([torch.randn(latent_shape, generator=g) for g in generators]).to(device)
    z = z * float(getattr(scheduler, "init_noise_sigma", 1.0))
    amp = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else nullcontext())
    timesteps = scheduler.timesteps
    n_tiles = n_canvas_tiles(latent_shape[1], latent_shape[2], tile, tile_overlap)
    total = len(timesteps) * n_tiles
    scale = cond.shape[-1] // latent_shape[2]
    with torch.inference_mode(), ExitStack() as stack:
        # one canvas tile: the condition features do not change between steps, so the condition
        # encoder runs once (and once for the null condition), not at every step, and the
        # denoiser's SPADE layers compute their modulation of them once
        features = _condition_features(model, cond, guidance, amp) if n_tiles == 1 else None
        if features is not None and isinstance(model.unet, NasdmUNet):  # not a compiled one
            stack.enter_context(model.unet.reuse_condition())
        for i, t in enumerate(timesteps):
            check_cancel(cancel)
            t_dev = t.to(device)

            def denoise(z_part, cond_part, t_dev=t_dev):
                with amp:
                    if features is not None:
                        return _guided_from_features(model, z_part, t_dev, features, guidance)
                    return guided_latent_output(model, z_part, t_dev, cond_part, guidance)

            def tiles_done(done, i=i):
                if progress is not None and n_tiles > 1:
                    progress(i * n_tiles + done, total)

            out = canvas_output(denoise, z, cond, tile=tile, overlap=tile_overlap, scale=scale, weight=tile_weight,
                                tile_batch=tile_batch, cancel=cancel, on_tiles=tiles_done)
            kwargs = {"generator": list(generators)} if sampler in ("ddpm", "dpmpp_sde") else {}
            z = scheduler.step(out, t, z, **kwargs).prev_sample
            if progress is not None and n_tiles == 1:
                progress(i + 1, total)
    return z


def _condition_features(model, cond: torch.Tensor, guidance: float, amp) -> torch.Tensor | None:
    """The denoiser's condition features for ``cond`` (then the null condition's, when guided), or None
    for a network without a separate condition encoder."""
    encoder, unet = getattr(model, "cond_encoder", None), getattr(model, "unet", None)
    if encoder is None or unet is None:
        return None
    d = int(model.config.downscale)
    if cond.shape[-2] % d or cond.shape[-1] % d:
        return None  # the network's own check gives the message
    both = cond if guidance == 0 else torch.cat([cond, torch.zeros_like(cond)])
    with amp:
        return encoder(both)


def _guided_from_features(model, z: torch.Tensor, t: torch.Tensor, features: torch.Tensor,
                          guidance: float) -> torch.Tensor:
    """:func:`guided_latent_output` with the condition features computed once (``_condition_features``)."""
    n = z.shape[0]
    tt = t.expand(n) if t.ndim == 0 else t
    if guidance == 0:  # a copy: a CUDA-graph replay reuses its output memory, and multistep solvers keep outputs
        return model.unet(z, tt, features).float().clone()
    both = model.unet(torch.cat([z, z]), torch.cat([tt, tt]), features).float()
    out_c, out_u = both[:n], both[n:]
    return out_c + guidance * (out_c - out_u)


def guided_latent_output(model, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Network output with classifier-free guidance ``out(y) + s (out(y) - out(null))``, one batched forward."""
    n = z.shape[0]
    tt = t.expand(n) if t.ndim == 0 else t
    if guidance == 0:
        return model(z, tt, cond).float()
    both = model(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([cond, torch.zeros_like(cond)])).float()
    out_c, out_u = both[:n], both[n:]
    return out_c + guidance * (out_c - out_u)
