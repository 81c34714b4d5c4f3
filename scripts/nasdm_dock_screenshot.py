"""Make docs/images/nasdm_dock.png: the NASDM dock after a real run of the embedded model.

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python scripts/nasdm_dock_screenshot.py [--steps N]

The sample is shown at the embedded model's scale; steps default to the model's recommendation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_histogen import _layers
from napari_histogen.core.demo import demo_masks
from napari_histogen.widgets.nasdm import NasdmWidget

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "nasdm_dock.png"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=None, help="default: the model's recommendation")
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1400, 900)
    from napari_histogen.core.engines.nasdm import read_model_config

    config = read_model_config(None)
    name, mask, real = demo_masks(config.image_size, config.mpp)[0]
    data, kwargs, _ = _layers.image_layer_data(real, f"{name} (real, {10 / config.mpp:g}x)", mpp=mask.mpp)
    viewer.add_image(data, **kwargs)
    data, kwargs, _ = _layers.nuclei_layer_data(mask, f"{name} nuclei")
    viewer.add_labels(data, **kwargs)
    widget = NasdmWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Histogen: NASDM")
    widget.mask_combo.setCurrentText(f"{name} nuclei")
    if args.steps is not None:
        widget.steps_spin.setValue(args.steps)
    widget.samples_spin.setValue(args.samples)
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    QApplication.processEvents()
    viewer.window.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
