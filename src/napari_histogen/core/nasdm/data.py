"""NASDM training data: annotated source images -> resampled, filtered, split 128-px patches.

This module gathers the public names of the pipeline, which lives in one module per job:

- :mod:`.sources`: reading the sources of a dataset (``iter_sources``) and resampling
  them to the model's scale (``resample_to_mpp``);
- :mod:`.windows`: tissue (``tissue_mask``, ``tissue_fraction``), the window grid
  (``patch_grid``, ``window_fractions``) and the split by source (``split_sources``);
- :mod:`.patchset`: ``build_patch_set``, which runs all steps, ``PatchRef``, ``PatchSet``,
  ``format_summary``;
- :mod:`.dataset`: the torch side (``dihedral``, ``NasdmPatchDataset``).

The pipeline, in the order :func:`build_patch_set` runs it:

1. **Read** every source image of a dataset with the product's readers
   (:func:`iter_sources`): Lizard ``.mat`` labels, CoNSeP ``.mat`` (the original 1000-px
   tiles and the 256-px patch layout), PanNuke and CoNIC ``.npy`` folders, folders of image
   + mask pairs. Each source gets ``provenance['source_id']``, the image it came from (see
   below), which is what the train/validation split goes by.
2. **Resample** to the model's scale (:func:`resample_to_mpp`): 40x (0.25 µm/px) data
   becomes 20x (0.5 µm/px) by anti-aliased image resizing and nearest-neighbour instance
   resizing.
3. **Tile** each source into windows of ``patch_size`` px with ``overlap`` (default 50 %)
   (:func:`patch_grid`), dropping windows with too little tissue (:func:`tissue_fraction`)
   and, on request, windows with unclassified nuclei.
4. Optionally **normalise the stain** of every source (:mod:`.stain`).
5. **Split by source image**, never by patch (:func:`split_sources`): overlapping windows
   of one image (and CoNSeP's 16 patches of one tile, which share pixel strips) are all in
   training or all in validation.

Patches are :class:`PatchRef` windows into the kept sources, cropped when a
:class:`NasdmPatchDataset` item is read, so no pixel is copied per patch (Lizard's 238
regions give tens of thousands of windows).

Source ids (the unit of the split):

=================  ===============================================================
CoNSeP patches     the tile: ``train_1`` for ``train_1_003`` (16 patches per tile)
CoNSeP / Lizard    the ``.mat`` file stem (one tile / one region)
image + mask       the image file stem
CoNIC              the Lizard image named in ``patch_info.csv`` next to the arrays
                   (``consep_1`` for ``consep_1-0003``); without that file, each patch
PanNuke            each patch (``<folder>[<index>]``): PanNuke does not record which
                   slide a patch came from, so patches of one slide can fall on both
                   sides. For a clean validation set train on some folds and validate
                   on another, or keep ``val_fraction`` for a loss curve only.
=================  ===============================================================

Pure numpy/scipy/scikit-image except :mod:`.dataset` (torch), which importing this module loads.
"""

from __future__ import annotations

from .dataset import NasdmPatchDataset, dihedral
from .patchset import PatchRef, PatchSet, build_patch_set, format_summary
from .sources import DEFAULT_MPP, FORMATS, iter_sources, resample_to_mpp
from .windows import TISSUE_MAX_VALUE, patch_grid, split_sources, tissue_fraction, tissue_mask, window_fractions

__all__ = [
    "FORMATS",
    "DEFAULT_MPP",
    "TISSUE_MAX_VALUE",
    "iter_sources",
    "resample_to_mpp",
    "tissue_mask",
    "tissue_fraction",
    "window_fractions",
    "patch_grid",
    "split_sources",
    "dihedral",
    "PatchRef",
    "PatchSet",
    "build_patch_set",
    "format_summary",
    "NasdmPatchDataset",
]
