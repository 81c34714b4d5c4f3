"""The annotate dock's "Generate mask" section: nucleus types -> an editable nuclei mask (NASDM++).

One core call behind the button: :class:`~napari_histogen.core.engines.maskgen.MaskGenEngine`'s
``run`` on a :class:`~napari_histogen.core.engines.maskgen.MaskGenRequest` built from the
ticked types, count, seed and scale, in a background worker (:class:`._runner.SectionRunMixin`),
with progress and Cancel. Each mask comes back as a nuclei Labels layer the annotate dock
edits like a painted one (classes, palette, reclassify), ready for the NASDM dock.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
)

from .. import _layers
from ..core.engines.base import EngineCache, request_defaults
from ..core.schemes import get_scheme
from ._guard import guarded
from ._runner import SectionRunMixin

__all__ = ["MaskGenSection", "add_maskgen_section"]

#: scale of the masks by default: the embedded NASDM model's (40x)
DEFAULT_MPP = 0.25


class MaskGenSection(SectionRunMixin, QGroupBox):
    """The "Generate mask" group of the annotate dock (``host``: the :class:`~.annotate.AnnotateWidget`)."""

    RUN_TITLE = "Mask generation"
    FAILED_TEXT = "Mask generation failed"
    OOM_HINT = "Out of memory: generate fewer masks at once, or use a GPU."

    def __init__(self, host, scheme: str = "consep"):
        super().__init__("Generate mask (nucleus types → nuclei mask)")
        from ..core.engines.maskgen import MaskGenRequest  # no torch: the engine module imports it lazily

        self.host = host
        self.engines = EngineCache()
        self.last_results: list = []
        d = request_defaults(MaskGenRequest)
        self.scheme = get_scheme(scheme)
        grid = QGridLayout()
        self.model_edit = QLineEdit("default")
        self.model_edit.setToolTip("'default' (embedded model, if any), a cached model name, or a maskgen model path")
        grid.addWidget(QLabel("model"), 0, 0)
        grid.addWidget(self.model_edit, 0, 1, 1, 3)
        types_row = QHBoxLayout()
        self.type_boxes: dict[int, QCheckBox] = {}
        for cls in self.scheme.classes:
            check = QCheckBox(cls.name)
            check.setToolTip(f"include {cls.name} nuclei (class {cls.id} of {self.scheme.name})")
            self.type_boxes[cls.id] = check
            types_row.addWidget(check)
        grid.addWidget(QLabel("types"), 1, 0)
        grid.addLayout(types_row, 1, 1, 1, 3)
        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 64)
        self.count_spin.setValue(int(d["n_samples"]))
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(int(d["seed"]))
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1000)
        self.steps_spin.setSpecialValueText("model's")
        self.steps_spin.setValue(0)
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.05, 10.0)
        self.mpp_spin.setDecimals(3)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setValue(DEFAULT_MPP)
        self.mpp_spin.setToolTip("µm/px of the masks (0.25 = 40x, the default NASDM model's scale)")
        grid.addWidget(QLabel("count"), 2, 0)
        grid.addWidget(self.count_spin, 2, 1)
        grid.addWidget(QLabel("seed"), 2, 2)
        grid.addWidget(self.seed_spin, 2, 3)
        grid.addWidget(QLabel("steps"), 3, 0)
        grid.addWidget(self.steps_spin, 3, 1)
        grid.addWidget(QLabel("µm/px"), 3, 2)
        grid.addWidget(self.mpp_spin, 3, 3)
        self._add_section_run_controls(grid, 4, "Generate mask", "Draw nuclei masks containing the ticked types "
                                       "(none ticked: any) and add them as editable nuclei layers")

    def request(self):
        """The request of the form: ticked types, count, seed, steps, scale."""
        from ..core.engines.maskgen import MaskGenRequest

        types = [self.scheme.name_of(cid) for cid, box in self.type_boxes.items() if box.isChecked()]
        return MaskGenRequest(types=types, n_samples=int(self.count_spin.value()), seed=int(self.seed_spin.value()),
                              steps=int(self.steps_spin.value()) or None, mpp=float(self.mpp_spin.value()))

    @guarded
    def run(self):
        """Start mask generation in the background; the mask layers are added when it finishes."""
        request = self.request()
        wanted = ", ".join(request.types) or "any types"
        return self._start_section_run("maskgen", request, context=request,
                                       status=f"Generating {request.n_samples} mask(s) with {wanted}…")

    def _add_results(self, results, request) -> None:
        label = "+".join(request.types) or "any"
        for res in results:
            self.host._add(_layers.nuclei_layer_data(res.mask, f"generated {label} s{res.seed}",
                                                     provenance=res.provenance))
        counts = ", ".join(str(r.mask.n_nuclei) for r in results)
        notes = "; ".join(dict.fromkeys(n for r in results for n in r.notes))
        self.status.setText(f"Added {len(results)} generated nuclei mask(s) ({counts} nuclei); edit them, then "
                            "synthesize in the NASDM dock." + (f" {notes}" if notes else ""))


def add_maskgen_section(host, layout) -> MaskGenSection:
    """Build the section for the annotate dock ``host`` and put it in ``layout``."""
    section = MaskGenSection(host)
    layout.addWidget(section)
    host.maskgen_section = section
    return section
