"""Our metrics against the values that the field's reference implementations print.

Two sources of triples and reference rows:
- ``tests/data/metrics/``: two triples bundled with the project and their chosen reference rows,
  so the check always runs (CI included);
- ``../shared/reference/metrics/`` (or ``$MEDFUSE_SHARED/reference/metrics``): every triple and
  the full ``reference_values.csv``; skipped when that folder is absent.

For each metric we pick the implementation that the reference README names for our convention.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.metrics import METRICS

BUNDLED = Path(__file__).resolve().parent / "data" / "metrics"
SHARED = Path(os.environ.get("MEDFUSE_SHARED") or Path(__file__).resolve().parents[2] / "shared")
SHARED_METRICS = SHARED / "reference" / "metrics"

RELATIVE = 1e-6  # identical definitions: the CSV prints 10 significant digits


@dataclass(frozen=True)
class Choice:
    """Which reference rows our metric is compared with, and how closely."""

    csv_metric: str
    implementation: str  # prefix of the CSV's implementation column
    scale: float = 1.0  # reference value times this = our unit
    abs_tol: float = 0.0  # used instead of RELATIVE when non-zero


CHOICES: dict[str, Choice] = {
    "EN": Choice("EN", "xingchenzhang/VIFB"),
    "SD": Choice("SD", "xingchenzhang/VIFB"),
    "SF": Choice("SF", "Linfeng-Tang"),
    "AG": Choice("AG", "Linfeng-Tang"),
    # VIFB's MI is exact, in nats; Tang's (bits) is checked separately below.
    "MI": Choice("MI_nats", "xingchenzhang/VIFB", scale=1 / math.log(2)),
    "NMI": Choice("NMI_Hossny", "xingchenzhang/MEFB"),
    "FMI_pixel": Choice("FMI_pixel", "Linfeng-Tang"),
    "FMI_dct": Choice("FMI_dct", "Linfeng-Tang"),
    "SSIM": Choice("SSIM_mean", "skimage"),
    "UQI": Choice("UQI_mean", "sewar"),
    "PSNR": Choice("PSNR", "sewar"),
    "CC": Choice("CC", "Linfeng-Tang"),
    "SCD": Choice("SCD", "Linfeng-Tang"),
    "Qabf": Choice("Qabf", "xingchenzhang/VIFB"),
    "VIF": Choice("VIF_vifp_sum", "Linfeng-Tang"),
    "VIFF": Choice("VIFF_Han", "xingchenzhang/MEFB"),
    # Qcb divides two Gaussian-filtered copies of a CSF-filtered image. Far from any structure
    # that image is pure FFT round-off (~1e-14), so in large empty backgrounds the contrast
    # ratio, and with it Qcb, depends on the FFT library's rounding: FFTW (reference) and
    # pocketfft (numpy) differ by up to ~7e-4 absolute on these triples; long-double FFTs move
    # the value by a similar amount. Not a definition difference, so the budget is absolute.
    "Qcb": Choice("Qcb", "xingchenzhang/VIFB", abs_tol=1e-3),
    "Qcv": Choice("Qcv", "xingchenzhang/VIFB"),
}
TANG_MI = "Linfeng-Tang/Evaluation-for-Image-Fusion@0e87153b Evaluation/MI_evaluation.m"


def _read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "reference_values.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@cache
def _triple(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(Image.open(folder / f"{name}_{part}.png"), dtype=np.float64) for part in "ABF")


def _cases(folder: Path) -> list[tuple[Path, str, str, float]]:
    """(folder, triple, our metric, expected value) for every triple present with a chosen row."""
    if not (folder / "reference_values.csv").is_file():
        return []
    image_dir = folder / "triples" if (folder / "triples").is_dir() else folder
    present = {p.name[: -len("_A.png")] for p in image_dir.glob("*_A.png")}
    cases = []
    for row in _read_rows(folder):
        if row["triple"] not in present:
            continue
        for ours, choice in CHOICES.items():
            if row["metric"] == choice.csv_metric and row["implementation"].startswith(choice.implementation):
                cases.append((image_dir, row["triple"], ours, float(row["value"]) * choice.scale))
    return sorted(cases, key=lambda c: (c[1], c[2]))


def _check(image_dir: Path, triple: str, metric: str, expected: float) -> None:
    value = METRICS[metric].function(*_triple(image_dir, triple))
    choice = CHOICES[metric]
    if choice.abs_tol:
        assert value == pytest.approx(expected, abs=choice.abs_tol), (triple, metric)
    else:
        assert value == pytest.approx(expected, rel=RELATIVE), (triple, metric)


def _case_id(value: object) -> str:
    return value.parent.name if isinstance(value, Path) else str(value)


BUNDLED_CASES = _cases(BUNDLED)
SHARED_CASES = _cases(SHARED_METRICS)


def test_bundled_rows_cover_every_referenced_metric() -> None:
    assert {c[2] for c in BUNDLED_CASES} == set(CHOICES)


@pytest.mark.parametrize(("image_dir", "triple", "metric", "expected"), BUNDLED_CASES, ids=_case_id)
def test_bundled_reference_values(image_dir: Path, triple: str, metric: str, expected: float) -> None:
    _check(image_dir, triple, metric, expected)


@pytest.mark.skipif(not SHARED_CASES, reason=f"no reference triples at {SHARED_METRICS}")
@pytest.mark.parametrize(("image_dir", "triple", "metric", "expected"), SHARED_CASES, ids=_case_id)
def test_shared_reference_values(image_dir: Path, triple: str, metric: str, expected: float) -> None:
    _check(image_dir, triple, metric, expected)


def _tang_mi_cases(folder: Path) -> list[tuple[Path, str, float]]:
    image_dir = folder / "triples" if (folder / "triples").is_dir() else folder
    if not (folder / "reference_values.csv").is_file():
        return []
    present = {p.name[: -len("_A.png")] for p in image_dir.glob("*_A.png")}
    return [
        (image_dir, row["triple"], float(row["value"]))
        for row in _read_rows(folder)
        if row["triple"] in present and row["implementation"] == TANG_MI
    ]


@pytest.mark.parametrize(
    ("image_dir", "triple", "expected"),
    _tang_mi_cases(BUNDLED) + _tang_mi_cases(SHARED_METRICS),
    ids=_case_id,
)
def test_mi_against_tang_bits(image_dir: Path, triple: str, expected: float) -> None:
    """Tang's MI in bits equals ours unless an image holds both 254 and 255 (Tang's uint8 +1
    saturation merges them in the joint histogram only, README pitfall 12): then Tang is higher."""
    a, b, f = _triple(image_dir, triple)
    value = METRICS["MI"].function(a, b, f)
    if any(np.any(x == 254) and np.any(x == 255) for x in (a, b, f)):
        # Merging two joint-histogram bins can only lower the joint entropy, so Tang's MI is
        # never below ours (equal when the merged bins never share a column).
        assert expected - 0.01 < value <= expected * (1 + RELATIVE)
    else:
        assert value == pytest.approx(expected, rel=RELATIVE)
