"""The DDIM schedule, DDIM inversion, edit-friendly DDPM inversion, and the inversion cache.

Both inversions turn a clean latent ``x0`` into the latent the transfer starts from, at the
first timestep that runs (``steps - skip_steps`` steps before the end of the chain):

- **DDIM inversion** runs the deterministic DDIM update backwards, one UNet evaluation per
  step, each depending on the last (sequential). Denoising with DDIM (eta 0) retraces it only
  approximately: the error depends on the network.
- **Edit-friendly DDPM inversion** (Huberman-Spiegelglas et al.; what the reference code
  uses) samples every ``x_t`` independently from ``q(x_t | x0)``, then solves for the noise
  maps ``z_t`` that make ``x_{t-1}`` reachable from ``x_t`` by a DDPM step (eta 1). Denoising
  that replays the ``z_t`` reconstructs ``x0`` exactly (when it uses the same text guidance).
  The steps do not depend on each other, so the UNet evaluates several timesteps per call.

As in the reference, the last noise map is set to zero. Inversions of an appearance source are
kept in :func:`inversion_cache` (keyed by the image's sha256, the model, the device and the
inversion settings), so making many targets from one source pays for its inversion once.
"""

from __future__ import annotations

from typing import Any

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..progress import check_cancel

__all__ = ["Schedule", "make_schedule", "denoise_step", "Inversion", "invert_edit_friendly", "invert_ddim",
           "InversionCache", "inversion_cache", "image_sha256", "guided_eps"]


@dataclass
class Schedule:
    """A DDIM chain and the part of it that runs (the first ``skip`` steps are not run)."""

    chain_timesteps: list     # all timesteps, noisiest first (SD 1.5, 100 steps: 991 .. 1)
    chain_alpha: list         # alphas_cumprod at each of them
    chain_alpha_prev: list    # ... at the timestep each step lands on (final alpha after the last)
    skip: int

    @property
    def steps(self) -> int:
        return len(self.chain_timesteps)

    @property
    def timesteps(self) -> list:
        return self.chain_timesteps[self.skip:]

    @property
    def alpha(self) -> list:
        return self.chain_alpha[self.skip:]

    @property
    def alpha_prev(self) -> list:
        return self.chain_alpha_prev[self.skip:]

    def __len__(self) -> int:
        return self.steps - self.skip


def make_schedule(scheduler_config: dict, steps: int, skip: int = 0) -> Schedule:
    """The DDIM timesteps of ``scheduler_config`` (SD 1.5: leading spacing, offset 1) minus the first ``skip``."""
    from diffusers import DDIMScheduler

    config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    config.pop("skip_prk_steps", None)  # a PNDM-only key of SD's scheduler_config.json
    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(int(steps))
    chain = [int(t) for t in sched.timesteps]
    n_train = int(sched.config.num_train_timesteps)
    if max(chain) >= n_train:
        from ..errors import HistogenInputError

        raise HistogenInputError(f"{steps} steps do not fit this model's {n_train}-step noise schedule; use at most "
                                 f"{n_train // 2} (the paper: 100).")
    cumprod = sched.alphas_cumprod.double()
    final = float(sched.final_alpha_cumprod)
    ratio = sched.config.num_train_timesteps // int(steps)  # DDIMScheduler.step's own rule for t_prev
    alpha = [float(cumprod[t]) for t in chain]
    alpha_prev = [float(cumprod[t - ratio]) if t - ratio >= 0 else final for t in chain]
    return Schedule(chain_timesteps=chain, chain_alpha=alpha, chain_alpha_prev=alpha_prev, skip=int(skip))


def denoise_step(x, eps, a_t: float, a_prev: float, *, eta: float = 0.0, z=None):
    """One DDIM/DDPM step ``x_t -> x_{t-1}`` (eta 0: DDIM; eta 1 with ``z``: DDPM replaying noise ``z``)."""
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    sigma = eta * variance ** 0.5
    out = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0 and z is not None:
        out = out + sigma * z
    return out


def guided_eps(eps_fn, x, t, cond, uncond, guidance: float, *, separate: bool = False):
    """``eps_u + g (eps_c - eps_u)`` in one batched call (``separate``: two calls, as the reference)."""
    import torch

    n = x.shape[0]
    if uncond is None or float(guidance) == 1.0:
        return eps_fn(x, t, cond.expand(n, -1, -1))
    if separate:
        e_u = eps_fn(x, t, uncond.expand(n, -1, -1))
        e_c = eps_fn(x, t, cond.expand(n, -1, -1))
    else:
        both = eps_fn(torch.cat([x, x]), torch.cat([t, t]),
                      torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)]))
        e_u, e_c = both.chunk(2)
    return e_u + float(guidance) * (e_c - e_u)


@dataclass
class Inversion:
    """An inverted latent: where denoising starts, and (edit-friendly) the noise maps it replays."""

    kind: str                 # "edit_friendly" or "ddim"
    x_start: Any           # (B, C, h, w) float32, the latent at the first executed timestep
    zs: Any         # (B, K, C, h, w) float32 noise maps (edit-friendly), else None
    x0: Any                # (B, C, h, w) the clean latents that were inverted
    unet_calls: int = 0
    seconds: float = 0.0

    def item(self, i: int) -> "Inversion":
        return Inversion(self.kind, self.x_start[i:i + 1], None if self.zs is None else self.zs[i:i + 1],
                         self.x0[i:i + 1], self.unet_calls, self.seconds)

    @staticmethod
    def stack(items: list) -> "Inversion":
        import torch

        zs = None if items[0].zs is None else torch.cat([it.zs for it in items])
        return Inversion(items[0].kind, torch.cat([it.x_start for it in items]), zs,
                         torch.cat([it.x0 for it in items]), sum(it.unet_calls for it in items),
                         sum(it.seconds for it in items))


def _chain_noise(seed: int, steps: int, shape, device):
    """Noise for every step of the whole chain from one seed (so it does not depend on ``skip``)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((steps, *shape), generator=gen, dtype=torch.float32).to(device)


def invert_edit_friendly(eps_fn, x0, schedule: Schedule, *, seeds, cond, uncond=None, guidance: float = 1.0,
                         batch: int = 8, full_chain: bool = False, separate_cfg: bool = False, tick=None,
                         cancel=None) -> Inversion:
    """Edit-friendly DDPM inversion of ``x0`` (B, C, h, w) over the executed steps of ``schedule``.

    Parameters
    ----------
    eps_fn : callable
        ``eps_fn(x, t, embeds) -> eps`` for a batch (float32 in and out).
    seeds : list of int
        One per image: the seed of its ``x_t`` samples.
    batch : int
        UNet inputs per call (timesteps of several steps together; guidance doubles them).
    full_chain : bool
        Also invert the skipped steps (the reference's cost; they are never used).
    separate_cfg : bool
        Unconditional and conditional passes as two calls (the reference's way).
    tick : callable, optional
        ``tick(n)`` after every call, with the number of steps it covered.
    cancel
        Checked before every UNet call.
    """
    import torch

    start = time.perf_counter()
    b, c, h, w = x0.shape
    first_step = 0 if full_chain else schedule.skip
    idx = list(range(first_step, schedule.steps))  # chain steps inverted here
    n = len(idx)
    a_t = [schedule.chain_alpha[i] for i in idx]
    a_prev = [schedule.chain_alpha_prev[i] for i in idx]
    ts = [schedule.chain_timesteps[i] for i in idx]
    noise = torch.stack([_chain_noise(s, schedule.steps, (c, h, w), x0.device)[first_step:] for s in seeds])
    sa = torch.tensor(a_t, dtype=torch.float32, device=x0.device).view(1, n, 1, 1, 1)
    xts = sa.sqrt() * x0[:, None] + (1 - sa).sqrt() * noise
    xts = torch.cat([xts, x0[:, None]], dim=1)  # after the last step: x0 itself
    zs = torch.zeros((b, n, c, h, w), dtype=torch.float32, device=x0.device)
    guided = uncond is not None and float(guidance) != 1.0
    per_call = max(1, int(batch) // (b * (2 if guided and not separate_cfg else 1)))
    calls = 0
    for first in range(0, n, per_call):
        check_cancel(cancel)
        ks = list(range(first, min(first + per_call, n)))
        x = xts[:, ks].reshape(-1, c, h, w)
        t = torch.tensor([ts[k] for k in ks], device=x0.device, dtype=torch.long).repeat(b)
        eps = guided_eps(eps_fn, x, t, cond, uncond, guidance, separate=separate_cfg).view(b, len(ks), c, h, w)
        calls += 2 if (guided and separate_cfg) else 1
        for j, k in enumerate(ks):
            mu = denoise_step(xts[:, k], eps[:, j], a_t[k], a_prev[k], eta=1.0)
            sigma = ((1 - a_prev[k]) / (1 - a_t[k]) * (1 - a_t[k] / a_prev[k])) ** 0.5
            zs[:, k] = (xts[:, k + 1] - mu) / sigma
        if tick is not None:
            tick(sum(1 for k in ks if idx[k] >= schedule.skip))
    zs[:, -1] = 0  # as the reference: the last step adds no noise
    offset = schedule.skip - first_step
    return Inversion("edit_friendly", xts[:, offset].contiguous(), zs[:, offset:].contiguous(), x0, calls,
                     time.perf_counter() - start)


def invert_ddim(eps_fn, x0, schedule: Schedule, *, cond, uncond=None, guidance: float = 1.0,
                separate_cfg: bool = False, tick=None, cancel=None) -> Inversion:
    """DDIM inversion of ``x0`` up to the first executed timestep (sequential, one call per step)."""
    import torch

    start = time.perf_counter()
    x = x0.clone()
    calls = 0
    for k in reversed(range(len(schedule))):
        check_cancel(cancel)
        a_from, a_to = schedule.alpha_prev[k], schedule.alpha[k]
        t = torch.full((x.shape[0],), schedule.timesteps[k], device=x.device, dtype=torch.long)
        eps = guided_eps(eps_fn, x, t, cond, uncond, guidance, separate=separate_cfg)
        calls += 2 if (separate_cfg and uncond is not None and float(guidance) != 1.0) else 1
        pred_x0 = (x - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
        x = a_to ** 0.5 * pred_x0 + (1 - a_to) ** 0.5 * eps
        if tick is not None:
            tick(1)
    return Inversion("ddim", x, None, x0, calls, time.perf_counter() - start)


# -- cache --------------------------------------------------------------------------------
def image_sha256(image) -> str:
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


class InversionCache:
    """A small LRU of inversions, shared by every engine in the process (thread-safe)."""

    def __init__(self, max_items: int = 8):
        self.max_items = int(max_items)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


_CACHE = InversionCache()


def inversion_cache() -> InversionCache:
    return _CACHE
