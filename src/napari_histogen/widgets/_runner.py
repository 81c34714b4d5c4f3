"""What the synthesis docks share: one background run with progress, Cancel and plain errors.

A dock mixes in :class:`BackgroundRunMixin`, calls :meth:`_init_runner` in ``__init__``
(after creating ``run_btn``, ``cancel_btn``, ``progress_bar`` and ``status``) and sets the
class attributes naming its run. Workers return ``("done" | "cancelled" | "failed", value)``
instead of raising: napari 0.9's task-status hook on ``errored`` itself raises in the
event loop.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import QObject, Signal

from ..core.errors import HistogenInputError
from . import _guard

__all__ = ["ProgressRelay", "BackgroundRunMixin"]


class ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int)


class BackgroundRunMixin:
    #: shown in napari's activity panel
    RUN_TITLE = "Synthesis"
    #: status line and message prefix after a failure
    FAILED_TEXT = "Synthesis failed"
    #: advice after MemoryError
    OOM_HINT = "Out of memory: use fewer samples, or a GPU."

    def _init_runner(self) -> None:
        self._worker = None
        self._cancel = None
        self._napari_progress = None
        self._relay = ProgressRelay()
        self._relay.progress.connect(self._on_progress)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def cancel(self) -> None:
        """Stop the running job within one denoising step; nothing is added."""
        if self._cancel is not None:
            self._cancel.cancel()
            self.status.setText("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        if running:
            from napari.utils import progress

            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self._napari_progress = progress(total=1, desc=self.RUN_TITLE)
        elif self._napari_progress is not None:
            self._napari_progress.close()
            self._napari_progress = None

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)
        self._update_napari_progress(done, total)

    def _update_napari_progress(self, done: int, total: int) -> None:
        if self._napari_progress is not None:
            self._napari_progress.total = total
            self._napari_progress.n = done
            self._napari_progress.refresh()

    def _on_worker_done(self) -> None:
        self._worker = None
        self._cancel = None
        self._set_running(False)

    def _on_error(self, err) -> None:
        self.status.setText(f"{self.FAILED_TEXT}.")
        if isinstance(err, HistogenInputError):
            _guard.notify_error(str(err))
        elif isinstance(err, MemoryError):
            _guard.notify_error(self.OOM_HINT)
        else:
            logging.getLogger("napari_histogen").error("%s", self.FAILED_TEXT, exc_info=err)
            _guard.notify_error(f"{self.FAILED_TEXT}: {err}. Details are in the log; please report this with the log attached.")

    def _on_returned(self, outcome, context) -> None:
        status, value = outcome
        if status == "failed":
            self._on_error(value)
        else:
            self._on_finished(value, context)
