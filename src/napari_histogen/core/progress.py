"""Progress reporting and cancellation shared by engines, training and their callers.

An engine reports ``progress(done, total)`` and calls :func:`check_cancel` at every
denoising step; a cancelled run raises :class:`Cancelled`, which callers treat as "no
result" (never a partial one).
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

__all__ = ["Cancelled", "CancelToken", "check_cancel", "ProgressCallback", "sub_progress"]

ProgressCallback = Optional[Callable[[int, int], None]]


class Cancelled(Exception):
    """The user cancelled the run; nothing was produced."""


class CancelToken:
    """A thread-safe cancel flag (set from the GUI thread, read by the worker)."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` if ``cancel`` (a CancelToken, Event or callable) is set."""
    if cancel is None:
        return
    if isinstance(cancel, threading.Event):
        flag = cancel.is_set()
    elif isinstance(cancel, CancelToken):
        flag = cancel.cancelled
    else:
        flag = bool(cancel())
    if flag:
        raise Cancelled("cancelled")


def sub_progress(progress: ProgressCallback, offset: int, total: int) -> Callable[[int, int], None]:
    """A callback for one part of a longer run: its ``(done, _)`` reported as ``(offset + done, total)``.

    The one adapter for runs made of parts (batches of samples, masks of a folder, sources of
    a dataset); the part's own total is ignored, ``total`` is the whole run's.
    """
    def report(done: int, _part_total: int = 0) -> None:
        if progress is not None:
            progress(int(offset) + int(done), int(total))

    return report
