"""Intensity windows: how a scan's source units become the [0, 1] the fusers take.

A window is two values in the scan's own units (arbitrary units for MRI, counts, Bq/ml or SUV
for PET/SPECT, Hounsfield units for CT): values at or below ``low`` become 0, at or above
``high`` 1, linear between, as a viewer's window/level does (DICOM PS3.3 C.11.2, VOI LUT, with
``low = level - width / 2`` and ``high = level + width / 2``). Every decision is recorded in the
``Window`` itself (``rule``), so the CLI can say which window it used and the user can override
it with ``--window-mri``, ``--window-functional`` or ``--window-ct``.

The automatic rules:
- MRI: the 0.5th to 99.5th percentile of the non-zero voxels (background air is zero in
  skull-stripped and masked scans, and would otherwise pull the low end down).
- PET/SPECT: 0 to the 99.9th percentile of the non-zero voxels: uptake starts at zero, and the
  top 0.1 % (a bladder, an injection site) must not darken the rest.
- CT: the ``subdural`` preset (level 75 HU, width 200 HU): brain at about a third of the range
  and bone saturated, as in the Harvard atlas CT slices the ``lwnet.ct`` checkpoint was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfuse_cli.errors import InputError

# Hounsfield presets as (level, width), the values radiology viewers ship (e.g. Radiopaedia's
# "windowing (CT)" article).
CT_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 200.0),
    "soft": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
DEFAULT_CT_PRESET = "subdural"
MRI_PERCENTILES = (0.5, 99.5)
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # windows are applied in float32
FUNCTIONAL_PERCENTILE = 99.9


@dataclass(frozen=True)
class Window:
    """A linear intensity window in source units.

    Attributes:
        low, high: the values mapped to 0 and 1 (``low < high``), in ``units``.
        units: what the values are in, e.g. ``HU``, ``BQML``, ``source units``, ``stored values``.
        rule: how the window was chosen, e.g. ``auto: 0.5-99.5th percentile of non-zero voxels``
            or ``--window-ct brain``; said in summaries, ``--json`` and output headers.
    """

    low: float
    high: float
    units: str
    rule: str

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low < self.high):
            raise InputError(f"a window needs finite LO < HI, got {self.low:g},{self.high:g} ({self.rule})")

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map ``values`` (any shape, any real dtype, source units) to a new float32 array in [0, 1].

        float32 arithmetic: exact for 16-bit stored values, and a volume is not doubled in memory.
        """
        scaled = np.asarray(values, np.float32) - np.float32(self.low)
        scaled /= np.float32(self.high - self.low)
        return np.clip(scaled, 0.0, 1.0, out=scaled)

    def describe(self) -> str:
        """E.g. ``-25..175 HU (--window-ct subdural)``."""
        return f"{self.low:.6g}..{self.high:.6g} {self.units} ({self.rule})"

    def to_json(self) -> dict:
        """The window as ``--json`` reports it."""
        return {"low": self.low, "high": self.high, "units": self.units, "rule": self.rule}


def parse_range(text: str, option: str) -> tuple[float, float]:
    """``"LO,HI"`` as two finite floats with LO < HI.

    Raises:
        InputError: not two numbers separated by a comma, not finite, or LO >= HI (the message
            names ``option``).
    """
    parts = text.split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise InputError(f"{option} takes LO,HI (two numbers), got '{text}'") from None
    if not all(np.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in (low, high)):
        raise InputError(f"{option} takes finite LO,HI (within float32's range), got '{text}'")
    if low >= high:
        raise InputError(f"{option} takes LO,HI with LO < HI, got '{text}'")
    return low, high


def mri_window(values: np.ndarray, given: str | None, units: str, name: str) -> Window:
    """The MRI's window: ``given`` (``LO,HI``) or the percentile rule over non-zero voxels.

    Args:
        values: the MRI's voxels, any shape, finite, source units.
        given: ``--window-mri``'s text, or None for the automatic rule.
        units: the values' units, for messages and headers.
        name: the input, for messages.

    Raises:
        InputError: a malformed ``given``, or (automatic rule) an MRI with no non-zero voxel or
            whose percentiles coincide (a constant image has no window).
    """
    if given is not None:
        return Window(*parse_range(given, "--window-mri"), units, "--window-mri")
    low_p, high_p = MRI_PERCENTILES
    low, high = _nonzero_percentiles(values, (low_p, high_p), name, "--window-mri")
    if not low < high:
        raise InputError(
            f"{name}: its non-zero voxels are (almost) all {high:g}, so no window can be set; pass --window-mri LO,HI"
        )
    return Window(low, high, units, f"auto: {low_p:g}-{high_p:g}th percentile of non-zero voxels")


def functional_window(values: np.ndarray, given: str | None, units: str, name: str) -> Window:
    """A PET/SPECT window: ``given`` (``LO,HI``, e.g. SUV) or 0 to the 99.9th percentile of non-zero voxels.

    Raises:
        InputError: a malformed ``given``, or (automatic rule) no positive voxel to set the top by.
    """
    if given is not None:
        return Window(*parse_range(given, "--window-functional"), units, "--window-functional")
    positive = values[values > 0]
    if positive.size == 0:
        raise InputError(
            f"{name}: no voxel is above 0, so no window can be set; pass --window-functional LO,HI"
        )
    (high,) = _nonzero_percentiles(positive, (FUNCTIONAL_PERCENTILE,), name, "--window-functional")
    return Window(
        0.0, high, units, f"auto: 0 to the {FUNCTIONAL_PERCENTILE:g}th percentile of non-zero voxels"
    )


def ct_window(given: str | None) -> Window:
    """A CT window in Hounsfield units: a preset name, ``LO,HI``, or (None) the default preset.

    Raises:
        InputError: neither a preset (the message lists them) nor ``LO,HI``.
    """
    choice = DEFAULT_CT_PRESET if given is None else given
    if choice in CT_PRESETS:
        level, width = CT_PRESETS[choice]
        rule = f"--window-ct {choice}" if given is not None else f"auto: the {choice} preset"
        return Window(
            level - width / 2, level + width / 2, "HU", f"{rule} (level {level:g}, width {width:g})"
        )
    if "," not in choice:
        raise InputError(f"--window-ct takes {', '.join(CT_PRESETS)} or LO,HI in HU, got '{choice}'")
    return Window(*parse_range(choice, "--window-ct"), "HU", "--window-ct")


def _nonzero_percentiles(
    values: np.ndarray, percentiles: tuple[float, ...], name: str, option: str
) -> list[float]:
    """Percentiles of the non-zero values; refuses an image that has none."""
    nonzero = values[values != 0]
    if nonzero.size == 0:
        raise InputError(f"{name}: every voxel is 0, so no window can be set; pass {option} LO,HI")
    return [float(v) for v in np.percentile(nonzero, percentiles)]
