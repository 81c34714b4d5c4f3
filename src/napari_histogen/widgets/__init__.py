"""napari docks. Thin: they read layers, call ``napari_histogen.core`` and add layers."""
