"""The in-memory result of every reader: an image with its masks, scale and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..masks import NucleiMask, as_label_image, check_same_shape
from ..schemes import ClassScheme

__all__ = ["AnnotatedImage"]


@dataclass
class AnnotatedImage:
    """An image with any of: a nuclei mask, a tissue mask, a typed point layout.

    Parameters
    ----------
    name : str
        Short name for layers and output files (e.g. the file stem, or ``stem[12]``
        for patch 12 of a dataset array).
    image : ndarray (H, W, 3) uint8 or None
        The RGB image (see :func:`~napari_histogen.core.images.to_rgb_uint8`).
    nuclei : NucleiMask or None
    tissue : ndarray (H, W) int32 or None
        Semantic tissue map of ``tissue_scheme``.
    tissue_scheme : ClassScheme or None
    points : ndarray (N, 2) float or None
        ``(row, col)`` centroids.
    point_classes : ndarray (N,) int or None
        Class id of each point in ``point_scheme``.
    point_scheme : ClassScheme or None
    mpp : float or None
        Microns per pixel of all of the above; None when unknown.
    provenance : dict
        Where the data came from (file, format, index, licence) or what made it.
    """

    name: str
    image: np.ndarray | None = None
    nuclei: NucleiMask | None = None
    tissue: np.ndarray | None = None
    tissue_scheme: ClassScheme | None = None
    points: np.ndarray | None = None
    point_classes: np.ndarray | None = None
    point_scheme: ClassScheme | None = None
    mpp: float | None = None
    provenance: dict = field(default_factory=dict)

    def validate(self) -> "AnnotatedImage":
        """Check that every mask covers the image pixel for pixel; return self."""
        if self.image is not None:
            for what, arr in (("nuclei mask", None if self.nuclei is None else self.nuclei.instances),
                              ("tissue mask", self.tissue)):
                if arr is not None:
                    check_same_shape(self.image.shape, arr.shape, what=what)
        if self.tissue is not None:
            self.tissue = as_label_image(self.tissue, name="tissue mask")
            if self.tissue_scheme is not None:
                self.tissue_scheme.check_ids(np.unique(self.tissue[self.tissue > 0]), what="tissue mask",
                                             allow_unclassified=False)
        if self.points is not None and self.point_classes is not None and self.point_scheme is not None:
            self.point_scheme.check_ids(np.unique(self.point_classes), what="point layout")
        return self
