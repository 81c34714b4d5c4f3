"""Lizard label files (``Lizard_Labels/Labels/<name>.mat``) with their 20x images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorruptFileError
from ..masks import NucleiMask
from ._matfile import find_image, load_mat
from .annotated import AnnotatedImage
from .pairs import read_rgb_image

__all__ = ["read_lizard_mat", "LIZARD_MPP"]

#: Lizard images are released at 20x.
LIZARD_MPP = 0.5


def _image_folders(label_path: Path):
    here, parent, grand = label_path.parent, label_path.parent.parent, label_path.parent.parent.parent
    folders = [here]
    for base in (parent, grand):
        if base.is_dir():
            folders += [d for d in sorted(base.iterdir()) if d.is_dir() and
                        (d.name.lower().startswith("lizard_images") or d.name.lower() == "images")]
            folders += [sub for d in sorted(base.iterdir()) if d.is_dir() and d.name.lower().startswith("lizard_images")
                        for sub in sorted(d.iterdir()) if sub.is_dir()]
    return folders


def read_lizard_mat(label_path, image_path=None) -> AnnotatedImage:
    """Read a Lizard label ``.mat`` and, where found, its image.

    Parameters
    ----------
    label_path : str or Path
        MATLAB file with ``inst_map`` (HxW), ``id`` (N,1) and ``class`` (N,1); the
        classes are the ``lizard`` scheme's 1..6.
    image_path : str or Path, optional
        The image. When None, ``<stem>.png`` is looked for next to the labels and in
        ``Lizard_Images*``/``images`` folders beside the label folder or its parent.

    Returns
    -------
    AnnotatedImage
        At 0.5 µm/px (20x). ``image`` is None when no image was found (said in
        ``provenance['notes']``).
    """
    label_path = Path(label_path)
    mat = load_mat(label_path)
    missing = [k for k in ("inst_map", "id", "class") if k not in mat]
    if missing:
        raise CorruptFileError(f"{label_path.name} is not a Lizard label file: keys {missing} are missing.")
    try:
        ids = np.asarray(mat["id"]).ravel().astype(np.int64)
        classes = np.asarray(mat["class"]).ravel().astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        raise CorruptFileError(f"{label_path.name}: 'id' and 'class' must be whole numbers (a Lizard label file "
                               "has one class number per nucleus).") from None
    if ids.size != classes.size:
        raise CorruptFileError(f"{label_path.name}: 'id' has {ids.size} rows but 'class' has {classes.size}.")
    table = dict(zip(ids.tolist(), classes.tolist()))
    nuclei = NucleiMask.create(mat["inst_map"], table, "lizard", mpp=LIZARD_MPP, name=f"Lizard labels {label_path.name}")
    notes = []
    image_file = Path(image_path) if image_path is not None else find_image(label_path.stem, _image_folders(label_path))
    image = read_rgb_image(image_file) if image_file is not None else None
    if image_file is None:
        notes.append(f"no image {label_path.stem}.png found near the labels; mask only")
    return AnnotatedImage(
        name=label_path.stem,
        image=image,
        nuclei=nuclei,
        mpp=LIZARD_MPP,
        provenance={"format": "lizard", "source": label_path.name,
                    "image_source": None if image_file is None else image_file.name, "notes": notes,
                    "licence": "Lizard: CC BY-NC-SA 4.0 (check before redistribution)"},
    ).validate()
