"""Write an annotated image as a folder of files a person and a program can both use."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np

from .annotated import AnnotatedImage

__all__ = ["write_annotated_bundle", "safe_name"]


def safe_name(name: str) -> str:
    """``name`` with only letters, digits, ``-_.`` (a file stem every writer uses)."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("._") or "annotated"


_safe_name = safe_name  # the old private name


def write_annotated_bundle(item: AnnotatedImage, out_dir, *, provenance: dict | None = None) -> dict[str, Path]:
    """Write ``item`` to ``out_dir`` in every format the product exports.

    Files (those whose data is present), with ``<name>`` from ``item.name``:

    - ``<name>.png``: the image;
    - ``<name>_overlay.png``: the image with tissue tinted, nuclei outlined and points
      drawn in their class colours (an annotated screenshot that needs no display);
    - ``<name>.ome.tif``: image, nuclei instance and type maps, tissue map, µm/px,
      class tables and provenance;
    - ``<name>_nuclei.geojson``: QuPath GeoJSON, one polygon per nucleus;
    - ``<name>_points.csv``: ``row,col,class_id,class_name`` per point;
    - ``<name>_provenance.json``: where the data came from and what wrote these files.

    Returns
    -------
    dict
        File role -> path written.
    """
    from skimage.io import imsave

    from ..render import render_overlay
    from .geojson import write_geojson
    from .ome_tiff import write_ome_tiff

    item.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(item.name)
    record = {"source": item.provenance, "export": dict(provenance or {})}
    written: dict[str, Path] = {}
    if item.image is not None:
        written["image"] = out / f"{stem}.png"
        imsave(written["image"], item.image, check_contrast=False)
        overlay = render_overlay(
            item.image,
            nuclei=item.nuclei,
            tissue=item.tissue,
            tissue_scheme=item.tissue_scheme,
            points=item.points,
            point_classes=item.point_classes,
            point_scheme=item.point_scheme,
        )
        written["overlay"] = out / f"{stem}_overlay.png"
        imsave(written["overlay"], overlay, check_contrast=False)
    if item.image is not None or item.nuclei is not None or item.tissue is not None:
        written["ome_tiff"] = write_ome_tiff(
            out / f"{stem}.ome.tif",
            item.image,
            item.nuclei,
            tissue=item.tissue,
            tissue_scheme=item.tissue_scheme,
            provenance=record,
        )
    if item.nuclei is not None:
        written["geojson"] = write_geojson(out / f"{stem}_nuclei.geojson", item.nuclei, provenance=record)
    if item.points is not None and item.point_scheme is not None:
        written["points"] = out / f"{stem}_points.csv"
        classes = item.point_classes if item.point_classes is not None else np.zeros(len(item.points), int)
        lines = ["row,col,class_id,class_name"]
        lines += [
            f"{r:.2f},{c:.2f},{int(k)},{item.point_scheme.name_of(k)}" for (r, c), k in zip(item.points, classes)
        ]
        written["points"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    written["provenance"] = out / f"{stem}_provenance.json"
    record["files"] = {role: Path(p).name for role, p in written.items()}
    if item.nuclei is not None:
        record["nuclei"] = {"scheme": item.nuclei.scheme.name, "count": item.nuclei.n_nuclei,
                            "per_class": item.nuclei.counts()}
    written["provenance"].write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return {k: Path(v) for k, v in written.items()}


def write_file_set(files: dict, write, *, last: str = "image") -> dict:
    """Write a set of files all or nothing.

    Parameters
    ----------
    files : dict
        Role -> final path.
    write : callable
        ``write(temps)`` writes each role's file at ``temps[role]`` (a hidden name in the
        same folder, with the same suffix, so writers that go by suffix still work).
    last : str
        The role renamed into place last (the image: a folder scan that finds it finds
        the rest of its set too).

    Returns
    -------
    dict
        ``files``. When ``write`` fails (a full disk, a kill leaves hidden temp names only),
        no final file of the set is written and the temporary files are removed.
    """
    token = secrets.token_hex(4)
    temps = {role: Path(p).with_name(f".{token}-{Path(p).name}") for role, p in files.items()}
    try:
        write(temps)
        for role in sorted(files, key=lambda r: r == last):
            os.replace(temps[role], files[role])
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    return files
