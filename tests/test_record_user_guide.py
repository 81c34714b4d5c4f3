"""The user guide's GIF recorder: a workflow and a GIF for every page that shows one."""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _recorder():
    spec = importlib.util.spec_from_file_location("record_user_guide", ROOT / "scripts" / "record_user_guide.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_gif_in_the_guide_is_recorded_by_the_script_and_exists():
    recorder = _recorder()
    shown = set()
    for page in (ROOT / "docs").glob("*.md"):
        shown |= set(re.findall(r"images/gifs/([a-z_]+)\.gif", page.read_text()))
    assert {"annotate", "nasdm", "transfer", "large_canvas", "reader_study", "cli"} <= shown
    assert shown <= set(recorder.WORKFLOWS), f"GIFs no workflow records: {shown - set(recorder.WORKFLOWS)}"
    for name in shown:
        gif = ROOT / "docs" / "images" / "gifs" / f"{name}.gif"
        assert gif.is_file() and gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")


def test_terminal_lines_redraw_progress_bars_like_a_terminal():
    recorder = _recorder()
    stream = io.BufferedReader(io.BytesIO(b"start\nbar 1/3\rbar 2/3\rbar 3/3\ndone"))
    assert list(recorder._terminal_lines(stream)) == [
        ("start", False), ("bar 1/3", True), ("bar 2/3", True), ("bar 3/3", False), ("done", False)]


def test_caption_bar_is_added_below_a_scaled_frame():
    recorder = _recorder()
    frame = np.zeros((450, 700, 3), np.uint8)
    out = recorder._captioned(frame, "Paint a nucleus \u2192 the class table counts it")
    assert out.shape == (round(450 * recorder.GIF_WIDTH / 700) + recorder.CAPTION_PX, recorder.GIF_WIDTH, 3)
    assert out[-recorder.CAPTION_PX:].max() > 200  # the caption's text is drawn
