"""The "Histogen: annotate" dock: paint typed nuclei, tissue classes and point layouts.

Thin by design: it reads layers, calls one core function per action and puts the result
back as layers. Every algorithm lives in ``napari_histogen.core``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core.errors import HistogenInputError, UnknownClassError
from ..core.masks import (
    NucleiMask,
    as_label_image,
    class_counts,
    next_free_id,
    nuclei_from_type_map,
    nuclei_to_points,
    sync_classes,
    type_map_from_nuclei,
)
from ..core.provenance import make_provenance
from ..core.schemes import UNCLASSIFIED, ClassScheme, get_scheme, list_schemes, load_scheme, save_scheme
from ._guard import guarded, notify_info

NEXT_NUCLEUS_KEY = "n"
#: the class-map table's entry for "no choice yet"
CHOOSE = "(choose)"
#: the "unclassified ->" choice that leaves unclassified nuclei as they are
KEEP_UNCLASSIFIED = "keep"


class AnnotateWidget(QWidget):
    """Dock widget to create and edit nuclei masks, tissue masks and point layouts."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.current_class: int | None = None
        self._connected: set[int] = set()
        self._pending_refresh: set = set()
        # per nuclei layer (by id): every nucleus id -> the class it last had, erased ones too,
        # so a nucleus that comes back (undo, redo) gets its own class again
        self._class_memory: dict[int, dict[int, int]] = {}
        self._syncing = False  # our own layer updates emit set_data: not a user edit
        self._class_map_apply = None  # what the class-map table's Apply does

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)

        # -- open annotated data ------------------------------------------------------
        open_box = QGroupBox("Open annotated data")
        open_row = QHBoxLayout(open_box)
        self.index_spin = QSpinBox()
        self.index_spin.setRange(0, 10**7)
        self.index_spin.setToolTip("Patch index in a PanNuke/CoNIC .npy file")
        open_btn = QPushButton("Open file…")
        open_btn.setToolTip("Lizard/CoNSeP .mat, PanNuke/CoNIC .npy (patch = index), image + mask, OME-TIFF, GeoJSON")
        open_btn.clicked.connect(self._on_open_clicked)
        open_row.addWidget(QLabel("patch index"))
        open_row.addWidget(self.index_spin)
        open_row.addWidget(open_btn)
        layout.addWidget(open_box)

        # -- what to annotate ---------------------------------------------------------
        create_box = QGroupBox("New annotation")
        grid = QGridLayout(create_box)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image the new mask or point layout will cover (same size and scale)")
        self.scheme_combo = QComboBox()
        self.scheme_combo.setToolTip("Class scheme of the new annotation")
        load_scheme_btn = QPushButton("Load scheme…")
        load_scheme_btn.setToolTip("Add a class scheme from a .json/.yaml file")
        load_scheme_btn.clicked.connect(self._on_load_scheme_clicked)
        grid.addWidget(QLabel("image"), 0, 0)
        grid.addWidget(self.image_combo, 0, 1, 1, 2)
        grid.addWidget(QLabel("scheme"), 1, 0)
        grid.addWidget(self.scheme_combo, 1, 1)
        grid.addWidget(load_scheme_btn, 1, 2)
        self.new_nuclei_btn = QPushButton("Nuclei mask")
        self.new_tissue_btn = QPushButton("Tissue mask")
        self.new_points_btn = QPushButton("Point layout")
        self.new_nuclei_btn.clicked.connect(lambda: self.new_nuclei_mask())
        self.new_tissue_btn.clicked.connect(lambda: self.new_tissue_mask())
        self.new_points_btn.clicked.connect(lambda: self.new_point_layout())
        row = QHBoxLayout()
        for btn in (self.new_nuclei_btn, self.new_tissue_btn, self.new_points_btn):
            row.addWidget(btn)
        grid.addLayout(row, 2, 0, 1, 3)
        layout.addWidget(create_box)

        # -- palette --------------------------------------------------------------------
        palette_box = QGroupBox("Classes")
        palette_layout = QVBoxLayout(palette_box)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("Annotation layer the palette paints into")
        self.target_combo.currentIndexChanged.connect(self._on_target_changed)
        palette_layout.addWidget(self.target_combo)
        self.palette_grid = QGridLayout()
        palette_layout.addLayout(self.palette_grid)
        self.class_buttons: dict[int, QPushButton] = {}
        self.next_btn = QPushButton(f"Next nucleus, same class ({NEXT_NUCLEUS_KEY.upper()})")
        self.next_btn.clicked.connect(lambda: self.next_nucleus())
        palette_layout.addWidget(self.next_btn)
        reclass_row = QHBoxLayout()
        self.reclass_combo = QComboBox()
        self.reclass_btn = QPushButton("Set class of selected nucleus")
        self.reclass_btn.setToolTip("Pick a nucleus (picker tool, L), choose a class, click")
        self.reclass_btn.clicked.connect(lambda: self.reclassify_selected())
        reclass_row.addWidget(self.reclass_combo)
        reclass_row.addWidget(self.reclass_btn)
        palette_layout.addLayout(reclass_row)
        self.count_table = QTableWidget(0, 2)
        self.count_table.setHorizontalHeaderLabels(["class", "count"])
        self.count_table.verticalHeader().setVisible(False)
        self.count_table.horizontalHeader().setStretchLastSection(True)
        self.count_table.setMaximumHeight(180)
        palette_layout.addWidget(self.count_table)
        layout.addWidget(palette_box)

        # -- conversions ----------------------------------------------------------------
        convert_box = QGroupBox("Convert")
        conv = QGridLayout(convert_box)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Seed of the procedural nucleus shapes (same seed, same mask)")
        self.size_spin = QDoubleSpinBox()
        self.size_spin.setRange(0.2, 5.0)
        self.size_spin.setSingleStep(0.1)
        self.size_spin.setValue(1.0)
        self.size_spin.setToolTip("Scale of the class-typical nucleus areas")
        conv.addWidget(QLabel("seed"), 0, 0)
        conv.addWidget(self.seed_spin, 0, 1)
        conv.addWidget(QLabel("size ×"), 0, 2)
        conv.addWidget(self.size_spin, 0, 3)
        buttons = [
            ("Points → nuclei", lambda: self.points_to_nuclei(), "Grow a nucleus at each point of the selected point layout"),
            ("Nuclei → points", lambda: self.nuclei_to_points(), "Centroid of each nucleus, with its class"),
            ("Type map → nuclei", lambda: self.type_map_to_nuclei(), "Connected components per class of a painted type map"),
            ("Nuclei → type map", lambda: self.nuclei_to_type_map(), "Semantic map: each pixel gets its nucleus' class"),
        ]
        for k, (text, slot, tip) in enumerate(buttons):
            btn = QPushButton(text)
            btn.setToolTip(tip)
            btn.clicked.connect(slot)
            conv.addWidget(btn, 1 + k // 2, 2 * (k % 2), 1, 2)
        self.to_scheme_combo = QComboBox()
        self.to_scheme_combo.setToolTip("Scheme to give the selected nuclei mask or point layout (CoNSeP: the "
                                        "NASDM models' classes)")
        self.convert_scheme_btn = QPushButton("Convert classes")
        self.convert_scheme_btn.setToolTip("A copy of the selected layer with the classes of the chosen scheme "
                                           "(known equivalences; a table asks for the rest)")
        self.convert_scheme_btn.clicked.connect(lambda: self.convert_scheme())
        self.unclassified_combo = QComboBox()
        self.unclassified_combo.setToolTip("Class for the nuclei that have none (NASDM needs a class for every "
                                           "nucleus); 'keep' leaves them unclassified")
        self.to_scheme_combo.currentTextChanged.connect(self._on_to_scheme_changed)
        conv.addWidget(QLabel("to scheme"), 3, 0)
        conv.addWidget(self.to_scheme_combo, 3, 1)
        conv.addWidget(self.convert_scheme_btn, 3, 2, 1, 2)
        conv.addWidget(QLabel("unclassified →"), 4, 0)
        conv.addWidget(self.unclassified_combo, 4, 1)
        layout.addWidget(convert_box)

        # -- class map (GeoJSON classes the scheme lacks, conversions without a known equivalent)
        self.class_map_box = QGroupBox("Map classes")
        map_layout = QVBoxLayout(self.class_map_box)
        self.class_map_label = QLabel()
        self.class_map_label.setWordWrap(True)
        self.class_map_table = QTableWidget(0, 2)
        self.class_map_table.setHorizontalHeaderLabels(["class", "becomes"])
        self.class_map_table.verticalHeader().setVisible(False)
        self.class_map_table.horizontalHeader().setStretchLastSection(True)
        self.class_map_table.setMinimumHeight(120)
        map_buttons = QHBoxLayout()
        self.class_map_apply_btn = QPushButton("Apply")
        self.class_map_apply_btn.clicked.connect(lambda: self.apply_class_map())
        cancel_btn = QPushButton("Cancel")
        cancel_btn.clicked.connect(lambda: self.hide_class_map())
        map_buttons.addWidget(self.class_map_apply_btn)
        map_buttons.addWidget(cancel_btn)
        map_layout.addWidget(self.class_map_label)
        map_layout.addWidget(self.class_map_table)
        map_layout.addLayout(map_buttons)
        self.class_map_box.setVisible(False)
        layout.addWidget(self.class_map_box)

        # -- crop / tile ------------------------------------------------------------------
        crop_box = QGroupBox("Crop / tile")
        crop = QGridLayout(crop_box)
        self.crop_size_spin = QSpinBox()
        self.crop_size_spin.setRange(0, 8192)
        self.crop_size_spin.setSingleStep(32)
        self.crop_size_spin.setSpecialValueText("model patch")
        self.crop_size_spin.setSuffix(" px")
        self.crop_size_spin.setToolTip("Crop and tile size in the mask's pixels; 'model patch': the default NASDM "
                                       "model's patch, at the mask's scale")
        self.crop_rect_btn = QPushButton("Draw rectangle")
        self.crop_rect_btn.setToolTip("Add a Shapes layer in rectangle mode; drag the region to crop")
        self.crop_rect_btn.clicked.connect(lambda: self.draw_crop_rectangle())
        self.crop_btn = QPushButton("Crop")
        self.crop_btn.setToolTip("Crop the selected mask (and its image) to the last rectangle drawn, or to the "
                                 "size around the view's centre")
        self.crop_btn.clicked.connect(lambda: self.crop())
        self.tile_btn = QPushButton("Tile")
        self.tile_btn.setToolTip("Cut the selected mask (and its image) into tiles of the size, as new layers")
        self.tile_btn.clicked.connect(lambda: self.tile())
        self.crop_hide_check = QCheckBox("hide the originals")
        self.crop_hide_check.setChecked(True)
        crop.addWidget(QLabel("size"), 0, 0)
        crop.addWidget(self.crop_size_spin, 0, 1, 1, 2)
        crop.addWidget(self.crop_hide_check, 2, 0, 1, 3)
        crop.addWidget(self.crop_rect_btn, 1, 0)
        crop.addWidget(self.crop_btn, 1, 1)
        crop.addWidget(self.tile_btn, 1, 2)
        layout.addWidget(crop_box)

        # -- export ------------------------------------------------------------------------
        export_box = QGroupBox("Export nuclei mask")
        exp = QHBoxLayout(export_box)
        ome_btn = QPushButton("OME-TIFF…")
        ome_btn.setToolTip("Image + nuclei mask with µm/px, class table and provenance")
        ome_btn.clicked.connect(lambda: self._ask_and_export("ome"))
        geo_btn = QPushButton("QuPath GeoJSON…")
        geo_btn.clicked.connect(lambda: self._ask_and_export("geojson"))
        exp.addWidget(ome_btn)
        exp.addWidget(geo_btn)
        layout.addWidget(export_box)
        self.status = QLabel()  # the last message, whole (errors too: see _guard.show_in_status)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._refresh_layer_lists)
        self.viewer.layers.events.removed.connect(self._forget_layer)
        self.viewer.layers.events.removed.connect(self._refresh_layer_lists)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_schemes()
        self._refresh_layer_lists()

    # ------------------------------------------------------------------------------------
    # layer look-ups
    def _image_layers(self):
        return [layer for layer in self.viewer.layers if layer.__class__.__name__ == "Image"]

    def _annotation_layers(self):
        # a synthesis dock's result outlines are its output, not something to annotate
        return [layer for layer in self.viewer.layers if _layers.layer_kind(layer) in ("nuclei", "tissue", "points")
                and not layer.metadata.get("histogen_outline")]

    def _layer_by_name(self, name):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    @property
    def target_layer(self):
        return self._layer_by_name(self.target_combo.currentText())

    def _refresh_schemes(self, select: str | None = None):
        current = select or self.scheme_combo.currentText() or "consep"
        self.scheme_combo.blockSignals(True)
        self.scheme_combo.clear()
        self.scheme_combo.addItems(list(list_schemes()))
        self.scheme_combo.setCurrentText(current)
        self.scheme_combo.blockSignals(False)
        target = self.to_scheme_combo.currentText() or "consep"
        self.to_scheme_combo.clear()
        self.to_scheme_combo.addItems(list(list_schemes("nuclei")))
        self.to_scheme_combo.setCurrentText(target)

    def _on_to_scheme_changed(self, name: str = ""):
        """Offer the target's classes for unclassified nuclei; its 'other' class, when it has one."""
        self.unclassified_combo.clear()
        self.unclassified_combo.addItem(KEEP_UNCLASSIFIED)
        try:
            target = get_scheme(name) if name else None
        except HistogenInputError:
            target = None
        if target is None:
            return
        self.unclassified_combo.addItems(list(target.names))
        other = next((n for n in target.names if n.lower() == "other"), None)
        if other is not None:
            self.unclassified_combo.setCurrentText(other)

    def _refresh_layer_lists(self, event=None):
        for combo, layers in ((self.image_combo, self._image_layers()), (self.target_combo, self._annotation_layers())):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([layer.name for layer in layers])
            if current in [layer.name for layer in layers]:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        for layer in self._annotation_layers():
            self._connect_layer(layer)
        self._on_target_changed()

    def _forget_layer(self, event=None):
        """A removed layer's id may be reused by a new layer: drop what the dock keyed by it."""
        layer = getattr(event, "value", None)
        if layer is not None:
            self._connected.discard(id(layer))
            self._class_memory.pop(id(layer), None)
            self._pending_refresh.discard(layer)

    def _on_active_layer(self, event=None):
        layer = self.viewer.layers.selection.active
        if layer is not None and _layers.layer_kind(layer) in ("nuclei", "tissue", "points"):
            self.target_combo.setCurrentText(layer.name)

    def _connect_layer(self, layer):
        """Keep class tables and colours in sync with painting; add the next-nucleus key."""
        if id(layer) in self._connected:
            return
        self._connected.add(id(layer))
        kind = _layers.layer_kind(layer)
        if kind == "nuclei":
            self._class_memory[id(layer)] = _layers.classes_from_features(layer.features)
            layer.events.paint.connect(lambda e, lyr=layer: self._on_nuclei_painted(lyr))
            layer.events.data.connect(lambda e, lyr=layer: self._on_nuclei_painted(lyr))
            # napari's undo and redo (Ctrl+Z, Ctrl+Shift+Z) write the pixels back and send
            # neither `paint` nor `data`, only `set_data` from the refresh that follows
            layer.events.set_data.connect(lambda e, lyr=layer: self._on_nuclei_painted(lyr))
            layer.bind_key(NEXT_NUCLEUS_KEY, lambda lyr: self.next_nucleus(lyr), overwrite=True)
        elif kind == "points":
            layer.events.data.connect(lambda e, lyr=layer: self._recolor_points(lyr))

    # ------------------------------------------------------------------------------------
    # palette
    def _on_target_changed(self, *args):
        layer = self.target_layer
        scheme = _layers.layer_scheme(layer) if layer is not None else None
        while self.palette_grid.count():
            item = self.palette_grid.takeAt(0)
            if item.widget():
                # unparent first: a widget only marked for deletion stays painted on the box
                item.widget().setParent(None)
                item.widget().deleteLater()
        self.class_buttons = {}
        self.reclass_combo.clear()
        if scheme is None:
            self._update_counts()
            return
        for k, info in enumerate(scheme.classes):
            btn = QPushButton(info.name)
            btn.setCheckable(True)
            text = "black" if sum(info.color) > 380 else "white"
            btn.setStyleSheet(f"QPushButton {{background-color: {info.hex}; color: {text};}}"
                              "QPushButton:checked {border: 3px solid white; font-weight: bold;}")
            btn.setToolTip(f"{info.id}: {info.name}")
            btn.clicked.connect(lambda checked=False, cid=info.id: self.select_class(cid))
            self.palette_grid.addWidget(btn, k // 3, k % 3)
            self.class_buttons[info.id] = btn
            self.reclass_combo.addItem(info.name, info.id)
        kind = _layers.layer_kind(layer)
        self.next_btn.setEnabled(kind == "nuclei")
        self.reclass_btn.setEnabled(kind == "nuclei")
        self._update_counts()

    @guarded
    def select_class(self, class_id: int, layer=None):
        """Palette click: start painting ``class_id`` in the target layer.

        Nuclei layer: a new nucleus of that class (next free id). Tissue layer: paint the
        class. Point layout: new points take the class, and selected points are reclassified.
        """
        layer = layer or self.target_layer
        if layer is None:
            raise HistogenInputError("Create or select a nuclei mask, tissue mask or point layout first.")
        scheme = _layers.layer_scheme(layer)
        class_id = int(class_id)
        scheme.check_ids([class_id], what="palette selection", allow_unclassified=False)
        self.current_class = class_id
        for cid, btn in self.class_buttons.items():
            btn.setChecked(cid == class_id)
        kind = _layers.layer_kind(layer)
        if kind == "nuclei":
            self._start_nucleus(layer, class_id)
        elif kind == "tissue":
            layer.selected_label = class_id
            layer.mode = "paint"
        elif kind == "points":
            layer.feature_defaults = {"class": class_id}
            if layer.selected_data:
                features = layer.features.copy()
                features.loc[list(layer.selected_data), "class"] = class_id
                layer.features = features
            self._recolor_points(layer)
            layer.mode = "add"
        self.viewer.layers.selection.active = layer

    @contextmanager
    def _own_update(self):
        """Layer changes made by the dock itself (they emit set_data; no re-sync for them)."""
        before, self._syncing = self._syncing, True
        try:
            yield
        finally:
            self._syncing = before

    def _memory(self, layer) -> dict[int, int]:
        return self._class_memory.setdefault(id(layer), _layers.classes_from_features(layer.features))

    def _start_nucleus(self, layer, class_id):
        classes = _layers.classes_from_features(layer.features)
        memory = self._memory(layer)
        # an id never used before, erased ones included: an undo may bring those back
        new_id = next_free_id(np.asarray(layer.data), {**memory, **classes})
        classes[new_id] = class_id
        memory[new_id] = class_id
        scheme = _layers.layer_scheme(layer)
        with self._own_update():
            layer.features = _layers.features_from_classes(classes)
            layer.colormap = _layers.class_color_dict(classes, scheme)
        layer.selected_label = new_id
        if layer.mode not in ("paint", "fill", "polygon"):
            layer.mode = "paint"
        return new_id

    @guarded
    def next_nucleus(self, layer=None):
        """Shortcut N: a new nucleus of the class being painted."""
        layer = layer or self.target_layer
        if layer is None or _layers.layer_kind(layer) != "nuclei":
            raise HistogenInputError("Select a nuclei mask layer first.")
        classes = _layers.classes_from_features(layer.features)
        class_id = self.current_class or classes.get(int(layer.selected_label)) or _layers.layer_scheme(layer).ids[0]
        return self._start_nucleus(layer, class_id)

    @guarded
    def reclassify_selected(self, class_id: int | None = None, layer=None):
        """Give the selected nucleus (``layer.selected_label``) another class."""
        layer = layer or self.target_layer
        if layer is None or _layers.layer_kind(layer) != "nuclei":
            raise HistogenInputError("Select a nuclei mask layer first.")
        class_id = int(class_id if class_id is not None else self.reclass_combo.currentData())
        nucleus = int(layer.selected_label)
        classes = _layers.classes_from_features(layer.features)
        if nucleus not in classes:
            raise HistogenInputError(
                f"Nucleus {nucleus} is not in the mask; pick one with the picker tool (L) first."
            )
        classes[nucleus] = class_id
        self._memory(layer)[nucleus] = class_id
        with self._own_update():
            layer.features = _layers.features_from_classes(classes)
            layer.colormap = _layers.class_color_dict(classes, _layers.layer_scheme(layer))
        self._update_counts()

    def _on_nuclei_painted(self, layer):
        # napari emits `paint` before it writes the pixels when a single paint call is
        # not part of a mouse stroke, so the table is synced once the event loop is back.
        if self._syncing:
            return
        if not self._pending_refresh:
            QTimer.singleShot(0, self._flush_refresh)
        self._pending_refresh.add(layer)

    def _flush_refresh(self):
        layers, self._pending_refresh = self._pending_refresh, set()
        for layer in layers:
            if layer in self.viewer.layers:
                self.sync_nuclei_layer(layer)
        self._update_counts()

    def sync_nuclei_layer(self, layer) -> dict[int, int]:
        """Bring a nuclei layer's class table and colours in line with its pixels; the new table.

        Erased or painted-over nuclei leave the table (and the counts) but not the dock's
        memory, so a nucleus an undo brings back gets its own class again; an id painted that
        was never classed gets the palette's class.
        """
        default = self.current_class if self.current_class is not None else UNCLASSIFIED
        memory = self._memory(layer)
        old = _layers.classes_from_features(layer.features)
        new = sync_classes(np.asarray(layer.data), {**memory, **old}, default)
        memory.update(new)
        if new != old:
            scheme = _layers.layer_scheme(layer) or get_scheme("consep")
            with self._own_update():
                layer.features = _layers.features_from_classes(new)
                layer.colormap = _layers.class_color_dict(new, scheme)
        return new

    def _recolor_points(self, layer):
        scheme = _layers.layer_scheme(layer)
        if scheme is None or len(layer.data) == 0:
            return
        layer.face_color = _layers.point_colors(layer.features["class"].to_numpy(), scheme)
        self._update_counts()

    def class_count_rows(self, layer=None) -> list[tuple[str, int]]:
        """(class name, count) of the target layer: nuclei, points, or tissue pixels."""
        layer = layer or self.target_layer
        if layer is None:
            return []
        scheme = _layers.layer_scheme(layer)
        kind = _layers.layer_kind(layer)
        if kind == "nuclei":
            counts = class_counts(_layers.classes_from_features(layer.features), scheme)
        elif kind == "points":
            classes = layer.features["class"].to_numpy() if len(layer.data) else []
            counts = class_counts(dict(enumerate(classes)), scheme)
        else:
            values, n = np.unique(np.asarray(layer.data), return_counts=True)
            pixels = dict(zip(values.tolist(), n.tolist()))
            counts = {f"{c.name} (px)": int(pixels.get(c.id, 0)) for c in scheme.classes}
        return list(counts.items())

    def _update_counts(self):
        rows = self.class_count_rows()
        self.count_table.setRowCount(len(rows))
        layer = self.target_layer
        scheme = _layers.layer_scheme(layer) if layer is not None else None
        for r, (name, count) in enumerate(rows):
            item = QTableWidgetItem(name)
            if scheme is not None:
                try:
                    rgb = scheme.color(scheme.id_of(name.replace(" (px)", "")))
                    item.setBackground(QColor(*rgb))
                    item.setForeground(QColor("black" if sum(rgb) > 380 else "white"))
                except HistogenInputError:
                    pass
            self.count_table.setItem(r, 0, item)
            cell = QTableWidgetItem(str(count))
            cell.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            self.count_table.setItem(r, 1, cell)

    # ------------------------------------------------------------------------------------
    # creating layers
    def _reference_image(self):
        layer = self._layer_by_name(self.image_combo.currentText())
        if layer is None:
            raise HistogenInputError("Open an image first (File > Open, or File > Open Sample > Histogen).")
        shape = tuple(layer.data.shape[:2]) if getattr(layer, "rgb", False) else tuple(layer.data.shape[-2:])
        return layer, shape, _layers.layer_mpp(layer)

    def _scheme(self, kind: str) -> ClassScheme:
        name = self.scheme_combo.currentText()
        scheme = get_scheme(name)
        if scheme.kind != kind:
            fallback = "tissue" if kind == "tissue" else "consep"
            notify_info(f"Scheme '{name}' is a {scheme.kind} scheme; using '{fallback}' for this {kind} layer.")
            scheme = get_scheme(fallback)
        return scheme

    def _add(self, layer_data):
        data, kwargs, kind = layer_data
        adder = {"labels": self.viewer.add_labels, "points": self.viewer.add_points, "image": self.viewer.add_image}[kind]
        layer = adder(data, **kwargs)
        self._connect_layer(layer)
        self._refresh_layer_lists()
        self.target_combo.setCurrentText(layer.name)
        return layer

    @guarded
    def new_nuclei_mask(self, scheme=None):
        image, shape, mpp = self._reference_image()
        scheme = get_scheme(scheme) if scheme is not None else self._scheme("nuclei")
        mask = NucleiMask.create(np.zeros(shape, np.int32), {}, scheme, mpp=mpp)
        prov = make_provenance("new nuclei mask", image=image.name, scheme=scheme.name)
        layer = self._add(_layers.nuclei_layer_data(mask, f"{image.name} nuclei ({scheme.name})", provenance=prov))
        self.select_class(scheme.ids[0], layer)
        return layer

    @guarded
    def new_tissue_mask(self, scheme=None):
        image, shape, mpp = self._reference_image()
        scheme = get_scheme(scheme) if scheme is not None else self._scheme("tissue")
        prov = make_provenance("new tissue mask", image=image.name, scheme=scheme.name)
        layer = self._add(_layers.tissue_layer_data(np.zeros(shape, np.int32), scheme, f"{image.name} tissue",
                                                    mpp=mpp, provenance=prov))
        self.select_class(scheme.ids[0], layer)
        return layer

    @guarded
    def new_point_layout(self, scheme=None):
        image, shape, mpp = self._reference_image()
        scheme = get_scheme(scheme) if scheme is not None else self._scheme("nuclei")
        prov = make_provenance("new point layout", image=image.name, scheme=scheme.name, shape=list(shape))
        layer = self._add(_layers.points_layer_data(np.zeros((0, 2)), [], scheme, f"{image.name} points ({scheme.name})",
                                                    mpp=mpp, provenance=prov))
        self.select_class(scheme.ids[0], layer)
        return layer

    @guarded
    def _on_load_scheme_clicked(self, *args):
        path, _ = QFileDialog.getOpenFileName(self, "Load class scheme", "", "Scheme (*.json *.yaml *.yml)")
        if path:
            self.load_scheme_file(path)

    @guarded
    def load_scheme_file(self, path):
        """Add a user scheme: copied into the scheme folder so it is offered next time too."""
        scheme = load_scheme(path)
        save_scheme(scheme)
        self._refresh_schemes(select=scheme.name)
        notify_info(f"Scheme '{scheme.name}' with {len(scheme.classes)} classes added.")
        return scheme

    # ------------------------------------------------------------------------------------
    # opening files
    @guarded
    def _on_open_clicked(self, *args):
        path, _ = QFileDialog.getOpenFileName(
            self, "Open annotated data", "",
            "Annotations (*.mat *.npy *.npz *.ome.tif *.ome.tiff *.geojson *.png *.jpg *.tif *.tiff)")
        if path:
            self.open_annotated(path, int(self.index_spin.value()))

    @guarded
    def open_annotated(self, path, index: int | None = None, scheme=None, class_map=None):
        """Open any readable annotation file (``index``: patch of a dataset array) as layers.

        A GeoJSON file whose class names no scheme has (a QuPath export with classes of its
        own) opens the class-map table instead: each name gets a class of the dock's scheme
        (known equivalents prefilled); Apply opens the file with that map. Returns the new
        layers, or None when the table is waiting.
        """
        from ..core.io.dispatch import read_annotated

        try:
            item = read_annotated(path, index=index, scheme=scheme, class_map=class_map)
        except UnknownClassError:
            if class_map is not None or not str(path).lower().endswith((".geojson", ".json")):
                raise
            return self._ask_geojson_class_map(path, scheme)
        layers = [self._add(layer_data) for layer_data in _layers.annotated_to_layer_data(item)]
        notify_info(f"Opened {item.name}: " + (f"{item.nuclei.n_nuclei} nuclei ({item.nuclei.scheme.name})"
                                               if item.nuclei is not None else "no nuclei mask"))
        return layers

    # ------------------------------------------------------------------------------------
    # conversions (one core function each)
    def _require(self, kind, layer=None):
        layer = layer or self.target_layer
        if layer is None or _layers.layer_kind(layer) != kind:
            names = {"nuclei": "a nuclei mask", "points": "a point layout", "tissue": "a tissue mask"}
            raise HistogenInputError(f"Select {names.get(kind, kind)} in the dock's layer list first.")
        return layer

    @guarded
    def points_to_nuclei(self, layer=None, shape=None):
        from ..core.points import grow_nuclei_from_points

        layer = self._require("points", layer)
        scheme = _layers.layer_scheme(layer)
        mpp = _layers.layer_mpp(layer)
        if shape is None:
            shape = tuple(((layer.metadata or {}).get("histogen") or {}).get("provenance", {}).get("parameters", {}).get("shape") or ())
            if not shape:
                shape = self._reference_image()[1]
        seed, size = int(self.seed_spin.value()), float(self.size_spin.value())
        mask = grow_nuclei_from_points(np.asarray(layer.data), layer.features["class"].to_numpy() if len(layer.data) else [],
                                       tuple(shape), scheme, mpp=mpp or 0.25, seed=seed, size_scale=size)
        prov = make_provenance("points to nuclei", points_layer=layer.name, seed=seed, size_scale=size,
                               mpp=mpp or 0.25)
        return self._add(_layers.nuclei_layer_data(mask, f"{layer.name} → nuclei", provenance=prov))

    @guarded
    def nuclei_to_points(self, layer=None):
        layer = self._require("nuclei", layer)
        mask = _layers.nuclei_mask_from_layer(layer)
        points, classes, _ = nuclei_to_points(mask.instances, mask.classes)
        prov = make_provenance("nuclei to points", nuclei_layer=layer.name, shape=list(mask.shape))
        return self._add(_layers.points_layer_data(points, classes, mask.scheme, f"{layer.name} → points",
                                                   mpp=mask.mpp, provenance=prov))

    @guarded
    def type_map_to_nuclei(self, layer=None, scheme=None):
        """Instances from a Labels layer painted with class ids (any Labels layer)."""
        layer = layer or self.target_layer
        if layer is None or layer.__class__.__name__ != "Labels":
            raise HistogenInputError("Select a Labels layer painted with class ids first.")
        scheme = get_scheme(scheme) if scheme is not None else (
            _layers.layer_scheme(layer) if _layers.layer_kind(layer) != "tissue" and _layers.layer_scheme(layer)
            else self._scheme("nuclei"))
        instances, classes = nuclei_from_type_map(np.asarray(layer.data))
        mask = NucleiMask.create(instances, classes, scheme, mpp=_layers.layer_mpp(layer), name=f"type map '{layer.name}'")
        prov = make_provenance("type map to nuclei", layer=layer.name, connectivity=1)
        return self._add(_layers.nuclei_layer_data(mask, f"{layer.name} → nuclei", provenance=prov))

    @guarded
    def nuclei_to_type_map(self, layer=None):
        layer = self._require("nuclei", layer)
        mask = _layers.nuclei_mask_from_layer(layer)
        tmap = type_map_from_nuclei(mask.instances, mask.classes)
        kwargs = {"name": f"{layer.name} → types", "colormap": _layers.semantic_color_dict(mask.scheme), "opacity": 0.6,
                  "metadata": {"histogen": {"kind": "types", "scheme": mask.scheme.to_dict(), "mpp": mask.mpp,
                                            "provenance": make_provenance("nuclei to type map", layer=layer.name)}},
                  "scale": tuple(layer.scale)}
        layer_out = self.viewer.add_labels(as_label_image(tmap), **kwargs)
        self._refresh_layer_lists()
        return layer_out

    # ------------------------------------------------------------------------------------
    # class maps: one table for GeoJSON classes and for conversions without a known equivalent
    def show_class_map(self, names, target, suggestions: dict, on_apply, message: str):
        """Fill the class-map table: one row per class name, a combo of ``target``'s classes.

        ``suggestions`` (name -> target class name or None) preselects; ``on_apply`` gets the
        chosen map ``{name: class name}`` when Apply is clicked.
        """
        target = get_scheme(target)
        self.class_map_table.setRowCount(len(names))
        for row, name in enumerate(names):
            self.class_map_table.setItem(row, 0, QTableWidgetItem(str(name)))
            combo = QComboBox()
            combo.addItems([CHOOSE, *target.names, "unclassified"])
            suggested = suggestions.get(name)
            if suggested:
                combo.setCurrentText(suggested)
            self.class_map_table.setCellWidget(row, 1, combo)
        self.class_map_label.setText(message)
        self.class_map_box.setTitle(f"Map classes to '{target.name}'")
        self._class_map_apply = on_apply
        self.class_map_box.setVisible(True)
        self.status.setText(message)

    def class_map_choice(self) -> dict[str, str]:
        """The table's map ``{name: class name}``; rows still at "(choose)" are left out."""
        out = {}
        for row in range(self.class_map_table.rowCount()):
            combo = self.class_map_table.cellWidget(row, 1)
            if combo is not None and combo.currentText() != CHOOSE:
                out[self.class_map_table.item(row, 0).text()] = combo.currentText()
        return out

    def set_class_map_choice(self, name: str, class_name: str) -> None:
        """Choose ``class_name`` for the row of ``name`` (what a user does with the combo)."""
        for row in range(self.class_map_table.rowCount()):
            if self.class_map_table.item(row, 0).text() == name:
                combo = self.class_map_table.cellWidget(row, 1)
                index = combo.findText(class_name)
                if index < 0:
                    raise HistogenInputError(f"'{class_name}' is not a choice for {name}.")
                combo.setCurrentIndex(index)
                return
        raise HistogenInputError(f"The class table has no row '{name}'.")

    def hide_class_map(self):
        self.class_map_box.setVisible(False)
        self._class_map_apply = None

    @guarded
    def apply_class_map(self):
        """Apply button: run the waiting action with the table's map."""
        if self._class_map_apply is None:
            raise HistogenInputError("No class map is waiting.")
        names = [self.class_map_table.item(r, 0).text() for r in range(self.class_map_table.rowCount())]
        chosen = self.class_map_choice()
        missing = [n for n in names if n not in chosen]
        if missing:
            raise HistogenInputError(f"Choose a class for {', '.join(missing)} in the table (or 'unclassified').")
        action = self._class_map_apply
        result = action(chosen)
        if result is not None:
            self.hide_class_map()
        return result

    def _ask_geojson_class_map(self, path, scheme):
        from ..core.io.geojson import geojson_class_names
        from ..core.scheme_maps import suggest_class_map

        target = get_scheme(scheme) if scheme is not None else self._scheme("nuclei")
        names = geojson_class_names(path)
        message = (f"{Path(path).name} has classes that scheme '{target.name}' lacks: choose a class for each "
                   "(known equivalents are filled in), then Apply.")
        self.show_class_map(names, target, suggest_class_map(names, target),
                            lambda chosen: self.open_annotated(path, scheme=target, class_map=chosen), message)
        notify_info(message)
        return None

    # ------------------------------------------------------------------------------------
    # scheme conversion
    @guarded
    def convert_scheme(self, layer=None, target=None, overrides=None, unclassified: str | None = KEEP_UNCLASSIFIED):
        """A copy of a nuclei mask or point layout with the classes of scheme ``target``.

        Classes with a known equivalent (same name, or e.g. NuCLS ``tumor_any`` -> CoNSeP
        ``epithelial``) convert at once; otherwise the class-map table asks for the rest and
        Apply converts. Unclassified nuclei take the class ``unclassified`` (default: the
        dock's "unclassified →" choice when ``target`` is not given, else keep them).
        Returns the new layer (None while the table waits).
        """
        from ..core.scheme_maps import convert_class_ids, convert_nuclei_scheme, map_schemes

        layer = layer or self.target_layer
        kind = _layers.layer_kind(layer) if layer is not None else None
        if kind not in ("nuclei", "points"):
            raise HistogenInputError("Select a nuclei mask or point layout in the dock's layer list first.")
        if target is None:
            target = self.to_scheme_combo.currentText() or "consep"
            unclassified = self.unclassified_combo.currentText()
        target = get_scheme(target)
        unclassified = None if unclassified in (None, "", KEEP_UNCLASSIFIED) else unclassified
        source = _layers.layer_scheme(layer)
        if kind == "nuclei":
            mask = _layers.nuclei_mask_from_layer(layer)
            values = [int(c) for c in mask.classes.values()]
        else:
            values = [int(c) for c in layer.features["class"].tolist()] if len(layer.data) else []
        used = set(values)
        mapping = map_schemes(source, target, overrides)
        missing = [source.name_of(c) for c in sorted(used - {UNCLASSIFIED}) if c not in mapping.ids]
        if missing and overrides is None:
            names = [source.name_of(c) for c in sorted(used - {UNCLASSIFIED})]
            message = (f"No '{target.name}' class is known for {', '.join(missing)}: choose one for each, then Apply.")
            self.show_class_map(names, target, mapping.names(),
                                lambda chosen: self.convert_scheme(layer, target, chosen, unclassified), message)
            notify_info(message)
            return None
        name = f"{layer.name} → {target.name}"
        prov = make_provenance("convert scheme", layer=layer.name, source=source.name, target=target.name,
                               mapping=mapping.names(), unclassified=unclassified)
        if kind == "nuclei":
            converted = convert_nuclei_scheme(mask, target, overrides, unclassified=unclassified)
            data = _layers.nuclei_layer_data(converted, name, provenance=prov)
        else:
            classes = convert_class_ids(layer.features["class"].to_numpy() if len(layer.data) else [], source,
                                        target, overrides, unclassified=unclassified)
            data = _layers.points_layer_data(np.asarray(layer.data), classes, target, name,
                                             mpp=_layers.layer_mpp(layer), provenance=prov)
        data[1]["translate"] = tuple(layer.translate)
        data[1]["scale"] = tuple(layer.scale)
        new = self._add(data)
        layer.visible = False  # the copy lies exactly on it
        n_unclassified = values.count(UNCLASSIFIED)
        note = ""
        if n_unclassified:
            note = (f" {n_unclassified} unclassified nuclei → {unclassified}." if unclassified else
                    f" {n_unclassified} nuclei stay unclassified (NASDM needs a class for each).")
        self.status.setText(f"'{new.name}': {source.name} → {target.name} ("
                            + ", ".join(f"{a} → {b}" for a, b in mapping.names().items()) + ")." + note)
        return new

    # ------------------------------------------------------------------------------------
    # crop / tile
    def _crop_source(self, layer=None):
        """The mask layer to crop and the image layer on the same pixel grid (or None)."""
        layer = layer or self.target_layer
        if layer is None or _layers.layer_kind(layer) not in ("nuclei", "tissue"):
            raise HistogenInputError("Select a nuclei or tissue mask in the dock's layer list first.")
        shape = tuple(np.asarray(layer.data).shape[-2:])
        grid = (tuple(np.round(layer.scale[-2:], 9)), tuple(np.round(layer.translate[-2:], 9)))

        def same_grid(image):
            img_shape = tuple(image.data.shape[:2]) if getattr(image, "rgb", False) else tuple(image.data.shape[-2:])
            return img_shape == shape and (tuple(np.round(image.scale[-2:], 9)),
                                           tuple(np.round(image.translate[-2:], 9))) == grid

        preferred = self._layer_by_name(self.image_combo.currentText())
        candidates = ([preferred] if preferred is not None else []) + self._image_layers()
        image = next((im for im in candidates if same_grid(im)), None)
        return layer, shape, image

    def _crop_size(self, layer) -> int:
        """The size box: pixels, or (0, 'model patch') the default NASDM model's patch at the mask's scale."""
        size = int(self.crop_size_spin.value())
        if size > 0:
            return size
        from ..core.engines.nasdm import read_model_config

        config = read_model_config(None)
        if config is None:
            return 256
        mpp = _layers.layer_mpp(layer)
        return max(1, int(round(config.image_size * (config.mpp / mpp if mpp else 1.0))))

    def _rectangle_box(self, layer, shape):
        """The box of the last rectangle in the top Shapes layer, in ``layer``'s pixels (or None)."""
        from ..core.crops import box_from_corners

        shapes = [lyr for lyr in self.viewer.layers if lyr.__class__.__name__ == "Shapes" and len(lyr.data)]
        if not shapes:
            return None
        top = shapes[-1]
        corners = np.asarray(top.data[-1])[:, -2:]
        world = np.array([top.data_to_world(c) for c in corners])
        pixels = np.array([layer.world_to_data(w) for w in world])[:, -2:]
        return box_from_corners(pixels, shape)

    @guarded
    def draw_crop_rectangle(self):
        """Add (or select) the 'crop rectangle' Shapes layer in rectangle mode."""
        name = "crop rectangle"
        layer = self._layer_by_name(name)
        if layer is None:
            layer = self.viewer.add_shapes(name=name, edge_color="yellow", face_color="transparent", edge_width=2)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.status.setText("Drag a rectangle over the mask, then Crop.")
        return layer

    def _add_crops(self, mask_layer, image_layer, boxes, label):
        """New layers for ``boxes`` of the mask (and its image), in place; the new mask layers."""
        from ..core.crops import crop_array, crop_nuclei

        kind = _layers.layer_kind(mask_layer)
        scale = np.asarray(mask_layer.scale[-2:], dtype=float)
        translate = np.asarray(mask_layer.translate[-2:], dtype=float)
        mask = _layers.nuclei_mask_from_layer(mask_layer) if kind == "nuclei" else None
        scheme = _layers.layer_scheme(mask_layer)
        mpp = _layers.layer_mpp(mask_layer)
        new_masks = []
        for box in boxes:
            row0, col0, row1, col1 = box
            tag = label(box)
            place = {"translate": tuple(translate + scale * (row0, col0)), "scale": tuple(scale)}
            prov = make_provenance("crop", layer=mask_layer.name, box=[row0, col0, row1, col1],
                                   crop_offset=[row0, col0], shape=[row1 - row0, col1 - col0])
            if image_layer is not None:
                data = crop_array(np.asarray(image_layer.data), box)
                meta = {"histogen": {**((image_layer.metadata or {}).get("histogen") or {"kind": "image"}),
                                     "provenance": make_provenance("crop", layer=image_layer.name,
                                                                   box=[row0, col0, row1, col1],
                                                                   crop_offset=[row0, col0])}}
                self.viewer.add_image(data, name=f"{image_layer.name} {tag}", rgb=getattr(image_layer, "rgb", None),
                                      metadata=meta, units=tuple(image_layer.units), **place)
            if kind == "nuclei":
                out = _layers.nuclei_layer_data(crop_nuclei(mask, box), f"{mask_layer.name} {tag}", provenance=prov)
            else:
                out = _layers.tissue_layer_data(crop_array(np.asarray(mask_layer.data), box), scheme,
                                                f"{mask_layer.name} {tag}", mpp=mpp, provenance=prov)
            out[1].update(place)
            new_masks.append(self._add(out))
        if self.crop_hide_check.isChecked():
            for lyr in (mask_layer, image_layer):
                if lyr is not None:
                    lyr.visible = False
            for lyr in self.viewer.layers:
                if lyr.__class__.__name__ == "Shapes" and lyr.name == "crop rectangle":
                    lyr.visible = False
        return new_masks

    @guarded
    def crop(self, layer=None, box=None):
        """Crop the selected mask (and the image on its pixel grid) to a box, as new layers in place.

        The box: ``box`` (row0, col0, row1, col1) when given, else the last rectangle of the top
        Shapes layer, else the size around the view's centre. Returns the new mask layer.
        """
        from ..core.crops import box_around

        layer, shape, image = self._crop_source(layer)
        if box is None:
            box = self._rectangle_box(layer, shape)
        if box is None:
            scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; viewer.camera before
            camera = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
            centre = np.asarray(layer.world_to_data(np.asarray(camera.center)[-layer.ndim:]))[-2:]
            box = box_around(centre, self._crop_size(layer), shape)
        new = self._add_crops(layer, image, [tuple(int(v) for v in box)],
                              lambda b: f"[{b[0]}:{b[2]}, {b[1]}:{b[3]}]")[0]
        self.status.setText(f"Cropped '{layer.name}' to rows {box[0]}-{box[2]}, columns {box[1]}-{box[3]} "
                            f"({box[3] - box[1]}x{box[2] - box[0]} px)" + (f" with '{image.name}'." if image else "."))
        return new

    @guarded
    def tile(self, layer=None, size: int | None = None):
        """Cut the selected mask (and its image) into tiles of ``size`` px (default: the size box)."""
        from ..core.crops import tile_boxes

        layer, shape, image = self._crop_source(layer)
        size = int(size) if size else self._crop_size(layer)
        boxes = tile_boxes(shape, size)
        if len(boxes) > 64:
            raise HistogenInputError(f"{len(boxes)} tiles of {size} px would be {len(boxes)} layers; choose a larger "
                                     "size (at most 64 tiles), or use histogen synthesize --tile for whole folders.")
        new = self._add_crops(layer, image, boxes, lambda b: f"tile [{b[0]}:{b[2]}, {b[1]}:{b[3]}]")
        self.status.setText(f"Cut '{layer.name}' into {len(new)} tiles of {size} px.")
        return new

    # ------------------------------------------------------------------------------------
    # export
    @guarded
    def _ask_and_export(self, fmt):
        suffix = {"ome": ("OME-TIFF (*.ome.tif)", ".ome.tif"), "geojson": ("GeoJSON (*.geojson)", ".geojson")}[fmt]
        layer = self._require("nuclei")
        path, _ = QFileDialog.getSaveFileName(self, "Export nuclei mask", f"{layer.name}{suffix[1]}", suffix[0])
        if path:
            self.export(path, fmt)

    @guarded
    def export(self, path, fmt: str = "ome", layer=None):
        """Write the nuclei mask (and its image, for OME-TIFF) to ``path``."""
        from ..core.io.geojson import write_geojson
        from ..core.io.ome_tiff import write_ome_tiff

        layer = self._require("nuclei", layer)
        mask = _layers.nuclei_mask_from_layer(layer)
        prov = make_provenance("export", layer=layer.name, format=fmt)
        if fmt == "geojson":
            out = write_geojson(path, mask, provenance=prov)
        else:
            image = None
            image_layer = self._layer_by_name(self.image_combo.currentText())
            if image_layer is not None and getattr(image_layer, "rgb", False) and image_layer.data.shape[:2] == mask.shape:
                from ..core.images import to_rgb_uint8

                image = to_rgb_uint8(np.asarray(image_layer.data), name=f"image '{image_layer.name}'")
            out = write_ome_tiff(path, image, mask, provenance=prov)
        notify_info(f"Saved {mask.n_nuclei} nuclei to {Path(out).name}.")
        return out
