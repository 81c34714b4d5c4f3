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


def guarded(action):
    """Run a dock action; report bad input plainly and unexpected failures with a hint.

    The wrapped function returns None when it failed, after notifying the user.
    """

    @functools.wraps(action)
    def wrapper(*args, **kwargs):
        try:
            return action(*args, **kwargs)
        except HistogenInputError as err:
            notify_error(str(err))
        except MemoryError:
            notify_error("Out of memory: the image or mask is too large for this machine; crop or tile it first.")
        except Exception as err:  # the dock must never crash the viewer
            log.exception("napari-histogen: %s failed", action.__name__)
            notify_error(f"{action.__name__.strip('_').replace('_', ' ')} failed: {err}. "
                         "Details are in the log; please report this with the log attached.")
        return None

    return wrapper
