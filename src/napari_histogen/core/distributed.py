"""More than one process: data-parallel training and sharded synthesis.

- :func:`parse_shard` / :func:`shard_items`: ``"i/n"`` (1-based) and the items of shard ``i``
  (every ``n``-th, so shards differ in size by at most one);
- :func:`launch`: run ``fn(*args)`` in ``n`` processes joined in one ``torch.distributed`` group
  (gloo on CPU, NCCL on CUDA: process ``r`` uses GPU ``r``); a group started by ``torchrun`` or
  ``accelerate launch`` (``WORLD_SIZE`` etc. in the environment) is joined by
  :func:`init_from_environment`;
- :func:`world` (rank and size of the group, ``(0, 1)`` without one) and
  :func:`average_gradients` (the all-reduce that makes every process take the same optimiser
  step).

Torch is imported inside the functions (this module is foundation: standard library only at
import time).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Sequence

from .errors import HistogenInputError

__all__ = ["parse_shard", "shard_items", "World", "world", "launch", "init_from_environment", "average_gradients",
           "all_mean", "barrier"]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``1 <= i <= n`` (None for None or "")."""
    if text in (None, ""):
        return None
    try:
        i_text, n_text = str(text).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise HistogenInputError(f"A shard is written i/n (e.g. 2/4 = the second of four), not {text!r}.") from None
    if not 1 <= i <= n:
        raise HistogenInputError(f"Shard {text}: i must be between 1 and n.")
    return i, n


def shard_items(items: Sequence, shard: tuple[int, int] | None) -> list:
    """The items of shard ``(i, n)``: items ``i-1, i-1+n, ...`` (all of them for None)."""
    if shard is None:
        return list(items)
    i, n = shard
    return list(items)[i - 1::n]


class World:
    """Rank and size of the process group (``rank 0 of 1`` when there is none)."""

    def __init__(self, rank: int = 0, size: int = 1):
        self.rank, self.size = int(rank), int(size)

    @property
    def main(self) -> bool:
        """The process that writes files and reports progress."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size})"


def world() -> World:
    """The current process group's rank and size."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend(device: str) -> str:
    return "nccl" if str(device).startswith("cuda") else "gloo"


def _worker(rank: int, size: int, port: int, device: str, fn: Callable, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))
    if str(device).startswith("cuda"):
        torch.cuda.set_device(rank)
    dist.init_process_group(_backend(device), rank=rank, world_size=size)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, n: int, args: tuple = (), *, device: str = "cpu") -> None:
    """Run ``fn(*args)`` in ``n`` new processes joined in one group (``n == 1``: here, no group).

    ``fn`` and ``args`` must be picklable (a module-level function). On CUDA ``n`` may not
    exceed the GPUs; process ``r`` uses ``cuda:r``. Raises when a process fails.
    """
    if n < 1:
        raise HistogenInputError(f"The number of processes must be at least 1, not {n}.")
    if n == 1:
        fn(*args)
        return
    import torch
    import torch.multiprocessing as mp

    if str(device).startswith("cuda") and n > torch.cuda.device_count():
        raise HistogenInputError(f"{n} processes need {n} GPUs; this machine has {torch.cuda.device_count()}.")
    mp.spawn(_worker, args=(n, _free_port(), str(device), fn, args), nprocs=n, join=True)


def init_from_environment(device: str = "cpu") -> World:
    """Join the group a launcher (``torchrun``, ``accelerate launch``) describes in the environment."""
    import torch
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        if str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return world()


def average_gradients(parameters) -> None:
    """Replace every gradient by its mean over the group (no-op without one)."""
    import torch.distributed as dist

    w = world()
    if w.size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    handles = [dist.all_reduce(g, op=dist.ReduceOp.SUM, async_op=True) for g in grads]
    for h in handles:
        h.wait()
    for g in grads:
        g.div_(w.size)


def all_mean(value: Any):
    """The mean of a scalar tensor over the group (the tensor itself without one)."""
    import torch.distributed as dist

    w = world()
    if w.size == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / w.size


def barrier() -> None:
    """Wait for every process of the group (no-op without one)."""
    import torch.distributed as dist

    if world().size > 1:
        dist.barrier()
