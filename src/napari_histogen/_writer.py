"""napari writers: image + nuclei mask as OME-TIFF, nuclei mask as QuPath GeoJSON."""

from __future__ import annotations

import numpy as np

from ._layers import nuclei_mask_from_parts
from .core.errors import HistogenInputError
from .core.images import to_rgb_uint8
from .core.provenance import make_provenance


def _split(layer_data):
    image = nuclei = None
    for data, attrs, kind in layer_data:
        if kind == "image" and image is None:
            image = to_rgb_uint8(np.asarray(data), name=f"image '{attrs.get('name')}'")
        elif kind == "labels" and nuclei is None:
            nuclei = nuclei_mask_from_parts(data, attrs.get("features"), attrs.get("metadata"), attrs.get("scale"),
                                            name=f"labels '{attrs.get('name')}'")
    if nuclei is None:
        raise HistogenInputError("Select a nuclei mask (Labels layer) to save.")
    return image, nuclei


def _report(err):
    from napari.utils.notifications import show_error

    show_error(str(err))
    return []


def _as_layer_list(data, attributes):
    # npe2 calls a writer of one layer type as (path, data, attributes), of several as
    # (path, [(data, attributes, type), ...]); the same function serves both.
    return [(data, attributes, "labels")] if attributes is not None else data


def write_ome_tiff(path: str, data, attributes=None) -> list[str]:
    """Save the selected image and nuclei mask layers in one OME-TIFF."""
    from .core.io.ome_tiff import write_ome_tiff as write

    try:
        image, nuclei = _split(_as_layer_list(data, attributes))
        return [str(write(path, image, nuclei, provenance=make_provenance("napari save", format="ome-tiff")))]
    except HistogenInputError as err:
        return _report(err)


def write_geojson(path: str, data, attributes=None) -> list[str]:
    """Save the selected nuclei mask as QuPath GeoJSON (one polygon per nucleus)."""
    from .core.io.geojson import write_geojson as write

    try:
        _, nuclei = _split(_as_layer_list(data, attributes))
        return [str(write(path, nuclei, provenance=make_provenance("napari save", format="geojson")))]
    except HistogenInputError as err:
        return _report(err)
