"""Writing synthetic images with their masks: the image + mask pair every engine produces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..masks import NucleiMask
from ..provenance import json_default
from ..render import hstack_panels, render_overlay
from .bundle import safe_name, write_file_set

__all__ = ["write_synthesis_pair", "side_by_side"]


def side_by_side(nuclei: NucleiMask, synthetic: np.ndarray, real: np.ndarray | None = None, *, gap: int = 4) -> np.ndarray:
    """``mask | synthetic | real`` (real where given) as one RGB picture.

    The mask panel shows nuclei filled in their class colours with dark outlines on white,
    the way the annotate dock colours them.
    """
    white = np.full(synthetic.shape, 255, np.uint8)
    panels = [render_overlay(white, nuclei=nuclei, alpha=1.0), synthetic]
    if real is not None:
        panels.append(real)
    return hstack_panels(panels, gap=gap)


def write_synthesis_pair(out_dir, name: str, image: np.ndarray, nuclei: NucleiMask, provenance: dict,
                         *, real: np.ndarray | None = None) -> dict[str, Path]:
    """Write one synthetic image and the mask it matches.

    Files:

    - ``<name>.png``: the synthetic image (lossless);
    - ``<name>.npz``: ``inst_map``, ``type_map``, ``classes`` (id, class), ``scheme``, ``mpp``
      (opens with :func:`~napari_histogen.core.io.dispatch.read_annotated`, the image found next to it);
    - ``<name>.ome.tif``: image, instance and type maps, class table and provenance in one file;
    - ``<name>_side_by_side.png``: mask | synthetic (| real);
    - ``<name>.json``: the provenance (engine, model and sha256, parameters, seed, mask hash).

    All or nothing: the files are written under temporary names and renamed as a set.

    Returns
    -------
    dict
        Role -> path.
    """
    from skimage.io import imsave

    from .ome_tiff import write_ome_tiff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(name)
    files = {"image": out / f"{stem}.png", "mask": out / f"{stem}.npz", "ome_tiff": out / f"{stem}.ome.tif",
             "side_by_side": out / f"{stem}_side_by_side.png", "provenance": out / f"{stem}.json"}
    table = np.array(sorted(nuclei.classes.items()), dtype=np.int64).reshape(-1, 2)
    arrays = dict(inst_map=nuclei.instances, type_map=nuclei.type_map(), classes=table, scheme=np.array(nuclei.scheme.name))
    if nuclei.mpp is not None:
        arrays["mpp"] = np.array(nuclei.mpp)

    def write(tmp):  # all five or none: a kill or a full disk leaves no incomplete set
        imsave(tmp["image"], image, check_contrast=False)
        with open(tmp["mask"], "wb") as fh:  # a file object: savez would append '.npz' to the temp name
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        write_ome_tiff(tmp["ome_tiff"], image, nuclei, provenance=provenance)
        imsave(tmp["side_by_side"], side_by_side(nuclei, image, real), check_contrast=False)
        tmp["provenance"].write_text(json.dumps(provenance, indent=2, default=json_default))

    return write_file_set(files, write)
