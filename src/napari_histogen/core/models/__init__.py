"""The models napari-histogen knows: the registry and where their files live."""
