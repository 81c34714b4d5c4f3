"""What the synthesis docks share: the engine dock base.

:class:`EngineDock` (a ``QWidget``) gives every engine's dock the same plumbing: the Run /
Cancel buttons, progress bar and status line (:meth:`EngineDock._add_run_controls`), one
background run of ``engine.run(request)`` with progress, Cancel and plain errors
(:meth:`EngineDock._start_run`), the loaded-model cache
(:class:`~napari_histogen.core.engines.base.EngineCache`) released whenever the dock goes
away (closed, removed from the viewer, the viewer closed) or on "Unload model", the result
grid with "Clear previous results" (:mod:`._results`), remembered settings with "Restore
defaults" (:mod:`napari_histogen.core.settings`), the About text, and the scroll area
around the whole dock. A dock only builds its form, turns layers into a request, and puts
results back.

Nothing heavy runs on the GUI thread: the model loads in the worker, torch runs there with
one core fewer than the machine has (so the GUI thread keeps a core), and result layers are
added one per event-loop turn. The worker loads torch's shared libraries itself before the
first ``import torch`` (:func:`preload_torch_libraries`): Python's import holds the
interpreter lock while the dynamic loader maps libtorch (0.3 s here), which froze the GUI
thread for as long. After a model load and after each run the worker takes the objects
alive then out of the garbage collector's passes (:func:`freeze_long_lived_objects`), and
the docks give them back when a layer is removed or the models are released.

Workers return ``("done" | "cancelled" | "failed", value)`` instead of raising: napari 0.9's
task-status hook on ``errored`` itself raises in the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib.util
import logging
import os
import sys
import weakref
from pathlib import Path

from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.engines.base import EngineCache
from ..core.errors import HistogenInputError
from ..core.progress import CancelToken, Cancelled
from ..core.settings import clear_dock_settings, load_dock_settings, save_dock_settings
from . import _guard
from ._layout import Foldable, make_scrollable
from ._results import ResultLayers

__all__ = ["ProgressRelay", "BackgroundRunMixin", "SectionRunMixin", "EngineDock", "DEVICES", "gui_friendly_threads",
           "preload_torch_libraries", "freeze_long_lived_objects", "thaw_collector"]

DEVICES = ("auto", "cpu", "cuda")


@contextlib.contextmanager
def gui_friendly_threads():
    """Inside: torch uses at most one core fewer than the machine has (at least one), then as before.

    Called in the worker thread, which is the thread torch's intra-op pool serves; the GUI
    thread keeps a core for itself and ticks on time while a run computes.
    """
    torch = sys.modules.get("torch")
    if torch is None:  # the engine did not use torch: nothing to cap
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: torch's large shared libraries, in dependency order (Linux names)
TORCH_LIBRARIES = ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so")


def preload_torch_libraries() -> list[str]:
    """Map torch's shared libraries into the process with Python's lock released; returns those loaded.

    Called in a worker thread before the first ``import torch``. Importing an extension
    module calls the dynamic loader while holding the interpreter lock, so mapping and
    relocating libtorch (0.2-0.4 s) stops every other Python thread, the GUI thread included.
    A call through ``ctypes.CDLL`` releases the lock, so ``dlopen`` called that way lets the
    GUI thread run meanwhile; the later ``import torch`` finds the libraries loaded (the
    loader reuses them by name) and only runs the module's own set-up. Loaded with local
    symbol scope, as torch's own import loads them. Does nothing once torch is imported,
    off Linux, or when torch is not installed.
    """
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return []
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (OSError, AttributeError):
        return []
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    loaded = []
    for name in TORCH_LIBRARIES:
        path = lib_dir / name
        if path.is_file() and dlopen(os.fsencode(path), os.RTLD_NOW | os.RTLD_LOCAL):
            loaded.append(name)
    return loaded


def freeze_long_lived_objects() -> None:
    """Take every object alive now out of the garbage collector's passes (``gc.freeze``).

    Called in the worker after a model load and after a run. With torch, the sampler
    library and a model imported, a full collector pass walks 0.5 M objects and holds
    Python's lock 0.3-1 s here, freezing the GUI whichever thread it runs in
    (``benchmarks/gui_latency.py`` lists the passes); frozen objects are skipped. Objects that
    are alive now and later become unreachable reference cycles (a napari layer removed by
    the user) are only collected after :func:`thaw_collector`, which every engine dock calls
    when a layer is removed and when it releases its models.
    """
    gc.freeze()


def thaw_collector(*_args) -> None:
    """Give the frozen objects back to the garbage collector (its next full pass walks them again)."""
    if gc.get_freeze_count():
        gc.unfreeze()


def _release(cache: EngineCache, *_args) -> None:
    """Free a dock's models (module level: connected to ``destroyed``, it must not hold the dock)."""
    cache.release()
    thaw_collector()


class ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int)


class BackgroundRunMixin:
    #: names the run in messages ("… is already running")
    RUN_TITLE = "Synthesis"
    #: status line and message prefix after a failure
    FAILED_TEXT = "Synthesis failed"
    #: advice after MemoryError
    OOM_HINT = "Out of memory: use fewer samples, or a GPU."

    def _init_runner(self) -> None:
        self._worker = None
        self._cancel = None
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
        # Progress shows in the dock's own bar only. A napari ``progress`` (activity panel) was
        # tried and dropped: its status-bar animation repaints the whole window ~30 times a
        # second, and under software OpenGL (Xvfb, remote desktops) each repaint held the GUI
        # thread ~26 ms, which slowed a CPU synthesis run 3-5x (benchmarks/gui_latency.py).
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        if running:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)

    def _on_worker_done(self) -> None:
        self._worker = None
        self._cancel = None
        self._set_running(False)

    def _on_error(self, err) -> None:
        if isinstance(err, HistogenInputError):
            message = str(err)
        elif isinstance(err, MemoryError):
            message = self.OOM_HINT
        else:
            logging.getLogger("napari_histogen").error("%s", self.FAILED_TEXT, exc_info=err)
            message = f"{self.FAILED_TEXT}: {err}. Details are in the log; please report this with the log attached."
        self.status.setText(f"{self.FAILED_TEXT}: {message}" if isinstance(err, HistogenInputError) else message)
        _guard.notify_error(message)

    def _on_returned(self, outcome, context) -> None:
        status, value = outcome
        if status == "failed":
            self._on_error(value)
        else:
            self._on_finished(value, context)

    def _run_in_worker(self, load, request, token, *, context, status: str, before_load=None):
        """Load an engine with ``load()`` and run ``request`` on it in a worker thread.

        The collector is paused while the model loads (its imports grow the heap) and what is
        alive is frozen after the load and after the run (see :func:`freeze_long_lived_objects`).
        Outcomes come back as values, never as worker errors (napari 0.9's errored hook raises).
        ``before_load()`` (or None) runs first, in the worker.
        """
        from napari.qt.threading import create_worker

        relay = self._relay

        def work():
            try:
                if before_load is not None:
                    before_load()
                collecting = gc.isenabled()
                if collecting:  # no passes over the heap while the first load's imports grow it
                    gc.disable()
                try:
                    preload_torch_libraries()
                    loaded = load()
                finally:
                    if collecting:
                        gc.enable()
                freeze_long_lived_objects()
                with gui_friendly_threads():
                    results = loaded.run(request, progress=relay.progress.emit, cancel=token)
                freeze_long_lived_objects()
                return "done", results
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


class SectionRunMixin(BackgroundRunMixin):
    """A section of a dock (a ``QGroupBox``) with its own engine run: Run/Cancel, progress and status.

    The section holds ``self.engines`` (an :class:`EngineCache`, released when Qt deletes the
    section) and ``self.model_edit`` (the model name or path), builds its form in a
    ``QGridLayout``, calls :meth:`_add_section_run_controls`, starts a run with
    :meth:`_start_section_run` and implements ``_add_results(results, context)``.
    """

    def _add_section_run_controls(self, grid, row: int, run_text: str, run_tip: str) -> None:
        """Run and Cancel on ``row`` of ``grid``; the section's layout: ``grid``, the progress bar, the status."""
        self.run_btn = QPushButton(run_text)
        self.run_btn.setToolTip(run_tip)
        self.run_btn.clicked.connect(lambda: self.run())
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        grid.addWidget(self.run_btn, row, 0, 1, 2)
        grid.addWidget(self.cancel_btn, row, 2, 1, 2)
        self.progress_bar = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        box = QVBoxLayout(self)
        box.addLayout(grid)
        box.addWidget(self.progress_bar)
        box.addWidget(self.status)
        self._init_runner()
        self.destroyed.connect(lambda *_a, cache=self.engines: cache.release())

    def _start_section_run(self, engine: str, request, *, context, status: str):
        """Check ``request`` and run it with the ``engine`` model named in ``self.model_edit``, in a worker."""
        if self.running:
            raise HistogenInputError(f"{self.RUN_TITLE} is already running; wait for it or press Cancel.")
        request.check()
        model = self.model_edit.text().strip() or "default"
        self._cancel = token = CancelToken()
        cache = self.engines
        return self._run_in_worker(lambda: cache.get(engine, model, device="auto"), request, token,
                                   context=context, status=status)

    def _on_finished(self, results, context) -> None:
        if results is None:
            self.status.setText("Cancelled; nothing was added.")
            _guard.notify_info(f"{self.RUN_TITLE} cancelled; nothing was added.")
            return
        self.last_results = list(results)
        self._add_results(results, context)

    def _add_results(self, results, context) -> None:
        raise NotImplementedError


class EngineDock(BackgroundRunMixin, QWidget):
    """Base of the engine docks: run controls, one background run, the model cache, results, settings.

    Subclasses set :attr:`ENGINE` (a registry name) and the texts of
    :class:`BackgroundRunMixin`; build their form in ``self.form_layout`` (from
    :meth:`_begin_layout`), put expert settings in ``self.advanced.body``, call
    :meth:`_add_run_controls`, :meth:`_add_status` and :meth:`_finish_layout`, list the
    remembered controls in :meth:`_persisted_controls`, and implement
    ``_on_finished(results, context)``.
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
        self.results = ResultLayers(napari_viewer, self.ENGINE)
        self._defaults: dict = {}
        self._docked = False
        self._watched_window = None
        self._init_runner()
        # the last word when Qt deletes the dock (e.g. with the viewer's window)
        self.destroyed.connect(functools.partial(_release, self.engines))
        # a removed layer frozen by freeze_long_lived_objects must be collectable again
        napari_viewer.layers.events.removed.connect(thaw_collector)

    @property
    def running(self) -> bool:
        """A run is computing, or its result layers are still being added."""
        return self._worker is not None or self.results.pending > 0

    # -- widgets ----------------------------------------------------------------------------
    def _begin_layout(self) -> QVBoxLayout:
        """The dock's main layout (scrolled later by :meth:`_finish_layout`), with the folded Advanced group."""
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.advanced = Foldable("Advanced")
        return layout

    def _finish_layout(self) -> None:
        """Scroll area around the dock; remember the built-in values, then apply the saved ones."""
        self.scroll_area = make_scrollable(self)
        self._defaults = self.control_values()
        self.restore_settings()

    @staticmethod
    def _device_combo() -> QComboBox:
        combo = QComboBox()
        combo.addItems(list(DEVICES))
        combo.setToolTip("Where the model runs: auto = the GPU when there is one")
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
        """Run and Cancel, the housekeeping buttons, the progress bar and the status line, appended to ``layout``."""
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
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)  # an error can be copied whole

        tools = QHBoxLayout()
        self.clear_btn = QPushButton("Clear previous results")
        self.clear_btn.setToolTip("Remove the layers this dock added (nothing else)")
        self.clear_btn.clicked.connect(lambda: self.clear_results())
        self.unload_btn = QPushButton("Unload model")
        self.unload_btn.setToolTip("Free the memory the loaded model holds (it loads again on the next run)")
        self.unload_btn.clicked.connect(lambda: self.unload_model())
        tools.addWidget(self.clear_btn)
        tools.addWidget(self.unload_btn)
        self._tools_layout = tools

        more = QHBoxLayout()
        self.restore_btn = QPushButton("Restore defaults")
        self.restore_btn.setToolTip("Put every setting of this dock back to its default and forget the saved ones")
        self.restore_btn.clicked.connect(lambda: self.restore_defaults())
        self.about_btn = QPushButton("About")
        self.about_btn.setCheckable(True)
        self.about_btn.toggled.connect(self._on_about_toggled)
        more.addWidget(self.restore_btn)
        more.addWidget(self.about_btn)
        self._more_layout = more
        self.about_label = QLabel("")
        self.about_label.setWordWrap(True)
        self.about_label.setVisible(False)

    def _add_status(self, layout) -> None:
        layout.addWidget(self.status)
        layout.addLayout(self._tools_layout)
        layout.addWidget(self.advanced)
        layout.addLayout(self._more_layout)
        layout.addWidget(self.about_label)
        layout.addStretch(1)

    def _on_about_toggled(self, shown: bool) -> None:
        if shown and not self.about_label.text():
            from .._about import about_text

            self.about_label.setText(about_text())
        self.about_label.setVisible(shown)

    # -- housekeeping ---------------------------------------------------------------------------
    def clear_results(self) -> int:
        """Remove the result layers this dock added; returns how many."""
        n = self.results.clear()
        self.status.setText(f"Removed {n} result layer(s)." if n else "No results of this dock to remove.")
        return n

    def unload_model(self) -> int:
        """Free the loaded model(s) now (not during a run); returns how many were freed."""
        if self._worker is not None:
            self.status.setText("A run is using the model: cancel it or wait, then unload.")
            return 0
        n = self.engines.release()
        thaw_collector()
        self.status.setText("Model unloaded; it loads again on the next run." if n else "No model is loaded.")
        return n

    # -- settings -------------------------------------------------------------------------------
    def _persisted_controls(self) -> dict:
        """Setting name -> control (QSpinBox, QDoubleSpinBox, QComboBox, QCheckBox or QLineEdit) to remember."""
        return {}

    def control_values(self) -> dict:
        """The remembered controls' current values (plain JSON values)."""
        out = {}
        for key, control in self._persisted_controls().items():
            if isinstance(control, (QSpinBox, QDoubleSpinBox)):
                out[key] = control.value()
            elif isinstance(control, QComboBox):
                data = control.currentData()
                out[key] = data if isinstance(data, str) and data else control.currentText()
            elif isinstance(control, QCheckBox):
                out[key] = control.isChecked()
            elif isinstance(control, QLineEdit):
                out[key] = control.text()
        return out

    def _apply_values(self, values: dict) -> None:
        for key, control in self._persisted_controls().items():
            if key not in values:
                continue
            value = values[key]
            try:
                if isinstance(control, QSpinBox) and isinstance(value, (int, float)) and not isinstance(value, bool):
                    control.setValue(int(value))
                elif isinstance(control, QDoubleSpinBox) and isinstance(value, (int, float)) and not isinstance(value, bool):
                    control.setValue(float(value))
                elif isinstance(control, QComboBox) and isinstance(value, str):
                    self._select(control, key, value)
                elif isinstance(control, QCheckBox) and isinstance(value, bool):
                    control.setChecked(value)
                elif isinstance(control, QLineEdit) and isinstance(value, str):
                    control.setText(value)
                    control.editingFinished.emit()
            except (TypeError, ValueError):  # a hand-edited file: keep the control as it is
                continue

    def _select(self, combo: QComboBox, key: str, value: str) -> None:
        """Select ``value`` (item data or text) in ``combo``; values no longer offered are skipped."""
        index = combo.findData(value)
        if index < 0:
            index = combo.findText(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def save_settings(self) -> None:
        """Remember the current settings for the next session."""
        save_dock_settings(self.ENGINE, self.control_values())

    def restore_settings(self) -> None:
        """Apply the settings remembered from an earlier session (if any)."""
        self._apply_values(load_dock_settings(self.ENGINE))

    def restore_defaults(self) -> None:
        """Every remembered control back to the dock's built-in default; the saved settings are forgotten."""
        self._apply_values(self._defaults)
        clear_dock_settings(self.ENGINE)
        self.status.setText("Settings restored to their defaults.")

    # -- running ----------------------------------------------------------------------------
    def _start_run(self, request, *, model, device: str, context, status: str, engine: str | None = None):
        """Run ``engine.run(request)`` in a worker (the engine loaded once, from the cache, in the worker).

        ``engine``: a registry name other than the dock's :attr:`ENGINE` (a dock offering two methods).
        """
        if self.running:
            raise HistogenInputError(f"{self.RUN_TITLE} is already running; wait for it or press Cancel.")
        request.check()
        self.save_settings()
        self._cancel = token = CancelToken()
        relay, cache, name = self._relay, self.engines, engine or self.ENGINE
        announce = bool(self.LOADING_TEXT) and name == self.ENGINE and not cache.has(name, model, device=device)
        # a busy bar while the model loads (first run only)
        busy = (lambda: relay.progress.emit(0, 0)) if announce else None
        return self._run_in_worker(lambda: cache.get(name, model, device=device), request, token,
                                   context=context, status=status, before_load=busy)

    def _set_running(self, running: bool) -> None:
        super()._set_running(running)
        self.unload_btn.setEnabled(not running)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, total)  # (0, 0): busy
        self.progress_bar.setValue(done)
        if total <= 0 and self.LOADING_TEXT:
            self.status.setText(self.LOADING_TEXT)

    # -- going away -------------------------------------------------------------------------
    def _release_models(self) -> None:
        self.cancel()
        self.engines.release()
        thaw_collector()

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self._release_models()
        super().closeEvent(event)

    def event(self, event):
        kind = event.type()
        if kind == QEvent.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:  # taken out of its dock: napari's remove_dock_widget, the dock's close button
                self._docked = False
                self._release_models()
        elif kind == QEvent.Show:
            self._watch_window()
        return super().event(event)

    def _watch_window(self) -> None:
        """Watch the top-level window for its Close (held weakly: the dock must not keep a closed viewer alive)."""
        window = self.window()
        watched = self._watched_window() if self._watched_window is not None else None
        if window is not self and window is not watched:
            if watched is not None:
                watched.removeEventFilter(self)
            window.installEventFilter(self)
            self._watched_window = weakref.ref(window)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Close and self._watched_window is not None and obj is self._watched_window():
            QTimer.singleShot(0, functools.partial(_release_if_closed, self.engines, self._watched_window))
        return False


def _release_if_closed(cache: EngineCache, window_ref) -> None:
    """Free the models if the watched window really closed (a close can be refused)."""
    window = window_ref()
    try:
        closed = window is None or not window.isVisible()
    except RuntimeError:  # already deleted by Qt
        closed = True
    if closed:
        cache.release()
