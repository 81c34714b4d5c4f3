"""File > Open Sample > Histogen: the IHC sample (tissue + nuclei) and the NuCLS patch (CC0)."""

from __future__ import annotations

from ._layers import annotated_to_layer_data


def ihc_sample():
    """scikit-image's IHC colon glands with derived tissue and nuclei masks."""
    from .core.sample import ihc_sample as make

    return annotated_to_layer_data(make())


def nucls_sample():
    """One NuCLS breast H&E patch with its nuclei instances and typed points."""
    from .core.sample import nucls_sample as make

    return annotated_to_layer_data(make())
