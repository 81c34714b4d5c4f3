"""OME-TIFF files holding an image, its nuclei mask and its tissue mask.

One file, one OME ``Image`` (TIFF series) per item present, in this order:

============== ===================== ==========================================
series name    array                 content
============== ===================== ==========================================
``image``      ``HxWx3 uint8`` RGB   the image (photometric RGB)
``nuclei_instances`` ``HxW int32``   instance map, 0 = background
``nuclei_types``     ``HxW int32``   class id of every nucleus pixel
``tissue``     ``HxW int32``         tissue map of the tissue scheme
============== ===================== ==========================================

Every series carries ``PhysicalSizeX/Y`` in µm when the scale is known, so any
OME reader (QuPath, Fiji/Bio-Formats, napari-ome-zarr converters) overlays them.

What OME has no place for (class table, class schemes, provenance) is stored as
one JSON document in an OME ``CommentAnnotation`` whose ``Namespace`` is
:data:`HISTOGEN_NAMESPACE`, referenced from the first image. This keeps the
OME-XML schema-valid (``StructuredAnnotations`` is where OME puts application
metadata) and other readers simply ignore it. The JSON also records the sha256 of
every array, so a file damaged after writing is reported instead of read as wrong
masks.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..provenance import json_default as _json_default
from ..errors import CorruptFileError, HistogenInputError
from ..images import to_rgb_uint8
from ..masks import NucleiMask, as_label_image, check_same_shape, classes_from_type_map
from ..provenance import array_sha256
from ..schemes import ClassScheme, get_scheme
from .annotated import AnnotatedImage

__all__ = ["write_ome_tiff", "read_ome_tiff", "HISTOGEN_NAMESPACE"]

#: Namespace of the OME ``CommentAnnotation`` that holds the histogen JSON metadata.
HISTOGEN_NAMESPACE = "urn:napari-histogen:ome-tiff:v1"

_FORMAT = "napari-histogen ome-tiff"
_FORMAT_VERSION = 1

# Lengths in OME's UnitsLength enumeration that a slide scale may realistically use,
# as micrometres per unit. Both micro signs occur in the wild (U+00B5 is OME's).
_UM_PER_UNIT = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
    "nm": 1e-3, "pm": 1e-6, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6,
}

# A classic TIFF cannot address more than 4 GiB; switch to BigTIFF well before the
# uncompressed size could get there (compressed sizes are not known in advance).
_BIGTIFF_BYTES = 2**31


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def write_ome_tiff(
    path,
    image=None,
    nuclei: NucleiMask | None = None,
    *,
    tissue=None,
    tissue_scheme=None,
    provenance: dict | None = None,
    mpp: float | None = None,
) -> Path:
    """Write an image and/or its masks to one OME-TIFF file.

    Parameters
    ----------
    path : str or Path
        Output file; ``.ome.tif`` is the conventional suffix (not enforced).
        Its folder is created when missing; an existing file is replaced only once
        the new one is complete.
    image : array_like, optional
        The image; ``HxWx3 uint8`` is written as is, any other image type
        :func:`~napari_histogen.core.images.to_rgb_uint8` accepts is converted first.
    nuclei : NucleiMask, optional
        Written as the instance map, the type map, and (in the metadata) the
        class table and scheme.
    tissue : array_like, optional
        ``HxW`` tissue map (class id per pixel, 0 = none).
    tissue_scheme : ClassScheme, str or dict, optional
        Scheme of ``tissue`` (a ``tissue`` scheme); stored with it.
    provenance : dict, optional
        What made the file (see :func:`~napari_histogen.core.provenance.make_provenance`);
        stored as JSON and returned by :func:`read_ome_tiff`. Values JSON cannot hold
        (numpy scalars, paths) are stored as their nearest JSON equivalent.
    mpp : float, optional
        Microns per pixel when ``nuclei`` is absent or has no scale. If both are
        given they must agree.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    HistogenInputError
        Nothing to write, arrays of different sizes, class ids the schemes do not
        define, a non-positive or conflicting scale.
    """
    path = Path(path)
    items = _checked_items(image, nuclei, tissue, tissue_scheme)
    mpp = _checked_mpp(mpp, nuclei)
    shape = next(arr.shape[:2] for _, arr in items)

    meta = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "series": [name for name, _ in items],
        "shape": [int(shape[0]), int(shape[1])],
        "mpp": mpp,
        "sha256": {name: array_sha256(arr) for name, arr in items},
        "nuclei": None,
        "tissue": None,
        "provenance": provenance,
    }
    if nuclei is not None:
        meta["nuclei"] = {
            "scheme": nuclei.scheme.to_dict(),
            # pairs rather than an object: JSON object keys are strings, ids are ints
            "classes": [[int(k), int(v)] for k, v in sorted(nuclei.classes.items())],
            "metadata": nuclei.metadata or {},
        }
    if tissue is not None:
        scheme = None if tissue_scheme is None else get_scheme(tissue_scheme)
        meta["tissue"] = {"scheme": None if scheme is None else scheme.to_dict()}
    # ensure_ascii: the JSON then survives any encoding a TIFF tool applies to the XML
    try:
        text = json.dumps(meta, ensure_ascii=True, default=_json_default, allow_nan=False)
    except ValueError as err:
        raise HistogenInputError(f"The provenance or metadata cannot be written as JSON ({err}).") from None

    total_bytes = sum(arr.nbytes for _, arr in items)
    compression = _compression()
    path.parent.mkdir(parents=True, exist_ok=True)
    import tifffile

    # write next to the target and rename at the end, so a failed or interrupted
    # write never leaves a truncated file under the real name
    partial = path.with_name(path.name + ".part")
    try:
        with tifffile.TiffWriter(partial, ome=True, bigtiff=total_bytes >= _BIGTIFF_BYTES) as tif:
            for index, (name, arr) in enumerate(items):
                ome: dict = {"Name": name}
                if mpp is not None:
                    ome.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
                if index == 0:
                    ome["CommentAnnotation"] = {"Namespace": HISTOGEN_NAMESPACE, "Value": text}
                kwargs: dict = {"metadata": ome, "photometric": "rgb" if arr.ndim == 3 else "minisblack"}
                if compression:
                    kwargs["compression"] = compression
                if mpp is not None:
                    # plain TIFF readers (no OME) still get the scale from the resolution tags
                    kwargs.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
                tif.write(arr, **kwargs)
        with tifffile.TiffFile(partial) as tif:
            stored = tif.ome_metadata if tif.is_ome else None
        if not stored or _histogen_meta(stored, path) is None:
            # tifffile versions without OME annotation support drop it silently
            raise HistogenInputError(
                f"tifffile {tifffile.__version__} did not store the class tables in {path.name}; "
                "update tifffile (pip install -U tifffile)."
            )
        partial.replace(path)
    except OSError as err:
        raise HistogenInputError(f"Cannot write {path}: {err.strerror or err}. Check the folder and free space.") from None
    finally:
        partial.unlink(missing_ok=True)
    return path


def _checked_items(image, nuclei, tissue, tissue_scheme) -> list[tuple[str, np.ndarray]]:
    """The (series name, array) pairs to write, validated against each other."""
    if image is None and nuclei is None and tissue is None:
        raise HistogenInputError("Nothing to write: give an image, a nuclei mask or a tissue mask.")
    items: list[tuple[str, np.ndarray]] = []
    if image is not None:
        arr = np.asarray(image)
        if not (arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3):
            arr = to_rgb_uint8(arr)
        items.append(("image", np.ascontiguousarray(arr)))
    if nuclei is not None:
        if not isinstance(nuclei, NucleiMask):
            raise HistogenInputError(
                f"nuclei must be a NucleiMask, not {type(nuclei).__name__}; build one with NucleiMask.create(...)."
            )
        instances = np.asarray(nuclei.instances)
        if instances.ndim != 2 or not np.issubdtype(instances.dtype, np.integer):
            instances = as_label_image(instances, name="nuclei instance map")
        missing = sorted(set(int(i) for i in np.unique(instances) if i) - set(int(k) for k in nuclei.classes))
        if missing:
            raise HistogenInputError(
                f"The nuclei mask has instances {missing[:10]} without a class entry; "
                "rebuild it with NucleiMask.create(...) (which marks them unclassified)."
            )
        nuclei.scheme.check_ids(nuclei.classes.values(), what="nuclei mask")
        instances = np.ascontiguousarray(instances, dtype=np.int32)
        items.append(("nuclei_instances", instances))
        items.append(("nuclei_types", nuclei.type_map().astype(np.int32, copy=False)))
    if tissue is not None:
        tmap = as_label_image(tissue, name="tissue mask")
        if tissue_scheme is not None:
            scheme = get_scheme(tissue_scheme)
            if scheme.kind != "tissue":
                raise HistogenInputError(
                    f"Scheme '{scheme.name}' is a {scheme.kind} scheme; the tissue mask needs a tissue scheme."
                )
            scheme.check_ids(np.unique(tmap[tmap > 0]), what="tissue mask", allow_unclassified=False)
        items.append(("tissue", tmap))
    elif tissue_scheme is not None:
        raise HistogenInputError("A tissue scheme was given without a tissue mask.")
    first = items[0]
    for name, arr in items[1:]:
        check_same_shape(first[1].shape, arr.shape, what=name.replace("_", " "))
    return items


def _checked_mpp(mpp, nuclei) -> float | None:
    nuclei_mpp = None if nuclei is None else nuclei.mpp
    for value in (mpp, nuclei_mpp):
        if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
            raise HistogenInputError(f"Microns per pixel must be a positive number, not {value}.")
    if mpp is not None and nuclei_mpp is not None and not math.isclose(float(mpp), float(nuclei_mpp), rel_tol=1e-9):
        raise HistogenInputError(
            f"mpp={mpp} disagrees with the nuclei mask's {nuclei_mpp} µm/px; give one scale (or none)."
        )
    value = mpp if mpp is not None else nuclei_mpp
    return None if value is None else float(value)


_COMPRESSION: list = []


def _compression() -> str | None:
    """'zlib' when this tifffile can write deflate, else None (store uncompressed)."""
    if not _COMPRESSION:
        import io

        import tifffile

        try:
            tifffile.imwrite(io.BytesIO(), np.zeros((2, 2), np.uint8), compression="zlib")
            _COMPRESSION.append("zlib")
        except Exception:  # a missing codec shows as ImportError, ValueError or KeyError
            _COMPRESSION.append(None)
    return _COMPRESSION[0]


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def read_ome_tiff(path) -> AnnotatedImage:
    """Read an OME-TIFF written by :func:`write_ome_tiff`, or any TIFF as an image.

    Parameters
    ----------
    path : str or Path
        A file of :func:`write_ome_tiff` (image, masks, schemes, scale and
        provenance come back as written) or any other TIFF / OME-TIFF, of which the
        first series is read as the image (grey, RGB or RGBA, converted by
        :func:`~napari_histogen.core.images.to_rgb_uint8`; for a pyramid, the full
        resolution level).

    Returns
    -------
    AnnotatedImage
        ``name`` is the file name without ``.ome.tif``; ``mpp`` from the stored
        scale (also set on the nuclei mask), else OME ``PhysicalSizeX``, else TIFF
        resolution tags in centimetres;
        ``provenance`` as stored, or the file and format for other TIFFs.

    Raises
    ------
    HistogenInputError
        No such file, or an image that is not a 2-D grey/RGB image.
    CorruptFileError
        Not a TIFF, truncated or damaged data, or histogen metadata that does not
        match the arrays.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise HistogenInputError(f"No file at {path}.")
    name = _stem(path)
    damage = _DamageLog()
    log = logging.getLogger("tifffile")
    log.addHandler(damage)
    try:
        with tifffile.TiffFile(path) as tif:
            ome_xml = tif.ome_metadata if tif.is_ome else None
            damage.check(path)
            meta = _histogen_meta(ome_xml, path) if ome_xml else None
            if meta is not None:
                result = _read_histogen(tif, meta, path, name)
                _check_segments(tif.pages, tif.filehandle.size, path)
            else:
                result = _read_plain(tif, ome_xml, path, name)
                _check_segments(tif.series[0].pages, tif.filehandle.size, path)
            damage.check(path)
            return result
    except HistogenInputError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # tifffile, zlib and numpy raise many types for damaged files
        raise CorruptFileError(
            f"{path.name} cannot be read as a TIFF ({type(err).__name__}: {err}). "
            "The file may be truncated or damaged; export it again."
        ) from None
    finally:
        log.removeHandler(damage)


class _DamageLog(logging.Handler):
    """Collects tifffile's reports of a broken file structure.

    tifffile logs (rather than raises) when a tag value or the next page lies past
    the end of the file, then goes on without them: a truncated histogen file would
    read as a plain image with its masks silently missing.
    """

    _SIGNS = ("invalid page offset", "<TiffTag.fromfile>", "invalid value offset", "corrupted")

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if any(sign in message for sign in self._SIGNS):
            self.messages.append(message)

    def check(self, path: Path) -> None:
        if self.messages:
            raise CorruptFileError(
                f"{path.name} is damaged or truncated ({self.messages[0][:200]}); export it again."
            )


def _check_segments(pages, size: int, path: Path) -> None:
    """Refuse files whose image data runs past the end of the file (truncated copies)."""
    for page in pages:
        if page is None:
            continue
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if offset + count > size:
                raise CorruptFileError(
                    f"{path.name} is truncated: its image data ends at byte {offset + count} "
                    f"but the file has {size} bytes. Copy or export it again."
                )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _histogen_meta(ome_xml: str, path: Path) -> dict | None:
    """The histogen JSON of the OME-XML, or None for OME-TIFFs from other software."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError as err:
        raise CorruptFileError(f"{path.name} has damaged OME-XML metadata ({err}).") from None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "CommentAnnotation" and element.get("Namespace") == HISTOGEN_NAMESPACE:
            value = next((e for e in element if e.tag.rsplit("}", 1)[-1] == "Value"), None)
            try:
                meta = json.loads(value.text if value is not None else "")  # type: ignore[arg-type]
            except (TypeError, ValueError) as err:
                raise CorruptFileError(f"{path.name}: the napari-histogen metadata is not valid JSON ({err}).") from None
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise CorruptFileError(f"{path.name}: the napari-histogen metadata is not in the expected form.")
            if int(meta.get("version", 0)) > _FORMAT_VERSION:
                raise HistogenInputError(
                    f"{path.name} was written by a newer napari-histogen (format version {meta['version']}); "
                    "update napari-histogen to read it."
                )
            return meta
    return None


def _read_histogen(tif, meta: dict, path: Path, name: str) -> AnnotatedImage:
    names = list(meta["series"])
    if len(tif.series) < len(names):
        raise CorruptFileError(
            f"{path.name} lists {len(names)} arrays in its metadata but holds {len(tif.series)}; "
            "the file is incomplete."
        )
    shape = tuple(int(v) for v in meta["shape"])
    arrays: dict[str, np.ndarray] = {}
    for index, series_name in enumerate(names):
        arr = tif.series[index].asarray()
        if tuple(arr.shape[:2]) != shape:
            raise CorruptFileError(f"{path.name}: array '{series_name}' has shape {arr.shape}, expected {shape}.")
        if array_sha256(arr) != meta["sha256"][series_name]:
            raise CorruptFileError(
                f"{path.name}: array '{series_name}' does not match its checksum; the file is damaged. "
                "Export it again."
            )
        arrays[series_name] = arr

    mpp = meta.get("mpp")
    mpp = None if mpp is None else float(mpp)
    nuclei = None
    if "nuclei_instances" in arrays:
        info = meta.get("nuclei") or {}
        scheme = ClassScheme.from_dict(info["scheme"], source=f"{path.name} nuclei scheme") if info.get("scheme") else None
        if "classes" in info:
            classes = {int(k): int(v) for k, v in info["classes"]}
        else:  # the type map holds the same information, one class per nucleus
            classes = classes_from_type_map(arrays["nuclei_instances"], arrays["nuclei_types"])
        nuclei = NucleiMask.create(
            arrays["nuclei_instances"], classes, scheme if scheme is not None else "consep",
            mpp=mpp, metadata=info.get("metadata") or {}, name=f"nuclei mask of {path.name}",
        )
    tissue = arrays.get("tissue")
    tissue_scheme = None
    if tissue is not None:
        scheme_dict = (meta.get("tissue") or {}).get("scheme")
        if scheme_dict:
            tissue_scheme = ClassScheme.from_dict(scheme_dict, source=f"{path.name} tissue scheme")
        tissue = tissue.astype(np.int32, copy=False)
    provenance = meta.get("provenance")
    result = AnnotatedImage(
        name=name,
        image=arrays.get("image"),
        nuclei=nuclei,
        tissue=tissue,
        tissue_scheme=tissue_scheme,
        mpp=mpp,
        provenance=provenance if provenance is not None else {"file": str(path), "format": "OME-TIFF (napari-histogen)"},
    )
    return result.validate()


def _read_plain(tif, ome_xml: str | None, path: Path, name: str) -> AnnotatedImage:
    if not tif.series:
        raise CorruptFileError(f"{path.name} holds no image.")
    series = tif.series[0]
    arr = series.asarray()
    axes = series.axes
    # drop length-1 dimensions (T, Z, C of a single plane) and bring channels last
    keep = [i for i, (ax, n) in enumerate(zip(axes, arr.shape)) if n > 1 or ax in "YX"]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if arr.ndim == 3 and axes[0] in "CS" and axes[1:] == "YX":
        arr = np.moveaxis(arr, 0, -1)
    image = to_rgb_uint8(arr, name=f"image in {path.name}")
    mpp = _ome_mpp(ome_xml) if ome_xml else None
    if mpp is None:
        mpp = _resolution_mpp(series.pages[0] if hasattr(series, "pages") and series.pages else tif.pages[0])
    return AnnotatedImage(
        name=name,
        image=image,
        mpp=mpp,
        provenance={"file": str(path), "format": "OME-TIFF" if ome_xml else "TIFF"},
    )


def _ome_mpp(ome_xml: str) -> float | None:
    """PhysicalSizeX of the first OME Pixels element in µm, None when absent."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    try:
        size = float(pixels.get("PhysicalSizeX"))  # type: ignore[arg-type]
    except ValueError:
        return None
    factor = _UM_PER_UNIT.get(pixels.get("PhysicalSizeXUnit", "µm"))
    if factor is None or not (math.isfinite(size) and size > 0):
        return None
    return size * factor


def _resolution_mpp(page) -> float | None:
    """Scale from TIFF resolution tags, only when given per centimetre.

    Per-inch resolutions are ignored: most software writes a screen default (72 dpi)
    there, which would claim hundreds of µm per pixel.
    """
    try:
        tags = page.tags
        unit = tags.get("ResolutionUnit")
        xres = tags.get("XResolution")
        if unit is None or xres is None or int(unit.value) != 3:
            return None
        num, den = xres.value
        per_cm = num / den
    except Exception:
        return None
    if not (per_cm > 0 and math.isfinite(per_cm)):
        return None
    return 1e4 / per_cm
