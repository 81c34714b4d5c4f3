"""Translation between core objects and napari layers.

Layer data tuples here are plain ``(data, kwargs, layer_type)`` so readers and sample
data build them without importing napari. Every layer the plugin makes carries
``metadata['histogen']``: ``kind`` ('image', 'nuclei', 'tissue', 'points'), the class
``scheme`` (as a dict) and ``provenance``. Nuclei layers keep their class table in the
Labels ``features`` (columns ``index`` = instance id, ``class``) and are coloured by
class through a per-id colour dict (napari turns it into a ``DirectLabelColormap``).
"""

from __future__ import annotations

import numpy as np

from .core.io.annotated import AnnotatedImage
from .core.masks import NucleiMask, as_label_image, sync_classes
from .core.schemes import UNCLASSIFIED, ClassScheme, get_scheme

__all__ = [
    "annotated_to_layer_data",
    "class_color_dict",
    "semantic_color_dict",
    "features_from_classes",
    "classes_from_features",
    "nuclei_layer_data",
    "tissue_layer_data",
    "points_layer_data",
    "image_layer_data",
    "layer_kind",
    "layer_scheme",
    "tissue_mask_from_layer",
    "nuclei_mask_from_layer",
    "refresh_nuclei_layer",
    "point_colors",
]

TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


def _rgba(color) -> tuple[float, float, float, float]:
    return (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0, 1.0)


def _scale_kwargs(mpp) -> dict:
    if mpp is None:
        return {}
    return {"scale": (float(mpp), float(mpp)), "units": ("µm", "µm")}


def class_color_dict(classes: dict, scheme: ClassScheme) -> dict:
    """Label value -> RGBA: each nucleus in its class colour, unknown ids grey, 0 transparent."""
    colors = {None: _rgba(scheme.color(UNCLASSIFIED)), 0: TRANSPARENT}
    for inst_id, cls in classes.items():
        colors[int(inst_id)] = _rgba(scheme.color(cls))
    return colors


def semantic_color_dict(scheme: ClassScheme) -> dict:
    """Label value -> RGBA for semantic maps (tissue, type maps): class colours, 0 transparent."""
    colors = {None: TRANSPARENT, 0: TRANSPARENT}
    colors.update({c.id: _rgba(c.color) for c in scheme.classes})
    return colors


def features_from_classes(classes: dict):
    import pandas as pd  # here, not at import: pandas costs 0.2 s on the GUI thread when a dock opens

    ids = sorted(int(i) for i in classes)
    return pd.DataFrame(
        {"index": np.array(ids, dtype=np.int64), "class": np.array([classes[i] for i in ids], dtype=np.int64)}
    )


def classes_from_features(features) -> dict[int, int]:
    if features is None or len(features) == 0 or "index" not in features or "class" not in features:
        return {}
    return {int(i): int(c) for i, c in zip(features["index"], features["class"])}


def _meta(kind: str, scheme: ClassScheme | None, provenance: dict | None, mpp=None) -> dict:
    meta = {"kind": kind, "provenance": dict(provenance or {}), "mpp": mpp}
    if scheme is not None:
        meta["scheme"] = scheme.to_dict()
    return {"histogen": meta}


def image_layer_data(image: np.ndarray, name: str, *, mpp=None, provenance=None):
    return (image, {"name": name, "rgb": True, "metadata": _meta("image", None, provenance, mpp), **_scale_kwargs(mpp)}, "image")


def nuclei_layer_data(nuclei: NucleiMask, name: str, *, provenance=None):
    kwargs = {
        "name": name,
        "features": features_from_classes(nuclei.classes),
        "colormap": class_color_dict(nuclei.classes, nuclei.scheme),
        "opacity": 0.6,
        "metadata": _meta("nuclei", nuclei.scheme, provenance or nuclei.metadata.get("provenance"), nuclei.mpp),
        **_scale_kwargs(nuclei.mpp),
    }
    return (nuclei.instances, kwargs, "labels")


def tissue_layer_data(tissue: np.ndarray, scheme: ClassScheme, name: str, *, mpp=None, provenance=None):
    kwargs = {
        "name": name,
        "colormap": semantic_color_dict(scheme),
        "opacity": 0.35,
        "metadata": _meta("tissue", scheme, provenance, mpp),
        **_scale_kwargs(mpp),
    }
    return (as_label_image(tissue, name="tissue mask"), kwargs, "labels")


def point_colors(point_classes, scheme: ClassScheme) -> np.ndarray:
    """RGBA face colour per point from its class."""
    return np.array([_rgba(scheme.color(c)) for c in point_classes], dtype=np.float32).reshape(-1, 4)


def points_layer_data(points, point_classes, scheme: ClassScheme, name: str, *, mpp=None, provenance=None, size=None):
    import pandas as pd

    points = np.asarray(points, dtype=float).reshape(-1, 2)
    point_classes = np.asarray(point_classes, dtype=np.int64).reshape(-1)
    default_class = scheme.ids[0]
    # about one nucleus diameter at 20x-40x, in data pixels
    size = size if size is not None else (8.0 if mpp is None else max(3.0, 2.5 / float(mpp)))
    kwargs = {
        "name": name,
        "features": pd.DataFrame({"class": point_classes}),
        "feature_defaults": {"class": default_class},
        "face_color": point_colors(point_classes, scheme) if len(point_classes) else "white",
        "border_color": "black",
        "size": size,
        "metadata": _meta("points", scheme, provenance, mpp),
        **_scale_kwargs(mpp),
    }
    return (points, kwargs, "points")


def annotated_to_layer_data(item: AnnotatedImage) -> list:
    """Layer data tuples for an image with its masks: image first, masks above it."""
    provenance = item.provenance
    layers = []
    if item.image is not None:
        layers.append(image_layer_data(item.image, item.name, mpp=item.mpp, provenance=provenance))
    if item.tissue is not None and item.tissue_scheme is not None:
        layers.append(tissue_layer_data(item.tissue, item.tissue_scheme, f"{item.name} tissue", mpp=item.mpp,
                                        provenance=provenance))
    if item.nuclei is not None:
        layers.append(nuclei_layer_data(item.nuclei, f"{item.name} nuclei", provenance=provenance))
    if item.points is not None and item.point_scheme is not None:
        classes = item.point_classes if item.point_classes is not None else np.zeros(len(item.points), np.int64)
        layers.append(points_layer_data(item.points, classes, item.point_scheme, f"{item.name} points",
                                        mpp=item.mpp, provenance=provenance))
    return layers


# -- reading layers back -------------------------------------------------------------
def layer_kind(layer) -> str | None:
    """'nuclei', 'tissue', 'points', 'image' for plugin layers, else None."""
    meta = getattr(layer, "metadata", None) or {}
    return (meta.get("histogen") or {}).get("kind")


def layer_scheme(layer) -> ClassScheme | None:
    meta = (getattr(layer, "metadata", None) or {}).get("histogen") or {}
    scheme = meta.get("scheme")
    return get_scheme(scheme) if scheme else None


def _mpp_from(metadata, scale):
    meta = (metadata or {}).get("histogen") or {}
    if meta.get("mpp"):
        return float(meta["mpp"])
    scale = tuple(scale if scale is not None else (1.0, 1.0))[-2:]
    return float(scale[-1]) if scale and scale[-1] != 1.0 else None


def layer_mpp(layer):
    """Microns per pixel of a layer: recorded by the plugin, else its scale (None if 1)."""
    return _mpp_from(getattr(layer, "metadata", None), getattr(layer, "scale", None))


def nuclei_mask_from_parts(data, features, metadata, scale, *, name="nuclei mask", scheme=None) -> NucleiMask:
    """The nuclei mask held by Labels data + features + metadata (a layer or a layer data tuple)."""
    meta = (metadata or {}).get("histogen") or {}
    if scheme is not None:
        scheme = get_scheme(scheme)
    elif meta.get("scheme"):
        scheme = get_scheme(meta["scheme"])
    else:
        scheme = get_scheme("consep")
    return NucleiMask.create(
        np.asarray(data),
        classes_from_features(features),
        scheme,
        mpp=_mpp_from(metadata, scale),
        metadata=_mask_metadata(meta.get("provenance") or {}),
        name=name,
    )


def _mask_metadata(provenance: dict) -> dict:
    """A mask's metadata from its layer's provenance: the provenance, and where it lies on its slide."""
    metadata: dict = {"provenance": provenance}
    parameters = provenance.get("parameters") if isinstance(provenance.get("parameters"), dict) else {}
    offset = provenance.get("offset_xy", parameters.get("offset_xy"))
    if offset is not None:
        metadata["offset_xy"] = list(offset)
    return metadata


def tissue_mask_from_layer(layer, *, scheme=None):
    """A Labels layer as a :class:`~napari_histogen.core.masks.TissueMask` (its scheme and scale)."""
    from .core.masks import TissueMask

    return TissueMask.create(np.asarray(layer.data), scheme if scheme is not None else layer_scheme(layer),
                             mpp=layer_mpp(layer), name=layer.name)


def nuclei_mask_from_layer(layer, *, scheme=None) -> NucleiMask:
    """The nuclei mask a Labels layer holds (validated), with its classes and scheme."""
    return nuclei_mask_from_parts(layer.data, layer.features, layer.metadata, layer.scale,
                                  name=f"layer '{layer.name}'", scheme=scheme)


def refresh_nuclei_layer(layer, default_class: int = UNCLASSIFIED) -> dict[int, int]:
    """Bring a nuclei layer's class table and colours in line with its pixels.

    Called after every paint stroke: erased or painted-over (merged) nuclei leave the
    table, ids painted without a class get ``default_class``. Returns the new table.
    """
    scheme = layer_scheme(layer) or get_scheme("consep")
    old = classes_from_features(layer.features)
    new = sync_classes(np.asarray(layer.data), old, default_class)
    if new != old:
        layer.features = features_from_classes(new)
    layer.colormap = class_color_dict(new, scheme)
    return new
