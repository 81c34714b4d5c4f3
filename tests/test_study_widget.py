"""The reader study dock driven with the keyboard in a real napari viewer (Xvfb via pytest-xvfb), with screenshots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="the GUI tests need a Qt binding (install the 'qt' extra)")

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QAbstractButton, QApplication, QLabel, QLineEdit, QPlainTextEdit, QWidget  # noqa: E402

from napari_histogen.core.study import create_study, read_answer_log  # noqa: E402
from napari_histogen.widgets import _guard  # noqa: E402
from napari_histogen.widgets.study import StudyWidget  # noqa: E402

from test_study import ENGINE, GROUPS, MODEL, make_folders  # noqa: E402

pytestmark = pytest.mark.gui
SCREENSHOTS = Path(__file__).parent / "screenshots"
README_SHOT = SCREENSHOTS / "study_dock_readme.png"  # copied by hand to docs/images/study_dock.png

# files opened while a flag is set: proves the key is never read while scoring
_OPENED: list[str] = []
_WATCH = {"on": False}


def _audit(event, args):
    if _WATCH["on"] and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def errors(monkeypatch):
    shown = []
    monkeypatch.setattr(_guard, "notify_error", shown.append)
    return shown


@pytest.fixture
def infos(monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histogen.widgets.study.notify_info", shown.append)
    return shown


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1400, 950)
    widget = StudyWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Reader study")
    return viewer, widget


def _press(viewer, qtbot, *keys):
    canvas = viewer.window._qt_viewer.canvas.native
    for key in keys:
        qtbot.keyClick(canvas, key)
        QApplication.processEvents()


def _visible_text(widget: QWidget) -> str:
    """Everything the dock shows or tells on hover."""
    parts = []
    for w in [widget, *widget.findChildren(QWidget)]:
        parts.append(w.toolTip())
        if isinstance(w, (QLabel, QAbstractButton, QLineEdit)):
            parts.append(w.text())
        if isinstance(w, QLineEdit):
            parts.append(w.placeholderText())
        if isinstance(w, QPlainTextEdit):
            parts.append(w.toPlainText())
    return "\n".join(parts)


def _forbidden(key: dict, folders: dict) -> list[str]:
    words = [ENGINE, MODEL, *GROUPS, "real_", "syn_", "/key/", str(folders["real"]), str(folders["synthetic"])]
    return words + [Path(c["source"]).stem for c in key["cases"].values()]


def _check_blind(viewer, widget, key, folders, session):
    layers = list(viewer.layers)
    assert [layer.name for layer in layers if layer.visible] == (["case", "mask"] if session.criteria else ["case"])
    shown = _visible_text(widget) + "\n" + viewer.title
    for layer in layers:
        assert layer.metadata == {} and layer.source.path is None
        shown += "\n" + layer.name + "\n" + str(layer.source)
    for word in _forbidden(key, folders):
        assert word not in shown, word
    np.testing.assert_array_equal(viewer.layers["case"].data, session.load_case().image)


def test_score_mask_study_with_the_keyboard_and_screenshot(dock, qtbot, tmp_path, errors, infos):
    viewer, widget = dock
    folders = make_folders(tmp_path / "in", n_real=2, n_synthetic=2, masks=True)
    result = create_study(folders["real"], folders["synthetic"], tmp_path / "study", masks=folders["masks"],
                          per_class_from="subfolders", seed=11, title="Colon H&E realism")
    key = json.loads(result.key_path.read_text())
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="my other image", rgb=True)

    _OPENED.clear()
    _WATCH["on"] = True
    try:
        session = widget.open_study(result.study, "pathologist1")
        assert session is not None and widget.progress_label.text() == "1 / 8"
        assert not widget.criteria_box.isHidden() and not widget.auto_next.isChecked()
        # only the case is in the viewer: other layers are removed (a hidden one could be shown again)
        assert "my other image" not in [layer.name for layer in viewer.layers]
        token = session.issued_token
        assert token and any(token in note for note in infos)
        _check_blind(viewer, widget, key, folders, session)

        # case 1: score 7 (key 7), tick boundaries (B) and missing (M), save with Right
        _press(viewer, qtbot, Qt.Key_7, Qt.Key_B, Qt.Key_M)
        assert widget.score_buttons[7].isChecked() and widget.criteria_checks["boundaries"].isChecked()
        widget.comment_edit.setText("nuclei look painted")
        _press(viewer, qtbot, Qt.Key_Right)
        assert widget.progress_label.text() == "2 / 8"
        # case 2: key 0 = 10, Enter saves and moves on
        _press(viewer, qtbot, Qt.Key_0, Qt.Key_T, Qt.Key_Return)
        assert widget.progress_label.text() == "3 / 8"
        _check_blind(viewer, widget, key, folders, session)
        # Left goes back and shows the saved answer; a new score there is a new record
        _press(viewer, qtbot, Qt.Key_Left)
        assert widget.progress_label.text() == "2 / 8" and widget.score_buttons[10].isChecked()
        assert widget.criteria_checks["types"].isChecked()
        _press(viewer, qtbot, Qt.Key_9, Qt.Key_Right)
        assert widget.progress_label.text() == "3 / 8" and "not scored yet" in widget.state_label.text()
        _press(viewer, qtbot, Qt.Key_3)
        assert "realism 3 chosen" in widget.state_label.text()
        # H hides the mask; Right without a score is refused with a message
        _press(viewer, qtbot, Qt.Key_H)
        assert not viewer.layers["mask"].visible
        _press(viewer, qtbot, Qt.Key_H)
        # the image layer's own key '1' (pan/zoom mode) does not steal the score key when it is selected
        viewer.layers.selection.active = viewer.layers["case"]
        _press(viewer, qtbot, Qt.Key_1)
        assert widget.score_buttons[1].isChecked()
        _press(viewer, qtbot, Qt.Key_4)

        SCREENSHOTS.mkdir(exist_ok=True)
        viewer.window.screenshot(str(SCREENSHOTS / "study_scoring.png"), canvas_only=False)
    finally:
        _WATCH["on"] = False
    assert not [p for p in _OPENED if "key" in Path(p).parts or p.endswith("key.json")]
    assert any(p.endswith("pathologist1.jsonl") for p in _OPENED)

    log = read_answer_log(result.study / "answers" / "pathologist1.jsonl")
    assert [(a.index, a.realism) for a in log.answers] == [(0, 7), (1, 10), (1, 9)]
    assert log.answers[0].criteria == {"boundaries": True, "types": False, "missing": True, "extra": False}
    assert log.answers[0].comment == "nuclei look painted"
    assert errors == []

    # close: keys unbound, layers gone, the other image back; reopening resumes at case 3
    widget.close_study()
    assert [layer.name for layer in viewer.layers] == ["my other image"] and viewer.layers[0].visible
    _press(viewer, qtbot, Qt.Key_5)
    assert errors == []
    assert widget.open_study(result.study, "pathologist1") is None  # another reader: no token, no answers
    assert "reader token" in errors[-1] and widget.session is None
    errors.clear()
    widget.open_study(result.study, "pathologist1", token)
    assert widget.progress_label.text() == "3 / 8" and widget.session.answer() is None
    widget.save_and_next()
    assert "realism score first" in errors[-1]
    widget.close_study()


def test_image_study_score_keys_move_on_and_owner_actions(dock, qtbot, tmp_path, errors, infos):
    viewer, widget = dock
    folders = make_folders(tmp_path / "in", n_real=2, n_synthetic=2)
    # the study owner creates the study from the dock
    widget.create_box.setChecked(True)
    widget.real_edit.setText(str(folders["real"]))
    widget.synthetic_edit.setText(str(folders["synthetic"]))
    widget.out_edit.setText(str(tmp_path / "study"))
    widget.groups_combo.setCurrentText("subfolders")
    widget.readers_edit.setText("r1, r2")
    result = widget.create_study()
    assert result is not None and result.n_cases == 8 and widget.study_edit.text() == str(tmp_path / "study")

    widget.reader_edit.setText("r1")
    qtbot.mouseClick(widget.open_btn, Qt.LeftButton)
    assert widget.session is not None and widget.criteria_box.isHidden()
    assert widget.auto_next.isChecked()  # image-only study: a score key saves and moves on
    assert not widget.report_box.isEnabled() and not widget.create_box.isEnabled()
    assert widget.make_report() is None and "Close the scoring session" in errors[-1]
    errors.clear()
    key = json.loads(result.key_path.read_text())
    _check_blind(viewer, widget, key, folders, widget.session)
    _press(viewer, qtbot, Qt.Key_3, Qt.Key_5, Qt.Key_8)
    assert widget.progress_label.text() == "4 / 8"
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window.screenshot(str(SCREENSHOTS / "study_image_only.png"), canvas_only=False)
    # score everything (clicking the buttons works like the keys)
    for _ in range(5):
        qtbot.mouseClick(widget.score_buttons[6], Qt.LeftButton)
    assert widget.session.complete and "all 8 cases answered" in widget.state_label.text()
    assert any("All 8 cases are answered" in m for m in infos)
    widget.close_study()
    assert errors == []

    # the report needs the key
    widget.report_box.setChecked(True)
    widget.report_out_edit.setText(str(tmp_path / "report"))
    assert widget.make_report() is None and "study key" in errors[-1]
    widget.key_edit.setText(str(result.key_path))
    report = widget.make_report()
    assert report is not None and (tmp_path / "report" / "roc.png").is_file()
    assert "| overall |" in widget.report_text.toPlainText()
    viewer.window.screenshot(str(SCREENSHOTS / "study_report.png"), canvas_only=False)

    # a reader the study does not list gets a message, not a traceback
    widget.reader_edit.setText("r9")
    qtbot.mouseClick(widget.open_btn, Qt.LeftButton)
    assert widget.session is None and "not in this study" in errors[-1]


def _histology_folders(root: Path) -> dict:
    """Real: 256 px crops of the IHC sample with their nuclei masks; "synthetic": the same crops
    smoothed and tinted (a stand-in for an engine's output from the same mask), paired by name."""
    from scipy import ndimage as ndi

    from napari_histogen.core.sample import ihc_sample

    item = ihc_sample()
    folders = {"real": root / "real", "synthetic": root / "synthetic"}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for n, (top, left) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        window = (slice(top, top + 256), slice(left, left + 256))
        rgb = item.image[window]
        inst = item.nuclei.instances[window]
        types = item.nuclei.type_map()[window]
        fake = ndi.gaussian_filter(rgb.astype(float), sigma=(1.2, 1.2, 0)) * np.array([1.0, 0.93, 1.05])
        for kind, pixels in (("real", rgb), ("synthetic", np.clip(fake, 0, 255).astype(np.uint8))):
            _png_plain(folders[kind] / f"patch{n}.png", pixels)
            np.savez(folders[kind] / f"patch{n}_mask.npz", inst_map=inst, type_map=types, scheme=np.array("consep"))
    return folders


def _png_plain(path, rgb):
    from PIL import Image

    Image.fromarray(rgb).save(path)


def test_readme_screenshot_on_histology(dock, qtbot, tmp_path, errors):
    viewer, widget = dock
    folders = _histology_folders(tmp_path / "in")
    result = create_study(folders["real"], folders["synthetic"], tmp_path / "colon-study", masks=[folders["real"]],
                          seed=21)
    assert result.mode == "image+mask" and result.n_cases == 8
    widget.open_study(result.study, "pathologist1")
    _press(viewer, qtbot, Qt.Key_8, Qt.Key_B, Qt.Key_T, Qt.Key_Right)   # case 1
    _press(viewer, qtbot, Qt.Key_3, Qt.Key_M, Qt.Key_Return)           # case 2
    _press(viewer, qtbot, Qt.Key_6, Qt.Key_B, Qt.Key_Right)            # case 3
    _press(viewer, qtbot, Qt.Key_7, Qt.Key_B)                          # case 4, not saved yet
    widget.comment_edit.setText("crisp chromatin, plausible glands")
    assert widget.progress_label.text() == "4 / 8"
    assert len(read_answer_log(result.study / "answers" / "pathologist1.jsonl").answers) == 3
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    viewer.window.screenshot(str(README_SHOT), canvas_only=False)
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window.screenshot(str(SCREENSHOTS / "study_histology.png"), canvas_only=False)
    widget.close_study()
    assert errors == []


def test_dock_opens_from_the_plugin_menu_and_gives_back_keys(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-histogen", "Reader study")
    assert isinstance(widget, StudyWidget)

    def mine(_viewer):
        return None

    viewer.bind_key("5", mine, overwrite=True)
    folders = make_folders(tmp_path / "in", n_real=1, n_synthetic=1)
    result = create_study(folders["real"], folders["synthetic"], tmp_path / "s", per_class_from="subfolders")
    widget.open_study(result.study, "r1")
    assert widget.score_box.title() == "Score: Reader study"
    widget.close_study()
    from napari.utils.key_bindings import KeyBinding

    assert viewer.keymap[KeyBinding.from_str("5")] is mine and KeyBinding.from_str("7") not in viewer.keymap
    assert errors == []


def test_dock_scrolls_on_a_short_screen(dock):
    from qtpy.QtWidgets import QScrollArea

    _viewer, widget = dock
    areas = widget.findChildren(QScrollArea)
    assert any(area.widget().isAncestorOf(widget.open_btn) for area in areas if area.widget() is not None)
    assert widget.minimumSizeHint().height() < 300
