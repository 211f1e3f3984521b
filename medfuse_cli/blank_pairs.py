"""Blank pairs: both inputs (as windowed) without contrast, and saying what a fuser made of them.

A network that normalises its features by each image's (or each pair's) statistics, as LYWNet
does, has no contrast to work with in a blank pair: its output there is what its biases make of
nothing (or of one faint pixel, amplified), typically a gray where both inputs are black (a
volume's empty end slices, an all-zero test image). medfuse does not replace that output with a
rule of its own (the fuser's result is the result); it counts the blank pairs fused to values
outside the inputs' and says so in a ``notice:`` line, so a gray slice is never taken for image
content. A blank black MRI with a blank white PET fused to a gray is not counted: that gray lies
between the two, as an average would.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("medfuse_cli")

# Half an 8-bit level: a fused value this close to an input value is that value once written.
_HALF_LEVEL = 0.5 / 255
# An input is blank when its values span at most two 8-bit levels (the half level is room for
# float rounding): a black slice with a stray pixel or a level of noise has no contrast to keep.
BLANK_RANGE = 2.5 / 255


def blank_pairs_made_up(anatomical: np.ndarray, functional: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """Which pairs are blank in both inputs and were fused to values outside both.

    Args:
        anatomical, functional, fused: Y planes in [0, 1] as fused (after windows and colour
            maps), (N, H, W) or one (H, W) pair, of one shape.

    Returns:
        bool array (N,) (or shape () for one pair): True where each input's values span at most
        ``BLANK_RANGE`` and some fused pixel lies more than half an 8-bit level outside the
        range of the two inputs' values together.
    """
    axes = (-2, -1)
    a_low, a_high = anatomical.min(axis=axes), anatomical.max(axis=axes)
    f_low, f_high = functional.min(axis=axes), functional.max(axis=axes)
    blank = (a_high - a_low <= BLANK_RANGE) & (f_high - f_low <= BLANK_RANGE)
    low, high = np.minimum(a_low, f_low), np.maximum(a_high, f_high)
    outside = (fused.min(axis=axes) < low - _HALF_LEVEL) | (fused.max(axis=axes) > high + _HALF_LEVEL)
    return blank & outside


def notice_blank_pairs(made_up: np.ndarray, levels: np.ndarray, what: str, fuser: str) -> None:
    """Log one ``notice:`` if any pair in ``made_up`` (``blank_pairs_made_up``) is True.

    Args:
        made_up: bool (N,) or (), from ``blank_pairs_made_up``.
        levels: each pair's mean fused Y in [0, 1], (N,) or (): the level they came out at.
        what: the pairs as the user knows them ("pair 2004", "axial slices").
        fuser: the fuser's registered name.
    """
    made_up = np.atleast_1d(made_up)
    count = int(made_up.sum())
    if count == 0:
        return
    level = float(np.atleast_1d(levels)[made_up].mean())
    share = f"{count} of {made_up.size} {what}" if made_up.size > 1 else what
    log.warning(
        "%s: both inputs are blank after their windows (2 levels of 255 or less of contrast "
        "each); %s turned them into values outside the inputs' (mean %.0f %% of full scale), "
        "not image content",
        share, fuser, 100 * level,
    )  # fmt: skip
