"""File names the readers share: the ``FILE::N`` patch-index syntax and the suffix lists.

The one home of these lists (plain images: :data:`napari_histogen.core.images.IMAGE_SUFFIXES`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HistogenInputError
from ..images import IMAGE_SUFFIXES

__all__ = ["split_index", "IMAGE_SUFFIXES", "ANNOTATION_SUFFIXES", "NUCLEI_MASK_SUFFIXES", "TISSUE_MASK_SUFFIXES"]

#: annotation files :func:`~napari_histogen.core.io.dispatch.read_annotated` opens by format
ANNOTATION_SUFFIXES = (".mat", ".npy", ".npz", ".geojson", ".ome.tif", ".ome.tiff")
#: nuclei-mask files a batch synthesis collects from a folder
NUCLEI_MASK_SUFFIXES = (".npz", ".mat", ".geojson", ".ome.tif", ".ome.tiff")
#: tissue (semantic) mask files (:func:`~napari_histogen.core.io.tissue.read_label_map`)
TISSUE_MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".npz")


def split_index(path) -> tuple[Path, int | None]:
    """``'masks.npy::12'`` -> ``(Path('masks.npy'), 12)``; paths without ``::N`` -> index None."""
    text = str(path)
    if "::" in text:
        base, _, idx = text.rpartition("::")
        try:
            return Path(base), int(idx)
        except ValueError:
            raise HistogenInputError(f"'{idx}' after '::' in {text} is not a patch index (write e.g. masks.npy::12).") from None
    return Path(text), None
