"""Fusion quality metrics: one registry of named, documented functions of (A, B, F).

A is the anatomical source (MRI), B the functional source's Y channel (SPECT/PET) or the CT, F the
fused image's Y; all are 2-D arrays on the 0..255 scale (8-bit values as float64). Each function's
docstring names its paper, the reference implementation it matches and its constants;
``tests/test_metrics_reference.py`` checks them against the values those implementations print.

>>> from medfuse_cli.metrics import METRICS, compute_metrics
>>> scores = compute_metrics(a, b, f, ["SSIM", "PSNR"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from medfuse_cli.errors import InputError
from medfuse_cli.metrics import balance, clustering, fmi, gradient, information, structural, visual
from medfuse_cli.metrics._common import check_triple


@dataclass(frozen=True)
class Metric:
    """A named metric: the function, which direction is better, and a one-line description."""

    name: str
    function: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    higher_is_better: bool
    description: str


_ALL = (
    Metric("EN", information.entropy, True, "entropy of F, bits"),
    Metric("SD", structural.standard_deviation, True, "standard deviation of F"),
    Metric("SF", gradient.spatial_frequency, True, "spatial frequency of F (Tang)"),
    Metric("AG", gradient.average_gradient, True, "average gradient of F, /(M-1)(N-1)"),
    Metric("MI", information.mutual_information, True, "MI(A,F)+MI(B,F), bits"),
    Metric("NMI", information.normalized_mutual_information, True, "Hossny normalised MI, 0..2"),
    Metric("FMI_pixel", fmi.fmi_pixel, True, "Haghighat feature MI on raw pixels, 3x3"),
    Metric("FMI_dct", fmi.fmi_dct, True, "Haghighat feature MI on the DCT, 3x3"),
    Metric("FMI_w", fmi.fmi_wavelet, True, "Haghighat feature MI on dmey wavelet (PyWavelets)"),
    Metric("SSIM", structural.ssim, True, "mean of SSIM(A,F), SSIM(B,F), Wang defaults"),
    Metric("UQI", structural.uqi, True, "mean of UQI(A,F), UQI(B,F), 8x8, sewar"),
    Metric("PSNR", structural.psnr, True, "10 log10(255^2 / mean MSE), dB"),
    Metric("CC", structural.correlation_coefficient, True, "mean Pearson r of (A,F), (B,F)"),
    Metric("SCD", structural.scd, True, "sum of the correlations of differences"),
    Metric("Qabf", gradient.qabf, True, "Xydeas-Petrovic edge preservation"),
    Metric("VIF", visual.vif, True, "vifp(A,F)+vifp(B,F), Sheikh-Bovik, sigma_n^2=2"),
    Metric("VIFF", visual.viff, True, "Han 2013 visual information fidelity for fusion"),
    Metric("Qcb", visual.qcb, True, "Chen-Blum perceptual quality"),
    Metric("Qcv", visual.qcv, False, "Chen-Varshney perceptual distortion"),
    Metric("ARI", clustering.adjusted_rand_index, True, "adjusted Rand index of gray-level partitions"),
    Metric("FM", clustering.fowlkes_mallows, True, "Fowlkes-Mallows index of gray-level partitions"),
)

# Source balance (``--metrics balance``): each two-source metric's per-source terms and their
# minimum, and whether the functional image's hot spots survive. See ``balance``.
_BALANCE = (
    *(Metric(name, function, True, description) for name, function, description in balance.source_metrics()),
    Metric("PeakRetention", balance.peak_retention, True, "share of B's top-5% excess over A kept in F"),
)
BALANCE_METRICS = tuple(m.name for m in _BALANCE)
_ALL = _ALL + _BALANCE

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

# The metric sets each paper reports, in its column order.
LWNET_METRICS = ("VIF", "MI", "UQI", "SSIM", "PSNR", "Qcb")
LYWNET_METRICS = ("SSIM", "PSNR", "MI", "ARI", "FM", "CC")


def resolve_metric_names(names: Iterable[str] | None) -> list[str]:
    """Validate metric names (case-insensitive) and return them canonically spelt, in order.

    ``None`` means every metric. Unknown names raise ``InputError`` listing the known ones.
    """
    if names is None:
        return list(METRICS)
    by_lower = {name.lower(): name for name in METRICS}
    resolved: list[str] = []
    for raw in names:
        name = by_lower.get(raw.strip().lower())
        if name is None:
            raise InputError(f"unknown metric '{raw}' (known: {', '.join(METRICS)})")
        if name not in resolved:
            resolved.append(name)
    if not resolved:
        raise InputError("no metrics selected")
    return resolved


def compute_metrics(
    a: np.ndarray, b: np.ndarray, f: np.ndarray, names: Iterable[str] | None = None
) -> dict[str, float]:
    """Score one triple with the named metrics (all by default), in the order given."""
    selected = resolve_metric_names(names)
    a, b, f = check_triple(a, b, f, "metrics")
    return {name: METRICS[name].function(a, b, f) for name in selected}


__all__ = [
    "BALANCE_METRICS",
    "LWNET_METRICS",
    "LYWNET_METRICS",
    "METRICS",
    "Metric",
    "compute_metrics",
    "resolve_metric_names",
]
