"""The Python doors: arrays (or files) in, the fused array out.

``fuse`` is what ``medfuse fuse mri.png pet.png -o fused.png`` does before encoding, and
``fuse_volume`` what ``medfuse fuse t1.nii.gz pet.nii.gz -o fused.nii.gz`` does between reading
and writing, for arrays a notebook already holds (from Pillow, nibabel, SimpleITK, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfuse_cli.errors import InputError
from medfuse_cli.io import LoadedImage, read_image
from medfuse_cli.volume_fusion import VolumeOptions, fuse_volumes
from medfuse_cli.volumes import Volume

ImageLike = np.ndarray | str | Path


def fuse(
    mri: ImageLike,
    functional: ImageLike,
    model: str = "lwnet",
    *,
    checkpoint: str | None = None,
    weights: Path | None = None,
    device: str = "auto",
    kind: str | None = None,
    window_mri: str | None = None,
    window_functional: str | None = None,
    window_ct: str | None = None,
    colormap: str | None = None,
    chroma: str = "auto",
    resize: bool = False,
) -> np.ndarray:
    """Fuse a 2-D MRI with a SPECT, PET or CT image, as ``medfuse fuse`` does.

    Args:
        mri: a grayscale image: (H, W) array (uint8, uint16, or float in [0, 1]), or a path.
        functional: the second image: (H, W) or (H, W, 3) array (uint8, uint16 gray, float in
            [0, 1]) or a path; colour is read as in the CLI (``--chroma``).
        model, checkpoint, weights, device: the fuser, as the CLI's options.
        kind, window_mri, window_functional, window_ct, colormap, chroma, resize: as the CLI's
            options (windows as ``"LO,HI"`` strings in stored values; for a float array, in
            its own [0, 1] values).

    Returns:
        float32 in [0, 1]: (H, W, 3) RGB for a colour (or coloured) second image, (H, W) gray
        for a CT: the image ``medfuse fuse`` encodes as PNG, before rounding.

    Raises:
        InputError: an array of another dtype, shape or range (float outside [0, 1], NaN), a
            16-bit colour array, a colour MRI, sizes that differ without ``resize``, and what
            the options and the fuser refuse.
        CheckpointError, DeviceError: as ``medfuse_cli.pipeline.Fusion``.
    """
    from medfuse_cli.pipeline import Fusion, ImageOptions, compose, notice_if_blank, pair_from_images

    options = ImageOptions(kind, window_mri, window_functional, window_ct, colormap)
    first, second = _image(mri, "mri"), _image(functional, "functional")
    pair = pair_from_images("pair", first, second, resize, chroma, options)
    fusion = Fusion(model, device, checkpoint, weights)
    fused_y = fusion.fuse_y(pair.anatomical_y, pair.functional_y, pair.kind)
    notice_if_blank(pair, fused_y, fusion)
    return compose(pair, fused_y)


def _image(image: ImageLike, name: str) -> LoadedImage:
    """A path read as the CLI reads files, or an array taken as its dtype says (see ``fuse``)."""
    from medfuse_cli.pipeline import FLOAT_DEPTH

    if isinstance(image, str | Path):
        return read_image(Path(image))
    array = np.asarray(image)
    where = Path(f"<{name} array>")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3) or 0 in array.shape[:2]:
        raise InputError(f"{name} must be (H, W) or (H, W, 3) with H, W >= 1, got shape {array.shape}")
    if array.dtype == np.uint8:
        pixels, depth = array.astype(np.float32) / 255.0, 8
    elif array.dtype == np.uint16 and array.ndim == 2:
        pixels, depth = array.astype(np.float32) / 65535.0, 16
    elif array.dtype in (np.float32, np.float64):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InputError(f"{name} is a float array: its values must be finite and in [0, 1]")
        pixels, depth = array.astype(np.float32), FLOAT_DEPTH
    else:
        raise InputError(
            f"{name} must be uint8, uint16 (gray) or float in [0, 1], got {array.dtype} of shape {array.shape}"
        )
    if pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., 0]  # equal channels: gray, as for files
    return LoadedImage(pixels, depth, where)


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
        InputError: arrays that are not 3-D real and finite, an affine that is not a finite
            4x4 or is singular (``volumes.check_affine``), grids
            that differ without ``resample``, and what the windows, colour map and fuser refuse.
        CheckpointError, DeviceError: as ``medfuse_cli.pipeline.Fusion``.
    """
    from medfuse_cli.pipeline import Fusion

    volumes = []
    for name, voxels, grid in (("mri", mri, affine), ("second", second, second_affine)):
        voxels = np.asarray(voxels)
        grid = np.asarray(affine if grid is None else grid, np.float64)  # checked by Volume
        if voxels.ndim != 3 or not np.issubdtype(voxels.dtype, np.number) or np.iscomplexobj(voxels):
            raise InputError(f"{name} must be a 3-D real array, got {voxels.dtype} of shape {voxels.shape}")
        values = voxels.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"{name} holds NaN or infinite values")
        volumes.append(Volume(values, grid, Path(f"<{name} array>")))
    options = VolumeOptions(kind, window_mri, window_functional, window_ct, colormap, resample)
    fusion = Fusion(model, device, checkpoint, weights)
    return fuse_volumes(fusion, volumes[0], volumes[1], options, batch_size).voxels
