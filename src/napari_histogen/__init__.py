"""napari-histogen: annotate nuclei and tissue masks and synthesize histology that matches them."""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-histogen")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
