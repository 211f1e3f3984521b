"""A lightbox montage: a volume's axial slices tiled into one image (``medfuse fuse --preview``)."""

from __future__ import annotations

import math

import numpy as np

PREVIEW_SLICES = 16


def lightbox(
    images: np.ndarray, informative: np.ndarray | None = None, count: int = PREVIEW_SLICES
) -> np.ndarray:
    """Tile up to ``count`` evenly spaced slices of ``images`` into a near-square grid.

    Slices that show nothing (air above the head) are left out where others exist; the rest
    are spaced evenly from the lowest to the highest, in order, row by row.

    Args:
        images: (K, H, W) or (K, H, W, 3) float in [0, 1], axial slices inferior to superior.
        informative: (K,) bool, the slices worth showing (e.g. where the MRI is not constant);
            None: those of ``images`` that are not one value throughout.
        count: the most slices shown (>= 1).

    Returns:
        float32 (rows * H, columns * W[, 3]) in [0, 1]; unused tiles are black.
    """
    if informative is None:
        flat = images.reshape(len(images), -1)
        informative = flat.max(axis=1) > flat.min(axis=1)
    shown = np.flatnonzero(informative)
    candidates = shown if shown.size else np.arange(len(images))
    picked = candidates[
        np.unique(np.linspace(0, candidates.size - 1, min(count, candidates.size)).round().astype(int))
    ]
    columns = math.ceil(math.sqrt(len(picked)))
    rows = math.ceil(len(picked) / columns)
    height, width = images.shape[1:3]
    canvas = np.zeros((rows * height, columns * width, *images.shape[3:]), np.float32)
    for tile, index in enumerate(picked):
        top, left = divmod(tile, columns)
        canvas[top * height : (top + 1) * height, left * width : (left + 1) * width] = images[index]
    return canvas
