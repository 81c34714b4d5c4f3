"""Speed of the annotation core on a 2-core machine: conversions, procedural nuclei, I/O.

Run: ``.venv/bin/python benchmarks/annotation_io.py [--size 1024] [--nuclei 2000] [--repeat 3]``.
Prints a table (median seconds of ``--repeat`` runs); ``--json FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_histogen.core.io.geojson import read_geojson, write_geojson
from napari_histogen.core.io.ome_tiff import read_ome_tiff, write_ome_tiff
from napari_histogen.core.masks import nuclei_from_type_map, nuclei_to_points, type_map_from_nuclei
from napari_histogen.core.points import grow_nuclei_from_points
from napari_histogen.core.schemes import get_scheme


def _time(fn, repeat):
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--nuclei", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    scheme = get_scheme("consep")
    points = rng.uniform(0, args.size - 1, (args.nuclei, 2))
    classes = rng.integers(1, 5, args.nuclei)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    rows = []
    t, mask = _time(lambda: grow_nuclei_from_points(points, classes, (args.size, args.size), scheme, seed=0), args.repeat)
    rows.append(("points -> nuclei (grow)", t, f"{mask.n_nuclei} nuclei"))
    t, tmap = _time(lambda: type_map_from_nuclei(mask.instances, mask.classes), args.repeat)
    rows.append(("nuclei -> type map", t, ""))
    t, (inst, _) = _time(lambda: nuclei_from_type_map(tmap), args.repeat)
    rows.append(("type map -> nuclei", t, f"{int(inst.max())} nuclei"))
    t, _ = _time(lambda: nuclei_to_points(mask.instances, mask.classes), args.repeat)
    rows.append(("nuclei -> points", t, ""))
    with tempfile.TemporaryDirectory() as tmp:
        ome, geo = Path(tmp) / "m.ome.tif", Path(tmp) / "m.geojson"
        t, _ = _time(lambda: write_ome_tiff(ome, image, mask), args.repeat)
        rows.append(("write OME-TIFF (image + mask)", t, f"{ome.stat().st_size / 1e6:.1f} MB"))
        t, _ = _time(lambda: read_ome_tiff(ome), args.repeat)
        rows.append(("read OME-TIFF", t, ""))
        t, _ = _time(lambda: write_geojson(geo, mask), args.repeat)
        rows.append(("write GeoJSON", t, f"{geo.stat().st_size / 1e6:.1f} MB"))
        t, back = _time(lambda: read_geojson(geo), args.repeat)
        same = np.array_equal(back.nuclei.instances, mask.instances)
        rows.append(("read GeoJSON", t, "pixel-exact" if same else "DIFFERS"))

    print(f"annotation core, {args.size}x{args.size} px, {args.nuclei} points, median of {args.repeat}")
    print(f"| {'operation':32s} | {'seconds':>8s} | note |")
    print(f"|{'-' * 34}|{'-' * 10}|------|")
    for name, seconds, note in rows:
        print(f"| {name:32s} | {seconds:8.3f} | {note} |")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(operation=n, seconds=s, note=o) for n, s, o in rows], indent=2))


if __name__ == "__main__":
    main()
