"""The annotate dock's "Co-synthesize" action end to end with a tiny model (real napari viewer, Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytest.importorskip("torch")

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.schemes import get_scheme  # noqa: E402
from napari_histogen.widgets import _guard  # noqa: E402
from napari_histogen.widgets.annotate_dock import AnnotateDock  # noqa: E402
from conftest import wait_idle  # noqa: E402
from test_cosyn import save_tiny_cosyn  # noqa: E402

pytestmark = pytest.mark.gui


def test_cosynthesize_adds_image_typed_mask_and_distance(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    shown = []
    monkeypatch.setattr(_guard, "notify_error", shown.append)
    save_tiny_cosyn(tmp_path / "model")
    viewer = make_napari_viewer()
    dock = AnnotateDock(viewer)
    viewer.window.add_dock_widget(dock, name="Histogen: annotate")
    viewer.add_image(np.full((32, 48, 3), 200, np.uint8), name="canvas", rgb=True)
    dock.image_combo.setCurrentText("canvas")
    scheme = get_scheme("consep")
    data, kwargs, kind = _layers.points_layer_data(np.array([[6.0, 8.0], [20.0, 30.0], [25.0, 12.0]]), [1, 3, 2],
                                                   scheme, "layout", mpp=0.25)
    points = viewer.add_points(data, **kwargs)
    dock.target_combo.setCurrentText(points.name)
    section = dock.cosyn_section
    section.model_edit.setText(str(tmp_path / "model"))
    section.steps_spin.setValue(2)
    section.seed_spin.setValue(5)
    assert section.run() is not None
    wait_idle(qtbot, section)
    assert shown == []
    names = [layer.name for layer in viewer.layers]
    assert "layout → cosyn s5" in names and "layout → cosyn s5 nuclei" in names
    image = viewer.layers["layout → cosyn s5"]
    nuclei = viewer.layers["layout → cosyn s5 nuclei"]
    assert image.data.shape == (32, 48, 3) and nuclei.data.shape == (32, 48)
    assert _layers.layer_kind(nuclei) == "nuclei" and _layers.layer_scheme(nuclei).name == "consep"
    prov = nuclei.metadata["histogen"]["provenance"]
    assert prov["parameters"]["engine"] == "cosyn" and prov["parameters"]["n_points"] == 3
    assert viewer.layers["layout → cosyn s5 distance"].visible is False
    # the nuclei layer is editable like any other: painting a new nucleus keeps its class table in sync
    mask = _layers.nuclei_mask_from_layer(nuclei)
    assert set(mask.classes.values()) <= {1, 2, 3, 4}
    # no point layout selected: one plain sentence, no run
    dock.target_combo.setCurrentText("canvas")
    section.run()
    assert shown and "point layout" in shown[-1]
