"""Co-synthesis: H&E image, semantic nuclei label and distance map generated together from a point layout.

- :mod:`.categorical`: multinomial (categorical) diffusion maths of the label.
- :mod:`.model`: the joint UNet (TAEF2 latent grid, full-resolution label and distance through
  space-to-depth, point-layout and type-prompt conditions, three heads).
- :mod:`.layout`: point maps, prompts, training targets from instance maps, and instances back
  from a generated distance map (marker-controlled watershed, :mod:`..instances`).
- :mod:`.diffusion`: the joint training loss and the sampler.
- :mod:`.checkpoint`: saving and loading a model (safetensors + JSON).
- :mod:`.train`: the resumable trainer.
"""
