"""Read one DICOM series folder (one file per slice) into a 3-D array and its voxel-to-RAS affine.

What this implements:

* Geometry from the Image Plane Module (DICOM PS3.3 C.7.6.2): ImagePositionPatient (the centre of
  the first transmitted pixel, in mm, LPS patient axes), ImageOrientationPatient (row and column
  direction cosines) and PixelSpacing ([between rows, between columns], mm).
* Stored values to modality units with RescaleSlope/RescaleIntercept (PS3.3 C.11.1 Modality LUT
  and C.7.6.16 Multi-frame Functional Groups' Pixel Value Transformation): out = stored × slope +
  intercept, computed per slice in float64 and kept as float32. CT comes out in Hounsfield units.
  PET stays in the units the file declares (Units, e.g. BQML); no SUV or decay correction.
* The affine is the standard DICOM → NIfTI construction that nibabel and dcm2niix use, in the
  NIfTI/nibabel RAS+ convention (DICOM's LPS with x and y negated).

Why slices are sorted by position: file names and InstanceNumber are assigned by scanners, PACS
exports and anonymisers in any order, and are often not monotonic in space. The only order that
is true to the anatomy is the slice's position along the slice normal, so slices are sorted by
dot(ImagePositionPatient, n) with n = row cosines × column cosines, and the gaps between them are
checked to be equal (a missing or duplicated slice would otherwise silently distort the volume).

Only a plain stack of single-frame, single-sample (greyscale) slices is read; multi-frame files,
colour images, gantry-tilted stacks and compressed pixel data this installation cannot decode are
refused with one-line ``InputError`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from medfuse_cli.errors import InputError

_ORIENTATION_TOL = 1e-4  # max abs difference between direction cosines of two slices
_SPACING_TOL_MM = 1e-4  # max abs difference between PixelSpacing values of two slices
_DUPLICATE_TOL_MM = 1e-3  # two slices closer than this along the normal share one position
_GAP_REL_TOL = 0.01  # every gap must be within 1 % of the median gap
_SHEAR_TOL_VOXELS = 0.1  # in-plane drift of a slice's origin allowed, in pixels


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series as a volume.

    Attributes:
        voxels: float32, shape (I, J, K). I is the column index within a slice (x), J the row
            index (y), K the slice index along the slice normal, ascending. Values are in modality
            units after RescaleSlope/RescaleIntercept (Hounsfield units for CT).
        affine: float64, shape (4, 4). Maps voxel (i, j, k, 1) to RAS+ millimetres (the
            NIfTI/nibabel convention: DICOM's LPS patient axes with x and y negated).
        modality: DICOM Modality (0008,0060), e.g. "MR", "PT", "NM", "CT".
        series_uid: SeriesInstanceUID (0020,000E).
        description: SeriesDescription (0008,103E), "" when absent.
        units: "HU" for CT; for PET the Units attribute (0054,1001), e.g. "BQML", "CNTS", "GML"
            ("" if absent); "" for every other modality.
    """

    voxels: np.ndarray
    affine: np.ndarray
    modality: str
    series_uid: str
    description: str
    units: str


@dataclass(frozen=True)
class _Slice:
    """One parsed slice file, before its pixels are decoded."""

    path: Path
    ds: Any  # pydicom.Dataset
    position: np.ndarray  # (3,) float64, ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) float64, ImageOrientationPatient
    spacing: np.ndarray  # (2,) float64, PixelSpacing [row spacing, column spacing] mm
    rows: int
    columns: int


def _read_marker(path: Path) -> bytes:
    """The 4 bytes after the 128-byte preamble (fewer if the file is short); raises OSError."""
    with path.open("rb") as handle:
        head = handle.read(132)
    return head[128:132]


def is_dicom_file(path: Path) -> bool:
    """True if ``path`` is a readable regular file holding a 128-byte preamble then b"DICM".

    Decided by content only, never by the file name or extension. Unreadable paths, folders and
    files shorter than 132 bytes give False; nothing is raised.
    """
    try:
        return path.is_file() and _read_marker(path) == b"DICM"
    except OSError:
        return False


def _candidate_files(folder: Path) -> list[Path]:
    """The non-hidden regular files directly in ``folder``, sorted by name; raises OSError."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def is_dicom_folder(path: Path) -> bool:
    """True if ``path`` is a folder directly holding at least one DICOM file (by content).

    Only non-hidden regular files count (names starting with "." are skipped); subfolders are not
    searched. An unreadable folder gives False; nothing is raised.
    """
    try:
        return path.is_dir() and any(is_dicom_file(p) for p in _candidate_files(path))
    except OSError:
        return False


def _one_line(text: object) -> str:
    """``text`` with all whitespace runs (newlines, tabs) collapsed to single spaces."""
    return " ".join(str(text).split())


def _fail(folder: Path, problem: str) -> InputError:
    return InputError(_one_line(f"DICOM folder {folder}: {problem}"))


def _floats(ds: Any, keyword: str, count: int, path: Path, folder: Path) -> np.ndarray:
    """Attribute ``keyword`` of ``ds`` as ``count`` float64 values, or an InputError."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise _fail(folder, f"{path.name} has no {keyword}; the slice geometry cannot be known")
    try:
        items = value if isinstance(value, MultiValue | list | tuple) else [value]
        values = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(folder, f"{path.name} has an unreadable {keyword} {value!r}") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise _fail(folder, f"{path.name} has {keyword} {values.tolist()}; expected {count} finite numbers")
    return values


def _float_or(ds: Any, keyword: str, default: float, path: Path, folder: Path) -> float:
    """Single numeric attribute ``keyword``, ``default`` when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise _fail(folder, f"{path.name} has an unreadable {keyword} {value!r}") from None
    if not np.isfinite(result):
        raise _fail(folder, f"{path.name} has a non-finite {keyword} {value!r}")
    return result


def _parse_slice(path: Path, folder: Path) -> _Slice:
    """Read ``path`` with pydicom and check it is a single-frame greyscale slice with geometry."""
    try:
        ds = pydicom.dcmread(path, force=False)
    except Exception as exc:  # pydicom raises many kinds for damaged files
        raise _fail(folder, f"{path.name} cannot be read as DICOM: {exc}") from exc
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise _fail(
            folder,
            f"{path.name} is a multi-frame file ({int(frames)} frames); only one slice per file is supported",
        )
    samples = ds.get("SamplesPerPixel", 1)
    if samples != 1:
        photometric = ds.get("PhotometricInterpretation", "?")
        raise _fail(
            folder,
            f"{path.name} is a colour image ({samples} samples per pixel, {photometric}); "
            "only greyscale (1 sample per pixel) is supported",
        )
    if "PixelData" not in ds:
        raise _fail(folder, f"{path.name} has no pixel data (not an image)")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise _fail(folder, f"{path.name} has no Rows/Columns")
    return _Slice(
        path=path,
        ds=ds,
        position=_floats(ds, "ImagePositionPatient", 3, path, folder),
        orientation=_floats(ds, "ImageOrientationPatient", 6, path, folder),
        spacing=_floats(ds, "PixelSpacing", 2, path, folder),
        rows=int(rows),
        columns=int(columns),
    )


def _description(ds: Any) -> str:
    """SeriesDescription, "" when absent or empty."""
    return str(ds.get("SeriesDescription", "") or "")


def _check_single_series(slices: list[_Slice], folder: Path) -> str:
    """The one SeriesInstanceUID shared by all slices; InputError naming each if there are several."""
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        uid = str(s.ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise _fail(folder, f"{s.path.name} has no SeriesInstanceUID")
        groups.setdefault(uid, []).append(s)
    if len(groups) > 1:
        listed = "; ".join(
            f"{uid} ({_description(members[0].ds) or 'no description'!r}, "
            f"{len(members)} file{'s' if len(members) != 1 else ''})"
            for uid, members in groups.items()
        )
        raise _fail(
            folder,
            f"holds {len(groups)} series, expected one: {listed}; put each series in its own folder",
        )
    return next(iter(groups))


def _check_shared_geometry(slices: list[_Slice], folder: Path) -> None:
    """All slices share ImageOrientationPatient, Rows, Columns and PixelSpacing; it is orthonormal."""
    first = slices[0]
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    unit = abs(np.linalg.norm(row_cos) - 1) < 1e-3 and abs(np.linalg.norm(col_cos) - 1) < 1e-3
    if not unit or abs(float(np.dot(row_cos, col_cos))) > 1e-3:
        raise _fail(
            folder,
            f"{first.path.name} has ImageOrientationPatient {first.orientation.tolist()}, "
            "which is not two orthogonal unit vectors",
        )
    if np.any(first.spacing <= 0):
        raise _fail(folder, f"{first.path.name} has PixelSpacing {first.spacing.tolist()}; must be > 0")
    for s in slices[1:]:
        pair = f"{s.path.name} and {first.path.name}"
        if np.max(np.abs(s.orientation - first.orientation)) > _ORIENTATION_TOL:
            raise _fail(
                folder,
                f"{pair} differ in ImageOrientationPatient ({s.orientation.tolist()} vs "
                f"{first.orientation.tolist()}); all slices of a series must share one orientation",
            )
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise _fail(
                folder,
                f"{pair} differ in size (Rows×Columns {s.rows}×{s.columns} vs {first.rows}×{first.columns})",
            )
        if np.max(np.abs(s.spacing - first.spacing)) > _SPACING_TOL_MM:
            raise _fail(
                folder, f"{pair} differ in PixelSpacing ({s.spacing.tolist()} vs {first.spacing.tolist()})"
            )


def _slice_step(ordered: list[_Slice], heights: np.ndarray, folder: Path) -> float:
    """The common gap (mm, > 0) between consecutive sorted slices; InputError if they are uneven.

    A single slice has no gap: its step is SliceThickness if present and > 0, else 1.0 mm.
    """
    if len(ordered) == 1:
        thickness = _float_or(ordered[0].ds, "SliceThickness", 0.0, ordered[0].path, folder)
        return thickness if thickness > 0 else 1.0
    gaps = np.diff(heights)
    duplicates = np.flatnonzero(gaps <= _DUPLICATE_TOL_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise _fail(
            folder,
            f"{ordered[k].path.name} and {ordered[k + 1].path.name} are at the same position "
            f"({heights[k]:.4f} mm along the slice normal): duplicate slices",
        )
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > _GAP_REL_TOL * median)
    if bad.size:
        where = ", ".join(
            f"{gaps[k]:.4g} mm between slice {k} ({ordered[k].path.name}, {heights[k]:.4g} mm) and "
            f"slice {k + 1} ({ordered[k + 1].path.name}, {heights[k + 1]:.4g} mm)"
            for k in bad[:3]
        )
        more = f" and {bad.size - 3} more" if bad.size > 3 else ""
        raise _fail(
            folder,
            f"missing or unevenly spaced slices: the median gap along the slice normal is {median:.4g} mm "
            f"but there are gaps of {where}{more}",
        )
    return median


def _check_no_shear(ordered: list[_Slice], normal: np.ndarray, folder: Path) -> None:
    """Every slice origin lies on the line through the first along the normal (no gantry tilt)."""
    first = ordered[0]
    tolerance = _SHEAR_TOL_VOXELS * float(np.min(first.spacing))
    for s in ordered[1:]:
        offset = s.position - first.position
        in_plane = offset - np.dot(offset, normal) * normal
        if np.linalg.norm(in_plane) > tolerance:
            raise _fail(
                folder,
                f"{s.path.name} is shifted {np.linalg.norm(in_plane):.3g} mm within the slice plane from "
                f"{first.path.name}: the stack is sheared (gantry tilt), which is not supported",
            )


def _pixels(s: _Slice, folder: Path) -> np.ndarray:
    """The slice's values in modality units, float64, shape (Columns, Rows) = (I, J)."""
    try:
        stored = s.ds.pixel_array
    except Exception as exc:  # missing decoder plugins raise RuntimeError; damaged data others
        syntax = s.ds.file_meta.get("TransferSyntaxUID") if hasattr(s.ds, "file_meta") else None
        if syntax is not None and syntax.is_compressed:
            raise _fail(
                folder,
                f"{s.path.name} has compressed pixel data ({syntax.name}) that cannot be decoded here; "
                "decompress the series first (e.g. with dcmdjpeg or gdcmconv --raw)",
            ) from exc
        raise _fail(folder, f"{s.path.name}: pixel data cannot be read: {exc}") from exc
    if stored.shape != (s.rows, s.columns):
        raise _fail(
            folder,
            f"{s.path.name} pixel data has shape {stored.shape}, expected (Rows, Columns) = "
            f"({s.rows}, {s.columns})",
        )
    slope = _float_or(s.ds, "RescaleSlope", 1.0, s.path, folder)
    intercept = _float_or(s.ds, "RescaleIntercept", 0.0, s.path, folder)
    return (stored.astype(np.float64) * slope + intercept).T


def read_dicom_series(folder: Path) -> DicomSeries:
    """Read the one DICOM series in ``folder`` (one greyscale slice per file) as a volume.

    Every non-hidden regular file directly in ``folder`` must be DICOM by content; names starting
    with "." (``.DS_Store``, macOS ``._*`` files) are skipped and subfolders are ignored (not
    searched). Slices are sorted by their position along the slice normal
    n = cross(row cosines, column cosines), never by file name or InstanceNumber, and must be
    evenly spaced (every gap within 1 % of the median gap). A single-slice series is allowed; its
    slice step is SliceThickness if present, else 1.0 mm.

    Returns:
        A ``DicomSeries``: ``voxels`` float32 (I = columns, J = rows, K = slices), values after
        RescaleSlope/RescaleIntercept per slice (HU for CT; PET not converted to SUV), and
        ``affine`` float64 (4, 4) from voxel indices to RAS+ mm.

    Raises:
        InputError: one line naming the folder (and file) when the folder is missing or holds no
            DICOM file; a file is not DICOM or cannot be read; there is more than one
            SeriesInstanceUID; ImagePositionPatient, ImageOrientationPatient or PixelSpacing is
            missing; slices differ in orientation (> 1e-4), Rows/Columns or PixelSpacing; two
            slices share a position; gaps are uneven (missing slices); the stack is sheared
            (gantry tilt); a file is multi-frame or colour; or its compressed pixel data cannot be
            decoded here.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(folder, "is not a folder" if folder.exists() else "does not exist")
    try:
        files = _candidate_files(folder)
    except OSError as exc:
        raise _fail(folder, f"cannot be listed: {exc.strerror or exc}") from exc

    for path in files:
        try:
            marker = _read_marker(path)
        except OSError as exc:
            raise _fail(folder, f"{path.name} cannot be read: {exc.strerror or exc}") from exc
        if marker != b"DICM":
            raise _fail(
                folder,
                f"{path.name} is not a DICOM file (no 'DICM' after the 128-byte preamble); "
                "move it out of the series folder",
            )
    if not files:
        raise _fail(folder, "holds no DICOM files")

    slices = [_parse_slice(path, folder) for path in files]
    series_uid = _check_single_series(slices, folder)
    _check_shared_geometry(slices, folder)

    row_cos, col_cos = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    heights = np.array([float(np.dot(s.position, normal)) for s in slices])
    order = np.argsort(heights, kind="stable")
    ordered = [slices[k] for k in order]
    heights = heights[order]
    step = _slice_step(ordered, heights, folder)
    _check_no_shear(ordered, normal, folder)

    voxels = np.stack([_pixels(s, folder) for s in ordered], axis=-1).astype(np.float32)

    row_spacing, col_spacing = ordered[0].spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing  # i: along a row, column index increasing
    lps[:3, 1] = col_cos * row_spacing  # j: down a column, row index increasing
    lps[:3, 2] = normal * step
    lps[:3, 3] = ordered[0].position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    first = ordered[0].ds
    modality = str(first.get("Modality", "") or "")
    if modality == "CT":
        units = "HU"
    elif modality == "PT":
        units = str(first.get("Units", "") or "")
    else:
        units = ""
    return DicomSeries(
        voxels=voxels,
        affine=affine,
        modality=modality,
        series_uid=series_uid,
        description=_description(first),
        units=units,
    )
