"""Structural and second-order metrics: SSIM, UQI, PSNR, CC, SCD and SD."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfuse_cli.metrics._common import Array, check_triple, filter_valid, gaussian_1d, pearson

SSIM_WINDOW = gaussian_1d(11, 1.5)
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0
UQI_WINDOW = 8


def _ssim(x: Array, y: Array) -> float:
    """Mean of Wang's SSIM map over the 'valid' region (5-pixel border cropped)."""
    c1 = (SSIM_K1 * SSIM_L) ** 2
    c2 = (SSIM_K2 * SSIM_L) ** 2
    mx, my = filter_valid(x, SSIM_WINDOW), filter_valid(y, SSIM_WINDOW)
    vx = filter_valid(x * x, SSIM_WINDOW) - mx * mx
    vy = filter_valid(y * y, SSIM_WINDOW) - my * my
    cxy = filter_valid(x * y, SSIM_WINDOW) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim(a: Array, b: Array, f: Array) -> float:
    """SSIM = (SSIM(A, F) + SSIM(B, F)) / 2 with Wang 2004 defaults.

    Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
    structural similarity", IEEE TIP 13(4) (2004), doi:10.1109/TIP.2003.819861. Gaussian 11x11
    window with sigma 1.5 (normalised), K1 = 0.01, K2 = 0.03, L = 255, population (1/N) moments,
    mean of the 'valid' map. Equals scikit-image ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255)`` and piq ``ssim``; VIFB's
    ``metricsSsim`` reports the sum (twice this value). Range -1..1, 1 for F = A = B.
    """
    a, b, f = check_triple(a, b, f, "SSIM", min_size=len(SSIM_WINDOW))
    return 0.5 * (_ssim(a, f) + _ssim(b, f))


def _uqi_sewar(x: Array, y: Array) -> float:
    """sewar's ``uqi`` on one pair: 8x8 box means (reflect, 'same'), 4-pixel border dropped.

    sewar feeds the *means* m from ``uniform_filter`` into the formula written for window sums S
    (numerator 4 (N Sxy - Sx Sy) Sx Sy, denominator (N (Sxx + Syy) - Sx^2 - Sy^2)(Sx^2 + Sy^2),
    N = 64). With means that is 4 (N mxy - mx my) mx my / ((N (mxx + myy) - mx^2 - my^2)(mx^2 + my^2)),
    which is not Wang-Bovik's Q0; we reproduce it because the issue pins the sewar rows.
    """
    n = float(UQI_WINDOW * UQI_WINDOW)
    mx = ndimage.uniform_filter(x, UQI_WINDOW)
    my = ndimage.uniform_filter(y, UQI_WINDOW)
    mxx = ndimage.uniform_filter(x * x, UQI_WINDOW)
    myy = ndimage.uniform_filter(y * y, UQI_WINDOW)
    mxy = ndimage.uniform_filter(x * y, UQI_WINDOW)
    prod = mx * my
    sq_sum = mx * mx + my * my
    numerator = 4.0 * (n * mxy - prod) * prod
    den1 = n * (mxx + myy) - sq_sum
    denominator = den1 * sq_sum
    q = np.ones_like(x)
    flat = (den1 == 0) & (sq_sum != 0)
    q[flat] = 2.0 * prod[flat] / sq_sum[flat]
    ok = denominator != 0
    q[ok] = numerator[ok] / denominator[ok]
    s = UQI_WINDOW // 2
    return float(q[s:-s, s:-s].mean())


def uqi(a: Array, b: Array, f: Array) -> float:
    """UQI = (Q(A, F) + Q(B, F)) / 2, 8x8 windows, computed exactly as sewar 0.4.10 ``uqi(ws=8)``.

    Wang & Bovik, "A universal image quality index", IEEE Signal Process. Lett. 9(3) (2002),
    doi:10.1109/97.995823. Variant: sewar's, the implementation the LWNet comparison used (see
    ``_uqi_sewar`` for how its local statistics differ from the paper's Q0). Windows with no
    variance and no mean score 1, as in sewar. Wang's ``qindex.m`` (valid 8x8 windows, true
    Q0) gives different numbers.
    """
    a, b, f = check_triple(a, b, f, "UQI", min_size=UQI_WINDOW + 1)
    return 0.5 * (_uqi_sewar(a, f) + _uqi_sewar(b, f))


def psnr(a: Array, b: Array, f: Array) -> float:
    """PSNR = 10 log10(255^2 / MSE) dB with MSE = (MSE(A, F) + MSE(B, F)) / 2 on 0..255.

    The standard fusion PSNR (the sewar-based reference rows). Not Tang's variant (+48.13 dB,
    MSE on [0, 1] with peak 255), not CDDFuse's (peak = max F), not VIFB's (not an MSE).
    Infinite when F equals both sources.
    """
    a, b, f = check_triple(a, b, f, "PSNR")
    return _psnr_db(0.5 * (_mse(a, f) + _mse(b, f)))


def _mse(x: Array, f: Array) -> float:
    """Mean squared difference of F from X on 0..255."""
    return np.mean((f - x) ** 2)


def _psnr_db(mse: float) -> float:
    """10 log10(255^2 / MSE) dB, infinite for MSE 0."""
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def psnr_source_term(x: Array, f: Array) -> float:
    """PSNR of F against one source X alone: 10 log10(255^2 / MSE(X, F)) dB.

    PSNR itself is not the mean of the two terms (it averages the MSEs, not the decibels).
    """
    return _psnr_db(_mse(x, f))


def ssim_source_term(x: Array, f: Array) -> float:
    """SSIM(X, F), one source's term of SSIM (same window and constants)."""
    return _ssim(x, f)


def correlation_coefficient(a: Array, b: Array, f: Array) -> float:
    """CC = (r(A, F) + r(B, F)) / 2, r the Pearson correlation over the whole image.

    As Tang's ``CC_evaluation`` and CDDFuse; used by the LYWNet paper. A constant image
    correlates 0 with anything. Range -1..1.
    """
    a, b, f = check_triple(a, b, f, "CC")
    return 0.5 * (pearson(a, f) + pearson(b, f))


def scd(a: Array, b: Array, f: Array) -> float:
    """SCD = r(F - B, A) + r(F - A, B), the sum of the correlations of differences.

    Aslantas & Bendes, "A new image quality metric for image fusion: the sum of the correlations
    of differences", AEU Int. J. Electron. Commun. 69(12) (2015),
    doi:10.1016/j.aeue.2015.09.004. As Tang's ``analysis_SCD`` (``corr2``) and CDDFuse. Range -2..2.
    """
    a, b, f = check_triple(a, b, f, "SCD")
    return pearson(f - b, a) + pearson(f - a, b)


def standard_deviation(a: Array, b: Array, f: Array) -> float:
    """SD: population standard deviation of F, sqrt(mean((F - mean F)^2)). Higher = more contrast.

    As Tang's ``SD_evaluation`` and VIFB (Zhang, Ye & Xiao, "VIFB: a visible and infrared image
    fusion benchmark", CVPR Workshops 2020), whose ``metricsVariance`` returns this despite its
    name. The sources only take part in input checks.
    """
    _, _, f = check_triple(a, b, f, "SD")
    return float(np.std(f))
