"""Conversion of user images to the product's image convention: ``HxWx3 uint8`` RGB."""

from __future__ import annotations

import numpy as np

from .errors import HistogenInputError

__all__ = ["to_rgb_uint8", "resize_image", "MAX_IMAGE_PIXELS", "IMAGE_SUFFIXES"]

#: File endings of the plain images the product reads (lower case; the one list of them).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

#: Largest image (in pixels) that the interactive tools accept in one piece. A 2-core
#: workstation annotating a 40x whole-slide region beyond this would stall; such images
#: should be cropped or tiled first.
MAX_IMAGE_PIXELS = 8192 * 8192


def to_rgb_uint8(image, *, name: str = "image") -> np.ndarray:
    """Return ``image`` as a new ``HxWx3 uint8`` RGB array.

    The one place where the product converts the image types users bring.

    Parameters
    ----------
    image : array_like
        ``HxW`` grey, ``HxWx1`` grey, ``HxWx3`` RGB or ``HxWx4`` RGBA, of dtype
        bool, uint8, uint16, any other integer in 0..255, or float in [0, 1]
        (float images whose maximum is above 1 but at most 255 are taken as 0..255).
    name : str, optional
        What to call the image in error messages.

    Returns
    -------
    rgb : ndarray of uint8, shape (H, W, 3)
        Always a new array; the input is not modified.

    Raises
    ------
    HistogenInputError
        For shapes that are not a 2-D image, channel-first arrays, empty images,
        images above :data:`MAX_IMAGE_PIXELS`, negative or non-finite values.

    Notes
    -----
    - Grey images are repeated over three channels.
    - RGBA images are composited on white (slide background), so transparent
      regions do not turn black.
    - 16-bit images are scaled by ``255 / 65535`` (the full 16-bit range, so that the
      same scanner setting always gives the same colour), not by their own maximum.
    """
    arr = np.asarray(image)
    if arr.dtype == object or arr.size == 0:
        raise HistogenInputError(f"The {name} is empty or not numeric; open an RGB, grey or RGBA image.")
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        raise HistogenInputError(
            f"The {name} has shape {arr.shape}, which looks channel-first; "
            "move the channel axis last (HxWxC)."
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise HistogenInputError(
            f"The {name} has shape {arr.shape}; expected HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA). "
            "For a stack or a multi-channel image, pick one plane first."
        )
    if arr.shape[0] * arr.shape[1] > MAX_IMAGE_PIXELS:
        raise HistogenInputError(
            f"The {name} is {arr.shape[1]}x{arr.shape[0]} px, above the "
            f"{int(MAX_IMAGE_PIXELS ** 0.5)}x{int(MAX_IMAGE_PIXELS ** 0.5)} px limit; crop or tile it first."
        )
    values = _to_unit_range(arr, name)
    if values.ndim == 2:
        values = np.repeat(values[..., None], 3, axis=-1)
    elif values.shape[-1] == 4:
        alpha = values[..., 3:4]
        values = values[..., :3] * alpha + (1.0 - alpha)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _to_unit_range(arr: np.ndarray, name: str) -> np.ndarray:
    """Map ``arr`` to float32 in [0, 1] by its dtype's documented range."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise HistogenInputError(
                f"The {name} is {arr.dtype} with values {lo}..{hi}; expected 0..255. "
                "Convert it to uint8 or uint16 first."
            )
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise HistogenInputError(f"The {name} contains NaN or infinite values.")
        lo, hi = float(arr.min()), float(arr.max())  # type: ignore[assignment]
        if lo < 0:
            raise HistogenInputError(f"The {name} has negative values (min {lo:g}); expected 0..1 or 0..255.")
        if hi <= 1.0:
            return arr.astype(np.float32)
        if hi <= 255.0:
            return arr.astype(np.float32) / 255.0
        raise HistogenInputError(f"The {name} is float with maximum {hi:g}; expected 0..1 or 0..255.")
    raise HistogenInputError(f"The {name} has dtype {arr.dtype}, which is not an image type.")


def resize_image(image: np.ndarray, size: tuple[int, int], *, anti_aliasing: bool | None = None) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image to ``size`` (H, W); the image itself when the size is its own.

    ``anti_aliasing`` (a Gaussian pre-filter) defaults to "when the height shrinks".
    """
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from skimage.transform import resize

    if anti_aliasing is None:
        anti_aliasing = image.shape[0] > size[0]
    out = resize(image, (*size, 3), order=1, anti_aliasing=anti_aliasing, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
