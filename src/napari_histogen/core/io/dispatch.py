"""One entry point that opens any annotation file the product reads, by its format."""

from __future__ import annotations

from pathlib import Path

from ..errors import CorruptFileError, HistogenInputError
from .annotated import AnnotatedImage
from .paths import ANNOTATION_SUFFIXES, IMAGE_SUFFIXES, split_index

__all__ = ["read_annotated", "split_index", "READABLE_SUFFIXES", "can_read"]

READABLE_SUFFIXES = ANNOTATION_SUFFIXES
_IMAGE_SUFFIXES = IMAGE_SUFFIXES


def can_read(path) -> bool:
    """Whether ``path`` looks like a format of :func:`read_annotated`.

    A ``.npy`` counts only inside a PanNuke/CoNIC folder (with ``images.npy``), so
    napari's own reader keeps every other array.
    """
    try:
        base, _ = split_index(path)
    except HistogenInputError:  # 'x.npy::abc' is no file of ours: decline, let others try
        return False
    name = base.name.lower()
    if name.endswith(".npy"):
        return (base.parent / "images.npy").is_file()
    return any(name.endswith(s) for s in READABLE_SUFFIXES)


def _image_for_mask(mask_path: Path) -> Path | None:
    stem = mask_path.name[: -len(".npz")]
    for folder in (mask_path.parent, mask_path.parent.parent / "images", mask_path.parent.parent / "Images"):
        for suffix in _IMAGE_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def read_annotated(path, *, index: int | None = None, scheme=None, class_map=None) -> AnnotatedImage:
    """Open an annotated image in any supported format.

    Parameters
    ----------
    path : str or Path
        - ``.mat``: Lizard labels (``inst_map``, ``class``) or CoNSeP labels
          (``inst_map``/``inst_type``, or the 256-px patch layout);
        - ``.npy``: a PanNuke or CoNIC array (images, masks or labels; the sibling is
          found); ``file.npy::N`` chooses patch N;
        - ``.npz``: an instance/type map whose image lies next to it or in ``../images``
          (without one, the mask alone);
        - ``.ome.tif``: an OME-TIFF written by napari-histogen (or any OME-TIFF image);
        - ``.geojson``: QuPath GeoJSON nuclei;
        - an image (PNG/JPEG/TIFF): its mask is found by convention (see
          :func:`~napari_histogen.core.io.pairs.read_image_mask_pair`).
    index : int, optional
        Patch index for dataset arrays (overrides ``::N``).
    scheme : str or ClassScheme, optional
        Class scheme for formats that do not record one (image + mask pairs, GeoJSON).
    class_map : mapping of str to str, optional
        GeoJSON only: class name in the file -> class name of the scheme (see
        :func:`~napari_histogen.core.io.geojson.read_geojson`).
    """
    base, suffix_index = split_index(path)
    index = index if index is not None else suffix_index
    if not base.exists():
        raise HistogenInputError(f"No file or folder at {base}.")
    name = base.name.lower()
    if class_map and not name.endswith((".geojson", ".json")):
        raise HistogenInputError(f"{base.name}: a class map applies to GeoJSON files (class names); for other "
                                 "formats convert the scheme instead (histogen convert-scheme).")
    if name.endswith((".ome.tif", ".ome.tiff")):
        from .ome_tiff import read_ome_tiff

        return read_ome_tiff(base)
    if name.endswith(".geojson") or name.endswith(".json"):
        from .geojson import read_geojson

        return read_geojson(base, scheme=scheme, class_map=class_map)
    if name.endswith(".mat"):
        from ._matfile import load_mat

        keys = load_mat(base, keys_only=True)
        if "class" in keys and "inst_map" in keys:
            from .lizard import read_lizard_mat

            return read_lizard_mat(base)
        if "inst_type" in keys:
            from .consep import read_consep_mat

            return read_consep_mat(base)
        raise CorruptFileError(
            f"{base.name} has keys {sorted(keys)}; expected a Lizard label file (inst_map, class) "
            "or a CoNSeP label file (inst_map, inst_type)."
        )
    if name.endswith(".npy") or base.is_dir():
        from .npy_datasets import read_npy_dataset

        return read_npy_dataset(base, index=index or 0)
    if name.endswith(".npz"):
        from .pairs import read_image_mask_pair, read_mask_file

        image = _image_for_mask(base)
        if image is None:  # a mask on its own (e.g. painted for synthesis)
            return read_mask_file(base, scheme=scheme)
        return read_image_mask_pair(image, base, scheme=scheme)
    if name.endswith(_IMAGE_SUFFIXES):
        from .pairs import read_image_mask_pair

        return read_image_mask_pair(base, scheme=scheme)
    raise HistogenInputError(
        f"{base.name}: unknown format. napari-histogen reads {', '.join(READABLE_SUFFIXES)} and image + mask pairs."
    )
