"""The annotate dock as napari's menu opens it: :class:`AnnotateWidget` inside a scroll area.

Kept apart from ``annotate.py`` (the dock's behaviour) so the layout shared by every dock
(:func:`._layout.make_scrollable`) wraps it from outside.
"""

from __future__ import annotations

from ._cosyn_section import add_cosyn_section
from ._layout import make_scrollable
from ._maskgen_section import add_maskgen_section
from ._runner import thaw_collector
from .annotate import AnnotateWidget

__all__ = ["AnnotateDock"]


class AnnotateDock(AnnotateWidget):
    """The annotate dock, scrolling when the screen is shorter than the dock."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        add_cosyn_section(self, self.layout())  # points -> image + nuclei mask (widgets/_cosyn_section.py)
        add_maskgen_section(self, self.layout())  # nucleus types -> nuclei mask (widgets/_maskgen_section.py)
        self.scroll_area = make_scrollable(self)
        # objects frozen when the docks were imported (widgets/__init__.py) must stay collectable
        napari_viewer.layers.events.removed.connect(thaw_collector)
