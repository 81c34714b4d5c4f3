"""Where a dock's results go on the canvas, and adding them without freezing the viewer.

Results of one run fill one row of a grid beside the input they belong to (the *anchor*,
e.g. the mask layer): sample ``k`` in column ``k + 1`` (column 0 is the anchor itself). The
next run for the same anchor takes the first free row below, so runs never land on top of
each other and seeds compare side by side. Every result layer carries
``metadata["histogen_result"] = {"dock", "anchor", "row"}``; a row is free again once its
layers are deleted (by hand or with the dock's "Clear previous results").

Adding a layer costs napari 60-130 ms on the GUI thread here (the layer's controls panel, 20-50
ms; the vispy visual, 20-40 ms; the layer list and the viewer's bookkeeping; selecting it), and
the window's repaint after it another 30-50 ms under software OpenGL. :class:`ResultLayers`
therefore adds each layer over two event-loop turns with a pause between them: the first
builds the layer and its controls panel (neither is in the viewer yet), the second inserts the
layer and hands napari the prepared panel instead of letting it build one; the layer's canvas
overlays (a labels layer's brush and polygon outlines) are hidden while it is inserted and shown
in a third turn, where napari builds them. The new layer is not made the selected one (the
selection switch rebuilds the controls panel), and the window repaints in a later turn than the
one that added the layer (its updates are held back during the addition), so the GUI thread's
timer ticks between them (``benchmarks/gui_latency.py``).
The prepared panel uses napari's private controls container; where it is missing or has
changed (another napari version, a viewer without a window, napari's experimental "dynamic
layer controls"), layers are added the plain way in one turn.
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
#: keys of an item's kwargs that are layer properties, not constructor arguments: set on the
#: layer before it is inserted (a labels layer's ``contour`` set afterwards re-renders it
#: in the insertion turn)
LAYER_PROPERTIES = ("contour",)


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


def _split_properties(kwargs: dict) -> tuple[dict, dict]:
    """``kwargs`` without the :data:`LAYER_PROPERTIES`, and those properties."""
    return ({k: v for k, v in kwargs.items() if k not in LAYER_PROPERTIES},
            {k: v for k, v in kwargs.items() if k in LAYER_PROPERTIES})


def _closed(viewer) -> bool:
    """Whether the viewer's window was closed (napari deletes its ``_qt_window`` then)."""
    window = getattr(viewer, "window", None)
    return window is not None and getattr(window, "_qt_window", None) is None


def _hide_overlays(layer) -> list:
    """Hide the layer's visible canvas overlays (napari's private ``_overlays``); returns them.

    napari builds the vispy visuals of a layer's visible overlays when the layer is inserted
    (a labels layer's polygon and brush outlines: 30-50 ms here); hidden, they are built when
    shown again, a turn later.
    """
    overlays = getattr(layer, "_overlays", None)
    try:
        hidden = [overlay for overlay in overlays.values() if overlay.visible is True]
    except AttributeError:  # not napari's overlay container here
        return []
    for overlay in hidden:
        overlay.visible = False
    return hidden


def _controls_container(viewer):
    """napari's layer controls container (private), or None where a prepared panel cannot be handed to it."""
    if _closed(viewer):
        return None
    container = getattr(getattr(getattr(viewer, "window", None), "_qt_viewer", None), "controls", None)
    if container is None:
        return None
    if not (callable(getattr(container, "_add", None)) and isinstance(getattr(container, "widgets", None), dict)
            and callable(getattr(container, "addWidget", None))):
        return None
    try:
        from napari.settings import get_settings

        if get_settings().experimental.dynamic_layer_controls:  # napari builds no panel per layer then
            return None
    except (ImportError, AttributeError):
        return None
    return container


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
        self._prepared = None  # (item, layer, controls panel) built and waiting for its insertion turn
        self._hidden_overlays: list = []  # the prepared layer's overlays, shown a turn after its insertion
        self._showing = False  # the turn that shows them is scheduled
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
        waiting = list(self._queue) + ([self._prepared[0]] if self._prepared is not None else [])
        queued = {int(kw["metadata"][RESULT_KEY]["row"]) for _d, kw, _t, _a in waiting
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
        """Layers queued and not added yet (a layer whose overlays are still to be shown counts)."""
        return len(self._queue) + (self._prepared is not None) + self._showing

    def add_later(self, items, on_added=None) -> None:
        """Add ``(data, kwargs, layer_type, after)`` items, one per two event-loop turns.

        ``after(layer)`` (or None) runs right after its layer is added; ``on_added()`` once
        the queue is empty.
        """
        self._queue.extend(items)
        self._on_added = on_added
        QTimer.singleShot(ADD_PAUSE_MS, self._prepare_next)

    def _prepare_next(self) -> None:
        """First turn: build the next layer and, where napari allows, its controls panel."""
        if not self._queue or self._prepared is not None:
            return
        if _closed(self.viewer):
            self._abandon()
            return
        item = self._queue.popleft()
        data, kwargs, layer_type, _after = item
        container = _controls_container(self.viewer)
        if container is None:  # the plain way, in this turn
            self._insert(item, None, None)
            return
        from napari import layers as napari_layers
        from napari._qt.layer_controls.qt_layer_controls_container import create_qt_layer_controls

        try:
            kwargs, properties = _split_properties(kwargs)
            layer = getattr(napari_layers, layer_type.capitalize())(data, **kwargs)
            for key, value in properties.items():
                setattr(layer, key, value)
            controls = create_qt_layer_controls(layer)
            controls.ndisplay = self.viewer.dims.ndisplay
        except Exception:  # noqa: BLE001 - napari's own add_* reports it, and the queue goes on
            self._insert(item, None, None)
            return
        self._prepared = (item, layer, controls)
        self._hidden_overlays = _hide_overlays(layer)
        QTimer.singleShot(ADD_PAUSE_MS, self._insert_prepared)

    def _insert_prepared(self) -> None:
        """Second turn: insert the prepared layer (dropped if cleared or closed meanwhile)."""
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return
        item, layer, controls = prepared
        if _controls_container(self.viewer) is None:  # the window closed between the turns
            controls.deleteLater()
            self._abandon()
            return
        self._insert(item, layer, controls)

    def _insert(self, item, layer, controls) -> None:
        data, kwargs, layer_type, after = item
        window = _qt_window(self.viewer)
        held = window is not None and window.updatesEnabled()
        layers = self.viewer.layers
        activates = getattr(layers, "_activate_on_insert", None)
        try:
            if held:  # the repaint waits for the next turn (see the module text)
                window.setUpdatesEnabled(False)
            if activates is not None:  # napari's private switch; without it the layer is selected as usual
                layers._activate_on_insert = False
            if layer is None:
                kwargs, properties = _split_properties(kwargs)
                layer = getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
                for key, value in properties.items():
                    setattr(layer, key, value)
            else:
                container = _controls_container(self.viewer)
                # napari would build a second panel on insertion: give it the prepared one
                with layers.events.inserted.blocker(container._add):
                    layers.append(layer)
                container.addWidget(controls)
                container.widgets[layer] = controls
            if after is not None:
                after(layer)
        finally:
            if activates is not None:
                layers._activate_on_insert = activates
            if held:
                QTimer.singleShot(0, functools.partial(_resume_updates, weakref.ref(window)))
            hidden, self._hidden_overlays = self._hidden_overlays, []
            if hidden:  # a third turn
                self._showing = True
                QTimer.singleShot(ADD_PAUSE_MS, functools.partial(self._show_overlays, hidden))
            else:
                self._continue()

    def _show_overlays(self, overlays) -> None:
        """Third turn: napari builds the layer's canvas overlays (e.g. a labels layer's brush outline)."""
        self._showing = False
        for overlay in overlays:
            overlay.visible = True
        self._continue()

    def _continue(self) -> None:
        if _closed(self.viewer):
            self._abandon()
        elif self._queue:
            QTimer.singleShot(ADD_PAUSE_MS, self._prepare_next)
        elif self._on_added is not None:
            done, self._on_added = self._on_added, None
            try:
                done()
            except RuntimeError as err:  # the dock's widgets were deleted meanwhile (closed dock)
                if "deleted" not in str(err):
                    raise

    def _abandon(self) -> None:
        """The viewer closed: nothing more is added and nobody is told."""
        self._queue.clear()
        self._hidden_overlays = []
        self._on_added = None

    def clear(self) -> int:
        """Remove this dock's result layers (and anything still queued); returns how many were removed."""
        self._queue.clear()
        if self._prepared is not None:
            self._prepared[2].deleteLater()
            self._prepared = None
            self._hidden_overlays = []
        mine = self.layers()
        for layer in mine:
            self.viewer.layers.remove(layer)
        return len(mine)
