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
    try:
        return _read if can_read(path) else None
    except Exception:  # noqa: BLE001 - a reader that cannot tell declines; napari tries the others
        return None


def _read(path):
    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        return annotated_to_layer_data(read_annotated(path))
    except HistogenInputError as err:
        message = str(err)
    except RecursionError:
        message = f"{path} is nested too deeply to read (a damaged or hostile file)."
    except MemoryError:
        message = f"{path} is too large to read into memory; crop or tile it first."
    except Exception as err:  # noqa: BLE001 - a damaged file gets a message, never a traceback dialog
        message = f"{path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:200]})."
    from napari.utils.notifications import show_error

    show_error(" ".join(message.split()))  # one line, even for a decoder's multi-line message
    return _NOTHING
