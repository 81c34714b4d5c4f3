"""Categorical (multinomial) diffusion of a label map (Hoogeboom et al. 2021, "Argmax flows and multinomial diffusion").

A pixel's label is one of ``K`` categories (here background + the nucleus classes). With the
cumulative schedule ``abar_t`` (shared with the Gaussian part of the joint model, so one
timestep ``t`` noises all three outputs):

- forward: ``q(x_t | x_0) = Cat(abar_t x_0 + (1 - abar_t) / K)``, and between two steps
  ``s < t``: ``q(x_t | x_s) = Cat(a x_s + (1 - a) / K)`` with ``a = abar_t / abar_s``;
- posterior: ``q(x_s | x_t, x_0) ∝ (a x_t + (1 - a) / K) ⊙ (abar_s x_0 + (1 - abar_s) / K)``
  (``s = t - 1`` in training; any ``s < t`` when sampling with fewer steps). ``s = -1`` means
  the clean label (``abar_{-1} = 1``);
- the model predicts ``x_0`` probabilities ``p_theta(x_0 | x_t)``; its reverse step is the
  posterior with that prediction in place of ``x_0``;
- loss at ``t >= 1``: ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))``; at ``t = 0``: the
  negative log-likelihood ``-log p_theta(x_0 | x_1)`` of the true label.

Tensors are ``(N, K, ...)`` probabilities (one-hot for observed labels), ``t`` is ``(N,)``
long. Indices follow the Gaussian schedule: ``t = 0`` is the first noisy step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CategoricalDiffusion"]

_EPS = 1e-30


class CategoricalDiffusion:
    """Forward process, posterior and loss of multinomial diffusion over ``num_classes`` categories.

    Parameters
    ----------
    alphas_cumprod : tensor (T,)
        ``abar_t`` for ``t = 0 .. T-1`` (decreasing, in (0, 1]).
    num_classes : int
        Categories ``K`` (background included).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, num_classes: int):
        self.abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.num_classes = int(num_classes)
        self.num_timesteps = int(self.abar.numel())

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` broadcast to ``like`` (``t = -1``: 1, the clean label)."""
        t = torch.as_tensor(t, device=like.device).long().reshape(-1)
        abar = self.abar.to(like.device)
        out = torch.where(t >= 0, abar[t.clamp_min(0)], torch.ones((), dtype=abar.dtype, device=like.device))
        return out.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_probs(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``q(x_t | x_0)`` as probabilities ``(N, K, ...)``."""
        a = self._abar(t, x0)
        return a * x0 + (1 - a) / self.num_classes

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A one-hot draw of ``x_t`` given one-hot (or probability) ``x0``."""
        return sample_one_hot(self.q_probs(x0, t), generator)

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """``q(x_s | x_t, x_0)`` as probabilities (``s`` defaults to ``t - 1``; ``x0`` may be predicted probabilities)."""
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1)
        s = t - 1 if s is None else torch.as_tensor(s, device=x_t.device).long().reshape(-1)
        a_t, a_s = self._abar(t, x_t), self._abar(s, x_t)
        step = a_t / a_s
        k = self.num_classes
        unnorm = (step * x_t + (1 - step) / k) * (a_s * x0 + (1 - a_s) / k)
        return unnorm / unnorm.sum(dim=1, keepdim=True).clamp_min(_EPS)

    def loss(self, logits_x0: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss: KL of the posteriors for ``t >= 1``, NLL of ``x_0`` for ``t = 0`` (mean over pixels)."""
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1)
        log_pred_x0 = F.log_softmax(logits_x0.float(), dim=1)
        x0, x_t = x0.float(), x_t.float()
        true_post = self.posterior(x_t, x0, t)
        model_post = self.posterior(x_t, log_pred_x0.exp(), t)
        kl = (true_post * (torch.log(true_post.clamp_min(_EPS)) - torch.log(model_post.clamp_min(_EPS)))).sum(dim=1)
        nll = -(x0 * log_pred_x0).sum(dim=1)
        per_pixel = torch.where((t == 0).view(-1, *([1] * (kl.ndim - 1))), nll, kl)
        return per_pixel.flatten(1).mean(dim=1)


def sample_one_hot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One-hot draws from categorical probabilities ``(N, K, ...)`` (Gumbel-max, seeded by ``generator``)."""
    u = torch.rand(probs.shape, generator=generator, dtype=torch.float32).to(probs.device)
    gumbel = -torch.log((-torch.log(u.clamp(1e-20, 1.0))).clamp_min(1e-20))
    index = (torch.log(probs.float().clamp_min(_EPS)) + gumbel).argmax(dim=1)
    return F.one_hot(index, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
