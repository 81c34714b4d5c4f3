"""How long the napari GUI thread stalls while the docks open and while NASDM synthesizes.

A 10 ms ``QTimer`` ticks on the GUI thread; every stall shows up as a gap between two ticks.
Each phase runs in a fresh Python process (so "open the NASDM dock" pays for any import it
triggers, as it would for a user), in a real napari viewer under Xvfb (``xvfb-run`` or
pytest-xvfb; set ``QT_QPA_PLATFORM=offscreen`` to use no display at all). Phases:

- ``open:<dock>`` for the annotate, NASDM, transfer and reader study docks: the viewer is
  started and idle, then the dock is built and docked, and the timer runs until the dock's
  own background work (model info) is done and the window has settled (``--settle`` s);
- ``run:nasdm``: the NASDM dock with the embedded default model synthesizes ``--samples``
  patches on the CPU for a CoNSeP mask of the model's size (the NuCLS sample, classes mapped),
  from the click on Synthesize until the result layers are in the viewer; the session's first
  run, so it includes importing torch and the sampler library and loading the model in the
  worker (imports hold Python's GIL in C for up to a few hundred ms);
- ``rerun:nasdm``: the same, measured on the second run of the session (what every later run costs).

Each row also lists the gaps over 100 ms with the time they ended (s after the phase began),
and the garbage collector's passes over 50 ms (``gc.callbacks``): a full pass over napari's,
torch's and diffusers' objects takes a few hundred ms here and holds Python's lock, so it
shows as a gap whichever thread it runs in.

Prints a table: worst and median gap (ms), ticks, and the phase's wall time. Run (about two
minutes on two cores)::

    OMP_NUM_THREADS=1 PYTHONPATH=src xvfb-run -a .venv/bin/python benchmarks/gui_latency.py

``--phases open:nasdm,run:nasdm`` picks phases; ``--json FILE`` writes the rows.
:func:`measure_gaps` is what ``tests/test_gui_latency.py`` uses with a tiny model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("open:annotate", "open:nasdm", "open:transfer", "open:study", "run:nasdm", "rerun:nasdm")
TICK_MS = 10


def measure_gaps(app, action, done, *, timeout_s: float = 600.0, settle_s: float = 0.5) -> dict:
    """Worst and median gap (ms) between 10 ms GUI-thread timer ticks while ``action`` runs.

    Runs a real Qt event loop (idle waits in C, as napari's does: a Python busy-wait would
    fight the worker for the GIL and slow both). ``action()`` is called from the loop, three
    ticks after the timer started; the measurement ends ``settle_s`` after ``done()`` first
    returns True (checked on every tick), or at ``timeout_s``.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    ticks: list[float] = []
    collections: list[tuple] = []  # (start, end, generation, thread) of the garbage collector's passes
    collecting: dict = {}

    def on_collect(phase, info):
        if phase == "start":
            collecting["t"] = time.perf_counter()
        elif "t" in collecting:
            collections.append((collecting.pop("t"), time.perf_counter(), info["generation"],
                                threading.current_thread().name))

    gc.callbacks.append(on_collect)
    loop = QEventLoop()
    state: dict = {"finished_at": None}
    start = time.perf_counter()

    def tick():
        now = time.perf_counter()
        ticks.append(now)
        if state["finished_at"] is None and state.get("started") and done():
            state["finished_at"] = now
        end = state["finished_at"]
        if (end is not None and now - end > settle_s) or now - start > timeout_s:
            loop.quit()

    def begin():
        state["started"] = True
        action()

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    QTimer.singleShot(TICK_MS * 3, begin)
    loop.exec_() if hasattr(loop, "exec_") else loop.exec()
    timer.stop()
    gc.callbacks.remove(on_collect)
    gaps = [1000.0 * (b - a) for a, b in zip(ticks, ticks[1:])]
    worst_at = ticks[gaps.index(max(gaps))] - start if gaps else float("nan")
    return {"worst_ms": max(gaps) if gaps else float("nan"), "worst_at_s": worst_at,
            "over_100ms": sum(g > 100 for g in gaps),
            "long_gaps": [(round(g), round(ticks[i + 1] - start, 2)) for i, g in enumerate(gaps) if g > 100],
            # garbage collector passes over 50 ms (ms, start s, generation, thread): they hold Python's lock
            "gc_pauses": [(round(1000 * (b - a)), round(a - start, 2), g, name)
                          for a, b, g, name in collections if b - a > 0.05],
            "median_ms": statistics.median(gaps) if gaps else float("nan"),
            "ticks": len(ticks), "wall_s": time.perf_counter() - start, "timed_out": state["finished_at"] is None}


def _dock_class(name: str):
    if name == "annotate":
        from napari_histogen.widgets.annotate_dock import AnnotateDock  # what the Plugins menu opens
        return AnnotateDock
    if name == "nasdm":
        from napari_histogen.widgets.nasdm import NasdmWidget
        return NasdmWidget
    if name == "transfer":
        from napari_histogen.widgets.transfer import TransferWidget
        return TransferWidget
    from napari_histogen.widgets.study import StudyWidget
    return StudyWidget


def _busy(widget) -> bool:
    return bool(getattr(widget, "busy", False) or getattr(widget, "running", False))


def demo_mask(image_size: int, mpp: float):
    """The NuCLS sample's CoNSeP-mapped nuclei mask at the model's size and scale."""
    from napari_histogen.core.demo import demo_masks

    return demo_masks(image_size, mpp)[0][1]


def run_phase(phase: str, *, samples: int, settle_s: float, model: str | None = None) -> dict:
    """One phase in this process (a fresh viewer): its gap statistics."""
    import napari
    from qtpy.QtWidgets import QApplication

    kind, dock = phase.split(":")
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 1000)
    app = QApplication.instance()
    for _ in range(50):  # let the window come up before measuring
        app.processEvents()
        time.sleep(0.01)
    holder: dict = {}
    if kind == "open":
        def action():
            # importing the dock's module is part of napari's menu action too, on the GUI thread
            cls = _dock_class(dock)
            holder["widget"] = widget = cls(viewer)
            viewer.window.add_dock_widget(widget, name=dock)

        row = measure_gaps(app, action, lambda: "widget" in holder and not _busy(holder["widget"]), settle_s=settle_s)
    else:
        from napari_histogen import _layers
        from napari_histogen.core.engines.nasdm import read_model_config

        widget = _dock_class("nasdm")(viewer)
        viewer.window.add_dock_widget(widget, name="nasdm")
        if model:
            widget.set_model(model)
        config = read_model_config(model or "default")
        data, kwargs, _ = _layers.nuclei_layer_data(demo_mask(config.image_size, config.mpp), "mask")
        viewer.add_labels(data, **kwargs)
        widget.samples_spin.setValue(samples)
        widget.device_combo.setCurrentText("cpu")
        t0 = time.perf_counter()
        while _busy(widget) and time.perf_counter() - t0 < 120:  # the dock's own start-up work
            app.processEvents()
            time.sleep(0.01)
        if kind == "rerun":  # a first run unmeasured: torch, the sampler library and the model are loaded
            widget.run()
            while widget.running:
                app.processEvents()
                time.sleep(0.01)
        n_layers = len(viewer.layers)
        row = measure_gaps(app, widget.run, lambda: not widget.running and len(viewer.layers) > n_layers,
                           settle_s=settle_s)
        row["steps"] = widget.steps_spin.value()
        row["status"] = widget.status.text()[:120]
    row["phase"] = phase
    viewer.close()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--samples", type=int, default=2, help="patches per NASDM run")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds measured after a phase is done")
    parser.add_argument("--model", default=None, help="NASDM model for run:nasdm (default: the embedded one)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one phase
    args = parser.parse_args(argv)
    if args.one:
        row = run_phase(args.one, samples=args.samples, settle_s=args.settle, model=args.model)
        print("ROW " + json.dumps(row))
        return 0
    rows = []
    env = os.environ.copy()
    # a throw-away home: the docks' remembered settings neither leak into nor come from the user's
    env["HISTOGEN_HOME"] = tempfile.mkdtemp(prefix="histogen-gui-latency-")
    for phase in args.phases.split(","):
        cmd = [sys.executable, __file__, "--one", phase, "--samples", str(args.samples), "--settle", str(args.settle)]
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode != 0 or not found:
            print(f"{phase}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(found[-1][4:]))
    print(f"{'phase':16s} {'worst ms':>9s} {'median ms':>10s} {'ticks':>6s} {'wall s':>7s}")
    for row in rows:
        print(f"{row['phase']:16s} {row['worst_ms']:9.1f} {row['median_ms']:10.1f} {row['ticks']:6d} {row['wall_s']:7.1f}"
              + ("  TIMED OUT" if row["timed_out"] else ""))
        if row["long_gaps"]:
            print(f"{'':16s} gaps over 100 ms (ms@s): " + ", ".join(f"{g}@{t}" for g, t in row["long_gaps"]))
        if row["gc_pauses"]:
            print(f"{'':16s} garbage collector passes over 50 ms (ms@s gen thread): "
                  + ", ".join(f"{ms}@{t} g{g} {name}" for ms, t, g, name in row["gc_pauses"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if len(rows) == len(args.phases.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
