"""Source balance: the per-source terms of the two-source metrics, their minimum, and peak retention.

SSIM, CC (means), MI, VIF (sums), PSNR (from the mean MSE) and Qabf (edge-weighted average)
each combine one term for A (the MRI) with one for B (the functional image's Y, or the CT). A
fusion that copies one source scores well on the combination while losing the other, so here
each term is a metric of its own: ``<NAME>_A`` (the term of A against F), ``<NAME>_B`` (of B
against F) and ``<NAME>_min`` (the smaller of the two, NaN if either is NaN). Each term is
computed by the very function the combined metric calls, so SSIM = (SSIM_A + SSIM_B) / 2,
CC = (CC_A + CC_B) / 2, MI = MI_A + MI_B and VIF = VIF_A + VIF_B exactly. PSNR_X is
10 log10(255^2 / MSE(X, F)) dB (PSNR averages the MSEs, not the decibels). Qabf_X is the
edge-strength-weighted preservation of X's edges alone, sum(Q^{XF} gX) / sum(gX) (NaN when X
has no edge); Qabf is the gX-weighted average of the two. All are higher-is-better, in the
units of the combined metric.

``PeakRetention`` asks whether the functional hot spots survive: see ``peak_retention``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from medfuse_cli.metrics._common import Array, check_triple, pearson
from medfuse_cli.metrics.gradient import qabf_source_term
from medfuse_cli.metrics.information import mutual_information_term
from medfuse_cli.metrics.structural import SSIM_WINDOW, psnr_source_term, ssim_source_term
from medfuse_cli.metrics.visual import VIF_MIN_SIZE, vif_source_term

TripleMetric = Callable[[Array, Array, Array], float]

# The peak set: the top (100 - PEAK_PERCENTILE)% of the pixels where B is brighter than A,
# ranked by the excess B - A.
PEAK_PERCENTILE = 95.0

# name, the per-source term (X, F) -> float, the smallest image side it accepts, what it is.
SOURCE_TERMS: tuple[tuple[str, Callable[[Array, Array], float], int, str], ...] = (
    ("SSIM", ssim_source_term, len(SSIM_WINDOW), "SSIM"),
    ("MI", mutual_information_term, 1, "MI, bits"),
    ("VIF", vif_source_term, VIF_MIN_SIZE, "vifp"),
    ("CC", pearson, 1, "Pearson r"),
    ("PSNR", psnr_source_term, 1, "PSNR, dB"),
    ("Qabf", qabf_source_term, 1, "edge preservation sum(Q gX)/sum(gX)"),
)


def _term(name: str, term: Callable[[Array, Array], float], min_size: int, source: str) -> TripleMetric:
    """The metric ``f(A, B, F) = term(A or B, F)``, input checks under its own name."""
    index = "AB".index(source)

    def metric(a: Array, b: Array, f: Array) -> float:
        a, b, f = check_triple(a, b, f, f"{name}_{source}", min_size=min_size)
        return float(term((a, b)[index], f))

    metric.__name__ = f"{name.lower()}_{source.lower()}"
    metric.__doc__ = f"{name}_{source}: the {source} term of {name}, {term.__name__}({source}, F)."
    return metric


def _minimum(name: str, term: Callable[[Array, Array], float], min_size: int) -> TripleMetric:
    """The metric ``min(term(A, F), term(B, F))``, NaN if either term is NaN."""

    def metric(a: Array, b: Array, f: Array) -> float:
        a, b, f = check_triple(a, b, f, f"{name}_min", min_size=min_size)
        values = (float(term(a, f)), float(term(b, f)))
        return math.nan if any(math.isnan(v) for v in values) else min(values)

    metric.__name__ = f"{name.lower()}_min"
    metric.__doc__ = f"{name}_min = min({name}_A, {name}_B): the worse-served source's term."
    return metric


def source_metrics() -> list[tuple[str, TripleMetric, str]]:
    """(name, function, description) of every per-source term and minimum, family by family."""
    out = []
    for name, term, min_size, what in SOURCE_TERMS:
        out.append(
            (f"{name}_A", _term(name, term, min_size, "A"), f"{what} of (A,F), the MRI's term of {name}")
        )
        out.append(
            (f"{name}_B", _term(name, term, min_size, "B"), f"{what} of (B,F), the functional/CT term")
        )
        out.append((f"{name}_min", _minimum(name, term, min_size), f"min({name}_A, {name}_B)"))
    return out


def peak_retention(a: Array, b: Array, f: Array) -> float:
    """PeakRetention: the fraction of B's excess over A that F keeps at B's brightest-above-A pixels.

    With the excess E = B - A (gray levels, 0..255 scale), the peak set P is the pixels where
    E > 0 and E is at least the 95th percentile (``PEAK_PERCENTILE``, numpy's linear
    interpolation) of E over the pixels where E > 0: the top 5% of the places where the
    functional image (or CT) is brighter than the MRI, ranked by how much brighter. Then

        PeakRetention = sum_P clip(F - A, 0, E) / sum_P E,

    a ratio of gray-level sums, unitless, in 0..1, higher is better: 1 when F keeps the whole
    excess there (F >= B on P, e.g. F = B), 0 when F is nowhere on P brighter than A (e.g.
    F = A), 0.5 for F = (A + B) / 2. Brightening beyond B earns nothing extra. NaN when B is
    nowhere brighter than A (P empty). Not symmetric in A and B by design.
    """
    a, b, f = check_triple(a, b, f, "PeakRetention")
    excess = b - a
    positive = excess[excess > 0]
    if positive.size == 0:
        return math.nan
    peak = excess >= np.percentile(positive, PEAK_PERCENTILE)
    peak &= excess > 0
    e = excess[peak]
    kept = np.clip(f[peak] - a[peak], 0.0, e)
    return float(kept.sum() / e.sum())
