"""Gaussian diffusion with learned variances: the training side of NASDM.

Follows Nichol & Dhariwal (improved DDPM), as NASDM and SDM do:

- linear beta schedule over ``T`` steps, epsilon prediction;
- the network also outputs ``v`` in [-1, 1] per pixel and channel; the reverse variance is
  ``Sigma = exp(frac * log(beta_t) + (1 - frac) * log(beta_tilde_t))`` with
  ``frac = (v + 1) / 2`` (the "learned range" parametrisation, which diffusers'
  ``DDPMScheduler(variance_type="learned_range")`` implements for sampling);
- hybrid loss ``L_simple + lambda * L_vlb`` with the KL term computed on a stop-gradient
  epsilon, so ``L_vlb`` trains only the variance. ``L_vlb`` is the sum over all ``T`` terms,
  so one sampled term is weighted by ``T * lambda`` (with ``lambda = 0.001`` and ``T = 1000``
  that is weight 1, as in improved-diffusion).

Sampling lives in :mod:`napari_histogen.core.nasdm.sampling` (diffusers schedulers).
Buffers are float64 numpy (as in the reference code) and gathered per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["GaussianDiffusion", "normal_kl", "discretized_gaussian_log_likelihood", "linear_betas"]


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule (float64), identical to diffusers' ``beta_schedule="linear"``."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of 8-bit images scaled to [-1, 1] under a discretised Gaussian."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def _gather(buffer: np.ndarray, t: torch.Tensor, ndim: int, dtype=torch.float32) -> torch.Tensor:
    out = torch.as_tensor(buffer, device=t.device)[t].to(dtype)
    return out.reshape(out.shape + (1,) * (ndim - 1))


class GaussianDiffusion:
    """Forward process, posterior and losses of a learned-variance DDPM.

    Parameters
    ----------
    num_timesteps : int
        ``T`` (1000).
    beta_start, beta_end : float
        Ends of the linear schedule (1e-4, 0.02).
    vlb_weight : float
        ``lambda`` of the hybrid loss (0.001).
    """

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 vlb_weight: float = 0.001):
        self.num_timesteps = int(num_timesteps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.vlb_weight = float(vlb_weight)
        b = self.betas = linear_betas(self.num_timesteps, beta_start, beta_end)
        a = 1.0 - b
        self.alphas_cumprod = np.cumprod(a)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # beta_tilde_t: variance of q(x_{t-1} | x_t, x_0); 0 at t = 0, so its log is clipped to t = 1.
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = b * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(a) / (1.0 - self.alphas_cumprod)

    def config(self) -> dict:
        return {"num_timesteps": self.num_timesteps, "beta_schedule": "linear", "beta_start": self.beta_start,
                "beta_end": self.beta_end, "prediction": "epsilon", "variance": "learned_range",
                "vlb_weight": self.vlb_weight}

    # -- forward process -------------------------------------------------------------------
    def q_sample(self, x0, t, noise):
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

    def q_posterior(self, x0, x_t, t):
        """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean = _gather(self.posterior_mean_coef1, t, x_t.ndim) * x0 + _gather(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        return (mean, _gather(self.posterior_variance, t, x_t.ndim),
                _gather(self.posterior_log_variance_clipped, t, x_t.ndim))

    # -- reverse process -------------------------------------------------------------------
    def model_log_variance(self, v, t):
        """Learned-range log-variance from the network's ``v`` in [-1, 1]."""
        min_log = _gather(self.posterior_log_variance_clipped, t, v.ndim)
        max_log = _gather(np.log(self.betas), t, v.ndim)
        frac = (v + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    def predict_x0(self, x_t, t, eps):
        return _gather(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps

    def p_mean_variance(self, model_output, x_t, t, *, clip_denoised: bool = True) -> dict:
        """Mean and log-variance of ``p(x_{t-1} | x_t)`` from the network output ``[eps, v]``."""
        eps, v = model_output.chunk(2, dim=1)
        log_var = self.model_log_variance(v, t)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return {"mean": mean, "log_variance": log_var, "pred_x0": x0, "eps": eps}

    # -- losses ----------------------------------------------------------------------------
    def vb_term(self, model_output, x0, x_t, t):
        """Per-sample ``L_t`` of the variational bound in bits per dimension."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model, x0, t, cond, noise=None) -> dict:
        """Hybrid loss of a batch: ``mse + T * lambda * L_t`` per sample (means over the batch).

        Parameters
        ----------
        model : callable
            ``model(x_t, t, cond) -> [eps, v]``.
        x0 : tensor (N, 3, H, W) in [-1, 1]
        t : tensor (N,) long
        cond : tensor (N, C, H, W)
        noise : tensor, optional

        Returns
        -------
        dict with ``loss`` (scalar to minimise), ``mse`` and ``vb`` (per-sample tensors).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t, cond).float()
        eps, v = output.chunk(2, dim=1)
        mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
        # stop-gradient on eps: L_vlb only trains the variance.
        vb = self.vb_term(torch.cat([eps.detach(), v], dim=1), x0, x_t, t)
        loss = (mse + vb * self.num_timesteps * self.vlb_weight).mean()
        return {"loss": loss, "mse": mse, "vb": vb}
