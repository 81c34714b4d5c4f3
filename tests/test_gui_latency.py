"""The GUI thread keeps ticking while the NASDM dock opens and synthesizes (tiny model, real viewer).

A generous bound (1 s) that only a multi-second freeze breaks; ``benchmarks/gui_latency.py``
measures the real numbers with the embedded default model.
"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")
pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gui_latency import measure_gaps  # noqa: E402

from napari_histogen import _layers  # noqa: E402
from napari_histogen.core.masks import NucleiMask  # noqa: E402

pytestmark = pytest.mark.gui
WORST_GAP_MS = 1000.0


def test_opening_and_running_the_nasdm_dock_never_freezes(make_napari_viewer, tiny_nasdm, tmp_path, monkeypatch,
                                                           qapp):
    import numpy as np

    from napari_histogen.widgets.nasdm import NasdmWidget

    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer(show=True)
    holder = {}

    def open_dock():
        holder["widget"] = widget = NasdmWidget(viewer)
        viewer.window.add_dock_widget(widget, name="NASDM synthesis")
        widget.set_model(tiny_nasdm)

    opened = measure_gaps(qapp, open_dock, lambda: "widget" in holder, timeout_s=60, settle_s=0.3)
    assert not opened["timed_out"] and opened["worst_ms"] < WORST_GAP_MS, opened

    widget = holder["widget"]
    inst = np.zeros((32, 32), np.int32)
    inst[3:10, 3:10], inst[12:18, 15:24] = 1, 2
    data, kwargs, _ = _layers.nuclei_layer_data(NucleiMask.create(inst, {1: 3, 2: 2}, "consep", mpp=0.5), "mask")
    viewer.add_labels(data, **kwargs)
    viewer.add_image(np.zeros((8, 8), np.float32), name="bystander")  # alive at the run's end, removed later
    viewer.layers.selection.active = viewer.layers["mask"]
    widget.steps_spin.setValue(40)
    widget.samples_spin.setValue(3)
    widget.device_combo.setCurrentText("cpu")
    ran = measure_gaps(qapp, widget.run, lambda: not widget.running, timeout_s=120, settle_s=0.3)
    assert not ran["timed_out"], ran
    assert len(widget.results.layers()) == 4  # the run really happened: 3 images + their outline layer
    assert ran["worst_ms"] < WORST_GAP_MS, ran
    assert ran["ticks"] > 10

    # the run took what was alive out of the collector's passes; removing a layer gives it back
    import gc
    import weakref

    assert gc.get_freeze_count() > 0
    bystander = weakref.ref(viewer.layers["bystander"])
    viewer.layers.remove("bystander")
    assert gc.get_freeze_count() == 0
    from qtpy.QtCore import QEvent

    for _ in range(3):  # napari's Qt side lets go of the layer once its controls are deleted (deferred)
        qapp.processEvents()
        qapp.sendPostedEvents(None, QEvent.DeferredDelete)
        gc.collect()
    assert bystander() is None  # the removed layer is collected, not held by the freeze


def test_runs_leave_the_gui_thread_a_core():
    import os

    import torch

    from napari_histogen.widgets._runner import gui_friendly_threads

    before = torch.get_num_threads()
    with gui_friendly_threads():
        inside = torch.get_num_threads()
    assert inside == max(1, min(before, (os.cpu_count() or 2) - 1))
    assert torch.get_num_threads() == before


def test_result_layers_are_added_without_selecting_them_and_repainted_in_a_later_turn(make_napari_viewer, qtbot):
    import numpy as np

    from napari_histogen.widgets._results import ResultLayers

    viewer = make_napari_viewer(show=True)
    mask = viewer.add_labels(np.zeros((16, 16), np.int32), name="mask")
    window = viewer.window._qt_window
    results = ResultLayers(viewer, "test")
    seen = []  # (updates enabled while the layer was added, the layer)

    def after(layer):
        seen.append((window.updatesEnabled(), layer))

    items = [(np.full((16, 16, 3), k, np.uint8), results.tag({"name": f"r{k}", "rgb": True}, "mask", 0), "image", after)
             for k in range(2)]
    done = []
    results.add_later(items, on_added=lambda: done.append(True))
    qtbot.waitUntil(lambda: bool(done), timeout=10_000)
    qtbot.waitUntil(window.updatesEnabled, timeout=5_000)  # repaints resume one turn later
    assert [layer.name for _held, layer in seen] == ["r0", "r1"]
    assert not any(held for held, _layer in seen)  # no repaint inside the turn that adds a layer
    assert viewer.layers.selection.active is mask  # the user's selection stays as it was
    assert [layer.name for layer in results.layers()] == ["r0", "r1"]


def test_torch_libraries_are_preloaded_before_the_first_import():
    import os
    import subprocess

    code = ("import sys\n"
            "from napari_histogen.widgets._runner import preload_torch_libraries\n"
            "assert 'torch' not in sys.modules\n"
            "loaded = preload_torch_libraries()\n"
            "maps = open('/proc/self/maps').read() if sys.platform.startswith('linux') else ''\n"
            "import torch\n"
            "print(loaded, all(name in maps for name in loaded), float(torch.ones(2).sum()), preload_torch_libraries())\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": src})
    assert out.returncode == 0, out.stderr[-2000:]
    if sys.platform.startswith("linux"):  # mapped before torch was imported; nothing to do once it is
        assert out.stdout.split() == ["['libc10.so',", "'libtorch_cpu.so',", "'libtorch.so',", "'libtorch_python.so']",
                                      "True", "2.0", "[]"], out.stdout
