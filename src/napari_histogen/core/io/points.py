"""Typed point layouts from files: CSV (``x,y,class`` or our ``row,col,class_id`` export), GeoJSON points.

GeoJSON: every ``Point`` (and each point of a ``MultiPoint``) feature is a nucleus centre at
``(x, y)`` pixels; its class is the scheme class named by ``properties.classification.name``
(QuPath), ``properties.class_name`` or ``properties.name``, or the id in ``properties.class_id``.
Features of other geometry types are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, HistogenInputError
from ..schemes import get_scheme

__all__ = ["read_point_layout", "collect_point_files", "POINT_SUFFIXES"]

POINT_SUFFIXES = (".csv", ".geojson", ".json")


def collect_point_files(path) -> list[Path]:
    """The point files of ``path`` (a file, or a folder's .csv/.geojson/.json files in name order)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in POINT_SUFFIXES)
        if not files:
            raise HistogenInputError(f"{path} holds no point files (.csv, .geojson).")
        return files
    raise HistogenInputError(f"No points file or folder at {path}.")


def read_point_layout(path, scheme) -> tuple[np.ndarray, np.ndarray]:
    """``(points (N, 2) row/col, classes (N,))`` from a CSV or GeoJSON point file, classes in ``scheme``."""
    from .pairs import read_points_csv

    path = Path(path)
    scheme = get_scheme(scheme)
    if path.suffix.lower() == ".csv":
        pts, cls = read_points_csv(path, scheme=scheme)
        return np.asarray(pts, np.float64).reshape(-1, 2), np.asarray(cls, np.int64)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{path.name} is not readable GeoJSON ({err}).") from None
    features = data.get("features", []) if isinstance(data, dict) and data.get("type") == "FeatureCollection" else (
        data if isinstance(data, list) else [data])
    by_name = {c.name.lower(): c.id for c in scheme.classes}
    points, classes = [], []
    for feat in features:
        geom = (feat or {}).get("geometry") or {}
        if geom.get("type") == "Point":
            coords = [geom.get("coordinates")]
        elif geom.get("type") == "MultiPoint":
            coords = list(geom.get("coordinates") or [])
        else:
            continue
        props = feat.get("properties") or {}
        cid = _class_of(props, by_name, scheme, path)
        for xy in coords:
            if not isinstance(xy, (list, tuple)) or len(xy) < 2:
                raise CorruptFileError(f"A point in {path.name} has no (x, y) coordinates.")
            points.append((float(xy[1]), float(xy[0])))
            classes.append(cid)
    if not points:
        raise HistogenInputError(f"{path.name} holds no Point features; export the point layout as GeoJSON points "
                                 "or CSV (x,y,class).")
    return np.array(points, np.float64), np.array(classes, np.int64)


def _class_of(props: dict, by_name: dict, scheme, path: Path) -> int:
    if "class_id" in props:
        cid = int(props["class_id"])
        scheme.check_ids([cid], what=path.name)
        return cid
    name = (props.get("classification") or {}).get("name") if isinstance(props.get("classification"), dict) else None
    name = name or props.get("class_name") or props.get("name")
    if name is None:
        raise HistogenInputError(f"A point in {path.name} has no class (classification.name, class_name or "
                                 "class_id); give every point a class.")
    if str(name).lower() not in by_name:
        raise HistogenInputError(f"Point class '{name}' in {path.name} is not a class of scheme '{scheme.name}' "
                                 f"({', '.join(c.name for c in scheme.classes)}).")
    return int(by_name[str(name).lower()])
