"""The Python door for volumes: arrays and an affine in, the fused array out.

``fuse_volume`` is what ``medfuse fuse t1.nii.gz pet.nii.gz -o fused.nii.gz`` does between
reading and writing, for arrays a notebook already holds (from nibabel, SimpleITK, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfuse_cli.errors import InputError
from medfuse_cli.volume_fusion import VolumeOptions, fuse_volumes
from medfuse_cli.volumes import Volume


def fuse_volume(
    mri: np.ndarray,
    second: np.ndarray,
    affine: np.ndarray,
    kind: str,
    *,
    second_affine: np.ndarray | None = None,
    model: str = "lwnet",
    checkpoint: str | None = None,
    weights: Path | None = None,
    device: str = "auto",
    window_mri: str | None = None,
    window_functional: str | None = None,
    window_ct: str | None = None,
    colormap: str | None = None,
    resample: bool = False,
    batch_size: int = 16,
) -> np.ndarray:
    """Fuse a co-registered PET, SPECT or CT volume into an MRI volume, slice by slice.

    Args:
        mri: (I, J, K) real array in the MRI's units (any dtype; finite).
        second: the PET/SPECT (counts, Bq/ml, SUV, ...) or CT (Hounsfield units) volume, the
            MRI's shape unless ``resample``.
        affine: (4, 4) voxel -> RAS+ mm of ``mri`` (nibabel's ``img.affine``); also the
            second's unless ``second_affine`` is given.
        kind: ``pet``, ``spect`` or ``ct``: picks the window rule and the checkpoint.
        second_affine: the second volume's affine when it differs (then ``resample``).
        model, checkpoint, weights, device: the fuser, as ``medfuse fuse`` takes them.
        window_mri, window_functional, window_ct, colormap: as the ``--window-*`` and
            ``--colormap`` options (``"LO,HI"`` strings, a CT preset name, a colour map name);
            None for the automatic rules (``medfuse_cli.windows``).
        resample: resample the second volume onto the MRI's grid (trilinear) when they differ.
        batch_size: slices per fuser call.

    Returns:
        float32 in [0, 1] on the MRI's grid: (I, J, K, 3) RGB for PET/SPECT (coloured by the
        colour map, ``hot`` unless told), (I, J, K) gray for CT: what the CLI writes as uint8.

    Raises:
        InputError: arrays that are not 3-D real and finite, an affine that is not 4x4, grids
            that differ without ``resample``, and what the windows, colour map and fuser refuse.
        CheckpointError, DeviceError: as ``medfuse_cli.pipeline.Fusion``.
    """
    from medfuse_cli.pipeline import Fusion

    volumes = []
    for name, voxels, grid in (("mri", mri, affine), ("second", second, second_affine)):
        voxels = np.asarray(voxels)
        grid = np.asarray(affine if grid is None else grid, np.float64)
        if voxels.ndim != 3 or not np.issubdtype(voxels.dtype, np.number) or np.iscomplexobj(voxels):
            raise InputError(f"{name} must be a 3-D real array, got {voxels.dtype} of shape {voxels.shape}")
        if grid.shape != (4, 4) or not np.isfinite(grid).all():
            raise InputError(f"the {name} affine must be a finite 4x4 array, got shape {grid.shape}")
        values = voxels.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"{name} holds NaN or infinite values")
        volumes.append(Volume(values, grid, Path(f"<{name} array>")))
    options = VolumeOptions(kind, window_mri, window_functional, window_ct, colormap, resample)
    fusion = Fusion(model, device, checkpoint, weights)
    return fuse_volumes(fusion, volumes[0], volumes[1], options, batch_size).voxels
