"""Fuse two co-registered volumes slice by slice: windows, colour map, fuser, back to the MRI's grid.

The flow for each pair of volumes: decide what the second scan is (``decide_kind``: DICOM says
it, NIfTI needs ``--kind``), window both to [0, 1] (``medfuse_cli.windows``), colour a PET/SPECT
by a colour map and split it into Y and Cb/Cr (``medfuse_cli.colormaps``, ``medfuse_cli.color``),
fuse the axial Y slices in batches with a ``pipeline.Fusion`` (the same fuser and checkpoints as
2-D pairs: the functional checkpoint for PET/SPECT, the CT one for CT), put the chroma back, and
return the fused voxels on the MRI's grid. Every decision is in the ``FusedVolume``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from medfuse_cli.blank_pairs import blank_pairs_made_up, notice_blank_pairs
from medfuse_cli.color import merge_luma
from medfuse_cli.colormaps import DEFAULT_COLORMAP, check_colormap, colormap_luma
from medfuse_cli.errors import InputError
from medfuse_cli.fusers.registry import CT, FUNCTIONAL
from medfuse_cli.volumes import (
    Volume,
    axial_images,
    check_same_grid,
    from_axial_images,
    on_one_grid,
    resample_onto,
)
from medfuse_cli.windows import Window, ct_window, functional_window, mri_window

if TYPE_CHECKING:
    from medfuse_cli.pipeline import Fusion

SECOND_KINDS = ("pet", "spect", "ct")
# DICOM Modality (PS3.3 C.7.3.1.1.1) -> what medfuse calls the second scan.
MODALITY_KINDS = {"PT": "pet", "NM": "spect", "CT": "ct"}
# Below this, a CT's lowest value cannot be air (-1000 HU): its values are not Hounsfield units
# (e.g. stored values without the rescale intercept), so a HU preset would be a silent guess.
_AIR_HU_CEILING = -500.0
# A window the user gave that leaves less than this share of the non-zero voxels between its
# ends shows (almost) nothing but black or white: said in a notice, not refused (it is asked for).
_USEFUL_SHARE = 0.01
log = logging.getLogger("medfuse_cli")


@dataclass(frozen=True)
class VolumeOptions:
    """What the user chose for a volume pair (None: decide from the data, and say so).

    Attributes:
        kind: ``pet``, ``spect`` or ``ct`` (``--kind``); required for a NIfTI second scan.
        window_mri, window_functional, window_ct: the ``--window-*`` texts (``LO,HI`` or a CT preset).
        colormap: a matplotlib colour map for PET/SPECT (default ``hot``); not for CT.
        resample: put the second scan on the MRI's grid when the grids differ (``--resample``).
    """

    kind: str | None = None
    window_mri: str | None = None
    window_functional: str | None = None
    window_ct: str | None = None
    colormap: str | None = None
    resample: bool = False


@dataclass(frozen=True)
class FusedVolume:
    """A fused volume and what was decided to make it.

    Attributes:
        voxels: float32 in [0, 1] on the MRI's grid: (I, J, K, 3) RGB for PET/SPECT, (I, J, K)
            gray for CT.
        mri: the MRI volume (its grid, affine and codes go to the output).
        kind: ``pet``, ``spect`` or ``ct``, and ``kind_rule`` how it was known.
        windows: the MRI's and the second scan's windows.
        colormap: the colour map given to a PET/SPECT, None for CT.
        resampled: whether the second scan was resampled onto the MRI's grid.
        blank_slices_made_up: axial slices blank in both scans that the fuser turned into
            values outside both (``medfuse_cli.blank_pairs``; said in a notice too).
    """

    voxels: np.ndarray
    mri: Volume
    kind: str
    kind_rule: str
    mri_window: Window
    second_window: Window
    colormap: str | None
    resampled: bool
    blank_slices_made_up: int = 0

    @property
    def fuser_kind(self) -> str:
        """Which checkpoint family fuses it: ``functional`` or ``ct``."""
        return CT if self.kind == "ct" else FUNCTIONAL

    def header_description(self, model: str) -> str:
        """The output header's description: model and windows (NIfTI keeps 79 bytes)."""
        return (
            f"medfuse {model} {self.kind}; MRI {self.mri_window.low:.4g}..{self.mri_window.high:.4g}; "
            f"{self.kind.upper()} {self.second_window.low:.4g}..{self.second_window.high:.4g} "
            f"{self.second_window.units}".strip()
        )

    def to_json(self) -> dict:
        """The decisions as ``medfuse fuse --json`` reports them."""
        return {
            "kind": self.kind,
            "kind_from": self.kind_rule,
            "shape": list(self.mri.shape),
            "spacing_mm": [round(s, 6) for s in self.mri.spacing],
            "windows": {"mri": self.mri_window.to_json(), "second": self.second_window.to_json()},
            "colormap": self.colormap,
            "resampled": self.resampled,
            "blank_slices_made_up": self.blank_slices_made_up,
        }


def decide_kind(mri: Volume, second: Volume, given: str | None) -> tuple[str, str]:
    """What the second scan is, and how that is known: DICOM's Modality, else ``--kind``.

    Raises:
        InputError: an MRI input whose DICOM Modality is not MR; a second scan that is MR or
            of another modality; a ``--kind`` that contradicts its DICOM Modality; a NIfTI
            second scan without ``--kind``; an unknown ``--kind``.
    """
    if given is not None and given not in SECOND_KINDS:
        raise InputError(f"--kind takes {', '.join(SECOND_KINDS)}, got '{given}'")
    if mri.modality is not None and mri.modality != "MR":
        raise InputError(
            f"the first input must be the MRI, but {mri.source} is DICOM Modality {mri.modality}"
        )
    if second.modality is None:
        if given is None:
            raise InputError(
                f"{second.source} does not say what it is (NIfTI keeps no modality): pass --kind pet, spect or ct"
            )
        return given, "--kind"
    found = MODALITY_KINDS.get(second.modality)
    if found is None:
        raise InputError(
            f"{second.source} is DICOM Modality {second.modality or '(none given)'}; the second input must be "
            "PET (PT), SPECT (NM) or CT"
        )
    if given is not None and given != found:
        raise InputError(
            f"--kind {given} contradicts {second.source}'s DICOM Modality {second.modality} ({found})"
        )
    return found, f"DICOM Modality {second.modality}"


def choose_windows(mri: Volume, second: Volume, kind: str, options: VolumeOptions) -> tuple[Window, Window]:
    """The MRI's window and the second scan's (``medfuse_cli.windows`` rules, or the options).

    Raises:
        InputError: a window option that does not apply to ``kind`` (``--window-ct`` for a
            PET, ``--window-functional`` for a CT), a CT that is not in Hounsfield units under a
            preset, or what the window rules refuse (constant or empty volumes, bad ranges).
    """
    mri_win = mri_window(mri.voxels, options.window_mri, mri.units or "source units", str(mri.source))
    if kind == "ct":
        if options.window_functional is not None:
            raise InputError("--window-functional applies to PET/SPECT; for a CT pass --window-ct")
        window = ct_window(options.window_ct)
        lowest = float(second.voxels.min())
        if lowest > _AIR_HU_CEILING:  # no air: not Hounsfield units (or masked), so no preset
            if "," not in (options.window_ct or ""):
                raise InputError(
                    f"{second.source}: its lowest value is {lowest:g}, not air (-1000 HU), so it does not look "
                    "like Hounsfield units (or is masked); pass --window-ct LO,HI in its own units"
                )
            window = replace(window, units=second.units or "source units")
        return mri_win, window
    if options.window_ct is not None:
        raise InputError(f"--window-ct applies to CT; for a {kind.upper()} pass --window-functional")
    units = second.units or "source units"
    return mri_win, functional_window(second.voxels, options.window_functional, units, str(second.source))


def _notice_if_window_shows_nothing(window: Window, voxels: np.ndarray, label: str) -> None:
    """A ``notice:`` when a window the user gave puts almost every non-zero voxel at one end."""
    if window.rule.startswith("auto"):
        return
    nonzero = voxels[voxels != 0]
    if nonzero.size == 0:
        return
    inside = float(np.count_nonzero((nonzero > window.low) & (nonzero < window.high))) / nonzero.size
    if inside < _USEFUL_SHARE:
        log.warning(
            "the %s window %s holds %.2g %% of its non-zero voxels (values %.4g..%.4g); the rest are black or white",
            label, window.describe(), 100 * inside, float(nonzero.min()), float(nonzero.max()),
        )  # fmt: skip


def fuse_volumes(
    fusion: Fusion,
    mri: Volume,
    second: Volume,
    options: VolumeOptions = VolumeOptions(),
    batch_size: int = 16,
    on_slices: Callable[[int, int], None] = lambda done, total: None,
) -> FusedVolume:
    """Fuse ``second`` into ``mri`` slice by slice with ``fusion`` (a ``pipeline.Fusion``).

    Args:
        fusion: the fuser, its checkpoints, device and threads.
        mri, second: the volumes (``volumes.read_volume``), co-registered.
        options: kind, windows, colour map and resampling (``VolumeOptions``).
        batch_size: axial slices per fuser call (>= 1).
        on_slices: called with (slices done, slices in all) after each batch (progress).

    Returns:
        The fused volume on the MRI's grid and every decision (``FusedVolume``).

    Raises:
        InputError: grids that differ without ``resample``, a colour map for a CT, and what
            ``decide_kind``, ``choose_windows`` and the fuser refuse (e.g. slices below its
            minimum size).
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    kind, kind_rule = decide_kind(mri, second, options.kind)
    if kind == "ct" and options.colormap is not None:
        raise InputError("--colormap applies to PET/SPECT; a CT pair is fused in gray")
    colormap = None if kind == "ct" else check_colormap(options.colormap or DEFAULT_COLORMAP)
    resampled = False
    if options.resample and not on_one_grid(mri, second):
        second, resampled = resample_onto(second, mri), True
    check_same_grid(mri, second)
    mri_win, second_win = choose_windows(mri, second, kind, options)
    for window, volume, label in ((mri_win, mri, "MRI"), (second_win, second, kind.upper())):
        _notice_if_window_shows_nothing(window, volume.voxels, label)
    # Turned to axial images once (source units); windowed, coloured, fused and merged a batch
    # of slices at a time, so the float work stays in cache and the memory is one output volume.
    anatomical = axial_images(mri.voxels, mri.affine)
    functional = axial_images(second.voxels, mri.affine)
    total = len(anatomical)
    fused = np.empty(anatomical.shape + ((3,) if colormap else ()), np.float32)
    fuser_kind = CT if kind == "ct" else FUNCTIONAL
    made_up = np.zeros(total, bool)
    levels = np.zeros(total, np.float32)  # each slice's mean fused Y, for that notice
    for start in range(0, total, batch_size):
        batch = slice(start, min(start + batch_size, total))
        windowed = second_win.apply(functional[batch])
        if colormap is None:
            functional_y, chroma = windowed, None
        else:
            functional_y, chroma = colormap_luma(windowed, colormap)
        anatomical_y = mri_win.apply(anatomical[batch])
        fused_y = fusion.fuse_y(anatomical_y, functional_y, fuser_kind)
        made_up[batch] = blank_pairs_made_up(anatomical_y, functional_y, fused_y)
        levels[batch] = fused_y.mean(axis=(-2, -1))
        fused[batch] = merge_luma(fused_y, chroma)
        on_slices(batch.stop, total)
    notice_blank_pairs(made_up, levels, "axial slices", fusion.spec.name)
    voxels = from_axial_images(fused, mri.affine)
    return FusedVolume(
        voxels, mri, kind, kind_rule, mri_win, second_win, colormap, resampled, int(made_up.sum())
    )
