"""napari reader: Lizard/CoNSeP .mat, PanNuke/CoNIC .npy (``file.npy::N`` picks patch N),
image + mask .npz, napari-histogen OME-TIFF and QuPath GeoJSON."""

from __future__ import annotations

from ._layers import annotated_to_layer_data
from .core.errors import HistogenInputError
from .core.io.dispatch import can_read, read_annotated

# napari's "empty file" sentinel: after we have shown our own message, napari adds
# nothing and shows no traceback dialog.
_NOTHING = [(None,)]


def napari_get_reader(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return _read if can_read(path) else None


def _read(path):
    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        return annotated_to_layer_data(read_annotated(path))
    except HistogenInputError as err:
        from napari.utils.notifications import show_error

        show_error(str(err))
        return _NOTHING
