"""Small synthetic 8-bit slices the metric tests share."""

from __future__ import annotations

import numpy as np


def phantom(seed: int, size: int = 72) -> np.ndarray:
    """A small 8-bit 'slice': black background, a bright disc with texture, a few edges.

    Returns float64 (size, size) integers in 0..255, the same for the same ``seed``.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    r = np.hypot(y - size / 2 + seed, x - size / 2)
    img = np.where(r < size * 0.38, 90 + 60 * np.sin(x / (3 + seed)) + rng.normal(0, 12, (size, size)), 0.0)
    img[size // 3 : size // 2, size // 4 : size // 2] += 70
    return np.clip(np.rint(img), 0, 255)
