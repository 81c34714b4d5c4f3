"""Mask generation (NASDM++, paper 001 section 3.1): a diffusion model over nuclei masks.

Given a multi-hot vector of the nucleus types wanted, the model draws a nuclei mask that the
mask-conditioned image model (:mod:`napari_histogen.core.nasdm`) then turns into H&E.

- :mod:`.target`: masks <-> the tensor the model learns (one-hot classes + per-nucleus
  distance map, both in [-1, 1]) and the decoding back to a :class:`NucleiMask`
  (argmax, then the marker-controlled watershed of :mod:`napari_histogen.core.instances`);
- :mod:`.model`: the network (a small diffusers ``UNet2DModel``; the type vector enters
  through a learned linear map added to the time embedding) and its config;
- :mod:`.diffusion`: schedule, training loss and the guided few-step sampler;
- :mod:`.checkpoint`: saving and loading models (safetensors + JSON, sha256-checked);
- :mod:`.train`: the resumable trainer.

Heavy modules (torch) are imported by the submodules that need them.
"""
