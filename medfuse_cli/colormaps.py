"""Colour maps that turn a grayscale PET/SPECT image into the pseudo-colour the networks saw.

The Harvard atlas's SPECT and PET slices, which the functional checkpoints were trained on,
are pseudo-coloured. A grayscale functional scan (a NIfTI or DICOM volume, a 16-bit PNG) is
given colour by one of matplotlib's colour maps (the maintained, perceptually documented
tables, not hand-typed ones); its Y then goes to the fuser and its Cb/Cr come back with the
fused Y, exactly as for an atlas image.
"""

from __future__ import annotations

import numpy as np

from medfuse_cli.errors import InputError

DEFAULT_COLORMAP = "hot"
# Named in --help; any other matplotlib colour map name is taken too.
COMMON_COLORMAPS = ("hot", "jet", "viridis", "inferno", "gray")


def check_colormap(name: str) -> str:
    """``name`` if matplotlib has a colour map of that name.

    Raises:
        InputError: it has none (the message names a few that exist).
    """
    import matplotlib

    if name not in matplotlib.colormaps:
        raise InputError(
            f"unknown --colormap '{name}' (e.g. {', '.join(COMMON_COLORMAPS)}; any matplotlib colour map)"
        )
    return name


def colormap_table(name: str) -> np.ndarray:
    """The colour map's own table: float32 (N, 3) RGB in [0, 1] (N = 256 for matplotlib's maps).

    Raises:
        InputError: an unknown colour map.
    """
    import matplotlib

    colormap = matplotlib.colormaps[check_colormap(name)]
    return colormap(np.arange(colormap.N))[:, :3].astype(np.float32)


def colormap_luma(gray: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``gray`` coloured by the colour map ``name`` and split into Y and Cb/Cr (as
    ``color.split_luma`` would), computed on the map's table, not on every pixel.

    A colour map has N colours, so the YCbCr of its N entries (``color.rgb_to_ycbcr``) looked
    up per pixel is the same as converting the coloured image, at a fraction of the work and
    memory: what makes a 180-slice volume cheap. One difference: values in the map's first
    entry (at or below the window's low end) carry neutral chroma, as the atlas's black
    background does, so a map whose zero is coloured (``viridis``'s purple) does not tint the
    whole MRI around the uptake.

    Args:
        gray: any shape, float in [0, 1] (a windowed image or volume).
        name: a matplotlib colour map name (``check_colormap``).

    Returns:
        Y (``gray.shape``) and Cb/Cr (``gray.shape + (2,)``), float32 in [0, 1]; from
        matplotlib's 256-entry table, so the same input gives the same colours on every machine.

    Raises:
        InputError: an unknown colour map.
    """
    from medfuse_cli.color import rgb_to_ycbcr

    table = rgb_to_ycbcr(colormap_table(name))
    index = _table_index(gray, len(table))
    chroma = table[index, 1:]
    chroma[index == 0] = 0.5  # no uptake, no colour: the MRI around it is not tinted
    return table[index, 0], chroma


def _table_index(gray: np.ndarray, entries: int) -> np.ndarray:
    """matplotlib's own value-to-entry rule for values in [0, 1]: floor(v × N), with 1 -> N - 1."""
    scaled = np.asarray(gray, np.float32) * np.float32(entries)
    return np.clip(scaled, 0, entries - 1, out=scaled).astype(np.intp)
