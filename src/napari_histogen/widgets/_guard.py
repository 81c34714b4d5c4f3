"""Turn errors into napari notifications, so no action of a dock ends in a traceback dialog."""

from __future__ import annotations

import functools
import logging

from ..core.errors import HistogenInputError

log = logging.getLogger("napari_histogen")


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def show_in_status(dock, message: str) -> None:
    """Put ``message`` whole in the dock's status line (a word-wrapped label), when it has one."""
    status = getattr(dock, "status", None)
    if status is not None and hasattr(status, "setText"):
        try:
            status.setText(message)
        except RuntimeError:  # the dock's widgets are already deleted
            pass


def guarded(action):
    """Run a dock action; report bad input plainly and unexpected failures with a hint.

    The message goes to a notification and, whole, to the dock's status line (the first
    argument's ``status`` label, when there is one). The wrapped function returns None when
    it failed.
    """

    @functools.wraps(action)
    def wrapper(*args, **kwargs):
        try:
            return action(*args, **kwargs)
        except HistogenInputError as err:
            message = str(err)
        except MemoryError:
            message = "Out of memory: the image or mask is too large for this machine; crop or tile it first."
        except Exception as err:  # the dock must never crash the viewer
            log.exception("napari-histogen: %s failed", action.__name__)
            message = (f"{action.__name__.strip('_').replace('_', ' ')} failed: {err}. "
                       "Details are in the log; please report this with the log attached.")
        if args:
            show_in_status(args[0], message)
        notify_error(message)
        return None

    return wrapper
