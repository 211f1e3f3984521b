"""Reading a DICOM series folder: slice order by position, rescale, the RAS affine (by hand and
against nibabel's own DICOM wrapper), pydicom's bundled real files, and one-line refusals.

Series are written with pydicom into tmp_path: tiny slices (6 rows × 5 columns, so a missing
transpose changes the shape) with distinct values, file names and InstanceNumbers scrambled
relative to position, so a reader that sorts by either gets the volume wrong.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medfuse_cli.dicom import DicomSeries, is_dicom_file, is_dicom_folder, read_dicom_series
from medfuse_cli.errors import InputError

ROWS, COLS = 6, 5
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _oblique_orientation(turn: float = 10.0) -> np.ndarray:
    """Axial tilted 15° about x, then turned ``turn``° about z; rounded as a scanner writes it."""
    a, b = np.radians(turn), np.radians(15.0)
    row = [np.cos(a), np.sin(a), 0.0]
    col = [-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), -np.sin(b)]
    return np.round(np.array(row + col), 6)


OBLIQUE = _oblique_orientation()
AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


@dataclass
class WrittenSeries:
    """What the helper wrote, in position order (index k = k-th slice along the normal)."""

    paths: list[Path]
    pixels: list[np.ndarray]  # stored values, (ROWS, COLS) uint16
    positions: list[np.ndarray]  # ImagePositionPatient as written, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient as written
    series_uid: str


def write_slice(
    path: Path,
    pixels: np.ndarray,
    position: np.ndarray,
    orientation: np.ndarray = OBLIQUE,
    *,
    modality: str = "CT",
    series_uid: str = "1.2.3.4",
    description: str | None = "test series",
    instance: int = 1,
    spacing: tuple[float, float] = (0.9, 0.8),
    thickness: float | None = 2.0,
    slope: float | None = None,
    intercept: float | None = None,
    **extra: object,
) -> None:
    """One single-frame greyscale slice, Explicit VR Little Endian, with preamble and DICM."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    if description is not None:
        ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(spacing)
    if thickness is not None:
        ds.SliceThickness = thickness
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def scrambled(count: int, seed: int) -> list[int]:
    """A permutation of range(count) that is neither ascending nor descending (count >= 3)."""
    rng = np.random.default_rng(seed)
    while True:
        order = [int(v) for v in rng.permutation(count)]
        if order not in (sorted(order), sorted(order, reverse=True)):
            return order


def write_series(
    folder: Path,
    count: int = 4,
    *,
    orientation: np.ndarray = OBLIQUE,
    gap: float = 2.5,
    origin: tuple[float, float, float] = (-120.5, 80.25, 33.0),
    prefix: str = "",
    seed: int = 0,
    **slice_kwargs: object,
) -> WrittenSeries:
    """``count`` slices ``gap`` mm apart along the normal; names and InstanceNumbers scrambled."""
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(orientation[:3], orientation[3:])
    name_rank = scrambled(count, seed) if count >= 3 else list(range(count))[::-1]
    instance_rank = scrambled(count, seed + 1) if count >= 3 else list(range(count))[::-1]
    written = WrittenSeries([], [], [], orientation, str(slice_kwargs.get("series_uid", "1.2.3.4")))
    for k in range(count):
        pixels = (np.arange(ROWS * COLS).reshape(ROWS, COLS) * 3 + 100 * k + 7).astype(np.uint16)
        position = np.round(np.array(origin) + k * gap * normal, 6)
        path = folder / f"{prefix}IM{name_rank[k]:04d}"
        write_slice(path, pixels, position, orientation, instance=instance_rank[k] + 1, **slice_kwargs)
        written.paths.append(path)
        written.pixels.append(pixels)
        written.positions.append(position)
    return written


def refusal(folder: Path, *needles: str) -> str:
    """Read ``folder``, expect a one-line InputError naming the folder and each needle."""
    with pytest.raises(InputError) as caught:
        read_dicom_series(folder)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert str(folder) in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def ras(lps: np.ndarray) -> np.ndarray:
    return LPS_TO_RAS @ np.asarray(lps, dtype=np.float64)


# --- reading ---------------------------------------------------------------------------------------


def test_shuffled_ct_series_is_read_in_position_order_rescaled_and_transposed(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct", slope=2, intercept=-1024)
    series = read_dicom_series(tmp_path / "ct")
    assert isinstance(series, DicomSeries)
    assert series.voxels.dtype == np.float32 and series.voxels.shape == (COLS, ROWS, 4)
    for k, pixels in enumerate(written.pixels):
        np.testing.assert_array_equal(series.voxels[:, :, k], pixels.T.astype(np.float64) * 2 - 1024)
    assert series.voxels[1, 0, 0] == int(written.pixels[0][0, 1]) * 2 - 1024  # i is the column index
    assert (series.modality, series.units, series.description) == ("CT", "HU", "test series")
    assert series.series_uid == "1.2.3.4"


def test_order_does_not_depend_on_names_or_instance_numbers(tmp_path: Path) -> None:
    written = write_series(tmp_path / "s", count=5, seed=7)
    by_name = sorted(range(5), key=lambda k: written.paths[k].name)
    assert by_name not in (list(range(5)), list(range(5))[::-1])
    voxels = read_dicom_series(tmp_path / "s").voxels
    first_values = [float(voxels[0, 0, k]) for k in range(5)]
    assert first_values == [7.0 + 100 * k for k in range(5)]


def test_affine_matches_hand_computation(tmp_path: Path) -> None:
    written = write_series(tmp_path / "ct")
    affine = read_dicom_series(tmp_path / "ct").affine
    assert affine.dtype == np.float64 and affine.shape == (4, 4)
    np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])
    row_cos, col_cos = OBLIQUE[:3], OBLIQUE[3:]
    normal = np.cross(row_cos, col_cos)

    def to_mm(i: float, j: float, k: float) -> np.ndarray:
        return (affine @ [i, j, k, 1.0])[:3]

    origin = to_mm(0, 0, 0)
    np.testing.assert_allclose(origin, ras(written.positions[0]), atol=1e-6)
    # PixelSpacing [0.9, 0.8]: 0.8 mm between columns (i), 0.9 mm between rows (j).
    np.testing.assert_allclose(to_mm(1, 0, 0) - origin, ras(0.8 * row_cos), atol=1e-6)
    np.testing.assert_allclose(to_mm(0, 1, 0) - origin, ras(0.9 * col_cos), atol=1e-6)
    np.testing.assert_allclose(to_mm(0, 0, 1) - origin, ras(2.5 * normal), atol=1e-4)
    # Every slice's first pixel lands on that slice's own ImagePositionPatient.
    for k, position in enumerate(written.positions):
        np.testing.assert_allclose(to_mm(0, 0, k), ras(position), atol=1e-4)
    # And the far corner pixel of the last slice, built from its own position.
    corner = written.positions[3] + (COLS - 1) * 0.8 * row_cos + (ROWS - 1) * 0.9 * col_cos
    np.testing.assert_allclose(to_mm(COLS - 1, ROWS - 1, 3), ras(corner), atol=1e-4)


def test_affine_and_values_agree_with_nibabel_dicom_wrapper(tmp_path: Path) -> None:
    """nibabel's per-file Wrapper is an independent DICOM reader: its affine is in LPS with index
    order (row, column, slice) and slice axis cross(column cosines, row cosines) scaled by
    SliceThickness; ours is RAS, (column, row, slice), cross(row, column) × the slice gap. With
    SliceThickness equal to the gap the two differ exactly by those conventions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "DICOM readers are highly experimental"
        from nibabel.nicom.dicomwrappers import wrapper_from_file

    written = write_series(tmp_path / "ct", slope=2, intercept=-1024, thickness=2.5)
    series = read_dicom_series(tmp_path / "ct")
    swap_and_flip = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], dtype=float)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    shift = np.eye(4)
    for k, path in enumerate(written.paths):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper = wrapper_from_file(path)
            theirs = flip @ wrapper.affine @ swap_and_flip
            data = wrapper.get_data()
        shift[2, 3] = k  # our affine at slice k
        np.testing.assert_allclose(series.affine @ shift, theirs, atol=1e-4)
        np.testing.assert_allclose(series.voxels[:, :, k], data.T, rtol=0, atol=0)


def test_axial_series_has_lps_axis_codes_in_nibabel(tmp_path: Path) -> None:
    """An unflipped axial DICOM stack is LPS in nibabel's axis codes: i → left, j → posterior,
    k → superior (slices ascending in z)."""
    import nibabel as nib

    write_series(tmp_path / "ax", orientation=AXIAL, gap=3.0, origin=(100.0, 120.0, -40.0))
    series = read_dicom_series(tmp_path / "ax")
    assert nib.aff2axcodes(series.affine) == ("L", "P", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(series.affine), [0.8, 0.9, 3.0], atol=1e-9)
    np.testing.assert_allclose(series.affine[:3, 3], [-100.0, -120.0, -40.0])


def test_pet_keeps_units_and_applies_each_slices_own_slope(tmp_path: Path) -> None:
    folder = tmp_path / "pet"
    folder.mkdir()
    slopes = [0.5, 1.25, 3.0]
    for k, slope in enumerate(slopes):
        pixels = np.full((ROWS, COLS), 100 + k, dtype=np.uint16)
        write_slice(
            folder / f"p{2 - k}", pixels, np.array([0.0, 0.0, 4.0 * k]), AXIAL,
            modality="PT", slope=slope, intercept=0.0, Units="BQML", description=None,
        )  # fmt: skip
    series = read_dicom_series(folder)
    assert (series.modality, series.units, series.description) == ("PT", "BQML", "")
    for k, slope in enumerate(slopes):
        np.testing.assert_allclose(series.voxels[:, :, k], (100 + k) * slope, rtol=1e-7)
    assert series.affine[2, 2] == pytest.approx(4.0)


def test_mr_has_no_units_and_defaults_slope_one_intercept_zero(tmp_path: Path) -> None:
    written = write_series(tmp_path / "mr", count=3, modality="MR")
    series = read_dicom_series(tmp_path / "mr")
    assert (series.modality, series.units) == ("MR", "")
    np.testing.assert_array_equal(series.voxels[:, :, 2], written.pixels[2].T)


@pytest.mark.parametrize(("thickness", "step"), [(3.3, 3.3), (None, 1.0)])
def test_single_slice_step_is_slice_thickness_else_one_mm(
    tmp_path: Path, thickness: float | None, step: float
) -> None:
    write_series(tmp_path / "one", count=1, thickness=thickness)
    series = read_dicom_series(tmp_path / "one")
    assert series.voxels.shape == (COLS, ROWS, 1)
    normal = np.cross(OBLIQUE[:3], OBLIQUE[3:])
    np.testing.assert_allclose(series.affine[:3, 2], ras(step * normal), atol=1e-6)


def test_hidden_files_and_subfolders_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_series(folder, count=3)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" * 10)
    (folder / "._IM0000").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("not dicom")
    assert read_dicom_series(folder).voxels.shape == (COLS, ROWS, 3)


@pytest.mark.parametrize(
    ("name", "modality", "shape", "step"), [("CT_small.dcm", "CT", 128, 5.0), ("MR_small.dcm", "MR", 64, 0.8)]
)
def test_pydicom_bundled_real_files(
    tmp_path: Path, name: str, modality: str, shape: int, step: float
) -> None:
    source = Path(get_testdata_file(name))
    folder = tmp_path / "real"
    folder.mkdir()
    shutil.copy(source, folder / "slice")
    ds = pydicom.dcmread(source)
    series = read_dicom_series(folder)
    assert series.modality == modality and series.voxels.shape == (shape, shape, 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    expected = ds.pixel_array.astype(np.float64) * slope + intercept
    np.testing.assert_array_equal(series.voxels[:, :, 0], expected.T)
    np.testing.assert_allclose(series.affine[:3, 3], ras([float(v) for v in ds.ImagePositionPatient]))
    spacing = [float(v) for v in ds.PixelSpacing]
    np.testing.assert_allclose(np.abs(np.diag(series.affine)[:3]), [spacing[1], spacing[0], step])
    if modality == "CT":
        assert (slope, intercept) == (1.0, -1024.0)  # so HU = stored - 1024
        assert series.units == "HU"
        assert -1024 <= series.voxels.min() < 0 < series.voxels.max() <= 3071
    else:
        assert series.units == ""


# --- detection -------------------------------------------------------------------------------------


def test_is_dicom_file_by_content_not_extension(tmp_path: Path) -> None:
    dicom_txt = tmp_path / "scan.txt"
    write_slice(dicom_txt, np.zeros((ROWS, COLS), np.uint16), np.zeros(3))
    fake_dcm = tmp_path / "fake.dcm"
    fake_dcm.write_bytes(b"\x00" * 200)
    marker_elsewhere = tmp_path / "short.dcm"
    marker_elsewhere.write_bytes(b"DICM" + b"\x00" * 200)
    assert is_dicom_file(dicom_txt)
    assert not is_dicom_file(fake_dcm)
    assert not is_dicom_file(marker_elsewhere)
    assert not is_dicom_file(tmp_path)
    assert not is_dicom_file(tmp_path / "missing.dcm")


def test_is_dicom_folder(tmp_path: Path) -> None:
    write_series(tmp_path / "yes", count=3)
    hidden_only = tmp_path / "hidden"
    hidden_only.mkdir()
    shutil.copy(tmp_path / "yes" / "IM0000", hidden_only / ".IM0000")
    nested = tmp_path / "nested"
    (nested / "inner").mkdir(parents=True)
    shutil.copy(tmp_path / "yes" / "IM0000", nested / "inner" / "IM0000")
    assert is_dicom_folder(tmp_path / "yes")
    assert not is_dicom_folder(hidden_only)
    assert not is_dicom_folder(nested)
    assert not is_dicom_folder(tmp_path / "yes" / "IM0000")
    assert not is_dicom_folder(tmp_path / "missing")


# --- refusals --------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    refusal(tmp_path / "nowhere", "does not exist")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refusal(tmp_path / "empty", "no DICOM files")


def test_only_hidden_files_is_an_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "h"
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"junk")
    refusal(folder, "no DICOM files")


def test_non_dicom_file_beside_slices_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_series(folder, count=3)
    (folder / "report.dcm").write_text("a note, not an image")
    refusal(folder, "report.dcm", "not a DICOM file")


def test_two_series_name_both_uids(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_series(folder, count=3, series_uid="1.2.840.1", description="T1 axial")
    write_series(folder, count=4, series_uid="1.2.840.2", description="FLAIR", prefix="b")
    refusal(folder, "1.2.840.1", "1.2.840.2", "T1 axial", "FLAIR", "3 files", "4 files")


def test_missing_slice_is_an_uneven_gap(tmp_path: Path) -> None:
    folder = tmp_path / "gap"
    written = write_series(folder, count=5)
    written.paths[2].unlink()
    message = refusal(folder, "missing or unevenly spaced", "2.5 mm", "5 mm", written.paths[3].name)
    assert written.paths[1].name in message


def test_gap_within_one_percent_is_accepted_beyond_is_not(tmp_path: Path) -> None:
    for name, error in (("ok", 0.005), ("bad", 0.02)):
        folder = tmp_path / name
        folder.mkdir()
        for k, z in enumerate([0.0, 2.5, 5.0 + 2.5 * error, 7.5]):
            write_slice(folder / f"s{k}", np.zeros((ROWS, COLS), np.uint16), np.array([0.0, 0.0, z]), AXIAL)
    assert read_dicom_series(tmp_path / "ok").voxels.shape == (COLS, ROWS, 4)
    refusal(tmp_path / "bad", "unevenly spaced")


def test_duplicate_position(tmp_path: Path) -> None:
    folder = tmp_path / "dup"
    written = write_series(folder, count=3)
    write_slice(folder / "extra", written.pixels[1], written.positions[1], instance=9)
    refusal(folder, "same position", "duplicate", "extra", written.paths[1].name)


def test_differing_orientation(tmp_path: Path) -> None:
    folder = tmp_path / "orient"
    written = write_series(folder, count=3)
    turned = _oblique_orientation(turn=10.5)  # orthonormal, but 0.5° off the others
    write_slice(written.paths[1], written.pixels[1], written.positions[1], turned)
    refusal(folder, "differ in ImageOrientationPatient", written.paths[1].name)


def test_differing_rows_and_columns(tmp_path: Path) -> None:
    folder = tmp_path / "size"
    written = write_series(folder, count=3)
    write_slice(written.paths[1], np.zeros((ROWS + 1, COLS), np.uint16), written.positions[1])
    refusal(folder, "differ in size", written.paths[1].name)


def test_differing_pixel_spacing(tmp_path: Path) -> None:
    folder = tmp_path / "spacing"
    written = write_series(folder, count=3)
    write_slice(written.paths[2], written.pixels[2], written.positions[2], spacing=(0.9, 0.85))
    refusal(folder, "PixelSpacing", written.paths[2].name)


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry(tmp_path: Path, keyword: str) -> None:
    folder = tmp_path / "geom"
    written = write_series(folder, count=3)
    ds = pydicom.dcmread(written.paths[0])
    delattr(ds, keyword)
    ds.save_as(written.paths[0], enforce_file_format=True)
    refusal(folder, keyword, written.paths[0].name)


def test_sheared_stack_gantry_tilt(tmp_path: Path) -> None:
    folder = tmp_path / "tilt"
    folder.mkdir()
    for k in range(3):  # each slice 2.5 mm up and 0.5 mm forward: positions off the normal
        write_slice(
            folder / f"t{k}", np.zeros((ROWS, COLS), np.uint16), np.array([0.0, 0.5 * k, 2.5 * k]), AXIAL
        )
    refusal(folder, "sheared")


def test_multi_frame_file(tmp_path: Path) -> None:
    folder = tmp_path / "mf"
    folder.mkdir()
    frames = np.arange(2 * ROWS * COLS, dtype=np.uint16).reshape(2, ROWS, COLS)
    write_slice(folder / "cine", frames[0], np.zeros(3), NumberOfFrames=2)
    ds = pydicom.dcmread(folder / "cine")
    ds.PixelData = frames.astype("<u2").tobytes()
    ds.save_as(folder / "cine", enforce_file_format=True)
    refusal(folder, "cine", "multi-frame", "2 frames")


def test_colour_file(tmp_path: Path) -> None:
    folder = tmp_path / "rgb"
    folder.mkdir()
    rgb = np.zeros((ROWS, COLS, 3), dtype=np.uint8)
    write_slice(
        folder / "photo", np.zeros((ROWS, COLS), np.uint16), np.zeros(3),
        SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
        BitsAllocated=8, BitsStored=8, HighBit=7, PixelData=rgb.tobytes(),
    )  # fmt: skip
    refusal(folder, "photo", "colour", "3 samples per pixel")


def _decodes(path: Path) -> bool:
    try:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point
    except Exception:
        return False
    return True


def test_compressed_pixel_data_without_decoder(tmp_path: Path) -> None:
    source = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    if _decodes(source):
        pytest.skip("a JPEG-LS decoder is installed here, so this file can be read")
    folder = tmp_path / "jls"
    folder.mkdir()
    shutil.copy(source, folder / "slice")
    refusal(folder, "slice", "compressed", "JPEG-LS")
