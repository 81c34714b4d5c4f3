"""Annotated images in another class scheme: read any file straight into the scheme an engine needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

from ..errors import UnknownClassError
from ..scheme_maps import convert_class_ids, convert_nuclei_scheme, suggest_class_map
from ..schemes import get_scheme
from .annotated import AnnotatedImage

__all__ = ["convert_annotated", "read_converted"]


def convert_annotated(item: AnnotatedImage, target, overrides: Mapping[str, str] | None = None, *,
                      unclassified: str | None = None) -> AnnotatedImage:
    """``item`` with its nuclei mask and point layout in scheme ``target`` (a new object).

    ``overrides`` (source class name -> target class name) maps classes without a known
    equivalent, ``unclassified`` names a class for the nuclei without one; see
    :func:`~napari_histogen.core.scheme_maps.convert_nuclei_scheme`. The image and the tissue
    mask are shared, not copied; the provenance records the conversion.
    """
    target = get_scheme(target)
    nuclei = (convert_nuclei_scheme(item.nuclei, target, overrides, unclassified=unclassified)
              if item.nuclei is not None else None)
    point_classes, point_scheme = item.point_classes, item.point_scheme
    if point_classes is not None and point_scheme is not None and point_scheme.kind == "nuclei":
        point_classes = convert_class_ids(point_classes, point_scheme, target, overrides, unclassified=unclassified)
        point_scheme = target
    source = item.nuclei.scheme.name if item.nuclei is not None else getattr(item.point_scheme, "name", None)
    provenance = {**item.provenance, "scheme_conversion": {
        "from": source, "to": target.name,
        **({"mapping": nuclei.metadata["scheme_conversion"]["mapping"]} if nuclei is not None else {}),
        **({"overrides": dict(overrides)} if overrides else {}),
        **({"unclassified": unclassified} if unclassified else {})}}
    return replace(item, nuclei=nuclei, provenance=provenance, point_classes=point_classes, point_scheme=point_scheme)


def read_converted(path, target, *, class_map: Mapping[str, str] | None = None, index: int | None = None,
                   scheme=None, unclassified: str | None = None) -> AnnotatedImage:
    """Read an annotation file (any format of :func:`~.dispatch.read_annotated`) into scheme ``target``.

    The file is read in its own scheme (recorded, given as ``scheme``, or found from the class
    names) and converted. A GeoJSON whose class names no scheme has all of (a QuPath export with
    classes of its own) is read straight into ``target`` instead: each name takes its entry in
    ``class_map``, else the known equivalent (same name, or e.g. QuPath ``Tumor`` ->
    CoNSeP ``epithelial``); names with neither are refused, listed, with how to map them.
    ``unclassified`` names a class for the nuclei without one (None keeps them unclassified).

    Raises
    ------
    UnknownClassError
        Classes that nothing maps.
    """
    from .dispatch import read_annotated

    target = get_scheme(target)
    class_map = dict(class_map or {})
    try:
        item = read_annotated(path, index=index, scheme=scheme)
    except UnknownClassError:
        base = Path(str(path).split("::")[0])
        if not base.name.lower().endswith((".geojson", ".json")):
            raise
        from .geojson import geojson_class_names, read_geojson

        lowered = {k.strip().lower(): v for k, v in class_map.items()}
        names = geojson_class_names(base)
        suggested = suggest_class_map(names, target)
        merged = {n: t for n in names if (t := lowered.get(n.lower()) or suggested[n]) is not None}
        missing = [n for n in names if n not in merged]
        if missing:
            raise UnknownClassError(
                f"{base.name}: no '{target.name}' class is known for {', '.join(repr(m) for m in missing)}. Map them, "
                f"e.g. --class-map \"{missing[0]}={target.names[0]}\" ({', '.join(target.names)}, or unclassified)."
            ) from None
        item = read_geojson(base, scheme=target, class_map=merged)
        return convert_annotated(item, target, unclassified=unclassified) if unclassified else item
    return convert_annotated(item, target, class_map, unclassified=unclassified)
