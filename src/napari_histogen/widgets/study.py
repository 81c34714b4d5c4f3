"""The "Histogen: reader study" dock: score a blinded study case by case; create and report studies.

Thin by design: every decision lives in :mod:`napari_histogen.core.study`. While a study
is open the dock shows nothing that tells real from synthetic: layers are named ``case``
and ``mask``, carry no metadata and no file source, every other layer is removed from the
viewer (put back on close), and the key is never read.

Keys on the canvas while a study is open: ``1``-``9`` and ``0`` (= 10) score, Right or
Enter save and show the next case, Left the previous one, ``B``/``T``/``M``/``X`` tick
the four mask criteria, ``H`` hides or shows the mask.
"""

from __future__ import annotations


from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..core.errors import HistogenInputError
from ..core.schemes import get_scheme
from ..core.study import ReaderSession, create_study
from ._guard import guarded, notify_info
from ._layout import make_scrollable
from ._runner import thaw_collector

SCORE_KEYS = {str(n): n for n in range(1, 10)} | {"0": 10}
NEXT_KEYS = ("Right", "Enter")
PREVIOUS_KEYS = ("Left",)
CRITERION_KEYS = {"boundaries": "B", "types": "T", "missing": "M", "extra": "X"}
TOGGLE_MASK_KEY = "H"
CASE_LAYER, MASK_LAYER = "case", "mask"


class StudyWidget(QWidget):
    """Dock widget for blinded reader studies: score (readers), create and report (study owner)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        # objects frozen when the docks were imported (widgets/__init__.py) must stay collectable
        napari_viewer.layers.events.removed.connect(thaw_collector)
        self.session: ReaderSession | None = None
        self._score: int | None = None
        self._bound: dict = {}  # key -> what it was bound to before the study opened
        self._removed_layers: list = []  # the viewer's layers, out of the viewer while a study is open
        self._case_layer = None
        self._mask_layer = None

        self.setMaximumWidth(480)  # leave the canvas most of the window
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)

        # -- scoring ------------------------------------------------------------------------
        score_box = self.score_box = QGroupBox("Score a study")
        form = QGridLayout(score_box)
        self.study_edit = QLineEdit()
        self.study_edit.setPlaceholderText("study folder")
        browse = QPushButton("…")
        browse.setToolTip("Choose the study folder")
        browse.clicked.connect(self._browse_study)
        self.reader_edit = QLineEdit()
        self.reader_edit.setPlaceholderText("your reader id, e.g. reader1")
        self.token_edit = QLineEdit()
        self.token_edit.setPlaceholderText("token (to resume)")
        self.token_edit.setEchoMode(QLineEdit.Password)
        self.token_edit.setToolTip("The token shown when you first opened the study: your answers open only with it")
        self.open_btn = QPushButton("Open")
        self.open_btn.clicked.connect(self._on_open_clicked)
        self.close_btn = QPushButton("Close")
        self.close_btn.clicked.connect(self.close_study)
        form.addWidget(QLabel("Study"), 0, 0)
        form.addWidget(self.study_edit, 0, 1, 1, 2)
        form.addWidget(browse, 0, 3)
        form.addWidget(QLabel("Reader"), 1, 0)
        reader_row = QHBoxLayout()
        reader_row.addWidget(self.reader_edit)
        reader_row.addWidget(self.token_edit)
        form.addLayout(reader_row, 1, 1)
        form.addWidget(self.open_btn, 1, 2)
        form.addWidget(self.close_btn, 1, 3)

        self.progress_label = QLabel("no study open")
        font = QFont(self.progress_label.font())
        font.setPointSize(font.pointSize() + 6)
        font.setBold(True)
        self.progress_label.setFont(font)
        self.progress_label.setAlignment(Qt.AlignCenter)
        form.addWidget(self.progress_label, 2, 0, 1, 4)
        self.state_label = QLabel("")
        self.state_label.setAlignment(Qt.AlignCenter)
        form.addWidget(self.state_label, 3, 0, 1, 4)

        form.addWidget(QLabel("Realism: 1 = synthetic … 10 = real (keys 1-9, 0 = 10)"), 4, 0, 1, 4)
        score_row = QHBoxLayout()
        score_row.setSpacing(2)
        self.score_group = QButtonGroup(self)
        self.score_group.setExclusive(True)
        self.score_buttons = {}
        for n in range(1, 11):
            btn = QPushButton(str(n))
            btn.setCheckable(True)
            btn.setMinimumWidth(24)
            btn.setToolTip(f"realism {n} (key {n % 10})")
            btn.clicked.connect(lambda _=False, n=n: self.set_score(n))
            self.score_group.addButton(btn, n)
            self.score_buttons[n] = btn
            score_row.addWidget(btn)
        form.addLayout(score_row, 5, 0, 1, 4)

        self.criteria_box = QGroupBox("Mask consistency (tick what applies)")
        crit_layout = QVBoxLayout(self.criteria_box)
        self.criteria_checks: dict[str, QCheckBox] = {}
        form.addWidget(self.criteria_box, 6, 0, 1, 4)
        self.criteria_box.setVisible(False)
        self._crit_layout = crit_layout

        self.comment_edit = QLineEdit()
        self.comment_edit.setPlaceholderText("comment (optional), then press a score key")
        self.comment_edit.returnPressed.connect(self._focus_canvas)
        form.addWidget(QLabel("Comment"), 7, 0)
        form.addWidget(self.comment_edit, 7, 1, 1, 3)
        self.auto_next = QCheckBox("A score key saves and shows the next case")
        form.addWidget(self.auto_next, 8, 0, 1, 4)

        nav = QHBoxLayout()
        self.prev_btn = QPushButton("◀ Previous (←)")
        self.prev_btn.clicked.connect(lambda: self.previous_case())
        self.next_btn = QPushButton("Save, next (→ / Enter) ▶")
        self.next_btn.clicked.connect(lambda: self.save_and_next())
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.next_btn)
        form.addLayout(nav, 9, 0, 1, 4)
        layout.addWidget(score_box)

        # -- creating (owner) -----------------------------------------------------------------
        self.create_box = QGroupBox("Create a study (study owner)")
        self.create_box.setCheckable(True)
        self.create_box.setChecked(False)
        create_inner = QWidget()
        cform = QFormLayout(create_inner)
        self.real_edit, self.synthetic_edit, self.masks_edit, self.out_edit = (QLineEdit() for _ in range(4))
        self.masks_edit.setPlaceholderText("optional: masks folder -> image-with-mask study")
        self.groups_combo = QComboBox()
        self.groups_combo.addItems(["one group", "subfolders", "CSV file"])
        self.groups_combo.setToolTip("Group/class of each image: REAL/<group>/ and SYNTHETIC/<group>/ subfolders, "
                                     "or a CSV with columns file,group")
        self.groups_csv_edit = QLineEdit()
        self.groups_csv_edit.setPlaceholderText("CSV file,group (when 'CSV file')")
        self.readers_edit = QLineEdit()
        self.readers_edit.setPlaceholderText("optional: reader ids, comma separated")
        for label, edit, directory in (("Real images", self.real_edit, True),
                                       ("Synthetic images", self.synthetic_edit, True),
                                       ("Masks", self.masks_edit, True), ("New study folder", self.out_edit, True)):
            cform.addRow(label, self._with_browse(edit, directory))
        cform.addRow("Groups", self.groups_combo)
        cform.addRow("", self._with_browse(self.groups_csv_edit, False))
        cform.addRow("Readers", self.readers_edit)
        self.create_btn = QPushButton("Create study")
        self.create_btn.clicked.connect(lambda: self.create_study())
        cform.addRow(self.create_btn)
        create_outer = QVBoxLayout(self.create_box)
        create_outer.addWidget(create_inner)
        create_inner.setVisible(False)
        self.create_box.toggled.connect(create_inner.setVisible)
        layout.addWidget(self.create_box)

        # -- report (owner, unblinds) ---------------------------------------------------------
        self.report_box = QGroupBox("Report (study owner: unblinds with the key)")
        self.report_box.setCheckable(True)
        self.report_box.setChecked(False)
        report_inner = QWidget()
        rform = QFormLayout(report_inner)
        self.key_edit = QLineEdit()
        self.key_edit.setPlaceholderText("key.json of the study")
        self.report_out_edit = QLineEdit()
        rform.addRow("Key", self._with_browse(self.key_edit, False))
        rform.addRow("Report folder", self._with_browse(self.report_out_edit, True))
        self.report_btn = QPushButton("Report")
        self.report_btn.clicked.connect(lambda: self.make_report())
        rform.addRow(self.report_btn)
        self.report_text = QPlainTextEdit()
        self.report_text.setReadOnly(True)
        self.report_text.setMinimumHeight(120)
        rform.addRow(self.report_text)
        report_outer = QVBoxLayout(self.report_box)
        report_outer.addWidget(report_inner)
        report_inner.setVisible(False)
        self.report_box.toggled.connect(report_inner.setVisible)
        layout.addWidget(self.report_box)
        layout.addStretch(1)
        make_scrollable(self)  # fits a laptop screen: the dock scrolls instead of growing the window
        self._sync_enabled()

    # -- small helpers ---------------------------------------------------------------------------
    def _with_browse(self, edit: QLineEdit, directory: bool) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        btn = QPushButton("…")
        btn.setMaximumWidth(28)

        def pick():
            path = (QFileDialog.getExistingDirectory(self, "Choose a folder") if directory
                    else QFileDialog.getOpenFileName(self, "Choose a file")[0])
            if path:
                edit.setText(path)

        btn.clicked.connect(pick)
        row.addWidget(btn)
        return box

    def _browse_study(self):
        path = QFileDialog.getExistingDirectory(self, "Choose the study folder")
        if path:
            self.study_edit.setText(path)

    def _focus_canvas(self):
        """Give the keyboard back to the canvas, where the score keys are bound."""
        # found through Qt (the vispy canvas widget in this window), not napari's private attributes
        for widget in self.window().findChildren(QWidget):
            if type(widget).__name__.startswith("CanvasBackend"):
                widget.setFocus()
                return

    def _sync_enabled(self):
        scoring = self.session is not None
        for w in (self.prev_btn, self.next_btn, self.close_btn, self.comment_edit, *self.score_buttons.values()):
            w.setEnabled(scoring)
        for w in (self.open_btn, self.study_edit, self.reader_edit, self.token_edit):
            w.setEnabled(not scoring)
        # owner actions are off while a reader scores: nothing unblinded on a reader's screen
        self.report_box.setEnabled(not scoring)
        self.create_box.setEnabled(not scoring)

    # -- opening and closing -------------------------------------------------------------------
    def _on_open_clicked(self):
        self.open_study(self.study_edit.text().strip(), self.reader_edit.text().strip(),
                        self.token_edit.text().strip() or None)

    @guarded
    def open_study(self, study, reader, token=None) -> ReaderSession:
        """Open ``study`` for ``reader`` (with their ``token`` when resuming) and show the case where they stopped.

        Every other layer is removed from the viewer while the study is open (not hidden:
        a hidden layer, and its name, stays one click away) and put back when it closes.
        """
        if not str(study):
            raise HistogenInputError("Choose the study folder first.")
        if self.session is not None:
            self.close_study()
        session = ReaderSession(study, reader, token=token)
        self.session = session
        self.study_edit.setText(str(study))
        self.reader_edit.setText(session.reader)
        self.token_edit.clear()
        if session.issued_token:
            notify_info(f"Your reader token is {session.issued_token}. Write it down: you need it to resume, "
                        "and nobody else can open your answers without it.")
        for note in session.warnings:
            notify_info(note)
        self._clear_owner_sections()
        self.score_box.setTitle(f"Score: {session.title}")
        self._build_criteria(session.criteria)
        self.auto_next.setChecked(not session.criteria)
        self._removed_layers = list(self.viewer.layers)
        for layer in self._removed_layers:
            self.viewer.layers.remove(layer)
        self._bind_keys()
        self._sync_enabled()
        self._show_case()
        return session

    @guarded
    def close_study(self) -> None:
        """Close the reader's session (answers are already on disk), remove the case layers."""
        session, self.session = self.session, None
        self._unbind_keys()
        for layer in (self._mask_layer, self._case_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._case_layer = self._mask_layer = None
        for layer in self._removed_layers:
            if layer not in self.viewer.layers:
                self.viewer.layers.append(layer)
        self._removed_layers = []
        if session is not None:
            session.close()
        self.progress_label.setText("no study open")
        self.state_label.setText("")
        self.score_box.setTitle("Score a study")
        self._set_form(None)
        self._sync_enabled()

    def closeEvent(self, event):  # noqa: N802 - Qt API
        """Closing the dock ends the session: the reader's log is released, the keys unbound."""
        if self.session is not None:
            self.close_study()
        super().closeEvent(event)

    def _clear_owner_sections(self):
        """Nothing of the owner's (folders, key, report) stays on a reader's screen."""
        for edit in (self.real_edit, self.synthetic_edit, self.masks_edit, self.out_edit, self.groups_csv_edit,
                     self.readers_edit, self.key_edit, self.report_out_edit):
            edit.clear()
        self.report_text.clear()
        self.create_box.setChecked(False)
        self.report_box.setChecked(False)

    def _build_criteria(self, criteria):
        for check in self.criteria_checks.values():
            self._crit_layout.removeWidget(check)
            check.deleteLater()
        self.criteria_checks = {}
        for key, text in criteria:
            letter = CRITERION_KEYS.get(key)
            check = QCheckBox(f"{text} ({letter})" if letter else text)
            self._crit_layout.addWidget(check)
            self.criteria_checks[key] = check
        self.criteria_box.setVisible(bool(criteria))

    # -- keys --------------------------------------------------------------------------------------
    def _key_actions(self) -> dict:
        actions = {key: (lambda n=n: self.set_score(n)) for key, n in SCORE_KEYS.items()}
        actions.update({key: self.save_and_next for key in NEXT_KEYS})
        actions.update({key: self.previous_case for key in PREVIOUS_KEYS})
        if self.criteria_checks:
            actions.update({letter: (lambda k=k: self.toggle_criterion(k)) for k, letter in CRITERION_KEYS.items()
                            if k in self.criteria_checks})
            actions[TOGGLE_MASK_KEY] = self.toggle_mask
        return actions

    def _bind_keys(self):
        self._unbind_keys()
        for key, action in self._key_actions().items():
            self._bound[key] = self.viewer.bind_key(key, _key_handler(action), overwrite=True)

    def _bind_layer_keys(self, layer):
        # a selected layer's own keys (e.g. image '1' = pan/zoom) come first: ours win on our layers
        for key, action in self._key_actions().items():
            layer.bind_key(key, _key_handler(action), overwrite=True)

    def _unbind_keys(self):
        for key, before in self._bound.items():
            try:
                self.viewer.bind_key(key, None)
                if before is not None:  # give back what another plugin or the user had bound
                    self.viewer.bind_key(key, before)
            except (KeyError, ValueError, TypeError):
                pass
        self._bound = {}

    # -- showing a case ------------------------------------------------------------------------
    def _show_case(self):
        session = self.session
        case = session.load_case()
        if self._case_layer is None or self._case_layer not in self.viewer.layers:
            self._case_layer = self.viewer.add_image(case.image, name=CASE_LAYER, rgb=True)
            self._bind_layer_keys(self._case_layer)
        else:
            self._case_layer.data = case.image
        if case.instances is not None:
            scheme = get_scheme(session.mask_scheme or "consep")
            colors = _layers.class_color_dict(case.classes(), scheme)
            if self._mask_layer is None or self._mask_layer not in self.viewer.layers:
                self._mask_layer = self.viewer.add_labels(case.instances, name=MASK_LAYER, colormap=colors,
                                                          opacity=0.9)
                self._mask_layer.contour = 1
                self._mask_layer.editable = False
                self._bind_layer_keys(self._mask_layer)
            else:
                self._mask_layer.data = case.instances
                self._mask_layer.colormap = colors
        self.viewer.layers.selection.clear()  # only the viewer's (our) keys apply
        self.viewer.reset_view()  # the case fills the canvas
        self._set_form(session.answer())
        self._update_labels()
        self._focus_canvas()

    def _set_form(self, answer):
        self._score = None if answer is None else answer.realism
        self.score_group.setExclusive(False)
        for n, btn in self.score_buttons.items():
            btn.setChecked(n == self._score)
        self.score_group.setExclusive(True)
        for key, check in self.criteria_checks.items():
            check.setChecked(bool(answer is not None and answer.criteria and answer.criteria.get(key)))
        self.comment_edit.setText("" if answer is None else answer.comment)

    def _update_labels(self):
        s = self.session
        self.progress_label.setText(s.progress)
        recorded = s.answer()
        if recorded is not None:
            state = f"saved: realism {recorded.realism}"
        else:
            state = "not scored yet"
        if s.complete and s.index == s.n_cases - 1:
            state += f" — all {s.n_cases} cases answered, thank you"
        self.state_label.setText(f"{state}  ({s.n_answered} of {s.n_cases} answered)")

    # -- answering -------------------------------------------------------------------------------
    def _require_session(self) -> ReaderSession:
        if self.session is None:
            raise HistogenInputError("Open a study with your reader id first.")
        return self.session

    @guarded
    def set_score(self, score: int) -> int:
        """Choose the realism score; with 'score key saves' on, save and show the next case."""
        self._require_session()
        self._score = int(score)
        self.score_group.setExclusive(False)
        for n, btn in self.score_buttons.items():
            btn.setChecked(n == self._score)
        self.score_group.setExclusive(True)
        if self.auto_next.isChecked():
            self.save_and_next()
        elif self.session is not None and (self.session.answer() is None
                                           or self.session.answer().realism != self._score):
            self.state_label.setText(f"realism {self._score} chosen: → or Enter saves it")
        return self._score

    @guarded
    def toggle_criterion(self, key: str) -> bool:
        self._require_session()
        check = self.criteria_checks[key]
        check.setChecked(not check.isChecked())
        return check.isChecked()

    @guarded
    def toggle_mask(self) -> None:
        if self._mask_layer is not None:
            self._mask_layer.visible = not self._mask_layer.visible

    def _form_answer(self):
        criteria = {k: c.isChecked() for k, c in self.criteria_checks.items()} or None
        return self._score, criteria, self.comment_edit.text()

    @guarded
    def save(self):
        """Record the form's answer for the case on screen (on disk when this returns)."""
        session = self._require_session()
        score, criteria, comment = self._form_answer()
        if score is None:
            raise HistogenInputError("Give a realism score first: keys 1-9, and 0 for 10.")
        answer = session.record(score, criteria, comment)
        self._update_labels()
        return answer

    @guarded
    def save_and_next(self) -> bool:
        """Save the answer, then show the next case. False at the last case or when not saved."""
        session = self._require_session()
        if self._score is None and session.answer() is None:
            raise HistogenInputError("Give a realism score first: keys 1-9, and 0 for 10.")
        if self._score is not None and self.save() is None:
            return False
        if session.next():
            self._show_case()
            return True
        self._update_labels()
        if session.complete:
            notify_info(f"All {session.n_cases} cases are answered. Thank you! You can close the study.")
        return False

    @guarded
    def previous_case(self) -> bool:
        """Keep a changed answer, then show the previous case."""
        session = self._require_session()
        if self._score is not None:
            self.save()
        if session.previous():
            self._show_case()
            return True
        return False

    # -- owner actions -----------------------------------------------------------------------------
    @guarded
    def create_study(self):
        """Create a study from the form (real, synthetic, optional masks and groups)."""
        real, synthetic, out = (e.text().strip() for e in (self.real_edit, self.synthetic_edit, self.out_edit))
        if not (real and synthetic and out):
            raise HistogenInputError("Give the real images, synthetic images and new study folders.")
        groups = {"one group": None, "subfolders": "subfolders"}.get(self.groups_combo.currentText(),
                                                                       self.groups_csv_edit.text().strip() or None)
        if self.groups_combo.currentText() == "CSV file" and groups is None:
            raise HistogenInputError("Choose the CSV file with columns file,group.")
        readers = [r.strip() for r in self.readers_edit.text().replace(";", ",").split(",") if r.strip()]
        result = create_study(real, synthetic, out, masks=self.masks_edit.text().strip() or None,
                              per_class_from=groups, readers=readers or None)
        self.study_edit.setText(str(result.study))
        self.report_text.setPlainText(result.describe())
        notify_info(result.describe())
        return result

    @guarded
    def make_report(self):
        """Unblind with the key and write the report folder; show the realism table."""
        if self.session is not None:
            raise HistogenInputError("Close the scoring session first: a report unblinds the study.")
        study, key, out = (e.text().strip() for e in (self.study_edit, self.key_edit, self.report_out_edit))
        if not study:
            raise HistogenInputError("Choose the study folder (top of the dock) first.")
        if not key:
            raise HistogenInputError("Choose the study key (key.json): only the study owner, who holds it, reports.")
        if not out:
            raise HistogenInputError("Choose a report folder.")
        from ..core.study import write_report  # pandas + scipy.stats: loaded when a report is made

        report = write_report(study, out, key_path=key)
        self.report_text.setPlainText(report.markdown())
        notify_info(f"Report written to {out}: {len(report.files)} files.")
        return report


def _key_handler(action):
    def handler(_viewer_or_layer=None):
        action()

    return handler
