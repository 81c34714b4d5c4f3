"""The NASDM dock: synthesize H&E patches that follow a painted nuclei mask.

Thin by design: it reads the mask layer, runs :meth:`NasdmEngine.run` in a background
thread (progress bar, Cancel; the model loads there too), and adds each result as an image
layer in the results grid beside its mask (one row per run, one column per seed), with the
mask's outline on top (toggleable). Nothing is added when a run is cancelled or fails;
errors show in the status line and as notifications. Opening the dock imports no torch:
"auto" steps and guidance are the model's recommendation, resolved by the engine in the
worker; the info line under the model says what they are (read in a thread).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal
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
AUTO_TEXT = "auto (the model's)"
AUTO_GUIDANCE = -0.25  # the guidance spin box's minimum, shown as AUTO_TEXT


class _InfoRelay(QObject):
    """Carries the model info from its thread to the GUI thread (queued signal)."""

    done = Signal(object, str, str)


class NasdmWidget(EngineDock):
    """Dock widget: nuclei mask layer + model + settings -> synthetic patches."""

    ENGINE = "nasdm"
    RUN_TITLE = "NASDM synthesis"
    FAILED_TEXT = "Synthesis failed"
    OOM_HINT = "Out of memory: use fewer samples, or a GPU."

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.outline_layers: list = []
        self._info_token = None
        self._info_busy = False
        self._info_relay = _InfoRelay()
        self._info_relay.done.connect(self._on_model_info)
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
        self.guidance_spin.setRange(AUTO_GUIDANCE, 20.0)  # the minimum stands for "auto"
        self.guidance_spin.setSingleStep(0.25)
        self.guidance_spin.setSpecialValueText(AUTO_TEXT)
        self.guidance_spin.setValue(d["guidance"] if d["guidance"] is not None else AUTO_GUIDANCE)
        self.guidance_spin.setToolTip("Classifier-free guidance scale s (0 = conditional model only). Auto: the "
                                      "model's recommendation (shown under the model)")
        form.addRow("guidance", self.guidance_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1000)
        self.steps_spin.setSpecialValueText(AUTO_TEXT)  # 0: the engine decides on its device
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
        self.device_combo.currentIndexChanged.connect(lambda _i: self._update_model_info())  # "auto" may change
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
        """The model's classes and scale at once (file reads only); what "auto" means for it, from a thread.

        The recommendation may import torch (latent models' sampler defaults): that runs off
        the GUI thread, and only the text comes back.
        """
        spec = self.model_combo.currentData()
        if not spec:
            return
        from ..core.engines import nasdm as engine_module

        try:
            summary = engine_module.model_summary(spec)
        except (HistogenInputError, OSError, KeyError, ValueError) as err:
            self.model_info.setText(str(err))
            return
        self.model_info.setText(summary)
        self._info_token = token = object()
        device = self.device_combo.currentText()
        relay = self._info_relay

        def work():
            try:
                config = engine_module.read_model_config(spec)
                training = getattr(config, "training", None) or {}
                if "default_steps" in training and "default_guidance" in training:  # recorded: no torch needed
                    rec = {"steps": training["default_steps"], "guidance": float(training["default_guidance"])}
                else:
                    rec = {} if config is None else engine_module.recommended_settings(
                        config, "cpu" if device == "auto" else device)
                steps = rec.get("steps")
                if getattr(config, "family", "pixel") != "latent" and device == "auto":
                    steps = "250 with a GPU, 75 on CPU"
                text = f"auto: {steps} steps, guidance {rec['guidance']:g}" if rec else ""
            except Exception as err:  # noqa: BLE001 - shown as text; a run reports it properly
                text = f"(no recommended settings: {err})"
            relay.done.emit(token, summary, text)

        self._info_busy = True
        threading.Thread(target=work, name="histogen-model-info", daemon=True).start()

    def _on_model_info(self, token, summary: str, text: str) -> None:
        if token is not self._info_token:  # another model was chosen meanwhile
            return
        self._info_busy = False
        self.model_info.setText(f"{summary}; {text}" if summary and text else summary or text)

    @property
    def busy(self) -> bool:
        """The model info is still being read in the background."""
        return self._info_busy

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
                            guidance=None if self.guidance_spin.value() <= AUTO_GUIDANCE else self.guidance_spin.value(),
                            seed=self.seed_spin.value(),
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
        """Queue the results in the next free row of the grid beside ``mask_layer`` (added one per event-loop turn).

        One image layer per sample (named by seed) and one outline layer for the whole row
        (the mask once per cell): every layer napari adds costs the GUI thread 0.1-0.5 s.
        """
        first = results[0].mask
        mpp = first.mpp or _layers.layer_mpp(mask_layer) or 1.0
        units = anchor_units(mask_layer)
        mask_h, mask_w = np.shape(mask_layer.data)[-2:]
        mask_scale = np.asarray(mask_layer.scale, dtype=float)[-2:]
        # grid cells in result pixels: as large as the result and as the mask, plus the gap
        cell_px = (max(first.shape[0], int(np.ceil(mask_h * mask_scale[0] / mpp))) + RESULT_GAP_PX,
                   max(first.shape[1], int(np.ceil(mask_w * mask_scale[1] / mpp))) + RESULT_GAP_PX)
        cell = (cell_px[0] * mpp, cell_px[1] * mpp)
        row = self.results.next_row(mask_layer.name)
        items = []
        for k, result in enumerate(results):
            seed = result.provenance["parameters"]["seed"]
            name = f"NASDM s{seed} of {mask_layer.name}"
            data, kwargs, _ = _layers.image_layer_data(result.image, name, mpp=mpp, provenance=result.provenance)
            kwargs.update(scale=(mpp, mpp), translate=self.results.cell_origin(mask_layer, cell, row, k + 1))
            if units is not None:
                kwargs["units"] = units
            items.append((data, self.results.tag(kwargs, mask_layer.name, row), "image", None))
        nuclei = results[0].nuclei  # every sample follows the same mask
        outline = np.zeros((nuclei.shape[0], cell_px[1] * len(results) - RESULT_GAP_PX), np.int32)
        for k in range(len(results)):
            outline[:, k * cell_px[1]: k * cell_px[1] + nuclei.shape[1]] = nuclei.instances
        seeds = [r.provenance["parameters"]["seed"] for r in results]
        seed_text = f"s{seeds[0]}" if len(seeds) == 1 else f"s{seeds[0]}-s{seeds[-1]}"
        outline_kwargs = dict(
            name=f"NASDM {seed_text} of {mask_layer.name} outlines", scale=(mpp, mpp), opacity=0.8, contour=1,
            translate=self.results.cell_origin(mask_layer, cell, row, 1),
            colormap=_layers.class_color_dict(nuclei.classes, nuclei.scheme), visible=self.outline_check.isChecked(),
            metadata={"histogen_outline": True, "histogen": {"kind": "nuclei", "scheme": nuclei.scheme.to_dict(),
                                                             "mpp": mpp, "provenance": results[0].provenance}},
            features=_layers.features_from_classes(nuclei.classes))
        if units is not None:
            outline_kwargs["units"] = units
        items.append((outline, self.results.tag(outline_kwargs, mask_layer.name, row), "labels",
                      self.outline_layers.append))
        self.results.add_later(items, on_added)

    def _on_outline_toggled(self, checked: bool) -> None:
        self.outline_layers = [layer for layer in self.outline_layers if layer in self.viewer.layers]
        for layer in self.outline_layers:
            layer.visible = checked
