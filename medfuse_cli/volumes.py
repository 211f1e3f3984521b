"""Read and write scan volumes: NIfTI files (nibabel) and DICOM series folders (``medfuse_cli.dicom``).

A ``Volume`` is voxels in source units with the affine that places them in the scanner's
RAS+ millimetre space (the NIfTI convention). Two volumes are fused slice by slice only when
they lie on the same voxel grid (``check_same_grid``); ``resample_onto`` puts one on the
other's grid as an explicit opt-in (``--resample``). Registration is not medfuse's job.

Slices are fused as axial images, shown as a viewer shows them: the volume is turned to the
closest RAS+ axis order (``nibabel.orientations``), each slice along S becomes an image with
anterior at the top and the patient's left on the left (the neurological view;
``axial_images``), and the fused images are turned back to the MRI's own voxel order
(``from_axial_images``), so the output has the MRI's grid and affine.
"""

from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Two affines are one grid when no entry differs by more than this (mm): well below any voxel,
# above the float32 rounding of a header's quaternion.
GRID_TOLERANCE_MM = 1e-3
_DESCRIPTION_BYTES = 79  # NIfTI-1's descrip field holds 80 bytes, the last a NUL


@dataclass(frozen=True)
class Volume:
    """A 3-D scan.

    Attributes:
        voxels: float32 (I, J, K) in source units (HU for CT; as stored, after the file's own
            scaling, for NIfTI), every value finite.
        affine: float64 (4, 4): voxel (i, j, k) -> RAS+ millimetres.
        source: the file or folder it was read from.
        modality: the DICOM Modality (``MR``, ``PT``, ``NM``, ``CT``, ...), None for NIfTI.
        units: the values' units where the file says them (``HU``, ``BQML``, ...), else ``""``.
        qform_code, sform_code: NIfTI's codes for its two affines (1 = scanner for DICOM),
            copied to the fused volume so viewers place it as they place the MRI.
        qform, sform: NIfTI's two affines as stored (float64 (4, 4)); None: ``affine`` (DICOM,
            arrays). A viewer may read either, so both are copied as they are.
        spatial_unit: NIfTI's xyz unit (``mm`` for DICOM), copied likewise.
    """

    voxels: np.ndarray
    affine: np.ndarray
    source: Path
    modality: str | None = None
    units: str = ""
    qform_code: int = 1
    sform_code: int = 1
    spatial_unit: str = "mm"
    qform: np.ndarray | None = None
    sform: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_affine(self.affine, self.source)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(I, J, K) voxels."""
        return self.voxels.shape  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes along I, J, K in the affine's units (mm): its columns' lengths."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def describe_grid(self) -> str:
        """E.g. ``256x256x180 voxels of 1x1x1.2 mm``."""
        shape = "x".join(str(n) for n in self.shape)
        return f"{shape} voxels of {'x'.join(f'{s:.4g}' for s in self.spacing)} mm"


def check_affine(affine: np.ndarray, source: Path | str) -> None:
    """Refuse an affine that places no volume: not a finite 4x4, or a singular 3x3 part.

    Raises:
        InputError: one line naming ``source``.
    """
    affine = np.asarray(affine)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{source}: its affine must be a finite 4x4 matrix, got shape {affine.shape}")
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if sizes.min() <= 0 or abs(np.linalg.det(affine[:3, :3])) < 1e-6 * sizes.prod():
        raise InputError(
            f"{source}: its affine is singular (voxel sizes {'x'.join(f'{v:.4g}' for v in sizes)} mm, or axes "
            "that coincide), so its voxels have no place in space; fix the header (qform/sform)"
        )


def is_nifti_path(path: Path | str) -> bool:
    """Whether ``path`` is named as a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_volume_input(path: Path) -> bool:
    """Whether ``path`` is a NIfTI file or a folder of DICOM files (by content)."""
    from medfuse_cli.dicom import is_dicom_folder

    return is_nifti_path(path) or (path.is_dir() and is_dicom_folder(path))


def read_volume(path: Path | str) -> Volume:
    """Read a NIfTI-1/2 file or a DICOM series folder (a path or its string).

    Raises:
        InputError: a missing or unreadable file, not 3-D (a 4-D file with more than one
            frame, an RGB NIfTI), NaN or infinite voxels, or what ``dicom.read_dicom_series``
            refuses.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.is_dir():
        from medfuse_cli.dicom import read_dicom_series

        series = read_dicom_series(path)
        volume = Volume(series.voxels, series.affine, path, series.modality, series.units)
    else:
        volume = _read_nifti(path)
    bad = int(np.count_nonzero(~np.isfinite(volume.voxels)))
    if bad:
        raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite; fix or mask them first")
    return volume


def _read_nifti(path: Path) -> Volume:
    import nibabel

    try:
        image = nibabel.load(path)
    except Exception as exc:  # nibabel raises many kinds (ImageFileError, OSError, EOFError, ...)
        raise InputError(
            f"cannot read {path} as NIfTI: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if not isinstance(image, nibabel.Nifti1Image | nibabel.Nifti2Image):
        raise InputError(f"{path} is not a NIfTI-1/2 image ({type(image).__name__})")
    if image.get_data_dtype().names:
        raise InputError(f"{path} holds RGB voxels; medfuse takes a grayscale MRI and PET/SPECT/CT volume")
    shape = image.shape
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise InputError(
            f"{path} is {len(shape)}-D ({'x'.join(map(str, shape))}): medfuse fuses 3-D volumes; "
            "extract one frame first (e.g. fslroi, or nibabel's image slicer)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # e.g. values beyond float32's range
            voxels = np.asarray(image.get_fdata(dtype=np.float32))
    except RuntimeWarning as exc:
        raise InputError(f"{path}: its values cannot be held as float32 ({exc})") from None
    except Exception as exc:
        raise InputError(f"cannot read the voxels of {path}: {str(exc).splitlines()[0]}") from None
    voxels = voxels.reshape(shape[:3] + (1,) * (3 - len(shape[:3])))
    header = image.header
    spatial_unit = header.get_xyzt_units()[0] or "unknown"
    qform, qform_code = header.get_qform(coded=True)
    sform, sform_code = header.get_sform(coded=True)
    return Volume(
        voxels,
        np.asarray(image.affine, np.float64),
        path,
        None,
        "",
        int(qform_code or 0),
        int(sform_code or 0),
        spatial_unit,
        None if qform is None else np.asarray(qform, np.float64),
        None if sform is None else np.asarray(sform, np.float64),
    )


def on_one_grid(first: Volume, second: Volume) -> bool:
    """Whether two volumes share a voxel grid: one shape, affines within ``GRID_TOLERANCE_MM``."""
    return first.shape == second.shape and np.allclose(
        first.affine, second.affine, rtol=0, atol=GRID_TOLERANCE_MM
    )


def check_same_grid(mri: Volume, second: Volume) -> None:
    """Refuse two volumes whose voxel grids differ (shape, or an affine entry by > 1 µm).

    Raises:
        InputError: one line naming both grids and ``--resample``.
    """
    if not on_one_grid(mri, second):
        if mri.shape != second.shape:
            what = "shapes differ"
        else:
            gap = float(np.abs(mri.affine - second.affine).max())
            origins = (tuple(round(float(v), 3) for v in m.affine[:3, 3]) for m in (mri, second))
            what = f"affines differ by up to {gap:.4g} mm; first voxel at {' vs '.join(map(str, origins))} mm"
        raise InputError(
            f"the volumes are not on one voxel grid ({what}): {mri.source} is {mri.describe_grid()}, "
            f"{second.source} is {second.describe_grid()}; register them first, or pass --resample to "
            "resample the second onto the MRI's grid"
        )


def resample_onto(second: Volume, mri: Volume) -> Volume:
    """``second`` resampled onto ``mri``'s grid: trilinear (``nibabel.processing``), 0 outside it.

    Only interpolation: the two must already be registered (same scanner space).
    """
    import nibabel
    from nibabel.processing import resample_from_to

    image = nibabel.Nifti1Image(second.voxels, second.affine)
    resampled = resample_from_to(image, (mri.shape, mri.affine), order=1, mode="constant", cval=0.0)
    voxels = np.asarray(resampled.dataobj, np.float32)
    return Volume(
        voxels, mri.affine.copy(), second.source, second.modality, second.units,
        mri.qform_code, mri.sform_code, mri.spatial_unit, mri.qform, mri.sform,
    )  # fmt: skip


def axial_images(voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The volume's axial slices as images: (K_S, H, W) or, for (I, J, K, 3) voxels, (K_S, H, W, 3).

    The voxels are turned to the closest RAS+ axis order; image k is the k-th plane along S
    (inferior to superior), its rows running from anterior (top) to posterior and its columns
    from the patient's left to right (the neurological view). Values are not changed.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    ras = apply_orientation(voxels, io_orientation(affine))  # (R, A, S[, 3])
    # (R, A) plane -> image rows from anterior (top) to posterior, columns along R.
    return np.ascontiguousarray(np.flip(np.moveaxis(ras, 2, 0).swapaxes(1, 2), axis=1))


def from_axial_images(images: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of ``axial_images``: images (K_S, H, W[, 3]) back to the volume's voxel order."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    ras = np.moveaxis(np.flip(images, axis=1).swapaxes(1, 2), 0, 2)
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(affine))
    return np.ascontiguousarray(apply_orientation(ras, back))


def write_nifti(
    path: Path, voxels: np.ndarray, reference: Volume, description: str, *, overwrite: bool
) -> None:
    """Write a fused volume atomically as NIfTI-1 on ``reference``'s grid.

    Args:
        path: ``.nii`` or ``.nii.gz`` (gzip level 1, nibabel's own default, with a zero
            timestamp: the same volume gives the same bytes).
        voxels: float32 in [0, 1], (I, J, K) gray or (I, J, K, 3) RGB, ``reference``'s shape;
            stored as uint8 (RGB: NIfTI's RGB24 voxel type, which FSLeyes, ITK-SNAP and 3D
            Slicer show in colour).
        reference: the MRI: its qform and sform (each with its code) and spatial unit are copied.
        description: the header's ``descrip`` (at most 79 bytes kept), e.g. the windows used.
        overwrite: replace an existing file.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OSError: the file cannot be written (nothing is left behind).
    """
    import nibabel

    levels = np.rint(np.clip(voxels, 0.0, 1.0) * 255.0).astype(np.uint8)
    if levels.ndim == 4:
        rgb = np.empty(levels.shape[:3], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        for index, channel in enumerate("RGB"):
            rgb[channel] = levels[..., index]
        levels = rgb
    image = nibabel.Nifti1Image(levels, reference.affine)
    qform = reference.affine if reference.qform is None else reference.qform
    sform = reference.affine if reference.sform is None else reference.sform
    image.set_qform(qform, code=max(reference.qform_code, 0))
    image.set_sform(sform, code=max(reference.sform_code, 0))
    image.header.set_xyzt_units(xyz=reference.spatial_unit if reference.spatial_unit != "unknown" else None)
    image.header["descrip"] = description.encode("ascii", "replace")[:_DESCRIPTION_BYTES]
    if levels.dtype == np.uint8:
        image.header["cal_min"], image.header["cal_max"] = 0, 255
    data = image.to_bytes()
    if str(path).lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)
    write_atomically(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)
