"""A small learned nuclei instance segmenter: a U-Net with HoVer-Net's three outputs.

The network (:mod:`.model`) predicts, per pixel, nucleus vs background, the nucleus type
and the horizontal/vertical distances to the nucleus' centre of mass (Graham et al. 2019);
:mod:`.targets` makes those maps from an instance mask, :mod:`.postprocess` turns the
predictions back into typed instances (HoVer-Net's marker-controlled watershed),
:mod:`.train` trains it on ``(image, instances, classes)`` patches, :mod:`.metrics` scores
instance maps (Dice, AJI, PQ, per-type F1 and recall) and :mod:`.consistency` applies a
trained segmenter to images with the masks they were made from (a learned mask-consistency
check). Torch is imported by :mod:`.model` and :mod:`.train` only, so the numpy parts load
without it.

This package is a model family of its own: it knows no synthesis model; the downstream
benchmark that combines it with the engines is :mod:`napari_histogen.core.downstream`.
"""
