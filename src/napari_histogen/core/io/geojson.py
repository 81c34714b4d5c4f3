"""QuPath GeoJSON: nuclei as detection polygons, and back.

Coordinates are QuPath's pixel coordinates: ``x`` is the column, ``y`` the row, and
pixel ``(row, col)`` covers the square ``[col, col+1) x [row, row+1)``, so its
centre is ``(col + 0.5, row + 0.5)``.

Writing traces each nucleus along the pixel edges (on the lattice of pixel corners),
so the polygons enclose exactly the nucleus' pixel centres: reading the file back,
which fills every pixel whose centre lies inside, reproduces the mask pixel for
pixel. Parts that touch only at a corner become separate polygons of a
``MultiPolygon`` (they share that corner); background enclosed by a nucleus
becomes a hole (an interior ring).

The class scheme, size, scale and provenance go into a top-level ``"histogen"``
member, which GeoJSON allows (a *foreign member*) and QuPath ignores.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy import ndimage as ndi

from ..provenance import json_default as _json_default
from ..errors import CorruptFileError, HistogenInputError, UnknownClassError
from ..masks import NucleiMask, check_mask_size, instance_ids
from ..schemes import UNCLASSIFIED, ClassScheme, get_scheme, list_schemes
from .annotated import AnnotatedImage

logger = logging.getLogger(__name__)

__all__ = ["nuclei_to_geojson", "write_geojson", "read_geojson", "geojson_class_names"]

_FORMAT = "napari-histogen nuclei"
_FORMAT_VERSION = 1

# QuPath < 0.3 named the object type through the feature id.
_LEGACY_TYPES = {
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathAnnotationObject": "annotation",
    "PathTileObject": "tile",
}


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def nuclei_to_geojson(nuclei: NucleiMask) -> dict:
    """A GeoJSON ``FeatureCollection`` with one QuPath detection per nucleus.

    Parameters
    ----------
    nuclei : NucleiMask
        The mask to export.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...], "histogen": {...}}``.
        Each feature is a ``Polygon`` (``MultiPolygon`` for a nucleus in several
        parts) with integer pixel-corner coordinates, exterior rings counter-clockwise
        and holes clockwise in the numeric sense of RFC 7946 (signed area positive /
        negative). Properties: ``objectType: "detection"``, ``classification:
        {"name", "color": [r, g, b]}`` (absent for unclassified nuclei),
        ``histogen_id`` (instance id) and ``histogen_class_id``. Features are ordered
        by instance id.
    """
    if not isinstance(nuclei, NucleiMask):
        raise HistogenInputError(
            f"Expected a NucleiMask, not {type(nuclei).__name__}; build one with NucleiMask.create(...)."
        )
    instances = np.asarray(nuclei.instances)
    if instances.ndim != 2:
        raise HistogenInputError(f"The nuclei instance map has shape {instances.shape}; it must be 2-D.")
    scheme = nuclei.scheme
    # a mask cut from a whole-slide annotation goes back to its place on the slide
    dx, dy = _offset_xy(nuclei.metadata)
    features = []
    for inst_id, polygons in _outlines(instances, dx, dy):
        class_id = int(nuclei.classes.get(inst_id, UNCLASSIFIED))
        properties: dict = {"objectType": "detection"}
        if class_id != UNCLASSIFIED:
            properties["classification"] = {"name": scheme.name_of(class_id), "color": list(scheme.color(class_id))}
        properties["histogen_id"] = inst_id
        properties["histogen_class_id"] = class_id
        if len(polygons) == 1:
            geometry = {"type": "Polygon", "coordinates": polygons[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": polygons}
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {
        "type": "FeatureCollection",
        "features": features,
        "histogen": {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "shape": [int(instances.shape[0]), int(instances.shape[1])],
            "mpp": nuclei.mpp,
            "scheme": scheme.to_dict(),
            "metadata": nuclei.metadata or {},
        },
    }


def write_geojson(path, nuclei: NucleiMask, *, provenance: dict | None = None) -> Path:
    """Write ``nuclei`` as a QuPath-readable GeoJSON file (see :func:`nuclei_to_geojson`).

    Parameters
    ----------
    path : str or Path
        Output file (``.geojson``); its folder is created when missing.
    nuclei : NucleiMask
    provenance : dict, optional
        Stored in the ``"histogen"`` member and returned by :func:`read_geojson`.

    Returns
    -------
    Path
    """
    path = Path(path)
    collection = nuclei_to_geojson(nuclei)
    collection["histogen"]["provenance"] = provenance
    try:
        text = json.dumps(collection, ensure_ascii=False, separators=(",", ":"), default=_json_default, allow_nan=False)
    except ValueError as err:
        raise HistogenInputError(f"The provenance cannot be written as JSON ({err}).") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise HistogenInputError(f"Cannot write {path}: {err.strerror or err}. Check the folder and free space.") from None
    return path


def _offset_xy(metadata) -> tuple[int, int]:
    """The slide offset ``(x, y)`` in pixels a mask's metadata records (``(0, 0)`` when none)."""
    offset = (metadata or {}).get("offset_xy")
    if offset is None:
        return 0, 0
    try:
        x, y = (int(v) for v in offset)
    except (TypeError, ValueError):
        raise CorruptFileError(f"The recorded slide offset {offset!r} is not two whole numbers.") from None
    return x, y


def _outlines(instances: np.ndarray, dx: int = 0, dy: int = 0):
    """Yield ``(instance id, polygons)`` for every nucleus, in id order.

    ``polygons`` is a list of GeoJSON polygon coordinate lists (exterior ring first,
    then holes), each ring closed, in global pixel-corner coordinates shifted by the slide
    offset ``(dx, dy)``.
    """
    ids = instance_ids(instances)
    if ids.size == 0:
        return
    # find_objects allocates one slot per label value, so give it compact labels:
    # ids may be sparse and as large as 2**31 - 1.
    compact = np.zeros(instances.shape, np.int32)
    inside = instances != 0
    compact[inside] = np.searchsorted(ids, instances[inside]) + 1
    for index, sl in enumerate(ndi.find_objects(compact)):
        mask = compact[sl] == index + 1
        polygons = _trace(mask)
        r0, c0 = sl[0].start, sl[1].start
        yield int(ids[index]), [[_to_ring(ring, c0 + dx, r0 + dy) for ring in polygon] for polygon in polygons]


def _to_ring(points: np.ndarray, x0: int, y0: int) -> list:
    """A closed GeoJSON ring from ``(n, 2)`` local ``(x, y)`` corner points."""
    pts = points + (x0, y0)
    ring = pts.tolist()
    ring.append(ring[0])
    return ring


_FOUR = ndi.generate_binary_structure(2, 1)


def _trace(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Pixel-edge outline of a boolean mask as polygons ``[exterior, *holes]``.

    Every boundary edge between a mask pixel and a non-mask pixel is directed so that
    the mask lies on its right (looking along it with rows growing downwards); then
    each ring is positive in the shoelace sum when it bounds the mask from outside
    and negative around a hole. Chaining edges into rings, at a corner where the mask
    touches itself only diagonally the walk turns right, staying with the pixel it
    came along: the mask is traced as 4-connected parts, each one polygon. A ring
    that still passes a corner twice (a part wrapping round to touch itself there)
    is cut there into two rings, which keeps every ring simple as OGC asks; the cut
    off piece encloses background and becomes a hole touching the exterior at that
    corner.

    Returns
    -------
    list of list of ndarray
        Per 4-connected part, its exterior ring then its holes, each ``(n, 2)`` int
        ``(x, y)`` of the ring's corners (not repeated at the end), in the mask's
        own coordinates.
    """
    p = np.pad(mask, 1)
    width = p.shape[1] + 1  # vertices per lattice row
    up, down = p[:-1, :], p[1:, :]
    left, right = p[:, :-1], p[:, 1:]
    # (start x, start y, dx, dy) of the four kinds of edge, in padded coordinates
    kinds = []
    r, c = np.nonzero(down & ~up)  # top edge of pixel (r+1, c), heading +x
    kinds.append((c, r + 1, 1, 0))
    r, c = np.nonzero(up & ~down)  # bottom edge of pixel (r, c), heading -x
    kinds.append((c + 1, r + 1, -1, 0))
    r, c = np.nonzero(right & ~left)  # left edge of pixel (r, c+1), heading -y
    kinds.append((c + 1, r + 1, 0, -1))
    r, c = np.nonzero(left & ~right)  # right edge of pixel (r, c), heading +y
    kinds.append((c + 1, r, 0, 1))
    sx = np.concatenate([k[0] for k in kinds])
    sy = np.concatenate([k[1] for k in kinds])
    dx = np.concatenate([np.full(k[0].size, k[2]) for k in kinds])
    dy = np.concatenate([np.full(k[0].size, k[3]) for k in kinds])
    start = (sy * width + sx).tolist()
    end = ((sy + dy) * width + (sx + dx)).tolist()
    dxl, dyl = dx.tolist(), dy.tolist()

    outgoing: dict[int, list[int]] = {}
    for i, s in enumerate(start):
        outgoing.setdefault(s, []).append(i)

    used = bytearray(len(start))
    loops: list[list[int]] = []
    for first in range(len(start)):
        if used[first]:
            continue
        loop = []
        i = first
        while not used[i]:
            used[i] = 1
            loop.append(start[i])
            nxt = outgoing[end[i]]
            if len(nxt) == 1:
                i = nxt[0]
            else:  # diagonal contact: the right turn (-dy, dx) stays with the same pixel
                a = nxt[0]
                i = a if (dxl[a] == -dyl[i] and dyl[a] == dxl[i]) else nxt[1]
        loops.extend(_split_at_repeats(loop))

    rings = []
    for loop in loops:
        pts = np.array([(v % width, v // width) for v in loop], dtype=np.int64)
        x, y = pts[:, 0], pts[:, 1]
        area2 = int(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        rings.append((pts, area2))

    if len(rings) == 1:
        pts, _ = rings[0]
        return [[_simplify(pts) - 1]]

    # Group rings by the 4-connected part on their right-hand side (every edge of a
    # ring has pixels of the same part there): one exterior per part, the rest holes.
    labels, _ = ndi.label(p, structure=_FOUR)
    parts: dict[int, list] = {}
    for pts, area2 in rings:
        (x0, y0), (x1, y1) = pts[0], pts[1]
        ux, uy = np.sign(x1 - x0), np.sign(y1 - y0)
        # twice the centre of the pixel right of the first unit edge
        cx2, cy2 = 2 * x0 + ux - uy, 2 * y0 + uy + ux
        part = int(labels[(cy2 - 1) // 2, (cx2 - 1) // 2])
        entry = parts.setdefault(part, [None, []])
        if area2 > 0:
            entry[0] = pts
        else:
            entry[1].append(pts)
    polygons = []
    for part in sorted(parts):
        exterior, holes = parts[part]
        polygons.append([_simplify(exterior) - 1] + [_simplify(h) - 1 for h in holes])
    return polygons


def _split_at_repeats(loop: list[int]) -> list[list[int]]:
    """Cut a closed vertex sequence wherever it revisits a vertex, into simple loops."""
    if len(set(loop)) == len(loop):
        return [loop]
    out = []
    stack: list[int] = []
    where: dict[int, int] = {}
    for v in loop:
        k = where.get(v)
        if k is None:
            where[v] = len(stack)
            stack.append(v)
            continue
        out.append(stack[k:])
        for u in stack[k + 1 :]:
            del where[u]
        del stack[k + 1 :]
    out.append(stack)
    return out


def _simplify(pts: np.ndarray) -> np.ndarray:
    """Drop corners where the ring goes straight on (unit steps -> one segment)."""
    step = np.roll(pts, -1, axis=0) - pts
    turn = np.any(step != np.roll(step, 1, axis=0), axis=1)
    return pts[turn]


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def read_geojson(path, shape=None, scheme=None, class_map: Mapping[str, str] | None = None) -> AnnotatedImage:
    """Read nuclei from a GeoJSON file of :func:`write_geojson` or a QuPath export.

    Parameters
    ----------
    path : str or Path
        A ``FeatureCollection``, a list of features or a single feature.
        ``Polygon`` and ``MultiPolygon`` geometries are read (other geometries, such
        as points, are skipped). QuPath ``detection`` and ``cell`` objects (for cells,
        the ``nucleusGeometry`` when present) are nuclei, as are features without an
        ``objectType``; ``annotation`` objects are read as nuclei only when the file
        has no detections or cells (otherwise they are usually the region the
        detections were made in). Tiles are skipped.
    shape : (int, int), optional
        ``(height, width)`` of the mask. Default: the size stored by
        :func:`write_geojson`, else the bounding box of all polygons from (0, 0).
        Given together with a stored size, the two must agree.
    scheme : ClassScheme, str or dict, optional
        Scheme to resolve ``classification.name`` with. A scheme stored in the file
        takes precedence. Without either, the one known scheme that has all the
        class names found is used (``consep`` when nothing is classified).
    class_map : mapping of str to str, optional
        Class name in the file -> class name of the scheme (or ``"unclassified"``), applied
        before the scheme is resolved: how a QuPath export's ``Tumor`` becomes ``epithelial``.
        Names are matched case-insensitively; entries for names the file lacks are ignored.
        The map is recorded in the provenance.

    Returns
    -------
    AnnotatedImage
        ``nuclei`` set (the rest None). Instance ids are ``histogen_id`` where the
        features carry unique positive ones, the others numbered on after the
        largest, in file order (a file without ids gets 1..N; where the largest is
        the int32 limit, the smallest free ids are used instead). Where features
        overlap, the later one keeps the pixels; a nucleus too small to cover any
        pixel centre is dropped.

    Raises
    ------
    HistogenInputError
        No such file; no nuclei and no size; a size conflicting with the stored one.
    UnknownClassError
        Class names that the scheme does not define (the message lists them), or a class map
        naming a class the scheme lacks.
    CorruptFileError
        Not JSON, or not GeoJSON features with polygon coordinates.
    """
    path = Path(path)
    features, stored = _load(path)
    parsed = []  # (feature index, properties, polygons)
    for index, feature, geometry in _nuclei_features(features, path):
        polygons = _polygons(geometry, index, path)
        if polygons:
            parsed.append((index, feature.get("properties") or {}, polygons))

    renamed = _renamer(class_map)
    names = [renamed(_class_name(props)) for _, props, _ in parsed]
    scheme_obj = _resolve_scheme(stored, scheme, names, path)
    class_ids = [UNCLASSIFIED if name is None else scheme_obj.id_of(name) for name in names]

    offset = None
    stored_meta: dict = stored.get("metadata") if isinstance(stored.get("metadata"), dict) else {}  # type: ignore[assignment]
    if stored.get("shape") is not None and stored_meta.get("offset_xy") is not None:
        # written by write_geojson from a mask cut out of a slide: outlines are in slide
        # coordinates, the mask's grid starts at the recorded offset
        offset = _offset_xy(stored_meta)
        shift = np.array(offset, dtype=np.float64)
        parsed = [(i, props, [[ring - shift for ring in poly] for poly in polys]) for i, props, polys in parsed]
    elif shape is None and stored.get("shape") is None:
        offset = _slide_offset([polys for _, _, polys in parsed])
        if offset is not None:  # slide coordinates: keep the outlines' bounding box, record where it was
            dx, dy = offset
            shift = np.array([dx, dy], dtype=np.float64)
            parsed = [(i, props, [[ring - shift for ring in poly] for poly in polys]) for i, props, polys in parsed]
    out_shape = _resolve_shape(stored, shape, [polys for _, _, polys in parsed], path)
    check_mask_size(out_shape, name=f"mask of {path.name}" + (
        f" (outlines' bounding box from x={offset[0]}, y={offset[1]})" if offset else ""))
    ids = _assign_ids([props for _, props, _ in parsed])
    instances = np.zeros(out_shape, np.int32)
    for inst_id, (_, _, polygons) in zip(ids, parsed):
        filled = _rasterize(polygons, out_shape)
        if filled is not None:
            (r0, c0), local = filled
            view = instances[r0 : r0 + local.shape[0], c0 : c0 + local.shape[1]]
            view[local] = inst_id
    classes = dict(zip(ids, class_ids))

    mpp = stored.get("mpp")
    metadata = dict(stored.get("metadata") or {}) if isinstance(stored.get("metadata"), dict) else {}
    if offset is not None:
        metadata["offset_xy"] = [int(offset[0]), int(offset[1])]
    try:
        mpp_value = None if mpp is None else float(mpp)
    except (TypeError, ValueError):
        raise CorruptFileError(f"{path.name}: the recorded 'mpp' ({mpp!r}) is not a number.") from None
    nuclei = NucleiMask.create(
        instances, classes, scheme_obj, mpp=mpp_value, metadata=metadata, name=f"nuclei of {path.name}",
    )
    provenance = stored.get("provenance")
    if not isinstance(provenance, dict):
        provenance = {"file": str(path), "format": "GeoJSON"}
    if class_map:
        provenance = {**provenance, "class_map": {str(k): str(v) for k, v in class_map.items()}}
    if offset is not None:
        provenance = {**provenance, "offset_xy": [int(offset[0]), int(offset[1])],
                      "note": f"slide coordinates: cropped to the outlines' bounding box from x={offset[0]}, "
                              f"y={offset[1]} (add the offset to map pixels back to the slide)"}
        logger.info("%s: outlines in slide coordinates; cropped to their bounding box from x=%d, y=%d",
                    path.name, offset[0], offset[1])
    return AnnotatedImage(name=_stem(path), nuclei=nuclei, mpp=nuclei.mpp, provenance=provenance)


def geojson_class_names(path) -> list[str]:
    """The class names (``classification.name``) of the nuclei in a GeoJSON file, sorted.

    The features counted are those :func:`read_geojson` reads as nuclei; unclassified ones
    add no name. Lets a caller build a class map before reading the file.
    """
    path = Path(path)
    features, _ = _load(path)
    names = set()
    for _, feature, _ in _nuclei_features(features, path):
        name = _class_name(feature.get("properties") or {})
        if name is not None:
            names.add(name)
    return sorted(names, key=str.lower)


def _load(path: Path) -> tuple[list, dict]:
    """The features and the histogen member of the GeoJSON file ``path``."""
    if not path.is_file():
        raise HistogenInputError(f"No file at {path}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptFileError(f"{path.name} is not valid JSON ({err}); is it a GeoJSON export?") from None
    except RecursionError:
        raise CorruptFileError(f"{path.name} is nested too deeply to be GeoJSON (a damaged or hostile file).") from None
    return _features(data, path)


def _nuclei_features(features: list, path: Path) -> list:
    """``(index, feature, geometry)`` of the features that are nuclei (see :func:`read_geojson`)."""
    nuclei_like = []
    annotations = []
    for index, feature in enumerate(features):
        kind, geometry = _kind_and_geometry(feature, index, path)
        if kind in ("detection", "cell"):
            nuclei_like.append((index, feature, geometry))
        elif kind == "annotation":
            annotations.append((index, feature, geometry))
    return nuclei_like or annotations


def _renamer(class_map: Mapping[str, str] | None):
    """Function: class name in the file -> name after the class map (None = unclassified)."""
    lookup = {str(k).strip().lower(): str(v).strip() for k, v in (class_map or {}).items()}

    def rename(name: str | None) -> str | None:
        if name is None:
            return None
        new = lookup.get(name.lower(), name)
        return None if new.lower() in ("", "unclassified") else new

    return rename


_MAP_HINT = ("Or map them to the scheme's classes: --class-map \"NAME=CLASS,...\" on the command line, "
             "the class table in the annotate dock.")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".geojson", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _features(data, path: Path) -> tuple[list, dict]:
    """The feature list and the histogen member ({} when absent) of a GeoJSON document."""
    stored: dict = {}
    if isinstance(data, list):
        features = data
    elif isinstance(data, Mapping):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")  # type: ignore[assignment]
            member = data.get("histogen")
            if isinstance(member, Mapping) and member.get("format") == _FORMAT:
                try:
                    version = int(member.get("version", 0))
                except (TypeError, ValueError, OverflowError):
                    raise CorruptFileError(f"{path.name}: the histogen format version {member.get('version')!r} "
                                           "is not a number.") from None
                if version > _FORMAT_VERSION:
                    raise HistogenInputError(
                        f"{path.name} was written by a newer napari-histogen (format version "
                        f"{member['version']}); update napari-histogen to read it."
                    )
                stored = dict(member)
        elif kind == "Feature":
            features = [data]
        elif kind in ("Polygon", "MultiPolygon"):
            features = [{"type": "Feature", "geometry": data, "properties": {}}]
        else:
            features = None
    else:
        features = None
    if not isinstance(features, list):
        raise CorruptFileError(
            f"{path.name} is JSON but not GeoJSON features (expected a FeatureCollection, "
            "a list of features or a Feature)."
        )
    return features, stored


def _kind_and_geometry(feature, index: int, path: Path):
    """QuPath object type (lower case) and the geometry that outlines the nucleus."""
    if not isinstance(feature, Mapping):
        raise CorruptFileError(f"{path.name}: feature {index} is not a JSON object.")
    props = feature.get("properties") or {}
    if not isinstance(props, Mapping):
        raise CorruptFileError(f"{path.name}: feature {index} has properties that are not a JSON object.")
    kind = props.get("objectType") or feature.get("objectType")
    if kind is None and isinstance(feature.get("id"), str):
        kind = _LEGACY_TYPES.get(feature["id"])
    kind = str(kind).strip().lower() if kind else "detection"
    geometry = feature.get("geometry")
    if kind == "cell":
        nucleus = feature.get("nucleusGeometry") or props.get("nucleusGeometry")
        if nucleus:
            geometry = nucleus
    return kind, geometry


def _polygons(geometry, index: int, path: Path) -> list[list[np.ndarray]]:
    """Polygons ``[[exterior, *holes], ...]`` as float ``(n, 2)`` (x, y) arrays; [] for non-areas."""
    if geometry is None:
        return []
    if not isinstance(geometry, Mapping):
        raise CorruptFileError(f"{path.name}: feature {index} has a geometry that is not a JSON object.")
    kind = geometry.get("type")
    try:
        if kind == "Polygon":
            raw = [geometry["coordinates"]]
        elif kind == "MultiPolygon":
            raw = list(geometry["coordinates"])
        elif kind == "GeometryCollection":
            return [p for g in geometry.get("geometries", []) for p in _polygons(g, index, path)]
        else:  # points, lines: no area to fill
            return []
        polygons = []
        for polygon in raw:
            rings = []
            for ring in polygon:
                arr = np.asarray([pt[:2] for pt in ring], dtype=np.float64)
                if arr.ndim != 2 or arr.shape[1] != 2 or not np.all(np.isfinite(arr)):
                    raise ValueError("coordinates are not finite [x, y] pairs")
                if len(arr) >= 3:
                    rings.append(arr)
            if rings:
                polygons.append(rings)
        return polygons
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CorruptFileError(
            f"{path.name}: feature {index} has malformed {kind} coordinates ({err})."
        ) from None


def _class_name(props: Mapping) -> str | None:
    """``classification.name``; None for unclassified."""
    value = props.get("classification")
    if isinstance(value, Mapping):
        value = value.get("name")
    if value is None:
        return None
    name = str(value).strip()
    return None if name.lower() in ("", "unclassified") else name


def _resolve_scheme(stored: dict, scheme, names: list, path: Path) -> ClassScheme:
    found = sorted({n for n in names if n is not None}, key=str.lower)
    if stored.get("scheme"):
        chosen = ClassScheme.from_dict(stored["scheme"], source=f"{path.name} class scheme")
    elif scheme is not None:
        chosen = get_scheme(scheme)
    elif not found:
        return get_scheme("consep")
    else:
        wanted = {n.lower() for n in found}
        fits = [s for s in list_schemes("nuclei").values() if wanted <= {c.lower() for c in s.names}]
        exact = [s for s in fits if set(found) <= set(s.names)]
        if len(fits) > 1 and len(exact) == 1:  # QuPath's "Other" and CoNSeP's "other": the spelling decides
            fits = exact
        if len(fits) == 1:
            return fits[0]
        hint = (
            f"Schemes {', '.join(s.name for s in fits)} all have them; choose one."
            if fits
            else "No known scheme has them all; define a scheme with these classes."
        )
        raise UnknownClassError(
            f"{path.name} uses the classes {', '.join(found)}. {hint} Then read it with that scheme. {_MAP_HINT}"
        )
    if chosen.kind != "nuclei":
        raise HistogenInputError(f"Scheme '{chosen.name}' is a {chosen.kind} scheme; nuclei need a nuclei scheme.")
    known = {n.lower() for n in chosen.names}
    unknown = [n for n in found if n.lower() not in known]
    if unknown:
        raise UnknownClassError(
            f"{path.name} uses the classes {', '.join(found)}, of which {', '.join(unknown)} "
            f"are not in scheme '{chosen.name}' ({', '.join(chosen.names)}). "
            "Choose the scheme the nuclei were classified with, or define one with these classes. "
            + _MAP_HINT
        )
    return chosen


#: Outlines whose bounding box starts this far from (0, 0) are taken as slide coordinates.
SLIDE_OFFSET_MIN = 1024


def _slide_offset(polygon_lists: list) -> tuple[int, int] | None:
    """``(x0, y0)`` to subtract when the outlines lie far from the origin (a QuPath export in slide
    coordinates), or when a mask from (0, 0) would pass the size limit; else None."""
    points = [ring for polys in polygon_lists for poly in polys for ring in poly]
    if not points:
        return None
    low = np.min([ring.min(axis=0) for ring in points], axis=0)
    high = np.max([ring.max(axis=0) for ring in points], axis=0)
    x0, y0 = max(0, math.floor(low[0])), max(0, math.floor(low[1]))
    from ..images import MAX_IMAGE_PIXELS

    from_origin = math.ceil(high[0]) * math.ceil(high[1])
    if max(x0, y0) >= SLIDE_OFFSET_MIN or from_origin > MAX_IMAGE_PIXELS:
        return (x0, y0) if (x0, y0) != (0, 0) else None
    return None


def _resolve_shape(stored: dict, shape, polygon_lists: list, path: Path) -> tuple[int, int]:
    stored_shape = stored.get("shape")
    if stored_shape is not None:
        try:
            stored_shape = (int(stored_shape[0]), int(stored_shape[1]))
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            raise CorruptFileError(f"{path.name}: the recorded image size {stored_shape!r} is not (height, "
                                   "width).") from None
    if shape is not None:
        try:
            shape = (int(shape[0]), int(shape[1]))
        except (TypeError, ValueError, IndexError):
            raise HistogenInputError(f"shape must be (height, width), not {shape!r}.") from None
        if stored_shape is not None and shape != stored_shape:
            raise HistogenInputError(
                f"{path.name} was written for a {stored_shape[1]}x{stored_shape[0]} px image, not "
                f"{shape[1]}x{shape[0]} px; open it with the image it belongs to."
            )
    shape = shape or stored_shape
    if shape is None:
        points = [ring for polygons in polygon_lists for polygon in polygons for ring in polygon]
        if not points:
            raise HistogenInputError(f"{path.name} has no nuclei outlines and no image size; pass shape=(height, width).")
        top = np.max([ring.max(axis=0) for ring in points], axis=0)
        shape = (max(1, math.ceil(top[1])), max(1, math.ceil(top[0])))
    if shape[0] < 1 or shape[1] < 1:
        raise HistogenInputError(f"shape must be positive, not {shape}.")
    return shape


def _assign_ids(props_list: list) -> list[int]:
    """Instance ids: unique positive ``histogen_id`` values kept, the rest numbered on."""
    top = np.iinfo(np.int32).max
    ids: list[int | None] = []
    taken: set[int] = set()
    for props in props_list:
        value = props.get("histogen_id")
        inst = None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
            if 0 < value <= top and value not in taken:
                inst = value
                taken.add(value)
        ids.append(inst)
    n_new = ids.count(None)
    start = max(taken, default=0)
    if start + n_new <= top:
        fresh = iter(range(start + 1, start + n_new + 1))
    else:  # the ids reach the int32 limit: use the smallest free ones instead
        fresh = (i for i in range(1, top + 1) if i not in taken)
    return [next(fresh) if inst is None else inst for inst in ids]


def _rasterize(polygons: list[list[np.ndarray]], shape: tuple[int, int]):
    """Pixels whose centres lie inside the polygons (even-odd within a polygon, union across).

    Returns ``((row0, col0), mask)`` of the clipped bounding box, or None when no
    pixel centre is covered. A crossing of the row ``y = r + 0.5`` at ``x`` switches
    inside/outside for the pixels with centre right of ``x``: columns from
    ``floor(x + 0.5)`` on; edges count for ``ymin <= y < ymax`` so a vertex on the
    scan line is counted once. Pixel-corner outlines never touch a pixel centre, so
    they fill exactly the pixels they were traced from.
    """
    every = np.concatenate([ring for polygon in polygons for ring in polygon])
    (xmin, ymin), (xmax, ymax) = every.min(axis=0), every.max(axis=0)
    r_lo, r_hi = max(0, math.ceil(ymin - 0.5)), min(shape[0], math.ceil(ymax - 0.5))
    c_lo, c_hi = max(0, math.ceil(xmin - 0.5)), min(shape[1], math.ceil(xmax - 0.5))
    if r_lo >= r_hi or c_lo >= c_hi:
        return None
    nr, nc = r_hi - r_lo, c_hi - c_lo
    mask = np.zeros((nr, nc), bool)
    for polygon in polygons:
        x0 = np.concatenate(polygon)[:, 0]
        y0 = np.concatenate(polygon)[:, 1]
        x1 = np.concatenate([np.roll(ring[:, 0], -1) for ring in polygon])
        y1 = np.concatenate([np.roll(ring[:, 1], -1) for ring in polygon])
        lo_y, hi_y = np.minimum(y0, y1), np.maximum(y0, y1)
        # rows r with lo_y <= r + 0.5 < hi_y, clipped to the box
        first = np.maximum(np.ceil(lo_y - 0.5), r_lo).astype(np.int64)
        stop = np.minimum(np.ceil(hi_y - 0.5), r_hi).astype(np.int64)
        count = np.maximum(stop - first, 0)
        if not count.any():
            continue
        edge = np.repeat(np.arange(count.size), count)
        rows = np.repeat(first, count) + (np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count))
        yc = rows + 0.5
        t = (yc - y0[edge]) / (y1[edge] - y0[edge])
        x = x0[edge] + t * (x1[edge] - x0[edge])
        cols = np.clip(np.floor(x + 0.5).astype(np.int64) - c_lo, 0, nc)
        flips = np.bincount((rows - r_lo) * (nc + 1) + cols, minlength=nr * (nc + 1)).reshape(nr, nc + 1)
        inside = np.bitwise_xor.accumulate((flips & 1).astype(np.uint8), axis=1)[:, :nc]
        mask |= inside.astype(bool)
    if not mask.any():
        return None
    return (r_lo, c_lo), mask
