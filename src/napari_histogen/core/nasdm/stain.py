"""H&E stain normalisation: Macenko (2009) and Vahadane (2016), in plain numpy.

Both methods describe an RGB image in optical density (OD) as two stain vectors (the
*stain matrix*: haematoxylin, eosin) times per-pixel stain *concentrations*. A
:class:`StainNormalizer` is fitted on a reference image (its stain matrix and the 99th
percentile of each concentration); :meth:`StainNormalizer.transform` then unmixes another
image with that image's own stain matrix, rescales its concentrations to the reference's
99th percentiles and recombines them with the reference's stain matrix.

- **Macenko**: stain vectors from the extreme angles (1st and 99th percentiles) of the
  tissue ODs projected on the plane of their two main principal directions;
  concentrations by least squares.
- **Vahadane**: stain vectors by a sparse non-negative factorisation of the tissue ODs
  (``min 1/2 |V - W H|^2 + lambda |H|_1``, ``W, H >= 0``, unit stain vectors), started
  from the Macenko vectors; concentrations by non-negative lasso. This is the method of
  Vahadane et al., with the two-stain lasso solved exactly per pixel and projected
  gradient steps on the stain vectors instead of SPAMS.

Why not a library: ``torchstain`` (MIT, numpy backend) covers Macenko only, crashes on a
patch without tissue and installs a top-level ``tests`` package; ``staintools`` needs
``spams``, which does not build here. The methods are short enough to own.

Conventions: OD is ``-log((I + 1) / 256)`` per channel, so white (255) has OD 0 and a
pixel whose ODs lie in the stain plane is reproduced exactly; a pixel is *tissue* when
any channel has ``OD >= beta`` (0.15, i.e. a channel value <= 219). Everything is
deterministic (no random numbers; the Vahadane fit subsamples tissue pixels on a fixed
grid). An image with too little tissue to estimate stains from is returned unchanged.
"""

from __future__ import annotations

import numpy as np

from ..errors import HistogenInputError

__all__ = ["StainNormalizer", "METHODS", "rgb_to_od", "od_to_rgb", "tissue_pixels", "stain_matrix",
           "concentrations"]

METHODS = ("macenko", "vahadane")
#: OD threshold of a tissue pixel (any channel).
BETA = 0.15
#: Fewest tissue pixels for which stains are estimated.
MIN_TISSUE_PIXELS = 64
# Reference stain vectors (rows: R, G, B OD; columns: haematoxylin, eosin) of
# Macenko's reference, used as the Vahadane start when Macenko cannot run.
_HE_DEFAULT = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


def _check_rgb(image, what="image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise HistogenInputError(f"The {what} must be an RGB array (H, W, 3), not of shape {arr.shape}.")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 255:
            raise HistogenInputError(f"The {what} must hold values 0..255 (uint8); convert it to 8-bit RGB first.")
    return arr


def rgb_to_od(image) -> np.ndarray:
    """Optical density ``-log((I + 1) / 256)`` of an RGB image, float64 ``(..., 3)`` >= 0."""
    arr = np.asarray(image, dtype=np.float64)
    return -np.log((arr + 1.0) / 256.0)


def od_to_rgb(od) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`, rounded and clipped to uint8."""
    rgb = 256.0 * np.exp(-np.asarray(od, dtype=np.float64)) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def tissue_pixels(od, beta: float = BETA) -> np.ndarray:
    """Boolean map of pixels with ``OD >= beta`` in any channel (``od`` is ``(..., 3)``)."""
    return np.asarray(od).max(axis=-1) >= beta


def _unit_columns(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=0, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


def _order_he(vectors: np.ndarray) -> np.ndarray:
    """Haematoxylin first: it absorbs more red than eosin (larger red OD)."""
    return vectors if vectors[0, 0] >= vectors[0, 1] else vectors[:, ::-1].copy()


def _macenko_vectors(od_tissue: np.ndarray, alpha: float = 1.0) -> np.ndarray | None:
    """Stain matrix (3, 2) by Macenko's method, None when the ODs span no plane."""
    cov = np.cov(od_tissue.T)
    if not np.all(np.isfinite(cov)):
        return None
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    plane = eigvecs[:, 1:3].copy()
    if eigvals[1] <= 1e-12 * max(eigvals[2], 1e-300):
        return None  # one colour only: no second direction
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # eigenvector signs are arbitrary
    proj = od_tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    vectors = _unit_columns(np.stack([v1, v2], axis=1))
    vectors *= np.where(vectors.sum(axis=0) < 0, -1.0, 1.0)
    return _order_he(vectors)


def _nonneg_lasso(w: np.ndarray, v: np.ndarray, lam: float) -> np.ndarray:
    """Exact ``argmin_{h >= 0} 1/2 |v - W h|^2 + lam |h|_1`` for each column of ``v``.

    ``W`` has two columns, so every pixel's optimum is the best of four candidates:
    both stains, only the first, only the second, none (the KKT point of each support).
    """
    gram = w.T @ w
    b = w.T @ v - lam  # (2, N): linear term of the objective 1/2 h'Gh - b'h
    det = gram[0, 0] * gram[1, 1] - gram[0, 1] ** 2
    candidates = [np.zeros_like(b)]
    if det > 1e-12:
        both = np.stack([gram[1, 1] * b[0] - gram[0, 1] * b[1], gram[0, 0] * b[1] - gram[0, 1] * b[0]]) / det
        candidates.append(both)
    only0 = np.zeros_like(b)
    only0[0] = b[0] / max(gram[0, 0], 1e-12)
    only1 = np.zeros_like(b)
    only1[1] = b[1] / max(gram[1, 1], 1e-12)
    candidates += [only0, only1]
    best = np.zeros_like(b)
    best_value = np.zeros(b.shape[1])  # the objective of h = 0
    for h in candidates[1:]:
        value = ((0.5 * (gram @ h) - b) * h).sum(axis=0)
        better = (h >= 0).all(axis=0) & (value < best_value)
        best[:, better] = h[:, better]
        best_value[better] = value[better]
    return best


def _vahadane_vectors(od_tissue: np.ndarray, lam: float = 0.1, iterations: int = 40,
                      max_pixels: int = 20_000) -> np.ndarray:
    """Stain matrix (3, 2) by sparse non-negative factorisation (Vahadane et al. 2016).

    Alternates the exact sparse concentrations with a projected gradient step on the
    stain vectors (kept unit-length), from the Macenko vectors.
    """
    v = od_tissue[:: max(1, od_tissue.shape[0] // max_pixels)].T  # (3, N), fixed subsample
    start = _macenko_vectors(od_tissue)
    w = _unit_columns(np.maximum(start if start is not None else _HE_DEFAULT, 1e-6))
    for _ in range(iterations):
        h = _nonneg_lasso(w, v, lam)
        hht = h @ h.T
        lip = max(float(np.linalg.eigvalsh(hht).max()), 1e-12)
        previous = w
        w = np.maximum(w - ((w @ h - v) @ h.T) / lip, 0.0)
        dead = np.linalg.norm(w, axis=0) <= 1e-12
        if dead.any():  # a stain lost every pixel: restart it from the default vector
            w[:, dead] = _HE_DEFAULT[:, dead]
        w = _unit_columns(w)
        if np.abs(w - previous).max() < 1e-4:
            break
    return _order_he(w)


def stain_matrix(image, method: str = "macenko", *, beta: float = BETA) -> np.ndarray | None:
    """Estimate the (3, 2) stain matrix of an RGB image.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8
    method : {'macenko', 'vahadane'}
    beta : float
        OD threshold of a tissue pixel.

    Returns
    -------
    ndarray (3, 2) or None
        Unit OD vectors of haematoxylin (column 0) and eosin (column 1); None when the
        image has fewer than ``MIN_TISSUE_PIXELS`` tissue pixels or a single colour.
    """
    method = _check_method(method)
    od = rgb_to_od(_check_rgb(image)).reshape(-1, 3)
    od_tissue = od[tissue_pixels(od, beta)]
    if od_tissue.shape[0] < MIN_TISSUE_PIXELS:
        return None
    vectors = _macenko_vectors(od_tissue) if method == "macenko" else _vahadane_vectors(od_tissue)
    if vectors is None or abs(float(vectors[:, 0] @ vectors[:, 1])) > np.cos(np.deg2rad(3.0)):
        return None  # the two stains are (nearly) the same colour: nothing to unmix
    return vectors


def concentrations(od: np.ndarray, vectors: np.ndarray, method: str = "macenko") -> np.ndarray:
    """Stain concentrations ``(2, N)`` of ODs ``(N, 3)`` for a stain matrix ``(3, 2)``.

    Least squares for Macenko; non-negative lasso (lambda 0.01) for Vahadane.
    """
    method = _check_method(method)
    v = np.asarray(od, dtype=np.float64).reshape(-1, 3).T
    if method == "vahadane":
        return _nonneg_lasso(vectors, v, 0.01)
    return np.linalg.lstsq(vectors, v, rcond=None)[0]


def _check_method(method) -> str:
    name = str(method).strip().lower()
    if name not in METHODS:
        raise HistogenInputError(f"Unknown stain normalisation '{method}'; choose one of {', '.join(METHODS)}.")
    return name


class StainNormalizer:
    """Map the H&E colours of images onto those of a reference image.

    Parameters
    ----------
    method : {'macenko', 'vahadane'}
    beta : float
        OD threshold of a tissue pixel.

    Examples
    --------
    >>> norm = StainNormalizer("macenko").fit(reference_rgb)   # doctest: +SKIP
    >>> same_look = norm.transform(other_rgb)                   # doctest: +SKIP
    """

    def __init__(self, method: str = "macenko", *, beta: float = BETA):
        self.method = _check_method(method)
        self.beta = float(beta)
        self.stain_matrix_: np.ndarray | None = None
        self.max_concentrations_: np.ndarray | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.stain_matrix_ is not None else "not fitted"
        return f"StainNormalizer({self.method!r}, {state})"

    def _unmix(self, image: np.ndarray):
        """(OD (N,3), stain matrix, concentrations (2,N), tissue (N,)) or None without tissue."""
        od = rgb_to_od(image).reshape(-1, 3)
        vectors = stain_matrix(image, self.method, beta=self.beta)
        if vectors is None:
            return None
        c = concentrations(od, vectors, self.method)
        return od, vectors, c, tissue_pixels(od, self.beta)

    def fit(self, reference) -> "StainNormalizer":
        """Learn the reference's stain matrix and 99th-percentile concentrations; return self.

        Raises
        ------
        HistogenInputError
            If the reference is not RGB or has too little tissue to estimate two stains.
        """
        ref = _check_rgb(reference, "stain reference image")
        unmixed = self._unmix(ref)
        if unmixed is None:
            raise HistogenInputError(
                "The stain reference image shows too little H&E-stained tissue to estimate two stains; "
                "choose a reference patch that is mostly tissue with both nuclei and stroma.")
        _, vectors, c, tissue = unmixed
        self.stain_matrix_ = vectors
        self.max_concentrations_ = np.percentile(c[:, tissue], 99, axis=1)
        return self

    def transform(self, image) -> np.ndarray:
        """A new uint8 image with the reference's stain colours.

        An image with too little tissue to unmix (e.g. blank glass) comes back as an
        unchanged copy. The input is never modified.
        """
        if self.stain_matrix_ is None:
            raise HistogenInputError("Fit the stain normaliser on a reference image first (StainNormalizer.fit).")
        img = _check_rgb(image)
        unmixed = self._unmix(img)
        if unmixed is None:
            return np.array(img, dtype=np.uint8, copy=True)
        _, _, c, tissue = unmixed
        max_c = np.percentile(c[:, tissue], 99, axis=1)
        scale = self.max_concentrations_ / np.where(max_c > 1e-6, max_c, 1.0)
        od_new = (self.stain_matrix_ @ (c * scale[:, None])).T
        return od_to_rgb(od_new).reshape(img.shape)

    __call__ = transform
