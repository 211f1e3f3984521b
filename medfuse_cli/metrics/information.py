"""Histogram-based information metrics: EN, MI and Hossny's NMI.

All three work on 256 gray levels of 8-bit images (inputs are rounded to integer levels, which
leaves 8-bit data unchanged) and use log base 2, so every value is in bits.
"""

from __future__ import annotations

import numpy as np

from medfuse_cli.metrics._common import (
    Array,
    check_triple,
    entropy_bits,
    gray_levels,
    joint_histogram,
    minmax_stretch,
)


def _mutual_information(x_levels: Array, f_levels: Array) -> tuple[float, float, float]:
    """MI(X, F), H(X), H(F) in bits from the 256x256 joint histogram."""
    joint = joint_histogram(x_levels, f_levels)
    joint /= joint.sum()
    h_x = entropy_bits(joint.sum(axis=1))
    h_f = entropy_bits(joint.sum(axis=0))
    return h_x + h_f - entropy_bits(joint), h_x, h_f


def entropy(a: Array, b: Array, f: Array) -> float:
    """EN: Shannon entropy of the fused image's 256-bin gray-level histogram, in bits.

    EN = -sum_l p_l log2 p_l. Roberts, Van Aardt & Ahmed, "Assessment of image fusion procedures
    using entropy, image quality, and multispectral classification", J. Appl. Remote Sens. 2 (2008),
    doi:10.1117/1.2945910. Identical to Tang's, VIFB's and CDDFuse's EN (MATLAB ``entropy`` on
    uint8). The sources only take part in input checks.
    """
    _, _, f = check_triple(a, b, f, "EN")
    counts = np.bincount(gray_levels(f).ravel(), minlength=256).astype(np.float64)
    return entropy_bits(counts / counts.sum())


def mutual_information(a: Array, b: Array, f: Array) -> float:
    """MI = MI(A, F) + MI(B, F) in bits, 256x256-bin joint histograms of the 8-bit values.

    MI(X, F) = H(X) + H(F) - H(X, F). Qu, Zhang & Yan, "Information measure for performance of
    image fusion", Electron. Lett. 38(7) (2002), doi:10.1049/el:20020212. The convention of
    Tang's ``MI_evaluation`` (bits); VIFB and CDDFuse report the same quantity in nats (x ln 2).
    Tang's code adds 1 to uint8 images, which saturates 255 and merges levels 254 and 255 in the
    joint histogram only; this function keeps them apart, so it is lower than Tang's (by up to
    ~0.01 bits) on images that contain both levels, and equals VIFB/CDDFuse / ln 2 everywhere.
    """
    a, b, f = check_triple(a, b, f, "MI")
    return mutual_information_term(a, f) + mutual_information_term(b, f)


def mutual_information_term(x: Array, f: Array) -> float:
    """MI(X, F) in bits, one source's term of MI (256x256-bin joint histogram of 8-bit levels)."""
    return _mutual_information(gray_levels(x), gray_levels(f))[0]


def normalized_mutual_information(a: Array, b: Array, f: Array) -> float:
    """NMI (Hossny): 2 [MI(A,F)/(H(A)+H(F)) + MI(B,F)/(H(B)+H(F))], bits, range 0..2.

    Hossny, Nahavandi & Creighton, "Comments on 'Information measure for performance of image
    fusion'", Electron. Lett. 44(18) (2008), doi:10.1049/el:20081754. As Liu's ``metricMI``
    (sw=1) and MEFB's ``metricsNMI``: each image is first min-max stretched to 0..255 and rounded
    (a relabelling of levels for 8-bit data, so it leaves MI and entropies unchanged there). A
    term whose entropies are both 0 (two constant images) counts as 0.
    """
    a, b, f = check_triple(a, b, f, "NMI")
    fl = gray_levels(minmax_stretch(f))
    total = 0.0
    for src in (a, b):
        mi, h_x, h_f = _mutual_information(gray_levels(minmax_stretch(src)), fl)
        if h_x + h_f > 0:
            total += mi / (h_x + h_f)
    return 2.0 * total
