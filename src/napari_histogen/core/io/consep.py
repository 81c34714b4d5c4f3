"""CoNSeP label files: the original release (``Labels/<name>.mat``) and the 256-px
patch layout (``type_mat/<split>/<name>.mat`` + ``inst/<split>/<name>.npy.gz``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, HistogenInputError
from ..masks import NucleiMask, instance_ids
from ._matfile import find_image, load_mat
from .annotated import AnnotatedImage
from .pairs import read_rgb_image

__all__ = ["read_consep_mat", "CONSEP_MPP", "merge_consep_types"]

#: CoNSeP tiles are 40x.
CONSEP_MPP = 0.25
# HoVer-Net's merge of the 7 original types into 4: 3,4 epithelial; 5,6,7 spindle-shaped.
_MERGE_7_TO_4 = np.array([0, 1, 2, 3, 3, 4, 4, 4])


def merge_consep_types(types) -> np.ndarray:
    """Map CoNSeP's 7 original types to the 4-class ``consep`` scheme (new array)."""
    types = np.asarray(types, dtype=np.int64)
    if types.size and (types.min() < 0 or types.max() > 7):
        raise HistogenInputError(f"CoNSeP types must be 0..7, found {int(types.min())}..{int(types.max())}.")
    return _MERGE_7_TO_4[types]


def _load_patch_instances(mat_path: Path) -> tuple[np.ndarray, Path]:
    # type_mat/<split>/<name>.mat -> inst/<split>/<name>.npy.gz
    root, split = mat_path.parent.parent.parent, mat_path.parent.name
    inst_path = root / "inst" / split / f"{mat_path.stem}.npy.gz"
    if not inst_path.is_file():
        raise HistogenInputError(
            f"{mat_path.name} has no instance map and {Path('inst') / split / inst_path.name} was not found "
            "beside it; open the original CoNSeP Labels/*.mat or keep the patch folder layout."
        )
    try:
        with gzip.open(inst_path) as handle:
            return np.load(handle, allow_pickle=False), inst_path
    except Exception as err:  # gzip/numpy raise many types for damaged files
        raise CorruptFileError(f"{inst_path.name} is not a readable gzipped .npy ({err}).") from None


def read_consep_mat(label_path, image_path=None) -> AnnotatedImage:
    """Read a CoNSeP label ``.mat`` and its image into the 4-class ``consep`` scheme.

    Parameters
    ----------
    label_path : str or Path
        Original layout: keys ``inst_map``, ``type_map``, ``inst_type`` (N,1; row k
        belongs to the k-th smallest non-zero id), ``inst_centroid``; image in
        ``../Images/<stem>.png``. Patch layout: only ``inst_type`` and
        ``inst_centroid``; instances from ``inst/<split>/<stem>.npy.gz`` and image
        ``images/<split>/<stem>.jpg`` under the same root.
    image_path : str or Path, optional
        Overrides the image found by layout.

    Returns
    -------
    AnnotatedImage
        At 0.25 µm/px (40x). Data with the 7 original types (any type above 4 in
        ``inst_type`` or ``type_map``) is merged to 4 classes, and
        ``provenance['merged_7_to_4']`` says so. A 7-type file with no nucleus of
        types 5..7 anywhere cannot be told apart from 4-class data.
    """
    label_path = Path(label_path)
    mat = load_mat(label_path)
    if "inst_type" not in mat:
        raise CorruptFileError(f"{label_path.name} is not a CoNSeP label file: key 'inst_type' is missing.")
    if "inst_map" in mat:
        instances, layout, inst_source = mat["inst_map"], "original", label_path.name
        folders = [label_path.parent.parent / "Images", label_path.parent.parent / "images", label_path.parent]
    else:
        instances, inst_path = _load_patch_instances(label_path)
        layout, inst_source = "patches", inst_path.name
        root, split = label_path.parent.parent.parent, label_path.parent.name
        folders = [root / "images" / split, label_path.parent]
    types = np.asarray(mat["inst_type"]).ravel()
    ids = instance_ids(np.asarray(instances).astype(np.int64))
    if ids.size != types.size:
        raise CorruptFileError(
            f"{label_path.name}: {types.size} types for {ids.size} nuclei in the instance map; the files do not belong together."
        )
    # a 7-type file whose nuclei happen to be all of types 1..4 still needs the merge
    # (type 4 is dysplastic epithelium there), and its type map may show it
    type_map = np.asarray(mat.get("type_map", np.zeros(0)))
    merged = bool((types.size and types.max() > 4) or (type_map.size and type_map.max() > 4))
    if merged:
        types = merge_consep_types(types)
    nuclei = NucleiMask.create(instances, dict(zip(ids.tolist(), types.astype(int).tolist())), "consep",
                               mpp=CONSEP_MPP, name=f"CoNSeP labels {label_path.name}")
    image_file = Path(image_path) if image_path is not None else find_image(label_path.stem, folders)
    notes = [] if image_file is not None else [f"no image {label_path.stem}.png/.jpg found; mask only"]
    return AnnotatedImage(
        name=label_path.stem,
        image=read_rgb_image(image_file) if image_file is not None else None,
        nuclei=nuclei,
        mpp=CONSEP_MPP,
        provenance={"format": "consep", "layout": layout, "source": label_path.name, "instances_source": inst_source,
                    "image_source": None if image_file is None else image_file.name, "merged_7_to_4": merged,
                    "notes": notes,
                    "licence": "CoNSeP: research use; cite Graham et al., HoVer-Net, MedIA 2019"},
    ).validate()
