"""A classical nuclei segmenter for consistency checks: haematoxylin channel + watershed.

Not a state-of-the-art segmenter: it is the same simple, deterministic yardstick for real
and synthetic patches, so the gap between the two means something.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..images import to_rgb_uint8

__all__ = ["segment_nuclei_hed"]


def segment_nuclei_hed(image, *, mpp: float = 0.5, min_area_um2: float = 6.0, min_distance_um: float = 2.5,
                       smooth_sigma_px: float = 0.5) -> np.ndarray:
    """Nuclei instances from the haematoxylin channel of an H&E image.

    Steps: colour deconvolution (Ruifrok & Johnston, ``skimage.color.rgb2hed``), Gaussian
    smoothing, Otsu threshold of the haematoxylin density, removal of objects smaller than
    ``min_area_um2``, hole filling, then a distance-transform watershed whose markers are the
    distance maxima at least ``min_distance_um`` apart (touching nuclei split).

    Parameters
    ----------
    image : ndarray (H, W, 3)
        RGB image (converted with :func:`~napari_histogen.core.images.to_rgb_uint8`).
    mpp : float
        Microns per pixel (sets the size thresholds).
    min_area_um2, min_distance_um, smooth_sigma_px : float
        Defaults chosen on CoNSeP *training* patches at 0.5 µm/px (AJI about 0.3 on real
        tissue: a weak but even-handed yardstick).

    Returns
    -------
    instances : ndarray (H, W) int32
        0 = background.
    """
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    rgb = to_rgb_uint8(image)
    h = gaussian(rgb2hed(rgb)[..., 0], sigma=smooth_sigma_px)
    if float(h.max() - h.min()) < 1e-6:
        return np.zeros(rgb.shape[:2], np.int32)
    foreground = h > threshold_otsu(h)
    min_px = max(1, int(round(min_area_um2 / mpp**2)))
    foreground = remove_small_objects(foreground, max_size=min_px - 1)
    foreground = ndi.binary_fill_holes(foreground)
    if not foreground.any():
        return np.zeros(rgb.shape[:2], np.int32)
    distance = ndi.distance_transform_edt(foreground)
    labels_fg, _ = ndi.label(foreground)
    peaks = peak_local_max(distance, min_distance=max(1, int(round(min_distance_um / mpp))), labels=labels_fg,
                           exclude_border=False)
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # every component gets at least one marker
    missing = np.setdiff1d(np.unique(labels_fg[foreground]), np.unique(labels_fg[markers > 0]))
    for k, comp in enumerate(missing, start=len(peaks) + 1):
        r, c = np.argwhere(labels_fg == comp)[0]
        markers[r, c] = k
    return watershed(-distance, markers, mask=foreground).astype(np.int32)
