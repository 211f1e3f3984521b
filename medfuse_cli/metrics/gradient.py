"""Gradient-based metrics: spatial frequency SF, average gradient AG and Xydeas-Petrovic Qabf."""

from __future__ import annotations

import numpy as np

from medfuse_cli.metrics._common import Array, check_triple, sobel

# Xydeas-Petrovic sigmoid constants (VIFB metricsQabf, Tang analysis_Qabf, CDDFuse).
QABF_TG, QABF_KG, QABF_DG = 0.9994, -15.0, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22.0, 0.8


def spatial_frequency(a: Array, b: Array, f: Array) -> float:
    """SF = sqrt(RF^2 + CF^2) of F, each a mean over the differences that exist.

    RF^2 = mean (F(i,j) - F(i,j-1))^2 over M(N-1) pairs, CF^2 = mean (F(i,j) - F(i-1,j))^2 over
    (M-1)N pairs. Eskicioglu & Fisher, "Image quality measures and their performance", IEEE Trans.
    Commun. 43(12) (1995), doi:10.1109/26.477498. As Tang's ``SF_evaluation`` and CDDFuse; VIFB
    divides both sums by MN instead (about 0.2% lower at 256x256).
    """
    _, _, f = check_triple(a, b, f, "SF", min_size=2)
    rf2 = np.mean(np.diff(f, axis=1) ** 2)
    cf2 = np.mean(np.diff(f, axis=0) ** 2)
    return float(np.sqrt(rf2 + cf2))


def average_gradient(a: Array, b: Array, f: Array) -> float:
    """AG = sum sqrt((gx^2 + gy^2) / 2) / ((M-1)(N-1)) of F, the average gradient.

    Cui et al., "Detail preserved fusion of visible and infrared images using regional saliency
    extraction and multi-scale image decomposition", Opt. Commun. 341 (2015), as used by VIFB.
    gx, gy as MATLAB ``gradient``: central differences inside, one-sided at the borders
    (``np.gradient``). The sum runs over all MN pixels but is divided by (M-1)(N-1), as Tang's
    ``AG_evaluation`` and VIFB's ``metricsAvg_gradient`` do; CDDFuse divides by MN.
    """
    _, _, f = check_triple(a, b, f, "AG", min_size=2)
    gy, gx = np.gradient(f)
    m, n = f.shape
    return float(np.sum(np.sqrt((gx * gx + gy * gy) / 2.0)) / ((m - 1) * (n - 1)))


def _edge_strength_orientation(x: Array) -> tuple[Array, Array]:
    """Sobel magnitude and atan(Sy/Sx) (not atan2), pi/2 where Sx = 0."""
    sx, sy = sobel(x)
    g = np.sqrt(sx * sx + sy * sy)
    zero = sx == 0
    angle = np.where(zero, np.pi / 2, np.arctan(sy / np.where(zero, 1.0, sx)))
    return g, angle


def _edge_preservation(g_src: Array, a_src: Array, g_f: Array, a_f: Array) -> Array:
    """Q^{XF} per pixel: strength and orientation preservation through the two sigmoids.

    The strength ratio is min/max of the magnitudes; where they are equal the reference code
    sets it to gF itself (0 when both are 0), which this keeps.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_src > g_f, g_f / g_src, g_src / g_f)
    ratio = np.where(g_src == g_f, g_f, ratio)
    orient = 1.0 - np.abs(a_src - a_f) / (np.pi / 2)
    q_g = QABF_TG / (1.0 + np.exp(QABF_KG * (ratio - QABF_DG)))
    q_a = QABF_TA / (1.0 + np.exp(QABF_KA * (orient - QABF_DA)))
    return q_g * q_a


def qabf(a: Array, b: Array, f: Array) -> float:
    """Qabf (Xydeas-Petrovic edge preservation), the VIFB / Tang / CDDFuse variant.

    Xydeas & Petrovic, "Objective image fusion performance measure", Electron. Lett. 36(4)
    (2000), doi:10.1049/el:20000267. Sobel with zero padding; orientation atan(Sy/Sx), pi/2 where
    Sx = 0; sigmoid constants Tg = 0.9994, kg = -15, Dg = 0.5, Ta = 0.9879, ka = -22, Da = 0.8;
    weights gA, gB (L = 1): Qabf = sum(Q^{AF} gA + Q^{BF} gB) / sum(gA + gB). Range 0..~0.976
    (the sigmoids never reach 1). NaN when neither source has any edge (0/0).
    """
    a, b, f = check_triple(a, b, f, "Qabf")
    g_f, ang_f = _edge_strength_orientation(f)
    kept_a, g_a = _weighted_preservation(a, g_f, ang_f)
    kept_b, g_b = _weighted_preservation(b, g_f, ang_f)
    den = np.sum(g_a + g_b)
    if den == 0:
        return float("nan")
    return float(np.sum(kept_a + kept_b) / den)


def _weighted_preservation(x: Array, g_f: Array, ang_f: Array) -> tuple[Array, Array]:
    """One source's share of Qabf: Q^{XF} gX per pixel, and the weight gX (Sobel magnitude)."""
    g_x, ang_x = _edge_strength_orientation(x)
    return _edge_preservation(g_x, ang_x, g_f, ang_f) * g_x, g_x


def qabf_source_term(x: Array, f: Array) -> float:
    """Qabf restricted to one source X: sum(Q^{XF} gX) / sum(gX), NaN when X has no edge.

    The edge-strength-weighted preservation of X's edges alone, with Qabf's constants; Qabf is
    the gX-weighted average of the two sources' terms, so it lies between them.
    """
    g_f, ang_f = _edge_strength_orientation(f)
    kept, g_x = _weighted_preservation(x, g_f, ang_f)
    den = np.sum(g_x)
    return float("nan") if den == 0 else float(np.sum(kept) / den)
