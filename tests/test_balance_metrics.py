"""Source balance metrics: per-source terms agree with the combined metrics; PeakRetention's anchors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from phantoms import phantom

from medfuse_cli.evaluation.methods import PAPER_METRICS, parse_metrics
from medfuse_cli.metrics import BALANCE_METRICS, METRICS, compute_metrics

A = phantom(1)
B = phantom(2)
F = np.clip(np.rint(0.6 * A + 0.4 * B), 0, 255)
FAMILIES = ("SSIM", "MI", "VIF", "CC", "PSNR", "Qabf")


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    return compute_metrics(A, B, F, [*FAMILIES, *BALANCE_METRICS])


def test_names_and_directions() -> None:
    expected = [f"{n}_{s}" for n in FAMILIES for s in ("A", "B", "min")] + ["PeakRetention"]
    assert list(BALANCE_METRICS) == expected
    assert all(METRICS[name].higher_is_better for name in BALANCE_METRICS)


def test_presets() -> None:
    assert parse_metrics("balance") == list(BALANCE_METRICS)
    assert set(BALANCE_METRICS) <= set(parse_metrics("all"))
    assert not set(BALANCE_METRICS) & set(parse_metrics(None))
    assert parse_metrics(None) == list(PAPER_METRICS)


def test_terms_add_up_to_the_combined_metrics(scores: dict[str, float]) -> None:
    s = scores
    assert s["SSIM"] == 0.5 * (s["SSIM_A"] + s["SSIM_B"])
    assert s["CC"] == 0.5 * (s["CC_A"] + s["CC_B"])
    assert s["MI"] == s["MI_A"] + s["MI_B"]
    assert s["VIF"] == s["VIF_A"] + s["VIF_B"]
    mse = [255.0**2 / 10 ** (s[f"PSNR_{x}"] / 10) for x in "AB"]
    assert s["PSNR"] == pytest.approx(10 * math.log10(255.0**2 / np.mean(mse)), rel=1e-12)
    assert min(s["Qabf_A"], s["Qabf_B"]) <= s["Qabf"] <= max(s["Qabf_A"], s["Qabf_B"])
    for name in FAMILIES:
        assert s[f"{name}_min"] == min(s[f"{name}_A"], s[f"{name}_B"]), name
    assert s["SSIM_A"] > s["SSIM_B"]  # F leans 0.6 towards A


def test_copying_one_source() -> None:
    as_a = compute_metrics(A, B, A, BALANCE_METRICS)
    as_b = compute_metrics(A, B, B, BALANCE_METRICS)
    assert as_a["SSIM_A"] == pytest.approx(1.0, abs=1e-12)
    assert as_a["CC_A"] == pytest.approx(1.0, abs=1e-12)
    assert as_a["PSNR_A"] == math.inf
    assert as_a["SSIM_min"] == as_a["SSIM_B"] < 1.0
    assert as_a["PeakRetention"] == 0.0
    assert as_b["SSIM_B"] == pytest.approx(1.0, abs=1e-12)
    assert as_b["VIF_B"] == pytest.approx(1.0, rel=1e-9)
    assert as_b["PeakRetention"] == 1.0


def test_peak_retention_of_the_average_is_a_half() -> None:
    pr = METRICS["PeakRetention"].function
    assert pr(A, B, 0.5 * (A + B)) == pytest.approx(0.5, abs=1e-12)
    assert pr(A, B, np.rint(0.5 * (A + B))) == pytest.approx(0.5, abs=0.01)
    assert pr(A, B, np.full_like(A, 255.0)) == 1.0  # brighter than B earns nothing extra


def test_peak_set_is_the_top_of_the_positive_excess() -> None:
    a = np.zeros((10, 10))
    b = np.zeros((10, 10))
    b.flat[:40] = np.arange(1, 41)  # excess 1..40 on 40 pixels: 95th percentile 38.05
    f = a.copy()
    f.flat[39] = 40.0  # all of the top pixel's excess
    f.flat[38] = 19.5  # half of the next
    assert METRICS["PeakRetention"].function(a, b, f) == pytest.approx((40 + 19.5) / (40 + 39))
    assert math.isnan(METRICS["PeakRetention"].function(b, a, f))  # B nowhere above A


def test_min_is_nan_when_a_term_is(scores: dict[str, float]) -> None:
    flat = np.zeros_like(A)  # no edges in B: Qabf_B is 0/0
    s = compute_metrics(A, flat, F, ["Qabf_A", "Qabf_B", "Qabf_min"])
    assert math.isnan(s["Qabf_B"]) and math.isnan(s["Qabf_min"]) and not math.isnan(s["Qabf_A"])


def test_evaluate_reports_the_balance_metrics(run_cli, examples) -> None:
    result = run_cli("evaluate", examples, "-m", "average", "--metrics", "balance", "--json")
    assert result.code == 0, result.stderr
    text = result.stdout
    for name in BALANCE_METRICS:
        assert f'"{name}"' in text, name
    json.loads(text)
