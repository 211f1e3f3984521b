"""Clustering-agreement metrics of the LYWNet paper: adjusted Rand index and Fowlkes-Mallows.

The LYWNet paper (Quant. Imaging Med. Surg., doi:10.21037/qims-24-851) reports "ARI" and
"FMI (Fowlkes-Mallows index)" without saying what is clustered. Our documented reading: every
pixel is an item and its 8-bit gray level is its cluster label, so an image is a partition of
its pixels into up to 256 clusters; each score compares the partition of a source with that of F,
and the reported value is the mean over A and B. This equals scikit-learn's
``adjusted_rand_score`` / ``fowlkes_mallows_score`` on the flattened level images (the tests
check that), computed here from the 256x256 contingency table without the dependency.
"""

from __future__ import annotations

import numpy as np

from medfuse_cli.metrics._common import Array, check_triple, gray_levels, joint_histogram


def _pair_counts(x: Array, f: Array) -> tuple[float, float, float, float]:
    """Pairs of pixels together in both, in x only, in f only, and all pairs."""
    table = joint_histogram(gray_levels(x), gray_levels(f))
    n = table.sum()
    both = np.sum(table * (table - 1)) / 2.0
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    in_x = np.sum(rows * (rows - 1)) / 2.0
    in_f = np.sum(cols * (cols - 1)) / 2.0
    return both, in_x, in_f, n * (n - 1) / 2.0


def _ari(x: Array, f: Array) -> float:
    """Hubert-Arabie adjusted Rand index of two level partitions (1 when both are trivial alike)."""
    both, in_x, in_f, total = _pair_counts(x, f)
    expected = in_x * in_f / total if total else 0.0
    maximum = 0.5 * (in_x + in_f)
    if maximum == expected:
        return 1.0
    return float((both - expected) / (maximum - expected))


def _fowlkes_mallows(x: Array, f: Array) -> float:
    """Fowlkes-Mallows index TP / sqrt((TP + FP)(TP + FN)) over pixel pairs; 0 when TP = 0."""
    both, in_x, in_f, _ = _pair_counts(x, f)
    if both == 0:
        return 0.0
    return float(np.sqrt(both / in_x) * np.sqrt(both / in_f))


def adjusted_rand_index(a: Array, b: Array, f: Array) -> float:
    """ARI = (ARI(A, F) + ARI(B, F)) / 2 on gray-level partitions (see the module docstring).

    Hubert & Arabie, "Comparing partitions", J. Classif. 2 (1985), doi:10.1007/BF01908075.
    ARI = (sum_ij C(n_ij, 2) - E) / (0.5 [sum_i C(a_i, 2) + sum_j C(b_j, 2)] - E) with
    E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2), n_ij the 256x256 joint level histogram.
    1 for F = A = B, about 0 for independent images; can be negative.
    """
    a, b, f = check_triple(a, b, f, "ARI")
    return 0.5 * (_ari(a, f) + _ari(b, f))


def fowlkes_mallows(a: Array, b: Array, f: Array) -> float:
    """FM = (FM(A, F) + FM(B, F)) / 2 on gray-level partitions; the LYWNet paper's "FMI".

    Fowlkes & Mallows, "A method for comparing two hierarchical clusterings", J. Am. Stat. Assoc.
    78(383) (1983), doi:10.1080/01621459.1983.10478008. TP counts pixel pairs sharing a level in
    both images, TP + FP pairs sharing a level in the source, TP + FN in F. Range 0..1, 1 for
    F = A = B. Not Haghighat's feature mutual information (FMI_pixel, FMI_dct, FMI_w).
    """
    a, b, f = check_triple(a, b, f, "FM")
    return 0.5 * (_fowlkes_mallows(a, f) + _fowlkes_mallows(b, f))
