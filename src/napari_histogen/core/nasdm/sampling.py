"""Sampling a NASDM model: guided ancestral DDPM on respaced timesteps (default), DDIM or DPM-Solver++.

- Classifier-free guidance: ``eps = eps(y) + s (eps(y) - eps(null))`` with the condition
  and the all-zero null condition in **one** batched forward; the variance comes from the
  conditional pass. ``s = 0`` is the plain conditional model.
- Ancestral sampling uses diffusers' ``DDPMScheduler`` with ``variance_type=
  "learned_range"``: on respaced timesteps (``linspace`` spacing, so 999 and 0 are always
  included, as in SDM's respacing) it recomputes the step's beta from the cumulative
  alphas and interpolates the log-variance between it and the respaced posterior
  variance, which is improved-DDPM respacing.
- DDIM (``DDIMScheduler``, eta 0) is available but not the default: SDM users report
  noisier DDIM samples with this kind of model.
- DPM-Solver++ (``DPMSolverMultistepScheduler``, 2nd order, data prediction, steps uniform
  in log-SNR) is the few-step option, as an ODE (``dpmpp``) or an SDE (``dpmpp_sde``, which
  adds fresh noise every step, from each sample's generator); the predicted clean image is
  clipped to [-1, 1] at every step (diffusers' dynamic thresholding with a maximum of 1, which
  is DDPM/DDIM's ``clip_sample`` for these models). On the embedded pixel model only the SDE
  follows the long ancestral chain (``benchmarks/sampler_quality.py --model pixel``: KID
  against DDPM-75 0.2 ± 3.7 at 20 steps); the ODE leaves unremoved noise, as DDIM does.
- Every sample has its own ``torch.Generator`` (seed + index), so a sample does not depend
  on the batch it was drawn in.
- A condition larger than the model's tile (``tile``) is sampled with patch-wise timestep
  tracking (:mod:`napari_histogen.core.diffusion.tiled`): guided outputs per tile, recombined
  with a weight map, one scheduler step for the whole canvas.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext

import torch

from ..diffusion.tiled import DEFAULT_OVERLAP, DEFAULT_TILE_BATCH, canvas_output, n_canvas_tiles
from ..errors import HistogenInputError
from ..progress import ProgressCallback, check_cancel
from .unet import NasdmUNet

__all__ = ["SAMPLERS", "VARIANCES", "make_scheduler", "per_sample_generators", "network_condition", "guided_output",
           "sample"]

SAMPLERS = ("ddpm", "ddim", "dpmpp", "dpmpp_sde")
#: Variance of the ancestral DDPM step. "learned": the network's interpolation ``v``
#: (improved-DDPM); "fixed_small": the posterior variance beta-tilde, which is what a
#: model whose variance head is not trained yet should use (a briefly trained head ends a
#: respaced chain with one large noisy step: white pixel speckle).
VARIANCES = ("learned", "fixed_small")


def make_scheduler(sampler: str, diffusion: dict, steps: int, *, variance: str = "learned"):
    """A diffusers scheduler for the model's training schedule, set to ``steps`` steps."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    num_train = int(diffusion.get("num_timesteps", 1000))
    if not 1 <= int(steps) <= num_train:
        raise HistogenInputError(f"Steps must be between 1 and {num_train}, not {steps}.")
    common = dict(num_train_timesteps=num_train, beta_schedule="linear", beta_start=float(diffusion.get("beta_start", 1e-4)),
                  beta_end=float(diffusion.get("beta_end", 0.02)), prediction_type="epsilon", clip_sample=True,
                  timestep_spacing="linspace")
    if variance not in VARIANCES:
        raise HistogenInputError(f"Unknown variance '{variance}'; choose one of {', '.join(VARIANCES)}.")
    if sampler == "ddpm":
        scheduler = DDPMScheduler(variance_type="learned_range" if variance == "learned" else "fixed_small",
                                  **common)
    elif sampler == "ddim":
        scheduler = DDIMScheduler(set_alpha_to_one=True, **common)
    elif sampler in ("dpmpp", "dpmpp_sde"):
        common.pop("clip_sample")
        # steps uniform in log-SNR (the DPM-Solver paper's spacing): on Gaussian data, 20 ODE
        # steps end 0.009 from the exact end point, 0.10 with linspace spacing (its last step
        # jumps from t = 100 to 0), DDIM 0.095 (tests/test_nasdm_engine.py)
        scheduler = DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++" if sampler == "dpmpp" else "sde-dpmsolver++", solver_order=2,
            final_sigmas_type="zero", use_lu_lambdas=True, thresholding=True, sample_max_value=1.0, **common)
    else:
        raise HistogenInputError(f"Unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}.")
    scheduler.set_timesteps(int(steps))
    return scheduler


def per_sample_generators(n: int, generators=None) -> list:
    """One CPU generator per sample (seeds 0..n-1 when none are given), so a sample does not
    depend on the batch it is drawn in."""
    if generators is None:
        return [torch.Generator().manual_seed(i) for i in range(n)]
    if len(generators) != n:
        raise ValueError("one generator per condition is needed")
    return list(generators)


def network_condition(cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """What :func:`guided_output` passes the network: ``cond``, then the null condition when guided."""
    return cond if guidance == 0 else torch.cat([cond, torch.zeros_like(cond)])


def guided_output(model, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float, *,
                  network_cond: torch.Tensor | None = None) -> torch.Tensor:
    """Network output ``[eps, v]`` with classifier-free guidance (one batched forward).

    The guidance form is the NASDM paper's eq. 7, ``eps = eps(y) + s (eps(y) - eps(null))``.
    The reference code writes ``eps(null) + s' (eps(y) - eps(null))``, so its ``s' = 1.5``
    is ``s = 0.5`` here. With ``guidance == 0`` only the conditional pass runs.
    ``network_cond``: :func:`network_condition` of ``cond``, built once by a sampler so that
    every step passes the network the same tensor (its SPADE layers then reuse their work).
    """
    n = x.shape[0]
    tt = t.expand(n) if t.ndim == 0 else t
    both = network_condition(cond, guidance) if network_cond is None else network_cond
    if guidance == 0:
        return model(x, tt, both).float()
    out = model(torch.cat([x, x]), torch.cat([tt, tt]), both).float()
    out_c, out_u = out[:n], out[n:]
    eps_c, v_c = out_c.chunk(2, dim=1)
    eps_u = out_u[:, : eps_c.shape[1]]
    return torch.cat([eps_c + guidance * (eps_c - eps_u), v_c], dim=1)


def sample(model, cond: torch.Tensor, diffusion: dict, *, steps: int = 250, guidance: float = 1.5,
           sampler: str = "ddpm", generators=None, progress: ProgressCallback = None, cancel=None,
           autocast_dtype=None, channels: int = 3, variance: str | None = None, tile: int | None = None,
           tile_overlap: float = DEFAULT_OVERLAP, tile_batch: int = DEFAULT_TILE_BATCH,
           tile_weight: str = "pathup") -> torch.Tensor:
    """Draw one image per condition.

    Parameters
    ----------
    model : NasdmUNet
        In eval mode, on the device of ``cond``.
    cond : tensor (N, C, H, W)
        Conditions (see :func:`~napari_histogen.core.nasdm.condition.make_condition`).
    diffusion : dict
        The model's diffusion config (T, betas).
    steps : int
        Respaced steps (1000 = the full chain).
    guidance : float
        Classifier-free guidance scale ``s`` in the paper's form (0 = conditional only; the
        reference code's 1.5 is 0.5 here).
    sampler : {"ddpm", "ddim", "dpmpp", "dpmpp_sde"}
    variance : {"learned", "fixed_small"}, optional
        Variance of the DDPM step (None = "learned"); see :data:`VARIANCES`.
    generators : list of torch.Generator, optional
        One CPU generator per sample (reproducible across devices and batch sizes).
    progress : callable(done, total), optional
        Called after every step.
    cancel : CancelToken or callable, optional
        Checked before every step; raises :class:`~napari_histogen.core.progress.Cancelled`.
    autocast_dtype : torch.dtype, optional
        bf16/fp16 autocast for the network on CUDA.
    tile : int, optional
        The model's native patch size in pixels. A larger condition is sampled in overlapping
        tiles of this size (PathUp patch-wise timestep tracking); None or a condition of
        exactly one tile: the whole condition in one network call.
    tile_overlap, tile_batch, tile_weight
        Overlap (fraction of a tile), tiles per network call and weight map of the tiling
        (see :mod:`~napari_histogen.core.diffusion.tiled`); progress then counts tiles x steps.

    Returns
    -------
    tensor (N, 3, H, W) float32 in [-1, 1] on ``cond``'s device.
    """
    if getattr(model, "is_latent", False):  # latent NASDM: its own sampler, decoded to RGB
        return model.sample(cond, steps=steps, guidance=guidance, sampler=sampler, generators=generators,
                            progress=progress, cancel=cancel, autocast_dtype=autocast_dtype, tile=tile,
                            tile_overlap=tile_overlap, tile_batch=tile_batch, tile_weight=tile_weight).clamp(-1, 1)
    device = cond.device
    generators = per_sample_generators(cond.shape[0], generators)
    variance = "learned" if variance is None else variance
    scheduler = make_scheduler(sampler, diffusion, steps, variance=variance)
    shape = (channels,) + tuple(cond.shape[-2:])
    x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    timesteps = scheduler.timesteps
    n_tiles = n_canvas_tiles(shape[1], shape[2], tile, tile_overlap)
    total = len(timesteps) * n_tiles
    amp = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else nullcontext())
    with torch.inference_mode(), ExitStack() as stack:
        # one canvas tile: the network sees the same condition at every step, so it is built
        # once and the SPADE layers compute their modulation once (same images)
        network_cond = network_condition(cond, guidance) if n_tiles == 1 else None
        if network_cond is not None and isinstance(model, NasdmUNet):  # not a compiled one
            stack.enter_context(model.reuse_condition())
        for i, t in enumerate(timesteps):
            check_cancel(cancel)
            t_dev = t.to(device)

            def denoise(x_part, cond_part, t_dev=t_dev):
                with amp:
                    return guided_output(model, x_part, t_dev, cond_part, guidance, network_cond=network_cond)

            def tiles_done(done, i=i):
                if progress is not None and n_tiles > 1:
                    progress(i * n_tiles + done, total)

            out = canvas_output(denoise, x, cond, tile=tile, overlap=tile_overlap, weight=tile_weight,
                                tile_batch=tile_batch, cancel=cancel, on_tiles=tiles_done)
            if sampler == "ddpm":
                # one noise draw per sample, from its own generator (diffusers draws per batch item)
                step_out = out if variance == "learned" else out[:, :channels]
                x = scheduler.step(step_out, int(t), x, generator=list(generators)).prev_sample
            elif sampler == "ddim":
                x = scheduler.step(out[:, :channels], int(t), x, eta=0.0).prev_sample
            else:  # dpmpp, dpmpp_sde (the SDE draws noise: from each sample's own generator)
                x = scheduler.step(out[:, :channels], t, x, generator=list(generators)).prev_sample
            if progress is not None and n_tiles == 1:
                progress(i + 1, total)
    return x.clamp(-1, 1)
