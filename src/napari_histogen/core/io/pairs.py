"""Reader of an image file paired with a nuclei mask file, with optional typed points.

The layout of our own exports and of the NuCLS sample::

    images/<stem>.png    labels/<stem>.npz    points/<stem>.csv

also ``<stem>.npz``, ``<stem>_mask.npz`` or ``<stem>_mask.tif`` next to the image.
"""

from __future__ import annotations

from typing import Any

import csv
import zipfile
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, HistogenInputError
from ..images import to_rgb_uint8
from ..masks import NucleiMask, as_label_image, check_mask_size, check_same_shape, classes_from_type_map, instance_ids
from ..schemes import UNCLASSIFIED, get_scheme
from .annotated import AnnotatedImage

__all__ = ["read_image_mask_pair", "read_mask_file", "read_points_csv", "read_rgb_image", "classes_from_points"]

_TIFF_SUFFIXES = (".tif", ".tiff")


def read_rgb_image(path, *, name: str = "image") -> np.ndarray:
    """Read a PNG, JPEG or TIFF file as a new ``HxWx3 uint8`` RGB array.

    Parameters
    ----------
    path : str or Path
        Image file.
    name : str, optional
        What to call the image in error messages.

    Raises
    ------
    HistogenInputError
        The file does not exist, or its content is not a 2-D image.
    CorruptFileError
        The file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise HistogenInputError(f"No {name} file at {path}.")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            data = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except Exception as err:  # decoders raise many unrelated types for bad bytes
        raise CorruptFileError(
            f"The {name} {path.name} cannot be decoded ({type(err).__name__}: {err}). "
            "Open a PNG, JPEG or TIFF image."
        ) from None
    return to_rgb_uint8(data, name=f"{name} {path.name}")


def read_points_csv(path, scheme="nucls") -> tuple[np.ndarray, np.ndarray]:
    """Read a typed point layout from a CSV of ``x,y,class`` rows.

    Parameters
    ----------
    path : str or Path
        CSV file, one point per row: pixel column, pixel row, class, no header
        (the NuCLS layout). A header ``row,col,class_id[,class_name]`` (our own
        export) is read by column name, with scheme ids; another three-column
        header (``x,y,class``) is skipped. A file with no rows gives no points.
    scheme : str or ClassScheme, optional
        Scheme of the classes. For ``'nucls'`` a headerless file holds the NuCLS
        class numbers 0..3 (tumor_any, nonTIL_stromal, sTIL, other_nucleus), which
        become scheme ids 1..4; otherwise the file holds the scheme's ids.

    Returns
    -------
    points : ndarray (N, 2) float64
        ``(row, col)`` of each point, i.e. ``(y, x)``.
    point_classes : ndarray (N,) int32
        Class id of each point in ``scheme``.

    Raises
    ------
    CorruptFileError
        Rows that are not three numbers, or fractional classes.
    UnknownClassError
        Class ids that ``scheme`` does not define.
    """
    path = Path(path)
    scheme = get_scheme(scheme)
    if not path.is_file():
        raise HistogenInputError(f"No points file at {path}.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CorruptFileError(f"Points file {path.name} cannot be read as CSV text ({err}).") from None
    except ValueError as err:  # NUL bytes and similar binary content
        raise CorruptFileError(f"Points file {path.name} is not a CSV text file ({err}).") from None
    header = None
    if rows and not _is_numeric(rows[0]):
        header, rows = [cell.strip().lower() for cell in rows[0]], rows[1:]
    if header is not None and {"row", "col", "class_id"} <= set(header):
        # our own export (histogen convert/demo): row,col,class_id[,class_name], scheme ids
        cols = [header.index("col"), header.index("row"), header.index("class_id")]
        rows = [[row[i] for i in cols] if len(row) > max(cols) else row for row in rows]
        own_ids = True
    else:
        own_ids = False
    bad = [row for row in rows if len(row) != 3 or not _is_numeric(row)]
    if header is not None and not own_ids and len(header) != 3:
        bad.insert(0, header)  # a header naming other columns is the wrong file even without rows
    if bad:
        raise CorruptFileError(
            f"Points file {path.name} must hold rows of three numbers x,y,class "
            f"(or a header row,col,class_id); found {bad[0]}."
        )
    table = np.array([[float(cell) for cell in row] for row in rows], dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(table)) or not np.array_equal(table[:, 2], np.round(table[:, 2])):
        raise CorruptFileError(f"Points file {path.name} has non-finite coordinates or non-integer classes.")
    # the NuCLS files number classes from 0, which would collide with 'unclassified'
    offset = 1 if scheme.name == "nucls" and not own_ids else 0
    classes = table[:, 2].astype(np.int32) + offset
    scheme.check_ids(np.unique(classes), what=f"points file {path.name}", allow_unclassified=offset == 0)
    return table[:, [1, 0]].copy(), classes


def _is_numeric(row) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def read_image_mask_pair(image_path, mask_path=None, scheme=None, mpp=None) -> AnnotatedImage:
    """Read an image and its nuclei mask (and typed points, where present).

    Parameters
    ----------
    image_path : str or Path
        PNG, JPEG or TIFF image.
    mask_path : str or Path, optional
        ``.npz`` with ``inst_map`` (or ``instances``) and optionally ``type_map``
        (or ``types``), ``classes`` (N, 2: id, class), ``scheme`` and ``mpp``; or a
        ``.tif`` holding an instance map (HxW) or instance and type maps (2xHxW or
        HxWx2). When None it is found by convention: ``<stem>.npz``,
        ``<stem>_mask.npz``, ``<stem>_mask.tif`` next to the image, then
        ``../labels/<stem>.npz``.
    scheme : str or ClassScheme, optional
        Scheme of the mask's classes; overrides one stored in the ``.npz``.
    mpp : float, optional
        Microns per pixel; overrides one stored in the ``.npz``.

    Returns
    -------
    AnnotatedImage
        With ``points`` from ``../points/<stem>.csv`` when that file exists, parses,
        and ``scheme`` is ``'nucls'`` or None.

    Raises
    ------
    HistogenInputError
        Missing mask, image and mask of different sizes, or a type map whose scheme
        is unknown (pass ``scheme``).
    CorruptFileError, UnknownClassError

    Notes
    -----
    The scheme is, in order: ``scheme``; the one stored in the ``.npz``; ``'consep'``
    with every nucleus unclassified when there is no type map or class table;
    ``'nucls'`` when a NuCLS points file was read. Otherwise the call fails, since a
    type map's numbers mean nothing without their scheme.

    With scheme ``'nucls'`` and points, each nucleus takes the majority class of the
    points inside it (none: unclassified) and the type map is ignored: the NuCLS
    sample's type map (non-tumour/tumour) is not in the NuCLS scheme and unreliable.
    """
    image_path = Path(image_path)
    image = read_rgb_image(image_path)
    mask_path = Path(mask_path) if mask_path is not None else _find_mask(image_path)
    mask = _read_mask(mask_path)
    notes: list[str] = []

    points = point_classes = None
    points_path = image_path.parent.parent / "points" / f"{image_path.stem}.csv"
    if points_path.is_file() and (scheme is None or get_scheme(scheme).name == "nucls"):
        try:
            points, point_classes = read_points_csv(points_path, "nucls")
        except HistogenInputError as err:
            # points are an extra here: a bad file must not hide the mask
            notes.append(f"points file {points_path.name} skipped: {err}")
            points_path = None
    else:
        points_path = None

    scheme_name, classes = _resolve_classes(mask, scheme, points, point_classes, notes)
    inst = mask["instances"]
    check_same_shape(image.shape, inst.shape, what=f"mask {mask_path.name}")
    mpp = mpp if mpp is not None else mask.get("mpp")
    nuclei = NucleiMask.create(inst, classes, scheme_name, mpp=mpp, name=f"mask {mask_path.name}")
    provenance = {
        "format": "image+mask",
        "source": image_path.name,
        "mask_source": mask_path.name,
        "points_source": None if points_path is None else points_path.name,
        "scheme": nuclei.scheme.name,
        "notes": notes,
    }
    return AnnotatedImage(
        name=image_path.stem,
        image=image,
        nuclei=nuclei,
        points=points,
        point_classes=point_classes,
        point_scheme=None if points is None else get_scheme("nucls"),
        mpp=nuclei.mpp,
        provenance=provenance,
    ).validate()


def read_mask_file(mask_path, scheme=None, mpp=None) -> AnnotatedImage:
    """Read a nuclei mask file (``.npz`` or ``.tif``, as in :func:`read_image_mask_pair`) without an image.

    Masks drawn or generated for synthesis have no image yet; this gives them as an
    :class:`AnnotatedImage` with ``image=None``.
    """
    mask_path = Path(mask_path)
    mask = _read_mask(mask_path)
    notes: list[str] = []
    scheme_name, classes = _resolve_classes(mask, scheme, None, None, notes)
    mpp = mpp if mpp is not None else mask.get("mpp")
    nuclei = NucleiMask.create(mask["instances"], classes, scheme_name, mpp=mpp, name=f"mask {mask_path.name}")
    provenance = {"format": "mask", "source": mask_path.name, "scheme": nuclei.scheme.name, "notes": notes}
    return AnnotatedImage(name=mask_path.stem, nuclei=nuclei, mpp=nuclei.mpp, provenance=provenance).validate()


def _find_mask(image_path: Path) -> Path:
    stem, folder = image_path.stem, image_path.parent
    candidates = [
        folder / f"{stem}.npz",
        folder / f"{stem}_mask.npz",
        folder / f"{stem}_mask.tif",
        folder / f"{stem}_mask.tiff",
        folder.parent / "labels" / f"{stem}.npz",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise HistogenInputError(
        f"No mask found for {image_path.name}: looked for "
        f"{', '.join(str(c.relative_to(folder.parent)) for c in candidates)} "
        f"under {folder.parent}. Give the mask file explicitly."
    )


def _read_mask(path: Path) -> dict:
    """Mask file as a dict: instances, and any of types, classes, scheme, mpp."""
    if not path.is_file():
        raise HistogenInputError(f"No mask file at {path}.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz_mask(path)
    if suffix in _TIFF_SUFFIXES:
        return _read_tif_mask(path)
    raise HistogenInputError(f"Mask {path.name}: unsupported type '{suffix}'; use a .npz or .tif mask.")


def _check_npz_sizes(path: Path) -> None:
    """Read only the array headers of an .npz: refuse a huge map before it is decompressed."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(fh)
                shapes[info.filename[:-4]] = tuple(int(n) for n in shape)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # np.load says what is wrong with the file
    for name, shape in shapes.items():
        if len(shape) >= 2:
            check_mask_size(shape[-2:] if len(shape) > 2 and shape[-1] > 4 else shape[:2],
                            name=f"array '{name}' of {path.name}")


def _read_npz_mask(path: Path) -> dict:
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptFileError(f"Mask {path.name} is not a readable .npz archive ({err}).") from None
    inst = _first(arrays, "inst_map", "instances")
    if inst is None:
        raise CorruptFileError(
            f"Mask {path.name} has no instance map: expected key 'inst_map' (or 'instances'), "
            f"found {sorted(arrays)}."
        )
    mask: dict[str, Any] = {"instances": as_label_image(inst, name=f"instance map of {path.name}")}
    types = _first(arrays, "type_map", "types")
    if types is not None:
        mask["types"] = as_label_image(types, name=f"type map of {path.name}")
    if "classes" in arrays:
        table = np.asarray(arrays["classes"])
        if table.size and (table.ndim != 2 or table.shape[1] != 2 or not np.issubdtype(table.dtype, np.number)):
            raise CorruptFileError(f"Mask {path.name}: 'classes' must be an (N, 2) table of id, class.")
        mask["classes"] = {int(i): int(c) for i, c in table.reshape(-1, 2)}
    if "scheme" in arrays:
        raw = np.asarray(arrays["scheme"]).ravel()
        value = raw[0] if raw.size else ""
        mask["scheme"] = value.decode() if isinstance(value, bytes) else str(value)
    if "mpp" in arrays:
        try:
            mask["mpp"] = float(arrays["mpp"])
        except (TypeError, ValueError):
            raise CorruptFileError(f"Mask {path.name}: 'mpp' is not a number.") from None
    return mask


def _first(arrays: dict, *keys):
    for key in keys:
        if key in arrays:
            return arrays[key]
    return None


def _read_tif_mask(path: Path) -> dict:
    import tifffile

    try:
        data = np.asarray(tifffile.imread(path))
    except Exception as err:  # tifffile raises many types for bad bytes
        raise CorruptFileError(f"Mask {path.name} is not a readable TIFF ({err}).") from None
    if data.ndim == 3 and data.shape[0] == 2:
        inst, types = data[0], data[1]
    elif data.ndim == 3 and data.shape[-1] == 2:
        inst, types = data[..., 0], data[..., 1]
    elif data.ndim == 2:
        inst, types = data, None
    else:
        raise HistogenInputError(
            f"Mask {path.name} has shape {data.shape}; expected an instance map (HxW) "
            "or instance and type maps (2xHxW or HxWx2)."
        )
    mask: dict[str, Any] = {"instances": as_label_image(inst, name=f"instance map of {path.name}")}
    if types is not None:
        mask["types"] = as_label_image(types, name=f"type map of {path.name}")
    return mask


def _resolve_classes(mask, scheme, points, point_classes, notes) -> tuple[str, dict]:
    """Scheme name and class table by the order in :func:`read_image_mask_pair`."""
    has_types = "types" in mask or "classes" in mask
    if scheme is not None:
        name = get_scheme(scheme).name
    elif "scheme" in mask:
        name = get_scheme(mask["scheme"]).name
    elif not has_types:
        notes.append("the mask has no type map: every nucleus is unclassified (scheme 'consep')")
        return "consep", {}
    elif points is not None:
        name = "nucls"
        notes.append("no scheme given or stored: scheme 'nucls' taken from the points file")
    else:
        raise HistogenInputError(
            "The mask has a type map but no class scheme is given or stored in it; "
            "pass the scheme its class ids use (e.g. 'lizard', 'consep', 'pannuke', 'nucls')."
        )
    if "classes" in mask:
        return name, mask["classes"]
    if name == "nucls" and points is not None:
        if "types" in mask:
            notes.append("type map ignored: nucleus classes come from the points inside each nucleus")
        return name, classes_from_points(mask["instances"], points, point_classes)
    if "types" in mask:
        return name, classes_from_type_map(mask["instances"], mask["types"])
    return name, {}


def classes_from_points(instances, points, point_classes) -> dict[int, int]:
    """Class of each instance as the majority class of the points inside it.

    Ties go to the lower class id; instances without a point are unclassified (0);
    points on background or outside the map are ignored.
    """
    inst = np.asarray(instances)
    rc = np.rint(np.asarray(points, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    cls = np.asarray(point_classes, dtype=np.int64).ravel()
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < inst.shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < inst.shape[1])
    hit = inst[rc[inside, 0], rc[inside, 1]]
    cls = cls[inside][hit > 0]
    hit = hit[hit > 0]
    table = {int(i): UNCLASSIFIED for i in instance_ids(inst)}
    for inst_id in np.unique(hit):
        votes = np.bincount(cls[hit == inst_id])
        table[int(inst_id)] = int(votes.argmax())
    return table
