"""Build the small example volumes under ``examples/volumes/`` from the bundled PNG pairs.

    python scripts/make_example_volumes.py

The Harvard atlas gives 2-D slices, not volumes; these two-slice volumes exist so that the
volume commands in the README run on shipped data. They are demonstrations, not scans:

- ``t1.nii.gz`` / ``MRI_SERIES/``: the PET-MRI example MRIs stacked (arbitrary units, Y x 1000);
- ``pet.nii.gz`` / ``PET_SERIES/``: the PET examples' luminance, scaled to an SUV-like 0-10 range
  (the atlas's PET is pseudo-colour, so this is gray PET of a kind, not real SUV);
- ``t1-ct.nii.gz`` and ``ct.nii.gz``: the CT-MRI example pair, the CT as Hounsfield-like values
  (8-bit level x 8 - 1024: air -1024, bone up to 1016).

1 x 1 x 4 mm voxels in LPS order, as a scanner's axial DICOM series has them; the DICOM series
are written with pydicom, the file names in an order that is not the slice order.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import nibabel
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medfuse_cli.color import split_luma
from medfuse_cli.volumes import from_axial_images

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "volumes"
AFFINE = np.array([[-1.0, 0, 0, 128.0], [0, -1.0, 0, 128.0], [0, 0, 4.0, -2.0], [0, 0, 0, 1]])
SOP_CLASSES = {"MR": "1.2.840.10008.5.1.4.1.1.4", "PT": "1.2.840.10008.5.1.4.1.1.128"}


def luma_stack(folder: Path) -> np.ndarray:
    """The folder's PNGs (sorted by name) as Y planes, (K, H, W) float32 in [0, 1]."""
    planes = []
    for path in sorted(folder.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        planes.append(split_luma(pixels)[0])
    return np.stack(planes)


def save_nifti(images: np.ndarray, dtype: type, name: str) -> np.ndarray:
    voxels = from_axial_images(images, AFFINE).astype(dtype)
    nibabel.save(nibabel.Nifti1Image(voxels, AFFINE), OUT / name)
    return voxels


def save_series(voxels: np.ndarray, modality: str, folder: str, slope: float) -> None:
    """(I, J, K) voxels as an axial DICOM series; stored = voxels / slope, files named backwards."""
    target = OUT / folder
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    series_uid = f"2.25.{int.from_bytes(hashlib.sha256(folder.encode()).digest()[:12], 'big')}"
    for k in range(voxels.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
        meta.MediaStorageSOPInstanceUID = f"{series_uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.1", series_uid
        ds.Modality, ds.SeriesDescription = modality, f"medfuse example {modality}"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [
            float(v) for v in AFFINE[:3, :3] @ [0, 0, k] * [-1, -1, 1] + AFFINE[:3, 3] * [-1, -1, 1]
        ]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 4.0
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0.0
        if modality == "PT":
            ds.Units = "GML"  # SUV body weight, g/ml
        pixels = np.rint(voxels[:, :, k].T / slope).astype("<u2")
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(target / f"IM{voxels.shape[2] - k:04d}", enforce_file_format=True)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    mri = save_nifti(luma_stack(ROOT / "examples" / "PET-MRI" / "MRI") * 1000, np.int16, "t1.nii.gz")
    pet = save_nifti(luma_stack(ROOT / "examples" / "PET-MRI" / "PET") * 10, np.float32, "pet.nii.gz")
    save_nifti(luma_stack(ROOT / "examples" / "CT-MRI" / "MRI") * 1000, np.int16, "t1-ct.nii.gz")
    levels = np.rint(luma_stack(ROOT / "examples" / "CT-MRI" / "CT") * 255)
    save_nifti(levels * 8 - 1024, np.int16, "ct.nii.gz")
    save_series(mri.astype(np.float32), "MR", "MRI_SERIES", 1.0)
    save_series(pet.astype(np.float32), "PT", "PET_SERIES", 0.001)


if __name__ == "__main__":
    main()
