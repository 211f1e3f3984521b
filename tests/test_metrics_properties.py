"""Defining properties of every metric: identity, symmetry, bounds, small hand-computed cases.

These cover the metrics without reference values (FMI_w, ARI, FM) and back up the others. The
Fast-FMI vectorisation is checked against a direct, window-by-window port of the reference loop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from phantoms import phantom
from scipy import fft

from medfuse_cli.errors import MedfuseError
from medfuse_cli.metrics import METRICS, compute_metrics, resolve_metric_names
from medfuse_cli.metrics import fmi as fmi_module
from medfuse_cli.metrics.gradient import QABF_DA, QABF_KA, QABF_TA, QABF_TG

A = phantom(1)
B = phantom(2)
F = np.clip(np.rint(0.6 * A + 0.4 * B), 0, 255)


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    return compute_metrics(A, B, F)


@pytest.fixture(scope="module")
def identity_scores() -> dict[str, float]:
    return compute_metrics(A, A, A)


def test_identity_reaches_each_metrics_known_value(identity_scores: dict[str, float]) -> None:
    s = identity_scores
    exact_one = ("SSIM", "UQI", "CC", "FMI_pixel", "FMI_dct", "FMI_w", "ARI", "FM", "Qcb", "VIFF")
    for name in exact_one:
        assert s[name] == pytest.approx(1.0, abs=1e-9), name
    assert s["NMI"] == pytest.approx(2.0, abs=1e-12)
    assert s["MI"] == pytest.approx(2 * s["EN"], abs=1e-12)
    assert s["VIF"] == pytest.approx(2.0, rel=1e-9)
    assert s["PSNR"] == math.inf
    assert s["Qcv"] == 0.0
    assert s["SCD"] == 0.0  # F - B and F - A are constant: no correlation
    # Qabf's sigmoids never reach 1: identity gives about Tg * Ta / (1 + exp(ka (1 - Da))).
    ceiling = QABF_TG * QABF_TA / (1 + math.exp(QABF_KA * (1 - QABF_DA)))
    assert 0.97 < s["Qabf"] <= ceiling


def test_swapping_the_sources_changes_nothing(scores: dict[str, float]) -> None:
    swapped = compute_metrics(B, A, F)
    for name, value in scores.items():
        if name.endswith(("_A", "_B")) or name == "PeakRetention":
            continue  # one source's term, or B's excess over A: asymmetric by design
        if name == "VIFF":  # ties between the sources' gains go to B, by the reference's rule
            assert swapped[name] == pytest.approx(value, rel=1e-3)
        else:
            assert swapped[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_bounds(scores: dict[str, float]) -> None:
    s = scores
    for name in ("SSIM", "CC", "ARI"):
        assert -1.0 <= s[name] <= 1.0, name
    for name in ("FMI_pixel", "FMI_dct", "FMI_w", "FM", "Qabf", "Qcb", "VIFF"):
        assert 0.0 <= s[name] <= 1.0, name
    assert 0.0 <= s["NMI"] <= 2.0
    assert -2.0 <= s["SCD"] <= 2.0
    assert 0.0 <= s["EN"] <= 8.0
    assert min(s["SD"], s["SF"], s["AG"], s["MI"], s["Qcv"], s["VIF"]) >= 0.0
    assert 0.0 < s["PSNR"] < math.inf


def test_lower_is_better_only_for_qcv() -> None:
    assert [m.name for m in METRICS.values() if not m.higher_is_better] == ["Qcv"]


def test_fused_copy_of_one_source_beats_a_scrambled_image() -> None:
    rng = np.random.default_rng(0)
    scrambled = rng.permutation(F.ravel()).reshape(F.shape)
    good = compute_metrics(A, B, F)
    bad = compute_metrics(A, B, scrambled)
    for metric in METRICS.values():
        if metric.name in {"EN", "SD", "SF", "AG"}:
            continue  # statistics of F alone, not agreement with the sources
        better = good[metric.name] > bad[metric.name]
        assert better == metric.higher_is_better, metric.name


# ---- small cases worked out by hand -------------------------------------------------------


def test_entropy_of_two_equal_levels_is_one_bit() -> None:
    f = np.array([[0.0, 0.0], [255.0, 255.0]])
    assert METRICS["EN"].function(np.zeros((2, 2)), np.zeros((2, 2)), f) == pytest.approx(1.0)


def test_mutual_information_of_a_copy_and_a_constant() -> None:
    a = np.array([[0.0, 255.0], [0.0, 255.0]])
    # MI(A, A) = H(A) = 1 bit, MI(constant, A) = 0.
    assert METRICS["MI"].function(a, np.full((2, 2), 7.0), a) == pytest.approx(1.0)


def test_psnr_of_a_unit_error() -> None:
    z = np.zeros((4, 4))
    assert METRICS["PSNR"].function(z, z, z + 1) == pytest.approx(10 * math.log10(255**2))


def test_spatial_frequency_and_average_gradient_of_a_ramp() -> None:
    f = np.array([[0.0, 2.0], [0.0, 2.0]])
    z = np.zeros((2, 2))
    # Row differences 2 and 2, column differences 0: SF = 2. gradient() gives gx = 2, gy = 0 at
    # every pixel: AG = 4 * sqrt(4 / 2) / ((2 - 1)(2 - 1)).
    assert METRICS["SF"].function(z, z, f) == pytest.approx(2.0)
    assert METRICS["AG"].function(z, z, f) == pytest.approx(4 * math.sqrt(2))


def test_correlation_of_a_copy_and_a_negative() -> None:
    a = np.array([[0.0, 10.0], [20.0, 40.0]])
    assert METRICS["CC"].function(a, 255 - a, a) == pytest.approx(0.0)


def test_rand_and_fowlkes_mallows_by_pair_counting() -> None:
    # Labels A = (0, 0, 1, 1), F = (0, 0, 1, 2): 6 pixel pairs, 2 together in A, 1 in F, 1 in
    # both. FM = 1 / sqrt(2 * 1); ARI = (1 - 2 * 1 / 6) / ((2 + 1) / 2 - 2 * 1 / 6) = 4 / 7.
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    f = np.array([[0.0, 0.0], [1.0, 2.0]])
    assert METRICS["FM"].function(a, a, f) == pytest.approx(1 / math.sqrt(2))
    assert METRICS["ARI"].function(a, a, f) == pytest.approx(4 / 7)


def test_rand_and_fowlkes_mallows_match_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    ari = np.mean([metrics.adjusted_rand_score(x.ravel(), F.ravel()) for x in (A, B)])
    fm = np.mean([metrics.fowlkes_mallows_score(x.ravel(), F.ravel()) for x in (A, B)])
    assert METRICS["ARI"].function(A, B, F) == pytest.approx(ari, rel=1e-12)
    assert METRICS["FM"].function(A, B, F) == pytest.approx(fm, rel=1e-12)


def test_fmi_is_one_when_fused_windows_repeat_the_source_pattern() -> None:
    a = np.array([[10.0, 20.0, 40.0], [0.0, 5.0, 80.0], [30.0, 60.0, 90.0]])
    # 2A has A's normalised pattern: equal pdfs, correlation 1, the upper Frechet bound, MI = H.
    assert METRICS["FMI_pixel"].function(a, a, 2 * a) == pytest.approx(1.0, abs=1e-12)


# ---- Fast-FMI against a direct port of the reference's window loop -----------------------


def _loop_nfmi(src: np.ndarray, fus: np.ndarray) -> tuple[float, np.ndarray]:
    """One window pair exactly as the reference loop computes it; returns (nFMI, normalised fus).

    Sums run in order like MATLAB's, so the round-off that makes two constant windows correlate
    exactly is reproduced here rather than assumed.
    """

    def normalise(w: np.ndarray) -> np.ndarray:
        lo, hi = w.min(), w.max()
        return np.ones(9) if hi == lo else (w - lo) / (hi - lo)

    a, f = normalise(src), normalise(fus)
    ap, fp = a / sum(a), f / sum(f)
    ac, fc = np.cumsum(ap), np.cumsum(fp)
    at, ft = ap - sum(ap) / 9, fp - sum(fp) / 9
    s = sum(at * ft)
    c = 0.0 if s == 0 else s / math.sqrt(sum(at * at) * sum(ft * ft))
    idx = np.arange(1, 10)

    def sd(p: np.ndarray) -> float:
        return math.sqrt(max(sum(idx**2 * p) - sum(idx * p) ** 2, 0.0))

    def bound(x: float, y: float) -> float:
        return min(x, y) if c >= 0 else max(x + y - 1, 0.0)

    if sd(ap) == 0 or sd(fp) == 0 or c == 0:
        w = 0.0
    else:
        cov = sum(bound(fc[i], ac[j]) - fc[i] * ac[j] for i in range(9) for j in range(9))
        w = c / (cov / (sd(fp) * sd(ap)))
    fcp, acp = np.concatenate([[0.0], fc]), np.concatenate([[0.0], ac])
    joint = 0.0
    for i in range(1, 10):
        for j in range(1, 10):
            mass = bound(fcp[i], acp[j]) - bound(fcp[i - 1], acp[j]) - bound(fcp[i], acp[j - 1])
            mass += bound(fcp[i - 1], acp[j - 1])
            p = w * mass + (1 - w) * fp[i - 1] * ap[j - 1]
            if p != 0:
                joint -= p * math.log2(abs(p))
    h_a = -sum(p * math.log2(p) for p in ap if p)
    h_f = -sum(p * math.log2(p) for p in fp if p)
    mi = h_a + h_f - joint
    return (0.0 if mi == 0 else 2 * mi / (h_a + h_f)), f


def _loop_fmi(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """The reference's sliding-window loop, including its in-place normalisation of F's window."""
    values = []
    for p in range(1, a.shape[0] - 1):
        for q in range(1, a.shape[1] - 1):
            wa, wb, wf = (x[p - 1 : p + 2, q - 1 : q + 2].T.ravel() for x in (a, b, f))
            s_af, wf_seen = (1.0, wf) if np.array_equal(wa, wf) else _loop_nfmi(wa, wf)
            s_bf = 1.0 if np.array_equal(wb, wf_seen) else _loop_nfmi(wb, wf_seen)[0]
            values.append((s_af + s_bf) / 2)
    return float(np.mean(values))


def _awkward_crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 14x14 triple with every special window: identical, constant, both constant, B's raw
    window equal to F's normalised one, ties and zeros."""
    a, b, f = A[20:34, 20:34].copy(), B[20:34, 20:34].copy(), F[20:34, 20:34].copy()
    a[:5, :5] = 0
    f[:5, :5] = 0  # identical A/F windows
    b[:4, 6:10] = 3
    f[:4, 6:10] = 9  # both constant, different values
    f[9:12, 9:12] = [[0, 10, 10], [10, 0, 10], [0, 0, 10]]
    b[9:12, 9:12] = f[9:12, 9:12] / 10  # B raw equals F normalised
    return a, b, f


@pytest.mark.parametrize("feature", ["pixel", "dct"])
def test_vectorised_fmi_equals_the_window_loop(feature: str) -> None:
    a, b, f = _awkward_crop()
    if feature == "dct":
        a, b, f = (fft.dctn(x, type=2, norm="ortho") for x in (a, b, f))
    assert fmi_module._fmi_map_mean(a, b, f) == pytest.approx(_loop_fmi(a, b, f), rel=1e-10)


# ---- input checks and the registry ---------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "f", "message"),
    [
        (np.zeros((80, 80)), np.zeros((80, 81)), np.zeros((80, 80)), "one shape"),
        (np.zeros((80, 80, 3)), np.zeros((80, 80, 3)), np.zeros((80, 80, 3)), "2-D"),
        (np.zeros((80, 80)), np.full((80, 80), 256.0), np.zeros((80, 80)), "0..255"),
        (np.zeros((80, 80)), np.zeros((80, 80)), np.full((80, 80), np.nan), "NaN"),
    ],
)
def test_bad_input_is_one_line_error(a: np.ndarray, b: np.ndarray, f: np.ndarray, message: str) -> None:
    for metric in METRICS.values():
        with pytest.raises(MedfuseError, match=message) as info:
            metric.function(a, b, f)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith(metric.name)


def test_windowed_metrics_refuse_images_too_small_for_their_window() -> None:
    small = np.zeros((32, 32))
    with pytest.raises(MedfuseError, match="VIF: images must be at least"):
        METRICS["VIF"].function(small, small, small)


def test_metric_names_resolve_case_insensitively_and_reject_unknown_ones() -> None:
    assert resolve_metric_names(["ssim", "qcv", "SSIM"]) == ["SSIM", "Qcv"]
    with pytest.raises(MedfuseError, match="unknown metric 'foo'"):
        resolve_metric_names(["foo"])
    assert list(compute_metrics(A, B, F, ["PSNR", "EN"])) == ["PSNR", "EN"]
