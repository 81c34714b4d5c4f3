"""The NASDM dock: synthesize H&E patches that follow a painted nuclei mask.

Thin by design: it reads the mask layer, runs :meth:`NasdmEngine.run` in a background
thread (progress bar, Cancel; the model loads there too), and adds each result as an image
layer in the results grid beside its mask (one row per run, one column per seed), with the
mask's outline on top (toggleable). Nothing is added when a run is cancelled or fails;
errors show in the status line and as notifications. Opening the dock imports no torch:
"auto" steps are resolved by the engine in the worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QSpinBox,
)

from .. import _layers
from ..core.engines.base import request_defaults
from ..core.engines.nasdm import VARIANCES, NasdmRequest
from ..core.errors import HistogenInputError
from ._guard import guarded, notify_error, notify_info  # noqa: F401 - notify_error: tests patch it here
from ._results import GAP_PX, anchor_units
from ._runner import EngineDock

RESULT_GAP_PX = GAP_PX  # space between a mask and its results on the canvas
MODEL_VARIANCE = "model default"
AUTO_STEPS_TEXT = "auto (the model's)"


class NasdmWidget(EngineDock):
    """Dock widget: nuclei mask layer + model + settings -> synthetic patches."""

    ENGINE = "nasdm"
    RUN_TITLE = "NASDM synthesis"
    FAILED_TEXT = "Synthesis failed"
    OOM_HINT = "Out of memory: use fewer samples, or a GPU."

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.outline_layers: list = []
        d = request_defaults(NasdmRequest)

        layout = self._begin_layout()
        form = QFormLayout()
        self.mask_combo = QComboBox()
        self.mask_combo.setToolTip("Nuclei mask (Labels layer with a class per nucleus) to synthesize from")
        form.addRow("nuclei mask", self.mask_combo)

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The embedded default, a model from the cache folder, or a checkpoint file")
        self._add_model_row(form, self.model_combo, "Checkpoint…",
                            "Choose a NASDM .safetensors model (e.g. a training run's model/nasdm.safetensors)")
        self.model_combo.currentIndexChanged.connect(lambda _i: self._update_model_info())

        self.guidance_spin = QDoubleSpinBox()
        self.guidance_spin.setRange(0.0, 20.0)
        self.guidance_spin.setSingleStep(0.25)
        self.guidance_spin.setValue(d["guidance"] if d["guidance"] is not None else 1.5)  # then the model's
        self.guidance_spin.setToolTip("Classifier-free guidance scale s (0 = conditional model only)")
        form.addRow("guidance", self.guidance_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1000)
        self.steps_spin.setSpecialValueText(AUTO_STEPS_TEXT)  # 0: the engine decides on its device
        self.steps_spin.setValue(d["steps"] or 0)
        self.steps_spin.setToolTip("Denoising steps (1000 = full chain; fewer is faster). Auto: the model's "
                                   "recommendation (latent models: their validated count; pixel models: 250 with "
                                   "a GPU, 75 on CPU)")
        form.addRow("steps", self.steps_spin)
        self.variance_combo = QComboBox()
        self.variance_combo.addItems([MODEL_VARIANCE, *VARIANCES])
        if d["variance"] is not None:
            self.variance_combo.setCurrentText(d["variance"])
        self.variance_combo.setToolTip("Variance of each denoising step: the model's recommended one, the learned "
                                       "one, or the fixed posterior variance (for models whose variance head is "
                                       "not trained yet)")
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 64)
        self.samples_spin.setValue(d["n_samples"])
        form.addRow("samples", self.samples_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(d["seed"])
        self.seed_spin.setToolTip("Sample k uses seed + k; the same seed gives the same image on the same device")
        form.addRow("seed", self.seed_spin)
        layout.addLayout(form)

        advanced = QFormLayout()
        advanced.addRow("variance", self.variance_combo)
        self.device_combo = self._device_combo()
        advanced.addRow("device", self.device_combo)
        self.advanced.body.addLayout(advanced)

        self._add_run_controls(layout, "Synthesize")
        self.outline_check = QCheckBox("Show mask outlines on results")
        self.outline_check.setChecked(True)
        self.outline_check.toggled.connect(self._on_outline_toggled)
        layout.addWidget(self.outline_check)
        self._add_status(layout)

        self._refresh_models()
        self._refresh_masks()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda _e: self._refresh_masks())
        self._finish_layout()

    def _persisted_controls(self) -> dict:
        return {"model": self.model_combo, "guidance": self.guidance_spin, "steps": self.steps_spin,
                "samples": self.samples_spin, "seed": self.seed_spin, "variance": self.variance_combo,
                "device": self.device_combo, "outlines": self.outline_check}

    def _select(self, combo, key: str, value: str) -> None:
        if combo is self.model_combo and combo.findData(value) < 0 and Path(value).is_file():
            self.set_model(value)  # a checkpoint file chosen in an earlier session
            return
        super()._select(combo, key, value)

    # -- choices ------------------------------------------------------------------------
    def _refresh_masks(self) -> None:
        current = self.mask_combo.currentText()
        self.mask_combo.clear()
        names = [layer.name for layer in self.viewer.layers
                 if layer.__class__.__name__ == "Labels" and _layers.layer_kind(layer) in (None, "nuclei")
                 and not layer.metadata.get("histogen_outline")]
        self.mask_combo.addItems(names)
        if current in names:
            self.mask_combo.setCurrentText(current)

    def _refresh_models(self) -> None:
        from ..core.models.registry import list_nasdm_models

        self.model_combo.clear()
        for name, path in list_nasdm_models().items():
            self.model_combo.addItem("default (embedded)" if name == "default" else name, str(path) if name != "default" else "default")
        if self.model_combo.count() == 0:
            self.model_info.setText("No model installed: choose a checkpoint file.")

    def set_model(self, path) -> None:
        """Use the NASDM model at ``path`` (adds it to the model list)."""
        path = str(path)
        index = self.model_combo.findData(path)
        if index < 0:
            self.model_combo.addItem(Path(path).name, path)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    @guarded
    def _on_browse_clicked(self, *_):
        path, _ = QFileDialog.getOpenFileName(self, "NASDM model", "", "NASDM model (*.safetensors *.json)")
        if path:
            self.set_model(path)

    def _model_spec(self) -> str:
        spec = self.model_combo.currentData()
        if not spec:
            raise HistogenInputError("Choose a NASDM model first (Checkpoint… to pick a .safetensors file).")
        return str(spec)

    def _update_model_info(self) -> None:
        spec = self.model_combo.currentData()
        if not spec:
            return
        from ..core.engines import nasdm as engine_module

        try:
            self.model_info.setText(engine_module.model_summary(spec))
            self._apply_recommended(engine_module, spec)
        except (HistogenInputError, OSError, KeyError, ValueError) as err:
            self.model_info.setText(str(err))

    def _apply_recommended(self, engine_module, spec) -> None:
        """Steps and guidance the chosen model recommends (where the request leaves them to the model).

        Steps that depend on the device (pixel models: more on a GPU) stay "auto" when the
        device is "auto": the engine resolves them in the worker, so the GUI never imports torch.
        """
        recommend = getattr(engine_module, "recommended_settings", None)
        config = engine_module.read_model_config(spec)
        if recommend is None or config is None:
            return
        device = self.device_combo.currentText()
        rec = recommend(config, "cpu" if device == "auto" else device)
        d = request_defaults(NasdmRequest)
        if d.get("guidance") is None and rec.get("guidance") is not None:
            self.guidance_spin.setValue(float(rec["guidance"]))
        if d.get("steps") is None and rec.get("steps") is not None:
            device_free = getattr(config, "family", "pixel") == "latent" or device != "auto"
            self.steps_spin.setValue(int(rec["steps"]) if device_free else 0)

    # -- running ------------------------------------------------------------------------
    def _mask_layer(self):
        name = self.mask_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise HistogenInputError("Choose a nuclei mask layer (paint one with the annotate dock, or open a mask).")
        return self.viewer.layers[name]

    def request(self) -> NasdmRequest:
        """The request the dock's mask layer and controls describe."""
        layer = self._mask_layer()
        nuclei = _layers.nuclei_mask_from_layer(layer)
        if nuclei.n_nuclei == 0:
            raise HistogenInputError(f"The mask '{layer.name}' is empty: paint nuclei first.")
        variance = self.variance_combo.currentText()
        return NasdmRequest(nuclei=nuclei, n_samples=self.samples_spin.value(), steps=self.steps_spin.value() or None,
                            guidance=self.guidance_spin.value(), seed=self.seed_spin.value(),
                            variance=None if variance == MODEL_VARIANCE else variance)

    @guarded
    def run(self):
        """Start a synthesis run in the background (returns at once)."""
        layer = self._mask_layer()
        request = self.request()
        return self._start_run(request, model=self._model_spec(), device=self.device_combo.currentText(),
                               context=layer,
                               status=f"Synthesizing {request.n_samples} sample(s) for '{layer.name}'…")

    @guarded
    def _on_finished(self, results, mask_layer) -> None:
        if results is None:
            self.status.setText("Cancelled; nothing was added.")
            notify_info("NASDM synthesis cancelled; nothing was added.")
            return
        self.last_results = list(results)
        notes = "; ".join(dict.fromkeys(n for r in results for n in r.notes))
        text = (f"Added {len(results)} synthetic patch(es) beside '{mask_layer.name}'." + (f" {notes}" if notes else ""))
        self.status.setText(f"Adding {len(results)} synthetic patch(es) beside '{mask_layer.name}'…")
        self._add_result_layers(results, mask_layer, on_added=lambda: self.status.setText(text))

    def _add_result_layers(self, results, mask_layer, on_added=None) -> None:
        """Queue the results in the next free row of the grid beside ``mask_layer`` (added one per event-loop turn)."""
        first = results[0].mask
        mpp = first.mpp or _layers.layer_mpp(mask_layer) or 1.0
        units = anchor_units(mask_layer)
        mask_h, mask_w = np.shape(mask_layer.data)[-2:]
        mask_scale = np.asarray(mask_layer.scale, dtype=float)[-2:]
        cell = (max(first.shape[0] * mpp, mask_h * mask_scale[0]) + RESULT_GAP_PX * mpp,
                max(first.shape[1] * mpp, mask_w * mask_scale[1]) + RESULT_GAP_PX * mpp)
        row = self.results.next_row(mask_layer.name)
        items = []
        for k, result in enumerate(results):
            seed = result.provenance["parameters"]["seed"]
            name = f"NASDM s{seed} of {mask_layer.name}"
            offset = self.results.cell_origin(mask_layer, cell, row, k + 1)
            data, kwargs, _ = _layers.image_layer_data(result.image, name, mpp=mpp, provenance=result.provenance)
            kwargs.update(scale=(mpp, mpp), translate=offset)
            if units is not None:
                kwargs["units"] = units
            items.append((data, self.results.tag(kwargs, mask_layer.name, row), "image", None))
            outline_kwargs = dict(
                name=f"{name} mask", translate=offset, scale=(mpp, mpp), opacity=0.8,
                colormap=_layers.class_color_dict(result.nuclei.classes, result.nuclei.scheme),
                visible=self.outline_check.isChecked(),
                metadata={"histogen_outline": True, "histogen": {"kind": "nuclei", "scheme": result.nuclei.scheme.to_dict(),
                                                                 "mpp": mpp, "provenance": result.provenance}},
                features=_layers.features_from_classes(result.nuclei.classes))
            if units is not None:
                outline_kwargs["units"] = units
            items.append((result.nuclei.instances, self.results.tag(outline_kwargs, mask_layer.name, row), "labels",
                          self._keep_outline))
        self.results.add_later(items, on_added)

    def _keep_outline(self, layer) -> None:
        layer.contour = 1
        self.outline_layers.append(layer)

    def _on_outline_toggled(self, checked: bool) -> None:
        self.outline_layers = [layer for layer in self.outline_layers if layer in self.viewer.layers]
        for layer in self.outline_layers:
            layer.visible = checked
