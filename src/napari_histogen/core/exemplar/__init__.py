"""Example-based appearance transfer: a target mask filled with a source image's own pixels, on a CPU.

A model family of its own (layer 3, like :mod:`napari_histogen.core.transfer`, which it does
not import): texture by numbers for the regions (:mod:`.quilting`), nuclei copied by class and
shape, warped onto the target outlines and feathered in (:mod:`.nuclei`), and the function that
runs both (:mod:`.transfer`). numpy and scipy only; no model, no training, seconds per image.
"""

from .transfer import ExemplarOutput, ExemplarSettings, exemplar_transfer, missing_classes

__all__ = ["ExemplarOutput", "ExemplarSettings", "exemplar_transfer", "missing_classes"]
