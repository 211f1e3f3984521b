"""Shared plumbing for the metric families: input checks, filters and histograms.

Every metric takes three float64 arrays A (anatomical source), B (functional or CT source) and
F (fused), all 2-D, of one shape, on the 0..255 scale. The reference implementations differ in
small things (padding, MATLAB's column-major order, min-max stretching); the helpers here
implement those conventions once so that each metric module only states which one it uses.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfuse_cli.errors import InputError

Array = np.ndarray


def check_triple(a: object, b: object, f: object, name: str, min_size: int = 1) -> tuple[Array, Array, Array]:
    """Validate (A, B, F) and return them as float64 arrays.

    Raises ``InputError`` with one line naming the metric when the inputs are not three finite
    2-D arrays of the same shape on the 0..255 scale, or are smaller than ``min_size`` pixels on
    a side (windowed metrics need room for their window).
    """
    arrays = []
    for label, x in (("A", a), ("B", b), ("F", f)):
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2:
            raise InputError(f"{name}: image {label} must be 2-D (one gray channel), got shape {arr.shape}")
        arrays.append(arr)
    ia, ib, i_f = arrays
    if not (ia.shape == ib.shape == i_f.shape):
        raise InputError(f"{name}: A, B and F must have one shape, got {ia.shape}, {ib.shape}, {i_f.shape}")
    if min(ia.shape) < min_size:
        raise InputError(f"{name}: images must be at least {min_size}x{min_size} pixels, got {ia.shape}")
    for label, arr in zip("ABF", arrays, strict=True):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name}: image {label} contains NaN or infinite values")
        if arr.min() < 0.0 or arr.max() > 255.0:
            raise InputError(
                f"{name}: image {label} must be on the 0..255 scale, got {arr.min():g}..{arr.max():g}"
            )
    return ia, ib, i_f


def gray_levels(x: Array) -> Array:
    """Integer gray levels 0..255 for histogram metrics (8-bit input passes unchanged)."""
    return np.clip(np.rint(x), 0, 255).astype(np.intp)


def minmax_stretch(x: Array) -> Array:
    """Liu's ``normalize1``: stretch to 0..255 and round halves up (MATLAB ``round``).

    An all-zero image stays as it is; so does a constant non-zero one, which has no range to
    stretch (the MATLAB code divides by zero there). ``np.round`` would round halves to even and
    move some pixels by one level.
    """
    lo, hi = x.min(), x.max()
    if hi == lo:
        return x.copy()
    return np.floor((x - lo) / (hi - lo) * 255.0 + 0.5)


def gaussian_1d(size: int, sigma: float) -> Array:
    """Normalised 1-D Gaussian; its outer product is MATLAB ``fspecial('gaussian', size, sigma)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def filter_valid(x: Array, kernel_1d: Array) -> Array:
    """Correlate with the separable kernel outer(k, k) and keep the 'valid' part (``filter2 'valid'``)."""
    r = len(kernel_1d) // 2
    y = ndimage.correlate1d(x, kernel_1d, axis=0, mode="constant")
    y = ndimage.correlate1d(y, kernel_1d, axis=1, mode="constant")
    return y[r : x.shape[0] - r, r : x.shape[1] - r]


def filter_same_zero(x: Array, kernel_1d: Array) -> Array:
    """Correlate with outer(k, k), zero padding, output the input's size (``filter2 'same'``)."""
    y = ndimage.correlate1d(x, kernel_1d, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(y, kernel_1d, axis=1, mode="constant", cval=0.0)


def sobel(x: Array) -> tuple[Array, Array]:
    """Sobel responses exactly as MATLAB ``conv2(x, h, 'same')`` gives them (zero padding).

    Sx uses h = [-1 0 1; -2 0 2; -1 0 1] and Sy uses h = [1 2 1; 0 0 0; -1 -2 -1]. ``conv2`` flips
    the kernel, so Sx is the correlation with [1 0 -1; ...] and Sy the correlation with
    [-1 -2 -1; ...]. The signs matter for Qabf, whose angle is atan(Sy/Sx) with pi/2 where Sx = 0.
    """
    smooth = np.array([1.0, 2.0, 1.0])
    sx = ndimage.correlate1d(x, np.array([1.0, 0.0, -1.0]), axis=1, mode="constant")
    sx = ndimage.correlate1d(sx, smooth, axis=0, mode="constant")
    sy = ndimage.correlate1d(x, np.array([-1.0, 0.0, 1.0]), axis=0, mode="constant")
    sy = ndimage.correlate1d(sy, smooth, axis=1, mode="constant")
    return sx, sy


def freqspace_radius(shape: tuple[int, int], scale_divisor: float) -> Array:
    """Radial frequency on MATLAB's ``freqspace(..., 'meshgrid')`` grid scaled by size/divisor.

    For n samples MATLAB's grid is ((0:n-1) - floor(n/2)) * 2/n, DC in the middle; the column
    (u) axis is scaled by N/divisor and the row (v) axis by M/divisor, as Liu's metricChen and
    metricChenBlum do. The result is returned *unshifted* (DC at [0, 0]) so it multiplies
    ``np.fft.fft2`` output directly; that equals MATLAB's fftshift, multiply, ifftshift.
    """
    m, n = shape
    fu = (np.arange(n) - n // 2) * 2.0 / n * (n / scale_divisor)
    fv = (np.arange(m) - m // 2) * 2.0 / m * (m / scale_divisor)
    r = np.sqrt(fu[None, :] ** 2 + fv[:, None] ** 2)
    return np.fft.ifftshift(r)


def pearson(x: Array, y: Array) -> float:
    """Pearson correlation over the whole image (MATLAB ``corr2``); 0 when either is constant."""
    dx = x - x.mean()
    dy = y - y.mean()
    den = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float(np.sum(dx * dy) / den) if den > 0 else 0.0


def joint_histogram(x_levels: Array, y_levels: Array) -> Array:
    """256x256 joint histogram (counts) of two integer level images, x along rows."""
    idx = x_levels.ravel() * 256 + y_levels.ravel()
    return np.bincount(idx, minlength=256 * 256).reshape(256, 256).astype(np.float64)


def entropy_bits(p: Array) -> float:
    """Shannon entropy in bits of a probability array, 0 log 0 = 0."""
    nz = p[p > 0]
    return float(-np.sum(nz * np.log2(nz)))
