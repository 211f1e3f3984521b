"""Human-visual-system metrics: VIF (Sheikh-Bovik, summed), VIFF (Han), Qcb and Qcv."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medfuse_cli.metrics._common import (
    Array,
    check_triple,
    filter_same_zero,
    filter_valid,
    freqspace_radius,
    gaussian_1d,
    minmax_stretch,
    sobel,
)

VIF_EPS = 1e-10
VIF_SIGMA_N_SQ = 2.0
VIFF_SIGMA_N_SQ = 0.005 * 255.0**2
VIFF_C = 1e-7
VIFF_SCALE_WEIGHTS = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
# The smallest side for which the 4th scale of the pyramid still has one 'valid' pixel.
VIF_MIN_SIZE = 41


@dataclass(frozen=True)
class _ScaleStats:
    """Per-pixel Gaussian-channel statistics of one pyramid scale (reference X, distorted F)."""

    gain: Array  # g = sigma_xf / sigma_x^2
    var_ref: Array  # sigma_x^2
    var_noise: Array  # sigma_v^2 = sigma_f^2 - g sigma_xf


def _vif_pyramid(ref: Array, dist: Array) -> list[_ScaleStats]:
    """Sheikh-Bovik ``vifp_mscale`` statistics on 4 scales, with the reference clamps.

    Scale s uses a normalised Gaussian window of size N = 2^(5-s) + 1 and sigma N/5 (17, 9, 5, 3);
    from scale 2 on, both images are filtered 'valid' with that window and decimated by 2.
    """
    stats = []
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        win = gaussian_1d(size, size / 5.0)
        if scale > 1:
            ref = filter_valid(ref, win)[::2, ::2]
            dist = filter_valid(dist, win)[::2, ::2]
        mu1, mu2 = filter_valid(ref, win), filter_valid(dist, win)
        s1 = filter_valid(ref * ref, win) - mu1 * mu1
        s2 = filter_valid(dist * dist, win) - mu2 * mu2
        s12 = filter_valid(ref * dist, win) - mu1 * mu2
        s1[s1 < 0] = 0.0
        s2[s2 < 0] = 0.0
        g = s12 / (s1 + VIF_EPS)
        sv = s2 - g * s12
        flat_ref = s1 < VIF_EPS
        g[flat_ref] = 0.0
        sv[flat_ref] = s2[flat_ref]
        s1[flat_ref] = 0.0
        flat_dist = s2 < VIF_EPS
        g[flat_dist] = 0.0
        sv[flat_dist] = 0.0
        negative = g < 0
        sv[negative] = s2[negative]
        g[negative] = 0.0
        sv[sv <= VIF_EPS] = VIF_EPS
        stats.append(_ScaleStats(g, s1, sv))
    return stats


def _information(st: _ScaleStats, sigma_n_sq: float) -> tuple[Array, Array]:
    """Per-pixel information with distortion (VID) and without (VIND), log10 units."""
    vid = np.log10(1.0 + st.gain**2 * st.var_ref / (st.var_noise + sigma_n_sq))
    vind = np.log10(1.0 + st.var_ref / sigma_n_sq)
    return vid, vind


def _vifp(ref: Array, dist: Array) -> float:
    """Pixel-domain multiscale VIF of ``dist`` against ``ref``, sums over all scales."""
    num = den = 0.0
    for st in _vif_pyramid(ref, dist):
        vid, vind = _information(st, VIF_SIGMA_N_SQ)
        num += vid.sum()
        den += vind.sum()
    return float(num / den) if den > 0 else float("nan")


def vif(a: Array, b: Array, f: Array) -> float:
    """VIF = vifp(A, F) + vifp(B, F), Sheikh-Bovik pixel-domain multiscale, sigma_n^2 = 2.

    Sheikh & Bovik, "Image information and visual quality", IEEE TIP 15(2) (2006),
    doi:10.1109/TIP.2005.859378, in the ``vifp_mscale`` form used by Tang, CDDFuse (named "VIFF"
    there) and sewar ``vifp``: 4 scales, Gaussian windows 17/9/5/3 with sigma N/5, eps 1e-10,
    values on 0..255. The fusion papers' "VIF" is this sum (range about 0..2), not Han's VIFF and
    not piq's ``vif_p``. Images need at least 41x41 pixels.
    """
    a, b, f = check_triple(a, b, f, "VIF", min_size=VIF_MIN_SIZE)
    return vif_source_term(a, f) + vif_source_term(b, f)


def vif_source_term(x: Array, f: Array) -> float:
    """vifp(X, F), one source's term of VIF (range about 0..1, 1 for F = X)."""
    return _vifp(x, f)


def viff(a: Array, b: Array, f: Array) -> float:
    """VIFF (Han et al. 2013): visual information fidelity for fusion, one number in 0..1.

    Han, Cai, Cao & Xu, "A new image fusion performance metric based on visual information
    fidelity", Inf. Fusion 14(2) (2013), doi:10.1016/j.inffus.2011.08.002, as the authors' code in
    MEFB ``metricsVIF``: the vifp pyramid statistics with visual noise sigma_n^2 = 0.005 * 255^2;
    per pixel and scale the source with the smaller gain g is kept; F_s = sum(VID + C) /
    sum(VIND + C) with C = 1e-7; VIFF = sum_s p_s F_s with p = [1, 0, 0.15, 1] / 2.15. Where the
    two gains are equal B is kept, as in the reference, so swapping A and B can change the value
    slightly in flat regions (both gains 0).
    """
    a, b, f = check_triple(a, b, f, "VIFF", min_size=VIF_MIN_SIZE)
    total = 0.0
    for weight, st_a, st_b in zip(VIFF_SCALE_WEIGHTS, _vif_pyramid(a, f), _vif_pyramid(b, f), strict=True):
        vid_a, vind_a = _information(st_a, VIFF_SIGMA_N_SQ)
        vid_b, vind_b = _information(st_b, VIFF_SIGMA_N_SQ)
        use_a = st_a.gain < st_b.gain
        vid = np.where(use_a, vid_a, vid_b)
        vind = np.where(use_a, vind_a, vind_b)
        total += weight * (np.sum(vid + VIFF_C) / np.sum(vind + VIFF_C))
    return float(total)


def _csf_filter(x: Array, csf: Array) -> Array:
    """Multiply the spectrum by a real, even CSF and return the (real) filtered image."""
    return np.fft.ifft2(np.fft.fft2(x) * csf).real


# Chen-Blum constants (Liu metricChenBlum / VIFB metricsQcb).
QCB_F0, QCB_F1, QCB_A = 15.3870, 1.3456, 0.7622
QCB_K, QCB_H, QCB_P, QCB_Q, QCB_Z = 1.0, 1.0, 3.0, 2.0, 1e-4

Fft2 = Callable[[Array], Array]


def _libm_exp(x: Array) -> Array:
    """exp of every element through the C library's ``exp`` (``math.exp``), as Octave's is.

    ``np.exp`` picks a SIMD kernel by CPU (on AVX-512 machines its own, which differs from libm in
    the last bit for about 5% of the CSF entries), and Qcb is sensitive to that last bit (see
    ``qcb``). Each distinct value is evaluated once.
    """
    values, inverse = np.unique(x, return_inverse=True)
    exps = np.fromiter((math.exp(v) for v in values.tolist()), dtype=np.float64, count=values.size)
    return exps[inverse].reshape(x.shape)


@lru_cache(maxsize=8)
def _chen_blum_csf(shape: tuple[int, int]) -> Array:
    """S(r) = exp(-(r/f0)^2) - a exp(-(r/f1)^2) on the size/30-scaled freqspace grid, DC at [0, 0].

    Cached per image shape and returned read-only.
    """
    r = freqspace_radius(shape, 30.0)
    csf = _libm_exp(-((r / QCB_F0) ** 2)) - QCB_A * _libm_exp(-((r / QCB_F1) ** 2))
    csf.flags.writeable = False
    return csf


def _unnormalised_gaussian_1d(sigma: float) -> Array:
    """1-D factor of Liu's 31x31 Gaussian exp(-(x^2+y^2)/(2 s^2)) / (2 pi s^2), not normalised."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / (np.sqrt(2 * np.pi) * sigma)


def _filter_same_zero_complex(x: Array, kernel_1d: Array) -> Array:
    """``filter_same_zero`` of a possibly complex image: a real kernel filters each part apart."""
    if not np.iscomplexobj(x):
        return filter_same_zero(x, kernel_1d)
    out = filter_same_zero(x.real, kernel_1d).astype(np.complex128)
    out.imag = filter_same_zero(x.imag, kernel_1d)
    return out


def _masked_contrast(filtered: Array, g1: Array, g2: Array) -> Array:
    """Chen-Blum masked contrast C' = k |C|^p / (h |C|^q + Z) of one CSF-filtered (complex) image.

    C = G1*I / G2*I - 1 is complex when the filtered image is, and |C| is its modulus, as in the
    MATLAB code, which never takes ``real()`` of its ``ifft2``.
    """
    num, den = _filter_same_zero_complex(filtered, g1), _filter_same_zero_complex(filtered, g2)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.abs(num / den - 1.0)
    return QCB_K * c**QCB_P / (QCB_H * c**QCB_Q + QCB_Z)


def _ratio(x: Array, y: Array) -> Array:
    """min/max per pixel; 1 where both are 0 (nothing to preserve, nothing lost)."""
    lo, hi = np.minimum(x, y), np.maximum(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hi > 0, lo / hi, 1.0)


def _qcb(a: Array, b: Array, f: Array, fft2: Fft2 = np.fft.fft2, ifft2: Fft2 = np.fft.ifft2) -> float:
    """``qcb`` with the 2-D FFT pair as a parameter (the tests replay the reference's FFTW calls)."""
    a, b, f = check_triple(a, b, f, "Qcb")
    csf = _chen_blum_csf(a.shape)
    g1, g2 = _unnormalised_gaussian_1d(2.0), _unnormalised_gaussian_1d(4.0)
    ca, cb, cf = (_masked_contrast(ifft2(fft2(minmax_stretch(x)) * csf), g1, g2) for x in (a, b, f))
    wa, wb = ca * ca, cb * cb
    with np.errstate(divide="ignore", invalid="ignore"):
        lam_a = np.where(wa + wb > 0, wa / (wa + wb), 0.5)
    q = lam_a * _ratio(ca, cf) + (1.0 - lam_a) * _ratio(cb, cf)
    return float(q.mean())


def qcb(a: Array, b: Array, f: Array) -> float:
    """Qcb (Chen-Blum), the perceptual contrast-preservation quality of F. Higher is better.

    Each image is min-max stretched to 0..255 and rounded, then filtered in the frequency domain
    with the DoG contrast sensitivity S(r) = exp(-(r/f0)^2) - a exp(-(r/f1)^2) (f0 = 15.3870,
    f1 = 1.3456, a = 0.7622) on MATLAB's ``freqspace`` grid scaled by size/30. Local contrast is
    C = |G1*I / G2*I - 1| with 31x31 unnormalised Gaussians (sigma 2 and 4, zero padding), masked
    as C' = k C^p / (h C^q + Z) with k = h = 1, p = 3, q = 2, Z = 1e-4. Per pixel,
    Q = lambda_A min/max(C'_A, C'_F) + lambda_B min/max(C'_B, C'_F) with saliency
    lambda_X = C'_X^2 / (C'_A^2 + C'_B^2); Qcb is the mean of Q. Where both contrasts of a ratio
    are 0 it counts as 1 and lambda as 1/2 (the MATLAB code yields NaN there).

    Args:
        a: anatomical source (MRI), 2-D, float64, values 0..255.
        b: functional source (SPECT/PET Y channel) or CT, same shape and range.
        f: fused image, same shape and range.

    Returns:
        Qcb in [0, 1]; 1 when F equals both sources.

    Raises:
        MedfuseError: (from ``check_triple``) when the inputs are not three finite 2-D arrays of
            one shape on the 0..255 scale.

    References:
        Chen & Blum, "A new automated quality assessment algorithm for image fusion", Image Vis.
        Comput. 27(10) (2009), doi:10.1016/j.imavis.2007.12.002. Matches Liu's
        ``metricChenBlum`` (imageFusionMetrics), copied unchanged as VIFB ``metricsQcb``: its
        size/30 DoG band and p = 3; values as Octave 7.3 prints them for that code.

    Numerics: far from any structure (large empty backgrounds) G1*I and G2*I are as small as the
    FFT's round-off (~1e-14 for values up to 255), so there C, and Qcb with it, depends on the last
    bits of S and of the FFT: changing only the ``exp`` or only the FFT library moves Octave's value
    by up to 1e-3 on the reference triples and by 1e-2 on mostly empty images. The reference, run
    in Octave, evaluates S with the C library's ``exp`` and keeps the complex ``ifft2`` output
    through the contrast, so we do the same (numpy's AVX-512 ``exp`` differs in the last bit and
    made our value depend on the CPU, by 5e-4 on PET-MRI). With the reference's FFT (FFTW, replayed in the tests) we equal
    Octave's values to 1e-10; with numpy's FFT the gap left is FFT round-off, up to 6.7e-4 on the
    reference triples (1.15e-3 before).
    """
    return _qcb(a, b, f)


QCV_ALPHA = 5
QCV_BLOCK = 16


def _block_reduce(x: Array, block: int, mean: bool) -> Array:
    """Sum (or mean) over distinct block x block tiles, zero-padding partial tiles (``blkproc``)."""
    m, n = x.shape
    pm, pn = -m % block, -n % block
    padded = np.pad(x, ((0, pm), (0, pn)))
    tiles = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block)
    out = tiles.sum(axis=(1, 3))
    return out / (block * block) if mean else out


def qcv(a: Array, b: Array, f: Array) -> float:
    """Qcv (Chen-Varshney), as Liu's ``metricChen`` = VIFB ``metricsQcv``. LOWER is better.

    Chen & Varshney, "A human perception inspired quality metric for image fusion based on
    regional information", Inf. Fusion 8(2) (2007), doi:10.1016/j.inffus.2005.10.001. Images
    min-max stretched to 0..255 and rounded; region saliency lambda = sum of (Sobel magnitude)^5
    over 16x16 blocks; the differences A - F and B - F are filtered with the Mannos-Sakrison CSF
    2.6 (0.0192 + 0.144 r) exp(-(0.144 r)^1.1) on the freqspace grid scaled by size/8; D is the
    block mean of the squared filtered difference; Qcv = sum(lambda_A D_A + lambda_B D_B) /
    sum(lambda_A + lambda_B). Partial blocks are zero-padded as ``blkproc`` does. NaN when
    neither source has an edge.
    """
    a, b, f = check_triple(a, b, f, "Qcv")
    a, b, f = (minmax_stretch(x) for x in (a, b, f))
    r = freqspace_radius(a.shape, 8.0)
    csf = 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))
    num = den = 0.0
    for src in (a, b):
        sx, sy = sobel(src)
        saliency = _block_reduce(np.sqrt(sx * sx + sy * sy) ** QCV_ALPHA, QCV_BLOCK, mean=False)
        diff = _csf_filter(src - f, csf)
        dist = _block_reduce(diff * diff, QCV_BLOCK, mean=True)
        num += np.sum(saliency * dist)
        den += np.sum(saliency)
    return float(num / den) if den > 0 else float("nan")
