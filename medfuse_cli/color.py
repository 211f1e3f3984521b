"""The one place that knows YCbCr: ITU-R BT.601 full range, in float arithmetic.

Only Y of the functional image is fused with the MRI; its Cb and Cr are carried through
unchanged. Working in float (no uint8 round trip between the two conversions) means a pixel's
colour survives fusion to within the final 8-bit rounding.
"""

from __future__ import annotations

import numpy as np

_RGB_TO_YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_YCBCR_TO_RGB = np.array(
    [
        [1.0, 0.0, 1.402],
        [1.0, -0.344136, -0.714136],
        [1.0, 1.772, 0.0],
    ]
)
_CHROMA_OFFSET = 0.5  # 128/256 on the [0, 1] scale; Cb, Cr = 0.5 for gray


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> (H, W, 3) YCbCr in [0, 1]."""
    ycbcr = rgb.astype(np.float64) @ _RGB_TO_YCBCR.T
    ycbcr[..., 1:] += _CHROMA_OFFSET
    return ycbcr.astype(np.float32)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """(H, W, 3) YCbCr in [0, 1] -> (H, W, 3) RGB, clipped to [0, 1]."""
    centred = ycbcr.astype(np.float64).copy()
    centred[..., 1:] -= _CHROMA_OFFSET
    return np.clip(centred @ _YCBCR_TO_RGB.T, 0.0, 1.0).astype(np.float32)


def split_luma(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Y of an image, and its CbCr (H, W, 2) when it is colour (None for grayscale)."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32), None
    ycbcr = rgb_to_ycbcr(pixels)
    return ycbcr[..., 0], ycbcr[..., 1:]


def merge_luma(y: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
    """The inverse of ``split_luma``: a new Y with the original chroma, back to RGB or gray."""
    if chroma is None:
        return y
    return ycbcr_to_rgb(np.concatenate([y[..., None], chroma], axis=-1))
