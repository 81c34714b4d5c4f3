"""The "Histogen: NASDM" dock: synthesize H&E patches that follow a painted nuclei mask.

Thin by design: it reads the mask layer, runs :meth:`NasdmEngine.run` in a background
thread (progress bar, Cancel), and adds each result as an image layer next to its mask,
with the mask's outline on top (toggleable). Nothing is added when a run is cancelled or
fails; errors become notifications.
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
    QVBoxLayout,
)

from .. import _layers
from ..core.engines.base import request_defaults
from ..core.engines.nasdm import VARIANCES, NasdmRequest
from ..core.errors import HistogenInputError
from ._guard import guarded, notify_error, notify_info  # noqa: F401 - notify_error: tests patch it here
from ._runner import EngineDock

RESULT_GAP_PX = 8  # space between a mask and its results on the canvas
MODEL_VARIANCE = "model default"


def _default_steps() -> int:
    import torch

    from ..core.engines.nasdm import DEFAULT_STEPS_CPU, DEFAULT_STEPS_GPU

    return DEFAULT_STEPS_GPU if torch.cuda.is_available() else DEFAULT_STEPS_CPU


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

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
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
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(d["steps"] or _default_steps())
        self.steps_spin.setToolTip("Respaced denoising steps (1000 = full chain; fewer is faster). "
                                   "Default: 250 with a GPU, 75 on CPU")
        form.addRow("steps", self.steps_spin)
        self.variance_combo = QComboBox()
        self.variance_combo.addItems([MODEL_VARIANCE, *VARIANCES])
        if d["variance"] is not None:
            self.variance_combo.setCurrentText(d["variance"])
        self.variance_combo.setToolTip("Variance of each denoising step: the model's recommended one, the learned "
                                       "one, or the fixed posterior variance (for models whose variance head is "
                                       "not trained yet)")
        form.addRow("variance", self.variance_combo)
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 64)
        self.samples_spin.setValue(d["n_samples"])
        form.addRow("samples", self.samples_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(d["seed"])
        self.seed_spin.setToolTip("Sample k uses seed + k; the same seed gives the same image on the same device")
        form.addRow("seed", self.seed_spin)
        self.device_combo = self._device_combo()
        form.addRow("device", self.device_combo)
        layout.addLayout(form)

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
        """Steps and guidance the chosen model recommends (where the request leaves them to the model)."""
        recommend = getattr(engine_module, "recommended_settings", None)
        config = engine_module.read_model_config(spec)
        if recommend is None or config is None:
            return
        device = self.device_combo.currentText()
        if device == "auto":  # where "auto" would run (pixel models take more steps on a GPU)
            from ..core.engines.nasdm import DEFAULT_STEPS_GPU

            device = "cuda" if _default_steps() == DEFAULT_STEPS_GPU else "cpu"
        rec = recommend(config, device)
        d = request_defaults(NasdmRequest)
        if d.get("guidance") is None and rec.get("guidance") is not None:
            self.guidance_spin.setValue(float(rec["guidance"]))
        if d.get("steps") is None and rec.get("steps") is not None:
            self.steps_spin.setValue(int(rec["steps"]))

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
        return NasdmRequest(nuclei=nuclei, n_samples=self.samples_spin.value(), steps=self.steps_spin.value(),
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
        self._add_result_layers(results, mask_layer)
        notes = "; ".join(dict.fromkeys(n for r in results for n in r.notes))
        self.status.setText(f"Added {len(results)} synthetic patch(es) next to '{mask_layer.name}'." +
                            (f" {notes}" if notes else ""))

    def _add_result_layers(self, results, mask_layer) -> None:
        first = results[0].mask
        mpp = first.mpp or _layers.layer_mpp(mask_layer) or 1.0
        origin = np.asarray(mask_layer.translate, dtype=float)[-2:]
        width = (first.shape[1] + RESULT_GAP_PX) * mpp
        for k, result in enumerate(results):
            seed = result.provenance["parameters"]["seed"]
            name = f"NASDM {mask_layer.name} s{seed}"
            offset = origin + np.array([0.0, (k + 1) * width])
            data, kwargs, _ = _layers.image_layer_data(result.image, name, mpp=mpp, provenance=result.provenance)
            kwargs.setdefault("scale", (mpp, mpp))
            self.viewer.add_image(data, translate=offset, **kwargs)
            outline = self.viewer.add_labels(
                result.nuclei.instances, name=f"{name} mask", translate=offset, scale=(mpp, mpp), opacity=0.8,
                colormap=_layers.class_color_dict(result.nuclei.classes, result.nuclei.scheme),
                visible=self.outline_check.isChecked(),
                metadata={"histogen_outline": True, "histogen": {"kind": "nuclei", "scheme": result.nuclei.scheme.to_dict(),
                                                                 "mpp": mpp, "provenance": result.provenance}},
                features=_layers.features_from_classes(result.nuclei.classes))
            outline.contour = 1
            self.outline_layers.append(outline)

    def _on_outline_toggled(self, checked: bool) -> None:
        for layer in list(self.outline_layers):
            if layer in self.viewer.layers:
                layer.visible = checked
