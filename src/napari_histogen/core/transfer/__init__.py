"""Zero-shot appearance transfer: mask-guided cross-image attention on Stable Diffusion 1.5.

The AstraZeneca method (``papers/000``), built on cross-image attention (Alaluf et al.,
reference code garibida/cross-image-attention): invert a real source patch (the appearance)
and a target mask rendered as an image (the structure), then denoise three branches together
(output, appearance, structure) while the output's decoder self-attention takes its keys and
values from the appearance branch, and AdaIN gives the output latent, class by class, the
source's statistics. Nothing is trained.

Modules (no napari, no Qt; torch and diffusers are imported inside functions):

- :mod:`.settings`: every range and strength, the paper's values as defaults;
- :mod:`.models`: loading Stable Diffusion parts once (diffusers + transformers), prompt embeddings;
- :mod:`.inversion`: the DDIM schedule, DDIM and edit-friendly DDPM inversion, the inversion cache;
- :mod:`.attention`: attention processors that swap keys/values on an unmodified diffusers UNet;
- :mod:`.freeu`: the reference's FreeU on the backbone features, as forward pre-hooks on the up-blocks;
- :mod:`.adain`: global and per-class masked AdaIN on latents;
- :mod:`.render`: the structure image, class colours, the flips/rotations of target masks;
- :mod:`.pipeline`: the denoising loop (branches batched, swap guidance, AdaIN);
- :mod:`.batch`: folder mode (N in-silico images per annotated image of a dataset);
- :mod:`.tiny`: tiny random models in the Stable Diffusion layout (tests, benchmarks).

The engine that ties them to requests and provenance is
:class:`napari_histogen.core.engines.transfer.TransferEngine`.
"""
