"""The annotate dock's "Generate mask" action, then NASDM on the generated layer (real napari viewer, Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytest.importorskip("torch")

from napari_histogen import _layers  # noqa: E402
from napari_histogen.widgets import _guard  # noqa: E402
from napari_histogen.widgets.annotate_dock import AnnotateDock  # noqa: E402
from conftest import save_tiny_nasdm, wait_idle  # noqa: E402
from test_maskgen import save_tiny_maskgen  # noqa: E402

pytestmark = pytest.mark.gui


def test_generate_mask_adds_editable_nuclei_layers_that_synthesize(make_napari_viewer, tmp_path, monkeypatch,
                                                                    qtbot):
    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest

    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    shown = []
    monkeypatch.setattr(_guard, "notify_error", shown.append)
    save_tiny_maskgen(tmp_path / "model")
    viewer = make_napari_viewer()
    dock = AnnotateDock(viewer)
    viewer.window.add_dock_widget(dock, name="Histogen: annotate")
    section = dock.maskgen_section
    section.model_edit.setText(str(tmp_path / "model"))
    section.type_boxes[3].setChecked(True)  # epithelial
    section.type_boxes[2].setChecked(True)  # inflammatory
    section.count_spin.setValue(2)
    section.seed_spin.setValue(7)
    section.steps_spin.setValue(2)
    section.mpp_spin.setValue(0.5)
    assert section.run() is not None
    wait_idle(qtbot, section)
    assert shown == []
    names = [layer.name for layer in viewer.layers]
    assert names == ["generated inflammatory+epithelial s7", "generated inflammatory+epithelial s8"]
    layer = viewer.layers[names[0]]
    assert _layers.layer_kind(layer) == "nuclei" and _layers.layer_scheme(layer).name == "consep"
    assert layer.data.shape == (32, 32)
    prov = layer.metadata["histogen"]["provenance"]["parameters"]
    assert prov["engine"] == "maskgen" and prov["type_vector"] == [0.0, 1.0, 1.0, 0.0]
    mask = _layers.nuclei_mask_from_layer(layer)
    assert mask.n_nuclei > 0 and set(mask.classes.values()) <= {1, 2, 3, 4}
    # the generated layer synthesizes like a painted one
    engine = NasdmEngine(save_tiny_nasdm(tmp_path / "nasdm"), device="cpu")
    image = engine.run(NasdmRequest(nuclei=mask, steps=2, sampler="ddim"))[0].image
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # an unknown model: one plain sentence, no layer
    section.model_edit.setText(str(tmp_path / "nope"))
    section.run()
    wait_idle(qtbot, section)
    assert shown and "No mask-generation model" in shown[-1]
    assert len(viewer.layers) == 2
