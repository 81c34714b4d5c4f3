"""Record the user guide's animated GIFs from the real GUI (napari under Xvfb).

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python scripts/record_user_guide.py [--only nasdm,annotate]

Each workflow opens a fresh napari viewer, drives the Histogen docks through their public
methods (the same calls their buttons make), grabs the whole window after each step, adds a
caption bar saying what the step was, and writes ``docs/images/gifs/<workflow>.gif`` (plus a
still of the last frame, ``<workflow>.png``, for the workflows in :data:`STILLS`). Synthesis runs use the embedded default model
on the CPU, so a GIF shows what a user without a GPU sees (run times are real; the GIF holds
a frame every couple of seconds while a run is busy, and says how long it took).

Only redistributable data appear: the NuCLS sample (CC0), scikit-image's IHC image and
images synthesized from their masks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "docs" / "images" / "gifs"
WINDOW = (1400, 900)
GIF_WIDTH = 900  # px; keeps each GIF around 1 MB
CAPTION_PX = 34
#: workflows whose last frame the docs also show as a still picture
STILLS = ("large_canvas",)
BUSY_FRAME_S = 2.0


class Recorder:
    """Frames of one workflow: window grabs with a caption bar, saved as a GIF."""

    def __init__(self, viewer, name: str):
        self.viewer = viewer
        self.name = name
        self.frames: list[tuple[np.ndarray, int]] = []

    def settle(self, seconds: float = 0.3) -> None:
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.02)

    def snap(self, caption: str, hold_ms: int = 1600, *, fit: bool = True) -> None:
        """Grab the whole window (docks included) with ``caption`` under it (``fit``: all layers in view)."""
        if fit:
            self.viewer.reset_view()
        self.settle()
        # a dock adding a result layer holds the window's repaint for one event-loop turn
        # (widgets/_results.py); a grab in that turn would be blank
        window = self.viewer.window._qt_window
        for _ in range(100):
            if window.updatesEnabled():
                break
            self.settle(0.02)
        shot = np.asarray(self.viewer.screenshot(canvas_only=False, flash=False))[..., :3]
        self.frames.append((_captioned(shot, caption), hold_ms))

    def wait_for(self, dock, caption: str, timeout_s: float = 900.0) -> float:
        """Wait until ``dock`` stops running, grabbing a frame every couple of seconds."""
        start = time.monotonic()
        next_frame = start
        while dock.running:
            if time.monotonic() >= next_frame:
                self.snap(f"{caption} ({time.monotonic() - start:.0f} s)", hold_ms=400)
                next_frame = time.monotonic() + BUSY_FRAME_S
            self.settle(0.05)
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"{self.name}: the run did not finish within {timeout_s:.0f} s")
        return time.monotonic() - start

    def wait_added(self, dock, timeout_s: float = 30.0) -> None:
        """Wait until ``dock`` has added every result layer it queued."""
        start = time.monotonic()
        while dock.results.pending and time.monotonic() - start < timeout_s:
            self.settle(0.05)

    def save(self, out_dir: Path) -> Path:
        from PIL import Image

        out_dir.mkdir(parents=True, exist_ok=True)
        images = [Image.fromarray(frame) for frame, _ in self.frames]
        palette = images[-1].quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
        durations = [hold for _, hold in self.frames]
        durations[-1] = 4000  # the result stays up
        path = out_dir / f"{self.name}.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
        if self.name in STILLS:
            images[-1].save(out_dir / f"{self.name}.png", optimize=True)
        return path


def _captioned(shot: np.ndarray, caption: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.ascontiguousarray(shot))
    height = round(image.height * GIF_WIDTH / image.width)
    image = image.resize((GIF_WIDTH, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (GIF_WIDTH, height + CAPTION_PX), (24, 24, 28))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    # the default bitmap font has no arrows
    draw.text((10, height + 7), caption.replace("\u2192", "->"), fill=(240, 240, 240), font=font)
    return np.asarray(canvas)


def _viewer():
    import napari

    viewer = napari.Viewer()
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def _dock(viewer, widget_name: str):
    """Open a dock the way the Plugins menu does."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-histogen", widget_name)
    return widget


def _layer(viewer, kind: str, suffix: str = ""):
    from napari_histogen import _layers

    for layer in viewer.layers:
        if _layers.layer_kind(layer) == kind and layer.name.endswith(suffix):
            return layer
    raise LookupError(f"no {kind} layer")


# -- workflows ------------------------------------------------------------------------------
def record_annotate(out_dir: Path) -> Path:
    viewer = _viewer()
    rec = Recorder(viewer, "annotate")
    viewer.open_sample("napari-histogen", "nucls")
    rec.snap("File > Open Sample > NuCLS: the patch, its nuclei (NuCLS classes) and typed points")
    dock = _dock(viewer, WIDGET_NAMES["annotate"])
    nuclei = _layer(viewer, "nuclei")
    dock.target_combo.setCurrentText(nuclei.name)
    rec.snap("Plugins > Histogen > Annotate: class palette and counts for the nuclei layer")
    _paint_nucleus(viewer, dock, nuclei, rec)
    converted = _convert_to_consep(viewer, dock, nuclei)
    rec.snap(f"Convert classes: NuCLS -> CoNSeP ('{converted.name}'), ready for NASDM")
    points = _layer(viewer, "points")
    grown = dock.points_to_nuclei(layer=points)
    rec.snap(f"Points -> nuclei: nuclei grown from the typed points ('{grown.name}')")
    path = rec.save(out_dir)
    viewer.close()
    return path


def _convert_to_consep(viewer, dock, nuclei):
    """The annotate dock's Convert classes button, NuCLS -> CoNSeP; returns the new layer."""
    before = set(viewer.layers)
    dock.target_combo.setCurrentText(nuclei.name)
    dock.to_scheme_combo.setCurrentText("consep")
    dock.convert_scheme_btn.click()
    added = [layer for layer in viewer.layers if layer not in before]
    if not added:
        raise RuntimeError("Convert classes added no layer: " + dock.status.text())
    return added[-1]


def _paint_nucleus(viewer, dock, nuclei, rec: Recorder) -> None:
    """Paint one epithelial-sized nucleus with the brush, as a user would."""
    viewer.layers.selection.active = nuclei
    class_id = 1
    dock.select_class(class_id, layer=nuclei)
    nuclei.mode = "paint"
    nuclei.brush_size = 6
    free = np.argwhere(nuclei.data == 0)
    centre = free[len(free) // 2]
    for dy in range(-4, 5, 2):
        for dx in range(-5, 6, 2):
            nuclei.paint((int(centre[0]) + dy, int(centre[1]) + dx), nuclei.selected_label, refresh=True)
    rec.snap(f"Paint: a new nucleus of class {class_id}; the class table counts it")
    nuclei.undo()
    rec.snap("Ctrl+Z: undo; the class table follows")
    nuclei.mode = "pan_zoom"


def record_nasdm(out_dir: Path) -> Path:
    viewer = _viewer()
    rec = Recorder(viewer, "nasdm")
    viewer.open_sample("napari-histogen", "nucls")
    annotate = _dock(viewer, WIDGET_NAMES["annotate"])
    converted = _convert_to_consep(viewer, annotate, _layer(viewer, "nuclei"))
    rec.snap("NuCLS sample, its nuclei converted to CoNSeP classes in the annotate dock (one click)")
    dock = _dock(viewer, WIDGET_NAMES["nasdm"])
    dock.mask_combo.setCurrentText(converted.name)
    dock.samples_spin.setValue(2)
    rec.snap("Plugins > Histogen > NASDM synthesis: the mask, the embedded default model, 2 samples")
    dock.run()
    took = rec.wait_for(dock, "Synthesizing on the CPU")
    rec.snap(f"Two synthetic patches beside the mask, outlines on top ({took:.0f} s on 2 CPU cores)")
    dock.seed_spin.setValue(dock.seed_spin.value() + 10)
    dock.run()
    took = rec.wait_for(dock, "Another run with a new seed")
    rec.snap(f"A second run lands in the next row of the results grid ({took:.0f} s)")
    path = rec.save(out_dir)
    viewer.close()
    return path


def record_large_canvas(out_dir: Path) -> Path:
    viewer = _viewer()
    rec = Recorder(viewer, "large_canvas")
    viewer.open_sample("napari-histogen", "ihc")
    rec.snap("File > Open Sample > IHC colon glands: 512 x 512 px with tissue and nuclei masks")
    dock = _dock(viewer, WIDGET_NAMES["nasdm"])
    dock.mask_combo.setCurrentText(_layer(viewer, "nuclei").name)
    dock.samples_spin.setValue(1)
    rec.snap("NASDM dock: the whole 512 px nuclei mask, no cropping (PathUp tiles it)")
    dock.run()
    took = rec.wait_for(dock, "Tiles denoised together, step by step")
    rec.snap(f"One seamless synthetic canvas beside the mask ({took:.0f} s on 2 CPU cores)")
    path = rec.save(out_dir)
    viewer.close()
    return path


def record_reader_study(out_dir: Path) -> Path:
    from qtpy.QtCore import Qt

    from napari_histogen.core.study import create_study

    with tempfile.TemporaryDirectory() as tmp:
        folders = _study_folders(Path(tmp))
        # a short, generic study path: the dock shows it in the recording
        study_dir = Path(tempfile.gettempdir()) / "colon-study"
        if study_dir.exists():
            shutil.rmtree(study_dir)
        result = create_study(folders["real"], folders["synthetic"], study_dir, masks=[folders["real"]], seed=3)
        viewer = _viewer()
        rec = Recorder(viewer, "reader_study")
        dock = _dock(viewer, WIDGET_NAMES["study"])
        dock.open_study(result.study, "pathologist1")
        rec.snap(f"Reader study: {result.n_cases} blinded cases, real and synthetic mixed; keys score them")
        canvas = viewer.window._qt_viewer.canvas.native
        for keys, caption in (((Qt.Key_8, Qt.Key_B), "8 = realism score, B = a criterion ticked"),
                              ((Qt.Key_Right,), "Right arrow: save and next case"),
                              ((Qt.Key_M,), "M: show the case's mask outline"),
                              ((Qt.Key_3, Qt.Key_Return), "3, Enter: save and next")):
            for key in keys:
                _key(canvas, key)
            rec.snap(caption)
        path = rec.save(out_dir)
        dock.close_study()
        viewer.close()
        shutil.rmtree(study_dir, ignore_errors=True)
    return path


def _key(widget, key) -> None:
    from qtpy.QtCore import QEvent, Qt
    from qtpy.QtGui import QKeyEvent
    from qtpy.QtWidgets import QApplication

    for kind in (QEvent.KeyPress, QEvent.KeyRelease):
        QApplication.sendEvent(widget, QKeyEvent(kind, key, Qt.NoModifier))
    QApplication.processEvents()


def _study_folders(root: Path) -> dict[str, Path]:
    """Real NuCLS crops and NASDM patches synthesized from their masks (CC0 data and our outputs)."""
    from PIL import Image

    from napari_histogen.core.crops import crop_nuclei, tile_boxes
    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
    from napari_histogen.core.masks import type_map_from_nuclei
    from napari_histogen.core.sample import nucls_sample
    from napari_histogen.core.scheme_maps import convert_nuclei_scheme

    sample = nucls_sample()
    nuclei = convert_nuclei_scheme(sample.nuclei, "consep", unclassified="other")
    folders = {kind: root / kind for kind in ("real", "synthetic")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    engine = NasdmEngine("default", device="cpu")
    for n, box in enumerate(tile_boxes(nuclei.shape, nuclei.shape[0] // 2)):
        row0, col0, row1, col1 = box
        crop = crop_nuclei(nuclei, box)
        synthetic = engine.run(NasdmRequest(nuclei=crop, n_samples=1, seed=n))[0].image
        for kind, rgb in (("real", sample.image[row0:row1, col0:col1]), ("synthetic", synthetic)):
            Image.fromarray(np.ascontiguousarray(rgb)).save(folders[kind] / f"patch{n}.png")
            np.savez(folders[kind] / f"patch{n}_mask.npz", inst_map=crop.instances,
                     type_map=type_map_from_nuclei(crop.instances, crop.classes), scheme=np.array("consep"))
    engine.free()
    return folders


def record_transfer(out_dir: Path) -> Path:
    """The transfer dock on the IHC sample: the Stable Diffusion method first (its weights cannot
    be downloaded where the guide is recorded, so that run ends with the dock's own message on
    how to install them, which an offline workstation without them shows), then the
    example-based method, which needs no model and makes the patch on the CPU."""
    viewer = _viewer()
    rec = Recorder(viewer, "transfer")
    viewer.open_sample("napari-histogen", "ihc")
    rec.snap("File > Open Sample > IHC colon glands: the appearance image with its tissue mask")
    dock = _dock(viewer, WIDGET_NAMES["transfer"])
    tissue = _layer(viewer, "tissue")
    dock.source_mask_combo.setCurrentText(tissue.name)
    dock.target_combo.setCurrentText(tissue.name)
    rec.snap("Appearance transfer: the appearance image, its mask, and the target tissue mask")
    dock.run()
    rec.wait_for(dock, "Loading Stable Diffusion")
    rec.snap("No Stable Diffusion weights on this machine: the dock says how to install them")
    dock.method_combo.setCurrentText("example-based (CPU)")
    rec.snap("method: example-based (CPU) needs no model")
    dock.run()
    rec.wait_for(dock, "Example-based transfer on the CPU")
    rec.wait_added(dock)
    rec.snap("Four synthetic patches (seeds 0-3) above their masks, beside the target mask")
    path = rec.save(out_dir)
    viewer.close()
    return path


def record_cli(out_dir: Path) -> Path:
    """`histogen demo --headless` in a terminal, frame by frame as its lines arrive."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        command = ["histogen", "demo", "--headless", "--out", "histogen-demo"]
        started = time.monotonic()
        import napari_histogen

        # the same package as this script's (a source checkout's src/ is not on the path in tmp)
        env = {**os.environ, "PYTHONPATH": str(Path(napari_histogen.__file__).resolve().parents[1])}
        proc = subprocess.Popen([sys.executable, "-m", "napari_histogen.cli", *command[1:]], cwd=tmp, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        lines = ["$ " + " ".join(command)]
        frames = [(_terminal(lines), 1500)]
        redrawing = False
        for text, redraw in _terminal_lines(proc.stdout):
            if redrawing:  # the progress bar's previous state is overwritten
                lines.pop()
            lines.append(text.replace(tmp, "."))
            redrawing = redraw
            frames.append((_terminal(lines), 250 if redraw else 700))
        proc.wait()
        lines.append(f"$   # {time.monotonic() - started:.0f} s on 2 CPU cores; outputs in histogen-demo/")
        frames.append((_terminal(lines), 4000))
    rec = Recorder(None, "cli")
    rec.frames = frames
    return rec.save(out_dir)


def _terminal_lines(stream):
    """``(text, redraw)`` for each line of a byte stream; ``redraw`` when a carriage return
    ended it (a progress bar that the next text overwrites, as a terminal shows it)."""
    buffer = b""
    while chunk := stream.read1(4096):
        buffer += chunk
        while (cut := min((i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0), default=-1)) >= 0:
            text, sep, buffer = buffer[:cut], buffer[cut:cut + 1], buffer[cut + 1:]
            if text:
                yield text.decode("utf-8", "replace").rstrip(), sep == b"\r"
    if buffer:
        yield buffer.decode("utf-8", "replace").rstrip(), False


def _terminal(lines: list[str], rows: int = 24) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype("DejaVuSansMono.ttf", 15)
    except OSError:
        font = ImageFont.load_default(size=15)
    image = Image.new("RGB", (GIF_WIDTH, 24 + rows * 20), (18, 18, 22))
    draw = ImageDraw.Draw(image)
    wrapped = [part for line in lines for part in (line[i:i + 96] for i in range(0, max(len(line), 1), 96))]
    for row, text in enumerate(wrapped[-rows:]):
        draw.text((12, 12 + row * 20), text, fill=(220, 220, 220), font=font)
    return np.asarray(image)


# registry display names of the docks (napari.yaml)
WIDGET_NAMES = {"annotate": "Annotate nuclei and tissue", "nasdm": "NASDM synthesis",
                "transfer": "Appearance transfer", "study": "Reader study"}
WORKFLOWS = {"annotate": record_annotate, "nasdm": record_nasdm, "large_canvas": record_large_canvas,
             "transfer": record_transfer, "reader_study": record_reader_study, "cli": record_cli}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(WORKFLOWS), help="comma-separated: " + ", ".join(WORKFLOWS))
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # a fresh home: the user's remembered dock settings neither change the recording nor get
    # overwritten by it, and the study's key stays out of the user's key folder
    # (a short fixed name: messages in the recording show these folders)
    scratch = os.path.join(tempfile.gettempdir(), "histogen-guide")
    shutil.rmtree(scratch, ignore_errors=True)
    os.environ["HISTOGEN_HOME"] = os.path.join(scratch, "home")
    os.environ["HISTOGEN_KEY_DIR"] = os.path.join(scratch, "keys")
    os.environ["HF_HOME"] = os.path.join(scratch, "huggingface")
    for name in args.only.split(","):
        start = time.monotonic()
        path = WORKFLOWS[name.strip()](args.out)
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB, {time.monotonic() - start:.0f} s)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
