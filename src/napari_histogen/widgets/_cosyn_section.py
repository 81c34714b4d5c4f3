"""The annotate dock's "Co-synthesis" section: point layout -> image + typed nuclei mask (+ distance map).

One core call behind the button: :class:`~napari_histogen.core.engines.cosyn.CosynEngine`'s
``run`` on a :class:`~napari_histogen.core.engines.cosyn.CosynRequest` built from the selected
point layout, in a background worker (:class:`._runner.SectionRunMixin`), with progress and
Cancel. The results come back as an image layer, an editable nuclei mask layer (the classes of
the points) and a hidden distance-map layer, each with the run's provenance. The procedural
"Points → nuclei" grower above stays the no-model option.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
)

from .. import _layers
from ..core.engines.base import EngineCache, request_defaults
from ..core.errors import HistogenInputError
from ._guard import guarded
from ._runner import SectionRunMixin

__all__ = ["CosynSection", "add_cosyn_section"]


class CosynSection(SectionRunMixin, QGroupBox):
    """The "Co-synthesis" group of the annotate dock (``host``: the :class:`~.annotate.AnnotateWidget`)."""

    RUN_TITLE = "Co-synthesis"
    FAILED_TEXT = "Co-synthesis failed"
    OOM_HINT = "Out of memory: make a smaller image, or use a GPU."

    def __init__(self, host):
        super().__init__("Co-synthesis (points → image + nuclei)")
        from ..core.engines.cosyn import CosynRequest  # no torch: the request module imports it lazily

        self.host = host
        self.engines = EngineCache()
        self.last_results: list = []
        d = request_defaults(CosynRequest)
        grid = QGridLayout()
        self.model_edit = QLineEdit("default")
        self.model_edit.setToolTip("'default' (embedded model, if any), a cached model name, or a cosyn model path")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(int(d["steps"]))
        self.guidance_spin = QDoubleSpinBox()
        self.guidance_spin.setRange(0.0, 20.0)
        self.guidance_spin.setSingleStep(0.5)
        self.guidance_spin.setValue(float(d["guidance"]))
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(int(d["seed"]))
        grid.addWidget(QLabel("model"), 0, 0)
        grid.addWidget(self.model_edit, 0, 1, 1, 3)
        grid.addWidget(QLabel("steps"), 1, 0)
        grid.addWidget(self.steps_spin, 1, 1)
        grid.addWidget(QLabel("guidance"), 1, 2)
        grid.addWidget(self.guidance_spin, 1, 3)
        grid.addWidget(QLabel("seed"), 2, 0)
        grid.addWidget(self.seed_spin, 2, 1)
        self._add_section_run_controls(grid, 3, "Co-synthesize", "Generate an H&E image, its typed nuclei mask and "
                                       "a distance map from the selected point layout (one nucleus per point)")

    def request(self):
        """The request for the host's selected point layout (shape and µm/px as "Points → nuclei" takes them)."""
        from ..core.engines.cosyn import CosynRequest

        host = self.host
        layer = host._require("points")
        params = (((layer.metadata or {}).get("histogen") or {}).get("provenance") or {}).get("parameters") or {}
        shape = tuple(params.get("shape") or ()) or host._reference_image()[1]
        points = np.asarray(layer.data, dtype=np.float64).reshape(-1, 2)
        classes = layer.features["class"].to_numpy() if len(points) else np.zeros(0, np.int64)
        return CosynRequest(points=points, point_classes=classes, shape=tuple(int(v) for v in shape),
                            mpp=_layers.layer_mpp(layer), steps=int(self.steps_spin.value()),
                            guidance=float(self.guidance_spin.value()), seed=int(self.seed_spin.value())), layer

    @guarded
    def run(self):
        """Start co-synthesis in the background; the result layers are added when it finishes."""
        if self.running:
            raise HistogenInputError("Co-synthesis is already running; wait for it or press Cancel.")
        request, layer = self.request()
        return self._start_section_run("cosyn", request, context=layer,
                                       status=f"Co-synthesizing from '{layer.name}' ({len(request.points)} points)…")

    def _add_results(self, results, points_layer) -> None:
        for res in results:
            name = f"{points_layer.name} → cosyn s{res.seed}"
            self.host._add(_layers.image_layer_data(res.image, name, mpp=res.mask.mpp, provenance=res.provenance))
            dist_data, dist_kwargs, kind = _layers.image_layer_data(res.extras["distance"], f"{name} distance",
                                                                    mpp=res.mask.mpp, provenance=res.provenance)
            self.host._add((dist_data, {**dist_kwargs, "visible": False, "rgb": False}, kind))
            self.host._add(_layers.nuclei_layer_data(res.mask, f"{name} nuclei", provenance=res.provenance))
        notes = "; ".join(dict.fromkeys(n for r in results for n in r.notes))
        self.status.setText(f"Added {len(results)} co-synthesized image(s) with their nuclei masks."
                            + (f" {notes}" if notes else ""))


def add_cosyn_section(host, layout) -> CosynSection:
    """Build the section for the annotate dock ``host`` and put it in ``layout``."""
    section = CosynSection(host)
    layout.addWidget(section)
    host.cosyn_section = section
    return section
