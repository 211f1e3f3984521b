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
_OFFSET = (0.0, 0.5, 0.5)  # added to Y, Cb, Cr: Cb = Cr = 128/256 = 0.5 for gray


def _apply(matrix: np.ndarray, planes: tuple[np.ndarray, ...], out: np.ndarray) -> None:
    """out[..., k] = Σ_j matrix[k, j] · planes[j], in float64, one output channel at a time.

    Written out rather than as ``pixels @ matrix.T``: numpy hands that product to a
    multithreaded BLAS whose idle threads spin, which cost a whole core beside the I/O threads
    of a folder run, for arithmetic that plain elementwise passes do as fast on one core.
    """
    for k, row in enumerate(matrix):
        out[..., k] = row[0] * planes[0] + row[1] * planes[1] + row[2] * planes[2]


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> (H, W, 3) float32 YCbCr in [0, 1] (BT.601 full range)."""
    planes = tuple(rgb[..., k].astype(np.float64) for k in range(3))
    ycbcr = np.empty(rgb.shape, np.float64)
    _apply(_RGB_TO_YCBCR, planes, ycbcr)
    return (ycbcr + _OFFSET).astype(np.float32)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """(H, W, 3) YCbCr in [0, 1] -> (H, W, 3) float32 RGB, clipped to [0, 1] (out-of-gamut pixels)."""
    planes = tuple(ycbcr[..., k].astype(np.float64) - _OFFSET[k] for k in range(3))
    rgb = np.empty(ycbcr.shape, np.float64)
    _apply(_YCBCR_TO_RGB, planes, rgb)
    return np.clip(rgb, 0.0, 1.0, out=rgb).astype(np.float32)


def chroma_offsets(rgb: np.ndarray) -> np.ndarray:
    """(H, W) distance of each pixel's colour from gray: max(|Cb - 0.5|, |Cr - 0.5|), in [0, 0.5].

    ``rgb`` is (H, W, 3) in [0, 1]; multiply by 255 for 8-bit levels. Used to decide whether an
    image is colour (``pipeline.read_colour``), robustly to a few coloured marks.
    """
    ycbcr = rgb_to_ycbcr(rgb)
    return np.maximum(np.abs(ycbcr[..., 1] - 0.5), np.abs(ycbcr[..., 2] - 0.5))


def split_luma(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Y (H, W) float32 of an image in [0, 1], and its CbCr (H, W, 2) when it is (H, W, 3) colour
    (None for an (H, W) grayscale image, whose Y is itself)."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32), None
    ycbcr = rgb_to_ycbcr(pixels)
    return ycbcr[..., 0], ycbcr[..., 1:]


def merge_luma(y: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
    """The inverse of ``split_luma``: a new Y (H, W) with the original chroma, back to (H, W, 3)
    RGB, or the Y itself when ``chroma`` is None."""
    if chroma is None:
        return y
    return ycbcr_to_rgb(np.concatenate([y[..., None], chroma], axis=-1))
