"""Qt-free core of napari-histogen: masks, class schemes, conversions and file formats.

Nothing in this package imports napari, qtpy or magicgui (a test enforces it), so the
same functions serve the napari widgets, the ``histogen`` CLI and plain Python.
"""
