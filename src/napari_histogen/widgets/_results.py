"""Where a dock's results go on the canvas, and adding them without freezing the viewer.

Results of one run fill one row of a grid beside the input they belong to (the *anchor*,
e.g. the mask layer): sample ``k`` in column ``k + 1`` (column 0 is the anchor itself). The
next run for the same anchor takes the first free row below, so runs never land on top of
each other and seeds compare side by side. Every result layer carries
``metadata["histogen_result"] = {"dock", "anchor", "row"}``; a row is free again once its
layers are deleted (by hand or with the dock's "Clear previous results").

Adding a layer costs napari 60-100 ms on the GUI thread here (the vispy visual, the layer
controls widget, selecting it), and the window's repaint after it another 30-50 ms under
software OpenGL. :class:`ResultLayers` adds one layer per event-loop turn, with a pause between
them, and keeps each turn short: the new layer is not made the selected one (the selection
switch rebuilds the controls panel), and the window repaints in a later turn than the one that
added the layer (its updates are held back during the addition), so the GUI thread's timer
ticks between the two (``benchmarks/gui_latency.py``).
"""

from __future__ import annotations

import functools
import weakref
from collections import deque

import numpy as np
from qtpy.QtCore import QTimer

__all__ = ["RESULT_KEY", "GAP_PX", "ResultLayers", "anchor_units"]

RESULT_KEY = "histogen_result"
GAP_PX = 8  # space between grid cells, in the results' pixels
#: pause between two layer additions: longer than a repaint tick, so the viewer draws and
#: answers input between them instead of running all additions in one event-loop pass
ADD_PAUSE_MS = 25


def _qt_window(viewer):
    """The viewer's Qt main window, or None (a viewer model without a window, or a closed one)."""
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    try:
        return window if window is not None and window.isVisible() else None
    except RuntimeError:  # deleted by Qt
        return None


def _resume_updates(window_ref) -> None:
    """Let the window repaint again (it may have been closed meanwhile)."""
    window = window_ref()
    if window is None:
        return
    try:
        window.setUpdatesEnabled(True)
    except RuntimeError:  # deleted by Qt
        pass


def anchor_units(anchor) -> tuple | None:
    """The anchor layer's units (results use the same, so napari never sees inconsistent units)."""
    units = getattr(anchor, "units", None)
    return None if units is None else tuple(str(u) for u in units)[-2:]


class ResultLayers:
    """The result layers one dock added: grid rows per anchor, queued adding, clearing.

    Parameters
    ----------
    viewer : napari.Viewer
    dock : str
        The dock's name, recorded on its layers (``metadata["histogen_result"]["dock"]``).
    """

    def __init__(self, viewer, dock: str):
        self.viewer = viewer
        self.dock = dock
        self._queue: deque = deque()
        self._on_added = None

    # -- placement --------------------------------------------------------------------------
    def _mine(self, layer) -> dict | None:
        info = (getattr(layer, "metadata", None) or {}).get(RESULT_KEY)
        return info if isinstance(info, dict) and info.get("dock") == self.dock else None

    def layers(self) -> list:
        """This dock's result layers still in the viewer."""
        return [layer for layer in self.viewer.layers if self._mine(layer) is not None]

    def next_row(self, anchor_name: str, rows_per_run: int = 1) -> int:
        """The first grid row (a multiple of ``rows_per_run``) no result of ``anchor_name`` occupies."""
        used = {int(info["row"]) for layer in self.viewer.layers
                if (info := self._mine(layer)) is not None and info.get("anchor") == anchor_name}
        queued = {int(kw["metadata"][RESULT_KEY]["row"]) for _d, kw, _t, _a in self._queue
                  if kw["metadata"][RESULT_KEY].get("anchor") == anchor_name}
        used |= queued
        row = 0
        while any(r in used for r in range(row, row + rows_per_run)):
            row += rows_per_run
        return row

    @staticmethod
    def cell_origin(anchor, cell_size, row: int, col: int) -> np.ndarray:
        """World (y, x) of grid cell (row, col) for cells of ``cell_size`` = (height, width) world units."""
        origin = np.asarray(anchor.translate, dtype=float)[-2:]
        return origin + np.array([row * cell_size[0], col * cell_size[1]], dtype=float)

    def tag(self, kwargs: dict, anchor_name: str, row: int) -> dict:
        """``kwargs`` with this dock's result record added to its metadata (a new dict)."""
        out = dict(kwargs)
        metadata = dict(out.get("metadata") or {})
        metadata[RESULT_KEY] = {"dock": self.dock, "anchor": anchor_name, "row": int(row)}
        out["metadata"] = metadata
        return out

    # -- adding -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Layers queued and not added yet."""
        return len(self._queue)

    def add_later(self, items, on_added=None) -> None:
        """Add ``(data, kwargs, layer_type, after)`` items one per event-loop turn.

        ``after(layer)`` (or None) runs right after its layer is added; ``on_added()`` once
        the queue is empty.
        """
        self._queue.extend(items)
        self._on_added = on_added
        QTimer.singleShot(ADD_PAUSE_MS, self._add_next)

    def _add_next(self) -> None:
        if not self._queue:
            return
        data, kwargs, layer_type, after = self._queue.popleft()
        window = _qt_window(self.viewer)
        held = window is not None and window.updatesEnabled()
        layers = self.viewer.layers
        activates = getattr(layers, "_activate_on_insert", None)
        try:
            if held:  # the repaint waits for the next turn (see the module text)
                window.setUpdatesEnabled(False)
            if activates is not None:  # napari's private switch; without it the layer is selected as usual
                layers._activate_on_insert = False
            layer = getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
            if after is not None:
                after(layer)
        finally:
            if activates is not None:
                layers._activate_on_insert = activates
            if held:
                QTimer.singleShot(0, functools.partial(_resume_updates, weakref.ref(window)))
            if self._queue:
                QTimer.singleShot(ADD_PAUSE_MS, self._add_next)
            elif self._on_added is not None:
                done, self._on_added = self._on_added, None
                done()

    def clear(self) -> int:
        """Remove this dock's result layers (and anything still queued); returns how many were removed."""
        self._queue.clear()
        mine = self.layers()
        for layer in mine:
            self.viewer.layers.remove(layer)
        return len(mine)
