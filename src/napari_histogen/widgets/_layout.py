"""Layout helpers every dock shares: a scroll area around the dock, a folded "Advanced" group.

A dock built for a tall screen still fits a laptop when its content scrolls:
:func:`make_scrollable` moves a finished widget's layout into a ``QScrollArea`` inside the
same widget (the widget object, its attributes and its signals stay what they were).
:class:`Foldable` is a titled group whose body opens and closes with one click.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget

__all__ = ["make_scrollable", "Foldable", "VerticalScrollArea"]


#: the least height a scrolled dock asks for (a few rows stay visible)
MIN_SCROLLED_HEIGHT = 160


class VerticalScrollArea(QScrollArea):
    """A scroll area as wide as its content (never clipping it sideways) and as short as the screen needs."""

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 - Qt API
        super().setWidget(widget)
        widget.installEventFilter(self)  # the content's size changes (style, texts, folding) reach the dock

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if obj is self.widget() and event.type() == QEvent.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        content = self.widget()
        if content is None:
            return super().minimumSizeHint()
        inner = content.minimumSizeHint()
        return QSize(inner.width() + self._extra_width(), min(inner.height(), MIN_SCROLLED_HEIGHT))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        content = self.widget()
        if content is None:
            return super().sizeHint()
        inner = content.sizeHint()
        return QSize(inner.width() + self._extra_width(), inner.height())


def make_scrollable(widget: QWidget) -> QScrollArea:
    """Put ``widget``'s current content in a vertical scroll area (in place); returns the area.

    The content keeps its layout and child widgets; only their parent changes (to the
    area's inner widget). The horizontal direction does not scroll: the content follows the
    dock's width.
    """
    inner = QWidget()
    inner.setObjectName("histogen_scroll_content")
    content_layout = widget.layout()
    if content_layout is not None:
        inner.setLayout(content_layout)  # Qt takes the layout over and reparents its widgets
    area = VerticalScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    area.setWidget(inner)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return area


class Foldable(QWidget):
    """A titled group whose body (``self.body``, a QVBoxLayout) is shown or hidden by its title button."""

    def __init__(self, title: str, *, expanded: bool = False, parent=None):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.toggle.setStyleSheet("QToolButton { border: none; text-align: left; }")
        self.content = QWidget()
        self.body = QVBoxLayout(self.content)
        self.body.setContentsMargins(12, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(self.content)
        self.toggle.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        if self.toggle.isChecked() != expanded:
            self.toggle.setChecked(expanded)  # comes back here through toggled
            return
        self.toggle.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.content.setVisible(expanded)
