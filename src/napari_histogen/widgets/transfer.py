"""The appearance transfer dock: a real patch's look on new masks, zero-shot.

Thin by design: it reads the appearance image, its tissue mask and the target mask from
layers, runs :meth:`TransferEngine.run` in a background thread (progress per step, Cancel),
and adds each output as an image layer with its (flipped/rotated) target mask below it, in
the results grid beside the target mask (one pair of rows per run, one column per output).
Nothing is added when a run is cancelled or fails; errors show in the status line and as
notifications. The Stable Diffusion model is loaded in the worker on the first run and kept
until the dock goes away or "Unload model". The basic settings come first; the chain's
expert settings are folded under "Advanced". AdaIN "auto" is per class when the appearance
image's mask is chosen and global when it is not, so the defaults run either way.
"""

from __future__ import annotations

import threading

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from .. import _layers
from ..core.engines.base import request_defaults
from ..core.engines.transfer import TransferRequest
from ..core.errors import HistogenInputError
from ..core.masks import NucleiMask, match_classes
from ..core.transfer.settings import RENDER_MODES, TransferSettings
from ._guard import guarded, notify_error, notify_info  # noqa: F401 - notify_error: tests patch it here
from ._results import GAP_PX, anchor_units
from ._runner import EngineDock

RESULT_GAP_PX = GAP_PX
NO_MASK = "(none: global AdaIN only)"
AUTO_ADAIN = "auto"
ADAIN_CHOICES = {"auto (per class with a mask)": AUTO_ADAIN, "per class (paper)": "masked",
                 "global (baseline)": "global", "off": "off"}
INVERSION_CHOICES = {"edit-friendly DDPM": "edit_friendly", "DDIM": "ddim"}
#: the dock's two methods: label -> value (the registry engine is "transfer" or "exemplar")
METHOD_CHOICES = {"cross-image attention (Stable Diffusion)": "sd", "example-based (CPU)": "example"}
NO_MASK_EXAMPLE = "(none)"


def _describe_model(spec) -> str:
    from ..core.models.stable_diffusion import resolve_stable_diffusion

    try:
        found = resolve_stable_diffusion(spec)
        return f"{found.source}: {found.path}"
    except HistogenInputError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a look-up problem is shown, a run reports it properly
        return f"Could not look up the model: {err}"


class _InfoRelay(QObject):
    """Carries the model info from its thread to the GUI thread (queued signal)."""

    done = Signal(object, str)


class TransferWidget(EngineDock):
    """Dock widget: appearance image + its mask + target mask -> labelled in-silico images."""

    ENGINE = "transfer"
    RUN_TITLE = "Appearance transfer"
    FAILED_TEXT = "The transfer failed"
    OOM_HINT = "Out of memory: make fewer outputs at once, or use a GPU."
    LOADING_TEXT = "Loading the Stable Diffusion model (once per session)…"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.result_layers: list = []
        self._info_token = None
        self._info_busy = False
        self._info_relay = _InfoRelay()
        self._info_relay.done.connect(self._on_model_info)
        d = request_defaults(TransferRequest)
        st = TransferSettings()

        layout = self._begin_layout()
        form = QFormLayout()
        # the Stable Diffusion method's own settings live in widgets hidden for the example-based method
        self.sd_expert = QWidget()
        expert = QFormLayout(self.sd_expert)
        expert.setContentsMargins(0, 0, 0, 0)
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHOD_CHOICES))
        self.method_combo.setToolTip("Cross-image attention: Stable Diffusion re-paints the target in the source's "
                                     "look (a GPU advised; needs the model). Example-based: the target is built from "
                                     "the source's own pixels, regions quilted by class and nuclei copied by class "
                                     "and shape (CPU, seconds, no model; tissue or nuclei masks).")
        self.method_combo.currentIndexChanged.connect(lambda _i: self._on_method_changed())
        form.addRow("method", self.method_combo)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The real patch whose stain, scanner and tissue look the outputs take")
        self.image_combo.currentIndexChanged.connect(lambda _i: self._guess_source_mask())
        form.addRow("appearance image", self.image_combo)
        self.source_mask_combo = QComboBox()
        self.source_mask_combo.setToolTip("The appearance image's own tissue mask (classes matched to the target's by id)")
        self.source_mask_combo.currentIndexChanged.connect(lambda _i: self._update_classes())
        form.addRow("its mask", self.source_mask_combo)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("The mask the new images follow pixel for pixel (any class scheme)")
        self.target_combo.currentIndexChanged.connect(lambda _i: self._update_classes())
        form.addRow("target mask", self.target_combo)
        self.classes_info = QLabel("")
        self.classes_info.setWordWrap(True)
        form.addRow("", self.classes_info)

        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("default: Stable Diffusion 1.5 ($HISTOGEN_SD_MODEL)")
        self.model_edit.setToolTip("A model folder, a name in the model cache, or a hub id already in the local "
                                   "Hugging Face cache. Nothing is downloaded.")
        self.model_edit.editingFinished.connect(lambda: self._update_model_info())
        self.sd_model_box = QWidget()
        model_form = QFormLayout(self.sd_model_box)
        model_form.setContentsMargins(0, 0, 0, 0)
        self._add_model_row(model_form, self.model_edit, "Folder…",
                            "Choose a Stable Diffusion folder (from `histogen models fetch`)")
        form.addRow(self.sd_model_box)

        self.outputs_spin = QSpinBox()
        self.outputs_spin.setRange(1, 64)
        self.outputs_spin.setValue(d["n_outputs"])
        self.outputs_spin.setToolTip("Images to make (the paper: 4 per annotated image); output k uses seed + k")
        form.addRow("outputs", self.outputs_spin)
        self.augment_check = QCheckBox("random flips/rotations of the target mask")
        self.augment_check.setChecked(d["augment"])
        expert.addRow("", self.augment_check)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(2, 500)
        self.steps_spin.setValue(st.steps)
        self.steps_spin.setToolTip("DDIM steps of the chain (the paper: 100)")
        expert.addRow("steps", self.steps_spin)
        self.skip_spin = QSpinBox()
        self.skip_spin.setRange(0, 499)
        self.skip_spin.setValue(st.skip_steps)
        self.skip_spin.setToolTip("Noisiest steps not run (the reference: 32 of 100); swap and AdaIN ranges count "
                                  "the steps that run")
        expert.addRow("skip", self.skip_spin)
        self.contrast_spin = QDoubleSpinBox()
        self.contrast_spin.setRange(0.0, 10.0)
        self.contrast_spin.setSingleStep(0.1)
        self.contrast_spin.setValue(st.contrast)
        self.contrast_spin.setToolTip("Attention contrast on the swapped maps (1 = none; 1.67 the reference)")
        expert.addRow("contrast", self.contrast_spin)
        self.guidance_spin = QDoubleSpinBox()
        self.guidance_spin.setRange(1.0, 20.0)
        self.guidance_spin.setSingleStep(0.25)
        self.guidance_spin.setValue(st.swap_guidance_start)
        self.guidance_spin.setToolTip("Swap guidance at the first step; it falls linearly to half (at least 1)")
        expert.addRow("swap guidance", self.guidance_spin)
        self.adain_combo = QComboBox()
        self.adain_combo.addItems(list(ADAIN_CHOICES))
        self.adain_combo.setCurrentText(next(k for k, v in ADAIN_CHOICES.items() if v == AUTO_ADAIN))
        self.adain_combo.setToolTip("Per class: one class per step, alternating, each with the source's statistics "
                                    "of that class (the paper; needs 'its mask'). Global: the baseline. Auto: per "
                                    f"class when 'its mask' is chosen, else global (the paper's setting: {st.adain}).")
        expert.addRow("AdaIN", self.adain_combo)
        self.inversion_combo = QComboBox()
        self.inversion_combo.addItems(list(INVERSION_CHOICES))
        self.inversion_combo.setCurrentText(next(k for k, v in INVERSION_CHOICES.items() if v == st.inversion))
        self.inversion_combo.setToolTip("Edit-friendly DDPM inversion (the reference; exact reconstruction) or DDIM")
        expert.addRow("inversion", self.inversion_combo)
        self.freeu_check = QCheckBox("FreeU on the backbone features (the reference)")
        self.freeu_check.setChecked(st.freeu)
        self.freeu_check.setToolTip("The reference's FreeU variant on every UNet call, inversions included; untick "
                                    "for the plain UNet")
        expert.addRow("", self.freeu_check)
        self.render_combo = QComboBox()
        self.render_combo.addItems(list(RENDER_MODES))
        self.render_combo.setCurrentText(st.render)
        self.render_combo.setToolTip("Structure image: mean = the target mask painted in the source's class colours "
                                     "(ours); scheme = the scheme's colours; mask = the mask as grey levels (the paper)")
        expert.addRow("structure image", self.render_combo)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(d["seed"])
        form.addRow("seed", self.seed_spin)
        self.device_combo = self._device_combo()
        expert.addRow("device", self.device_combo)
        layout.addLayout(form)
        self.advanced.body.addWidget(self.sd_expert)
        self._build_example_settings()
        self.advanced.body.addWidget(self.example_expert)

        self._add_run_controls(layout, "Generate")
        self._add_status(layout)

        self._on_method_changed()
        self._update_model_info(background=True)  # the first look-up imports huggingface_hub: not on the GUI thread
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(lambda _e: self._refresh_layers())
        self._finish_layout()

    def _persisted_controls(self) -> dict:
        return {"model": self.model_edit, "outputs": self.outputs_spin, "seed": self.seed_spin,
                "augment": self.augment_check, "steps": self.steps_spin, "skip": self.skip_spin,
                "contrast": self.contrast_spin, "swap_guidance": self.guidance_spin, "adain": self.adain_combo,
                "inversion": self.inversion_combo, "freeu": self.freeu_check, "render": self.render_combo,
                "device": self.device_combo, "method": self.method_combo, "patch_px": self.patch_spin,
                "candidates": self.candidates_spin, "nucleus_choices": self.choices_spin}

    def _build_example_settings(self) -> None:
        """The example-based method's settings (shown instead of the Stable Diffusion ones)."""
        from ..core.exemplar import ExemplarSettings

        ex = ExemplarSettings()
        self.example_expert = QWidget()
        form = QFormLayout(self.example_expert)
        form.setContentsMargins(0, 0, 0, 0)
        self.patch_spin = QSpinBox()
        self.patch_spin.setRange(8, 256)
        self.patch_spin.setValue(ex.patch_px)
        self.patch_spin.setToolTip("Side of the quilted source blocks in px (overlap: a quarter of it)")
        form.addRow("patch px", self.patch_spin)
        self.candidates_spin = QSpinBox()
        self.candidates_spin.setRange(1, 10000)
        self.candidates_spin.setValue(ex.candidates)
        self.candidates_spin.setToolTip("Random source blocks compared per block (more: better seams, slower)")
        form.addRow("candidates", self.candidates_spin)
        self.choices_spin = QSpinBox()
        self.choices_spin.setRange(1, 1000)
        self.choices_spin.setValue(ex.nucleus_choices)
        self.choices_spin.setToolTip("A target nucleus takes one of this many closest-shaped source nuclei of its class")
        form.addRow("nucleus choices", self.choices_spin)

    @property
    def method(self) -> str:
        """"sd" (cross-image attention on Stable Diffusion) or "example" (example-based, CPU)."""
        return METHOD_CHOICES[self.method_combo.currentText()]

    def _on_method_changed(self) -> None:
        """Show the chosen method's settings only; the example-based method also takes nuclei masks."""
        example = self.method == "example"
        self.sd_expert.setVisible(not example)
        self.sd_model_box.setVisible(not example)
        self.example_expert.setVisible(example)
        self._refresh_layers()

    # -- choices ------------------------------------------------------------------------
    def _image_layers(self):
        return [layer for layer in self.viewer.layers if layer.__class__.__name__ == "Image" and layer.rgb
                and not layer.metadata.get("histogen_transfer_result")]

    def _mask_layers(self):
        kinds = (None, "tissue", "nuclei") if self.method == "example" else (None, "tissue")
        return [layer for layer in self.viewer.layers if layer.__class__.__name__ == "Labels"
                and _layers.layer_kind(layer) in kinds and not layer.metadata.get("histogen_outline")]

    def _refresh_layers(self) -> None:
        keep = (self.image_combo.currentText(), self.source_mask_combo.currentText(), self.target_combo.currentText())
        for combo in (self.image_combo, self.source_mask_combo, self.target_combo):
            combo.blockSignals(True)
            combo.clear()
        self.image_combo.addItems([layer.name for layer in self._image_layers()])
        masks = [layer.name for layer in self._mask_layers()]
        self.source_mask_combo.addItems([NO_MASK if self.method == "sd" else NO_MASK_EXAMPLE] + masks)
        self.target_combo.addItems(masks)
        for combo, name in zip((self.image_combo, self.source_mask_combo, self.target_combo), keep):
            if name and combo.findText(name) >= 0:
                combo.setCurrentText(name)
            combo.blockSignals(False)
        if not keep[1] or keep[1] in (NO_MASK, NO_MASK_EXAMPLE) or self.source_mask_combo.findText(keep[1]) < 0:
            self._guess_source_mask()
        if not keep[2] and len(masks) > 1:  # a fresh target: prefer a mask that is not the source's
            others = [m for m in masks if m != self.source_mask_combo.currentText()]
            if others:
                self.target_combo.setCurrentText(others[-1])
        self._update_classes()

    def _guess_source_mask(self) -> None:
        """Pick the mask layer named after the appearance image (e.g. 'ihc tissue' for 'ihc')."""
        image = self.image_combo.currentText()
        if not image or image not in self.viewer.layers:
            return
        shape = np.shape(self.viewer.layers[image].data)[:2]
        for layer in self._mask_layers():
            if layer.name.startswith(image) and np.shape(layer.data)[-2:] == shape:
                self.source_mask_combo.setCurrentText(layer.name)
                return

    def _update_classes(self) -> None:
        """Report target classes the source mask lacks (matched by id, in core)."""
        try:
            source, target = self._source_mask_layer(), self._target_layer()
        except HistogenInputError:
            self.classes_info.setText("")
            return
        if self.method == "example":
            self.classes_info.setText(self._example_classes_text(source, target))
            return
        target_mask = _layers.tissue_mask_from_layer(target)
        t_ids = [c for c in target_mask.class_ids if c]
        if source is None:
            self.classes_info.setText(f"target classes {t_ids}; no source mask: global AdaIN only")
            return
        match = match_classes([target_mask], np.asarray(source.data))
        scheme = target_mask.scheme or _layers.layer_scheme(source)

        def name(c):
            return f"{c} {scheme.name_of(c)}" if scheme is not None and c in scheme else str(c)

        text = f"classes {', '.join(name(c) for c in match.matched if c)} matched"
        missing = [c for c in match.unmatched if c]
        if missing:
            text += f"; not in the source mask: {', '.join(name(c) for c in missing)}"
        self.classes_info.setText(text)

    def _example_mask(self, layer, scheme=None):
        """A layer as the example-based method reads it: a NucleiMask (nuclei layers) or a TissueMask."""
        if _layers.layer_kind(layer) == "nuclei":
            return _layers.nuclei_mask_from_layer(layer, scheme=scheme)
        return _layers.tissue_mask_from_layer(layer, scheme=scheme)

    def _example_classes_text(self, source, target) -> str:
        from ..core.exemplar import missing_classes

        try:
            target_mask = self._example_mask(target)
            source_mask = None if source is None else self._example_mask(source)
        except HistogenInputError as err:
            return str(err)
        nuclei = isinstance(target_mask, NucleiMask)
        if source_mask is None or isinstance(source_mask, NucleiMask) != nuclei:
            return f"a {'nuclei' if nuclei else 'tissue'} target: choose the appearance image's " \
                   f"{'nuclei' if nuclei else 'tissue'} mask as its mask"
        matched, missing = missing_classes(target_mask, source_mask if nuclei else None,
                                           None if nuclei else source_mask)
        scheme = target_mask.scheme

        def name(c):
            return f"{c} {scheme.name_of(c)}" if scheme is not None and c in scheme else str(c)

        text = f"{'nucleus' if nuclei else 'region'} classes {', '.join(name(c) for c in matched) or 'none'} matched"
        if missing:
            text += f"; not in the source mask (copied from {'other classes' if nuclei else 'the whole source'}): " \
                    f"{', '.join(name(c) for c in missing)}"
        return text

    def set_model(self, spec) -> None:
        """Use the Stable Diffusion model ``spec`` (a folder, a cached name or a hub id)."""
        self.model_edit.setText(str(spec))
        self._update_model_info()

    @guarded
    def _on_browse_clicked(self, *_):
        path = QFileDialog.getExistingDirectory(self, "Stable Diffusion model folder")
        if path:
            self.set_model(path)

    def _update_model_info(self, background: bool = False) -> None:
        """Where the model would come from (file system only, nothing is downloaded)."""
        spec = self.model_edit.text().strip() or None
        self._info_token = token = object()
        if not background:
            self._on_model_info(token, _describe_model(spec))
            return
        relay = self._info_relay
        self._info_busy = True

        def look_up():
            text = _describe_model(spec)
            try:
                relay.done.emit(token, text)
            except RuntimeError:  # the dock was closed meanwhile: nobody to tell
                pass

        def start():
            threading.Thread(target=look_up, name="histogen-model-info", daemon=True).start()

        # a moment after the dock is drawn: the thread's imports hold Python's lock in stretches,
        # which would add to the GUI thread's own work of docking the widget
        QTimer.singleShot(400, start)

    def _on_model_info(self, token, text: str) -> None:
        if token is not self._info_token:  # another model was chosen meanwhile
            return
        self._info_busy = False
        self.model_info.setText(text)

    @property
    def busy(self) -> bool:
        """The model info is still being looked up in the background."""
        return self._info_busy

    # -- running ------------------------------------------------------------------------
    def _layer(self, combo, what):
        name = combo.currentText()
        if not name or name == NO_MASK or name not in self.viewer.layers:
            raise HistogenInputError(f"Choose the {what} layer.")
        return self.viewer.layers[name]

    def _target_layer(self):
        return self._layer(self.target_combo, "target mask")

    def _source_mask_layer(self):
        name = self.source_mask_combo.currentText()
        return None if not name or name in (NO_MASK, NO_MASK_EXAMPLE) else self._layer(self.source_mask_combo,
                                                                                          "source mask")

    def settings(self) -> TransferSettings:
        """The transfer settings the dock's controls describe (AdaIN "auto" resolved by the chosen masks)."""
        start = float(self.guidance_spin.value())
        adain = ADAIN_CHOICES[self.adain_combo.currentText()]
        if adain == AUTO_ADAIN:
            adain = "global" if self._source_mask_layer() is None else "masked"
        return TransferSettings(steps=self.steps_spin.value(), skip_steps=self.skip_spin.value(),
                                contrast=float(self.contrast_spin.value()), swap_guidance_start=start,
                                swap_guidance_end=max(start / 2, 1.0), adain=adain,
                                inversion=INVERSION_CHOICES[self.inversion_combo.currentText()],
                                freeu=self.freeu_check.isChecked(), render=self.render_combo.currentText()).check()

    def example_request(self):
        """The example-based request the dock's layers and controls describe."""
        from ..core.engines.exemplar import ExemplarRequest
        from ..core.exemplar import ExemplarSettings
        from ..core.images import to_rgb_uint8

        image_layer = self._layer(self.image_combo, "appearance image")
        target_layer = self._target_layer()
        source_layer = self._source_mask_layer()
        if source_layer is None:
            raise HistogenInputError("Example-based transfer copies the appearance image's regions or nuclei: "
                                     "choose its tissue or nuclei mask under 'its mask'.")
        if np.asarray(image_layer.data).ndim != 3:
            raise HistogenInputError(f"'{image_layer.name}' is not a single RGB image (multiscale or stacks are not "
                                     "supported; crop a patch first).")
        scheme = _layers.layer_scheme(target_layer) or _layers.layer_scheme(source_layer)
        target = self._example_mask(target_layer, scheme=scheme if _layers.layer_kind(target_layer) != "nuclei" else None)
        source = self._example_mask(source_layer, scheme=scheme if _layers.layer_kind(source_layer) != "nuclei" else None)
        if isinstance(target, NucleiMask) != isinstance(source, NucleiMask):
            kind = "nuclei" if isinstance(target, NucleiMask) else "tissue"
            raise HistogenInputError(f"The target is a {kind} mask: choose the appearance image's {kind} mask under "
                                     "'its mask'.")
        patch = int(self.patch_spin.value())
        settings = ExemplarSettings(patch_px=patch, overlap_px=max(1, patch // 4),
                                    candidates=int(self.candidates_spin.value()),
                                    nucleus_choices=int(self.choices_spin.value())).check()
        nuclei = isinstance(source, NucleiMask)
        return ExemplarRequest(
            source_image=to_rgb_uint8(np.asarray(image_layer.data), name=f"image '{image_layer.name}'"),
            source_nuclei=source if nuclei else None, source_tissue=None if nuclei else source,
            target_masks=[target], n_outputs=self.outputs_spin.value(), seed=self.seed_spin.value(),
            settings=settings, source_mpp=_layers.layer_mpp(image_layer), source_name=image_layer.name)

    def request(self):
        """The request the dock's layers and controls describe (inputs converted once, here)."""
        from ..core.images import to_rgb_uint8

        if self.method == "example":
            return self.example_request()

        image_layer = self._layer(self.image_combo, "appearance image")
        target_layer = self._target_layer()
        source_layer = self._source_mask_layer()
        if np.asarray(image_layer.data).ndim != 3:
            raise HistogenInputError(f"'{image_layer.name}' is not a single RGB image (multiscale or stacks are not "
                                     "supported; crop a patch first).")
        settings = self.settings()
        if settings.adain == "masked" and source_layer is None:
            raise HistogenInputError("Per-class AdaIN needs the appearance image's mask: choose it under 'its mask', "
                                     "or set AdaIN (under Advanced) to auto or global.")
        scheme = _layers.layer_scheme(target_layer) or (None if source_layer is None else _layers.layer_scheme(source_layer))
        return TransferRequest(
            source_image=to_rgb_uint8(np.asarray(image_layer.data), name=f"image '{image_layer.name}'"),
            source_mask=None if source_layer is None else _layers.tissue_mask_from_layer(source_layer, scheme=scheme),
            target_masks=[_layers.tissue_mask_from_layer(target_layer, scheme=scheme)],
            n_outputs=self.outputs_spin.value(), augment=self.augment_check.isChecked(), seed=self.seed_spin.value(),
            settings=settings, source_mpp=_layers.layer_mpp(image_layer), source_name=image_layer.name)

    @guarded
    def run(self):
        """Start a transfer in the background (returns at once)."""
        image_layer = self._layer(self.image_combo, "appearance image")
        target_layer = self._target_layer()
        request = self.request()
        context = (image_layer, target_layer, request.scheme)
        if self.method == "example":
            return self._start_run(request, model=None, device="cpu", engine="exemplar", context=context,
                                   status=f"Making {request.n_outputs} image(s) from '{image_layer.name}' on "
                                          f"'{target_layer.name}' (example-based)…")
        return self._start_run(request, model=self.model_edit.text().strip() or None,
                               device=self.device_combo.currentText(), context=context,
                               status=f"Making {request.n_outputs} image(s) like '{image_layer.name}' on "
                                      f"'{target_layer.name}'…")

    @guarded
    def _on_finished(self, results, context) -> None:
        if results is None:
            self.status.setText("Cancelled; nothing was added.")
            notify_info("Appearance transfer cancelled; nothing was added.")
            return
        self.last_results = list(results)
        notes = " ".join(dict.fromkeys(n for r in results for n in r.notes))
        text = f"Added {len(results)} image(s), each above its target mask." + (f" {notes}" if notes else "")
        self.status.setText(f"Adding {len(results)} image(s)…")
        self._add_result_layers(results, *context, on_added=lambda: self.status.setText(text))

    def _add_result_layers(self, results, image_layer, target_layer, scheme, on_added=None) -> None:
        """Queue each output with its mask below it, in the next free pair of grid rows beside the target mask."""
        mpp = _layers.layer_mpp(target_layer) or _layers.layer_mpp(image_layer) or 1.0
        units = anchor_units(target_layer)
        inputs_w = max(np.asarray(target_layer.data).shape[-1], np.asarray(image_layer.data).shape[1])
        inputs_h = np.asarray(target_layer.data).shape[-2]
        side = max(max(r.mask.shape) for r in results)
        cell_h = (max(side, inputs_h) + RESULT_GAP_PX) * mpp
        first_col = (inputs_w + RESULT_GAP_PX) * mpp
        col_w = (side + RESULT_GAP_PX) * mpp
        row = self.results.next_row(target_layer.name, rows_per_run=2)  # an output and its mask below it
        origin = self.results.cell_origin(target_layer, (cell_h, col_w), row, 0)
        items = []
        for k, result in enumerate(results):
            seed = result.provenance["parameters"]["seed"]
            kind = "Example" if result.provenance["parameters"].get("engine") == "exemplar" else "Transfer"
            name = f"{kind} s{seed} of {target_layer.name}"
            offset = origin + np.array([0.0, first_col + k * col_w])
            data, kwargs, _ = _layers.image_layer_data(result.image, name, mpp=mpp, provenance=result.provenance)
            kwargs.update(scale=(mpp, mpp), translate=offset)
            if units is not None:
                kwargs["units"] = units
            kwargs["metadata"]["histogen_transfer_result"] = True
            items.append((data, self.results.tag(kwargs, target_layer.name, row), "image", self.result_layers.append))
            if isinstance(result.mask, NucleiMask):  # example-based on a nuclei mask
                mdata, mkwargs, _ = _layers.nuclei_layer_data(result.mask, f"{name} mask", provenance=result.provenance)
                mkwargs["opacity"] = 0.8
                mkwargs["metadata"]["histogen_outline"] = True  # a result: not offered as an input mask
                mkwargs["scale"] = (mpp, mpp)
                mkwargs["translate"] = offset + np.array([cell_h, 0.0])
                if units is not None:
                    mkwargs["units"] = units
                items.append((mdata, self.results.tag(mkwargs, target_layer.name, row + 1), "labels",
                              self.result_layers.append))
                continue
            labels = result.mask.labels
            ids = [c for c in result.mask.class_ids if c]
            if scheme is not None and all(i in scheme for i in ids):
                mdata, mkwargs, _ = _layers.tissue_layer_data(labels, scheme, f"{name} mask", mpp=mpp,
                                                              provenance=result.provenance)
            else:  # classes outside any known scheme: napari's label colours
                mdata = labels.astype(np.int32)
                mkwargs = {"name": f"{name} mask", "metadata": {"histogen": {
                    "kind": "tissue", "provenance": result.provenance, "mpp": mpp}}}
            mkwargs["scale"] = (mpp, mpp)
            mkwargs["opacity"] = 0.8
            mkwargs["metadata"]["histogen_outline"] = True  # a result: not offered as an input mask
            mkwargs["translate"] = offset + np.array([cell_h, 0.0])
            if units is not None:
                mkwargs["units"] = units
            items.append((mdata, self.results.tag(mkwargs, target_layer.name, row + 1), "labels",
                          self.result_layers.append))
        self.results.add_later(items, on_added)
