"""What the synthesis docks share: the engine dock base.

:class:`EngineDock` (a ``QWidget``) gives every engine's dock the same plumbing: the Run /
Cancel buttons, progress bar and status line (:meth:`EngineDock._add_run_controls`), one
background run of ``engine.run(request)`` with progress, Cancel and plain errors
(:meth:`EngineDock._start_run`), the loaded-model cache
(:class:`~napari_histogen.core.engines.base.EngineCache`), and ``closeEvent`` releasing the
models. A dock only builds its form, turns layers into a request, and puts results back.

Workers return ``("done" | "cancelled" | "failed", value)`` instead of raising: napari 0.9's
task-status hook on ``errored`` itself raises in the event loop.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from ..core.engines.base import EngineCache
from ..core.errors import HistogenInputError
from ..core.progress import CancelToken, Cancelled
from . import _guard

__all__ = ["ProgressRelay", "BackgroundRunMixin", "EngineDock", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda")


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


class EngineDock(BackgroundRunMixin, QWidget):
    """Base of the engine docks: run controls, one background run, the model cache, release on close.

    Subclasses set :attr:`ENGINE` (a registry name) and the texts of
    :class:`BackgroundRunMixin`, build their form, call :meth:`_add_run_controls`, and
    implement ``_on_finished(results, context)``.
    """

    #: the registry name of the engine (core.engines.base.ENGINES)
    ENGINE = ""
    #: status text while the model loads on the first run (empty: none)
    LOADING_TEXT = ""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.engines = EngineCache()
        self.last_results: list = []
        self._init_runner()

    # -- widgets ----------------------------------------------------------------------------
    @staticmethod
    def _device_combo() -> QComboBox:
        combo = QComboBox()
        combo.addItems(list(DEVICES))
        return combo

    def _add_model_row(self, form, chooser, browse_text: str, browse_tip: str) -> None:
        """The model chooser with its browse button, and the model info line below (``self.model_info``)."""
        row = QHBoxLayout()
        browse = QPushButton(browse_text)
        browse.setToolTip(browse_tip)
        browse.clicked.connect(self._on_browse_clicked)
        row.addWidget(chooser, 1)
        row.addWidget(browse)
        form.addRow("model", row)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        form.addRow("", self.model_info)

    def _add_run_controls(self, layout, run_text: str) -> None:
        """Run and Cancel buttons, the progress bar and the status line, appended to ``layout``."""
        buttons = QHBoxLayout()
        self.run_btn = QPushButton(run_text)
        self.run_btn.clicked.connect(lambda: self.run())
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(lambda: self.cancel())
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status = QLabel("")
        self.status.setWordWrap(True)

    def _add_status(self, layout) -> None:
        layout.addWidget(self.status)
        layout.addStretch(1)

    # -- running ----------------------------------------------------------------------------
    def _start_run(self, request, *, model, device: str, context, status: str):
        """Run ``engine.run(request)`` in a worker (the engine loaded once, from the cache)."""
        from napari.qt.threading import create_worker

        if self.running:
            raise HistogenInputError(f"{self.RUN_TITLE} is already running; wait for it or press Cancel.")
        request.check()
        self._cancel = token = CancelToken()
        relay, cache, name = self._relay, self.engines, self.ENGINE
        announce = bool(self.LOADING_TEXT) and not cache.has(name, model, device=device)

        def work():
            # outcomes come back as values, never as worker errors (napari 0.9's errored hook raises)
            try:
                if announce:
                    relay.progress.emit(0, 0)  # busy bar while the model loads (first run only)
                engine = cache.get(name, model, device=device)
                return "done", engine.run(request, progress=relay.progress.emit, cancel=token)
            except Cancelled:
                return "cancelled", None
            except BaseException as err:  # noqa: BLE001 - reported in the GUI thread
                return "failed", err

        # errored is connected here, so napari does not re-raise the worker's error in the event loop
        self._worker = worker = create_worker(work, _start_thread=False, _connect={
            "returned": lambda outcome, _c=context: self._on_returned(outcome, _c),
            "errored": self._on_error,
            "finished": self._on_worker_done,
        })
        self._set_running(True)
        self.status.setText(status)
        worker.start()
        return worker

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, total)  # (0, 0): busy
        self.progress_bar.setValue(done)
        if total <= 0:
            if self.LOADING_TEXT:
                self.status.setText(self.LOADING_TEXT)
            return
        self._update_napari_progress(done, total)

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self.cancel()
        self.engines.release()
        super().closeEvent(event)
