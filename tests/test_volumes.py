"""Volumes in, a volume out: NIfTI reading and writing, grids, windows, and the slice path's
agreement with the 2-D path, on small volumes built from the bundled example pairs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

import medfuse_cli
from medfuse_cli.errors import InputError
from medfuse_cli.fusers import get_fuser_spec
from medfuse_cli.montage import lightbox
from medfuse_cli.volumes import axial_images, from_axial_images, read_volume
from medfuse_cli.windows import CT_PRESETS, ct_window, functional_window, mri_window

# An oblique-free but not canonical grid: voxel axes run L, P, S (DICOM's LPS order), 0.9 x 0.9
# x 3 mm, off-centre: reading it back as images must undo the flips.
LPS_AFFINE = np.array(
    [[-0.9, 0.0, 0.0, 115.0], [0.0, -0.9, 0.0, 130.0], [0.0, 0.0, 3.0, -40.0], [0.0, 0.0, 0.0, 1.0]]
)
NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stack(folder: Path) -> np.ndarray:
    """The folder's 8-bit gray PNGs, sorted by name, as (K, H, W) uint8."""
    return np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted(folder.glob("*.png"))])


def _save(images: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Images (K, H, W) as a NIfTI volume whose axial slices they are."""
    nibabel.save(nibabel.Nifti1Image(from_axial_images(images, affine).astype(np.int16), affine), path)
    return path


@pytest.fixture
def ct_volumes(examples: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The two bundled CT-MRI pairs as a 2-slice MRI volume and a CT volume (values 0..255)."""
    mri = _save(_stack(examples / "CT-MRI" / "MRI"), LPS_AFFINE, tmp_path / "t1.nii.gz")
    ct = _save(_stack(examples / "CT-MRI" / "CT"), LPS_AFFINE, tmp_path / "ct.nii.gz")
    return mri, ct


@pytest.mark.parametrize(
    "axes",
    [(0, 1, 2), (1, 0, 2), (2, 0, 1), (0, 2, 1)],
)
@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, -1), (-1, -1, 1)])
def test_axial_images_and_back_are_inverse_for_any_axis_order(axes, flips) -> None:
    affine = np.zeros((4, 4))
    for voxel_axis, world_axis in enumerate(axes):
        affine[world_axis, voxel_axis] = flips[voxel_axis] * (1.0 + voxel_axis)
    affine[3, 3] = 1.0
    voxels = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    images = axial_images(voxels, affine)
    assert images.shape[0] == voxels.shape[axes.index(2)]  # one image per plane along S
    np.testing.assert_array_equal(from_axial_images(images, affine), voxels)


def test_axial_images_show_anterior_at_the_top() -> None:
    voxels = np.zeros((4, 6, 2), np.float32)
    voxels[:, 5, :] = 1.0  # the most anterior row in RAS order
    images = axial_images(voxels, np.eye(4))
    assert images.shape == (2, 6, 4)
    assert images[0, 0].min() == 1.0 and images[0, 1:].max() == 0.0


def test_volume_slices_equal_the_2d_path(ct_volumes, examples: Path, tmp_path: Path, run_cli) -> None:
    mri, ct = ct_volumes
    out = tmp_path / "fused.nii.gz"
    windows = ("--window-mri", "0,255", "--window-ct", "0,255")  # the 8-bit PNGs' own scale
    result = run_cli("fuse", mri, ct, "-o", out, "--kind", "ct", *windows, "-q")
    assert result.code == 0, result.stderr
    fused = read_volume(out)
    slices = axial_images(fused.voxels, fused.affine)
    for index, name in enumerate(sorted(p.name for p in (examples / "CT-MRI" / "MRI").glob("*.png"))):
        png = tmp_path / f"2d-{name}"
        assert (
            run_cli(
                "fuse", examples / "CT-MRI" / "MRI" / name, examples / "CT-MRI" / "CT" / name, "-o", png, "-q"
            ).code
            == 0
        )
        two_d = np.asarray(Image.open(png)).astype(int)
        assert np.abs(slices[index].astype(int) - two_d).max() <= 1


def test_output_is_on_the_mri_grid_with_its_codes_and_windows(
    ct_volumes, examples: Path, tmp_path: Path, run_cli
) -> None:
    mri, _ = ct_volumes
    ct = _save(
        _stack(examples / "CT-MRI" / "CT").astype(np.int16) * 8 - 1024, LPS_AFFINE, tmp_path / "hu.nii.gz"
    )
    out = tmp_path / "fused.nii"
    result = run_cli("fuse", mri, ct, "-o", out, "--kind", "ct", "--window-ct", "brain", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["windows"]["second"] == {
        "low": 0.0,
        "high": 80.0,
        "units": "HU",
        "rule": "--window-ct brain (level 40, width 80)",
    }
    assert report["kind"] == "ct" and report["checkpoint"] == "lwnet.ct" and report["shape"] == [256, 256, 2]
    assert report["checkpoint_sha256"] == get_fuser_spec("lwnet").checkpoint("ct").sha256
    image = nibabel.load(out)
    source = nibabel.load(mri)
    np.testing.assert_allclose(image.affine, source.affine, atol=1e-6)
    assert int(image.header["qform_code"]) == int(source.header["qform_code"])
    assert int(image.header["sform_code"]) == int(source.header["sform_code"])
    assert image.get_data_dtype() == np.uint8  # a CT pair gives a gray volume
    assert b"CT 0..80 HU" in image.header["descrip"].tobytes()


def test_a_pet_volume_is_coloured_and_written_as_rgb(examples: Path, tmp_path: Path, run_cli) -> None:
    mri = _save(_stack(examples / "PET-MRI" / "MRI"), LPS_AFFINE, tmp_path / "t1.nii.gz")
    pet = _save(_stack(examples / "PET-MRI" / "PET"), LPS_AFFINE, tmp_path / "pet.nii.gz")
    out, preview, slices = tmp_path / "fused.nii.gz", tmp_path / "preview.png", tmp_path / "slices"
    args = ("fuse", mri, pet, "-o", out, "--kind", "pet", "--preview", preview, "--slices", slices, "--json")
    report = json.loads(run_cli(*args).stdout)
    assert report["colormap"] == "hot" and report["checkpoint"] == "lwnet.functional"
    assert report["windows"]["second"]["rule"].startswith("auto: 0 to the 99.9th percentile")
    image = nibabel.load(out)
    assert image.get_data_dtype().names == ("R", "G", "B")
    rgb = np.asarray(image.dataobj)
    assert rgb["R"].astype(int).sum() > rgb["B"].astype(int).sum()  # "hot" is red before blue
    assert sorted(p.name for p in slices.iterdir()) == ["slice_000.png", "slice_001.png"]
    assert np.asarray(Image.open(preview)).shape == (256, 512, 3)  # two slices side by side
    first = _sha(out)
    assert run_cli(*args[:-1], "--overwrite", "-q").code == 0
    assert _sha(out) == first  # same inputs, weights and device: same bytes


def test_a_nifti_pair_that_is_not_on_one_grid_is_refused_unless_resampled(
    ct_volumes, tmp_path: Path, run_cli
) -> None:
    mri, ct = ct_volumes
    moved = nibabel.load(ct)
    shifted_affine = moved.affine.copy()
    shifted_affine[0, 3] += 2.0
    shifted = tmp_path / "shifted.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.asarray(moved.dataobj), shifted_affine), shifted)
    result = run_cli(
        "fuse", mri, shifted, "-o", tmp_path / "f.nii.gz", "--kind", "ct", "--window-ct", "0,255"
    )
    assert result.code == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "--resample" in result.stderr and "256x256x2 voxels of 0.9x0.9x3 mm" in result.stderr
    assert not (tmp_path / "f.nii.gz").exists()
    result = run_cli(
        "fuse",
        mri,
        shifted,
        "-o",
        tmp_path / "f.nii.gz",
        "--kind",
        "ct",
        "--window-ct",
        "0,255",
        "--resample",
        "--json",
    )
    assert result.code == 0 and json.loads(result.stdout)["resampled"] is True


def _refusal(run_cli, tmp_path: Path, *args: object) -> str:
    before = {p: _sha(p) for p in tmp_path.rglob("*") if p.is_file()}
    result = run_cli("fuse", *args)
    assert result.code == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    after = {p: _sha(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, inputs untouched
    return result.stderr


def test_bad_volume_inputs_are_one_line_each(ct_volumes, examples: Path, tmp_path: Path, run_cli) -> None:
    mri, ct = ct_volumes
    out = tmp_path / "out.nii.gz"
    assert "--kind" in _refusal(run_cli, tmp_path, mri, ct, "-o", out)
    assert "CT" in _refusal(run_cli, tmp_path, mri, ct, "-o", out, "--kind", "ct", "--colormap", "hot")
    assert ".nii" in _refusal(run_cli, tmp_path, mri, ct, "-o", tmp_path / "out.png", "--kind", "ct")
    png = examples / "CT-MRI" / "CT" / "2004.png"
    assert "two volumes" in _refusal(run_cli, tmp_path, mri, png, "-o", out, "--kind", "ct")
    # Not Hounsfield units (lowest value 0, no air): a HU preset would be a guess.
    assert "Hounsfield" in _refusal(run_cli, tmp_path, mri, ct, "-o", out, "--kind", "ct")
    assert "--window-ct" in _refusal(
        run_cli, tmp_path, mri, ct, "-o", out, "--kind", "pet", "--window-ct", "brain"
    )

    four_d = tmp_path / "4d.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ones((4, 4, 3, 2), np.float32), np.eye(4)), four_d)
    assert "4-D" in _refusal(run_cli, tmp_path, mri, four_d, "-o", out, "--kind", "pet")
    nan = tmp_path / "nan.nii.gz"
    values = np.asarray(nibabel.load(ct).dataobj).astype(np.float32)
    values[3, 3, 1] = np.nan
    nibabel.save(nibabel.Nifti1Image(values, LPS_AFFINE), nan)
    assert "NaN" in _refusal(run_cli, tmp_path, mri, nan, "-o", out, "--kind", "pet")
    constant = tmp_path / "constant.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.full((256, 256, 2), 7, np.int16), LPS_AFFINE), constant)
    assert "--window-mri" in _refusal(
        run_cli, tmp_path, constant, ct, "-o", out, "--kind", "ct", "--window-ct", "0,255"
    )
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(mri.read_bytes()[:200])
    assert str(truncated) in _refusal(run_cli, tmp_path, truncated, ct, "-o", out, "--kind", "ct")


def test_an_existing_output_is_kept_unless_overwrite(ct_volumes, tmp_path: Path, run_cli) -> None:
    mri, ct = ct_volumes
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    assert "--overwrite" in _refusal(
        run_cli, tmp_path, mri, ct, "-o", out, "--kind", "ct", "--window-ct", "0,255"
    )
    assert out.read_bytes() == b"keep me"
    result = run_cli(
        "fuse", mri, ct, "-o", out, "--kind", "ct", "--window-ct", "0,255", "--skip-existing", "--json"
    )
    assert (
        result.code == 0 and json.loads(result.stdout)["skipped"] is True and out.read_bytes() == b"keep me"
    )


def test_nibabels_own_files_are_read_and_a_4d_one_refused() -> None:
    anatomical = read_volume(NIBABEL_DATA / "anatomical.nii")
    assert anatomical.voxels.ndim == 3 and anatomical.voxels.dtype == np.float32
    assert anatomical.affine.shape == (4, 4)
    with pytest.raises(InputError, match="4-D"):
        read_volume(NIBABEL_DATA / "example4d.nii.gz")


def test_windows_follow_their_rules() -> None:
    values = np.concatenate([np.zeros(1000), np.arange(1, 1001, dtype=float)])
    window = mri_window(values, None, "a.u.", "mri")
    assert window.low == pytest.approx(np.percentile(np.arange(1, 1001), 0.5))
    assert window.high == pytest.approx(np.percentile(np.arange(1, 1001), 99.5))
    assert mri_window(values, "10,20", "a.u.", "mri").apply(np.array([5.0, 15.0, 25.0])).tolist() == [
        0.0,
        0.5,
        1.0,
    ]
    pet = functional_window(values, None, "BQML", "pet")
    assert pet.low == 0.0 and pet.high == pytest.approx(np.percentile(np.arange(1, 1001), 99.9))
    level, width = CT_PRESETS["bone"]
    assert (ct_window("bone").low, ct_window("bone").high) == (level - width / 2, level + width / 2)
    for bad in ("brian", "3", "5,1", "a,b", "1,inf"):
        with pytest.raises(InputError):
            ct_window(bad)


def test_lightbox_leaves_out_empty_slices_and_keeps_order() -> None:
    images = np.zeros((6, 2, 3), np.float32)
    for k in (1, 2, 4):
        images[k, 0, 0] = k / 10
    tiled = lightbox(images)
    assert tiled.shape == (4, 6)  # three slices on a 2x2 grid
    assert [tiled[0, 0], tiled[0, 3], tiled[2, 0]] == pytest.approx([0.1, 0.2, 0.4])


def test_inputs_are_untouched(ct_volumes, tmp_path: Path, run_cli) -> None:
    mri, ct = ct_volumes
    stamps = {p: (os.stat(p).st_mtime_ns, _sha(p)) for p in (mri, ct)}
    assert (
        run_cli(
            "fuse", mri, ct, "-o", tmp_path / "f.nii.gz", "--kind", "ct", "--window-ct", "0,255", "-q"
        ).code
        == 0
    )
    assert stamps == {p: (os.stat(p).st_mtime_ns, _sha(p)) for p in (mri, ct)}


def test_the_python_function_gives_what_the_cli_writes(ct_volumes, tmp_path: Path, run_cli) -> None:
    mri, ct = (medfuse_cli.read_volume(p) for p in ct_volumes)
    assert mri.shape == (256, 256, 2) and mri.spacing == pytest.approx((0.9, 0.9, 3.0))
    fused = medfuse_cli.fuse_volume(mri.voxels, ct.voxels, mri.affine, "ct", window_ct="0,255", device="cpu")
    assert fused.shape == (256, 256, 2) and fused.dtype == np.float32
    out = tmp_path / "f.nii.gz"
    assert run_cli("fuse", *ct_volumes, "-o", out, "--kind", "ct", "--window-ct", "0,255", "-q").code == 0
    written = np.asarray(nibabel.load(out).dataobj)
    np.testing.assert_array_equal(np.rint(fused * 255).astype(np.uint8), written)
    with pytest.raises(InputError, match="3-D"):
        medfuse_cli.fuse_volume(mri.voxels[..., 0], ct.voxels, mri.affine, "ct")


def _dicom_series(images: np.ndarray, folder: Path, modality: str, uid: str, intercept: float) -> Path:
    """(K, H, W) stored values as an axial DICOM series, 3 mm apart, files named in shuffled order."""
    from test_dicom import AXIAL, scrambled, write_slice

    folder.mkdir()
    names = scrambled(len(images), seed=1) if len(images) >= 3 else list(range(len(images)))[::-1]
    for k, pixels in enumerate(images):
        position = np.array([-115.0, -130.0, -40.0 + 3.0 * k])
        write_slice(
            folder / f"IM{names[k]:03d}.dcm", pixels, position, AXIAL, modality=modality, series_uid=uid,
            instance=names[k] + 1, spacing=(0.9, 0.9), thickness=3.0, slope=1.0, intercept=intercept,
        )  # fmt: skip
    return folder


def test_a_dicom_pair_and_the_same_data_as_nifti_give_the_same_volume(
    examples: Path, tmp_path: Path, run_cli
) -> None:
    mri_images = _stack(examples / "CT-MRI" / "MRI")
    ct_images = _stack(examples / "CT-MRI" / "CT").astype(np.uint16) * 8  # 0..2040 stored, HU = stored - 1024
    mri_series = _dicom_series(mri_images, tmp_path / "MRI_SERIES", "MR", "1.2.826.0.1.1", 0.0)
    ct_series = _dicom_series(ct_images, tmp_path / "CT_SERIES", "CT", "1.2.826.0.1.2", -1024.0)
    from_dicom = tmp_path / "from-dicom.nii.gz"
    result = run_cli("fuse", mri_series, ct_series, "-o", from_dicom, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "ct" and report["kind_from"] == "DICOM Modality CT"
    assert report["windows"]["second"]["rule"].startswith("auto: the subdural preset")

    niftis = []
    for series, name in ((mri_series, "t1.nii.gz"), (ct_series, "ct.nii.gz")):
        volume = read_volume(series)
        nibabel.save(nibabel.Nifti1Image(volume.voxels, volume.affine), tmp_path / name)
        niftis.append(tmp_path / name)
    assert read_volume(ct_series).voxels.min() == -1024.0  # the rescale was applied
    from_nifti = tmp_path / "from-nifti.nii.gz"
    assert run_cli("fuse", *niftis, "-o", from_nifti, "--kind", "ct", "-q").code == 0
    dicom_image, nifti_image = nibabel.load(from_dicom), nibabel.load(from_nifti)
    np.testing.assert_array_equal(np.asarray(dicom_image.dataobj), np.asarray(nifti_image.dataobj))
    np.testing.assert_allclose(dicom_image.affine, nifti_image.affine, atol=1e-5)
    # Both are the axial grid the series was written on: 0.9 x 0.9 x 3 mm, LPS voxel axes.
    assert nibabel.aff2axcodes(dicom_image.affine) == ("L", "P", "S")
    np.testing.assert_allclose(nibabel.affines.voxel_sizes(dicom_image.affine), (0.9, 0.9, 3.0))


def test_two_series_in_one_folder_and_a_non_mri_first_input_are_refused(
    examples: Path, tmp_path: Path, run_cli
) -> None:
    ct_images = _stack(examples / "CT-MRI" / "CT").astype(np.uint16)
    ct_series = _dicom_series(ct_images, tmp_path / "CT_SERIES", "CT", "1.2.826.0.1.2", -1024.0)
    message = _refusal(run_cli, tmp_path, ct_series, ct_series, "-o", tmp_path / "f.nii.gz")
    assert "must be the MRI" in message


def test_a_singular_affine_is_one_line(ct_volumes, tmp_path: Path, run_cli) -> None:
    mri, _ = ct_volumes
    flat = LPS_AFFINE.copy()
    flat[:3, 2] = 0.0  # the slice axis has no length: the voxels have no place in space
    singular = tmp_path / "singular.nii.gz"
    image = nibabel.Nifti1Image(np.ones((256, 256, 2), np.int16), None)
    image.set_sform(flat, code=2)  # a header only a hand (or a broken tool) writes
    nibabel.save(image, singular)
    assert "singular" in _refusal(
        run_cli, tmp_path, mri, singular, "-o", tmp_path / "f.nii.gz", "--kind", "pet"
    )
    assert "singular" in _refusal(
        run_cli, tmp_path, singular, mri, "-o", tmp_path / "f.nii.gz", "--kind", "pet", "--resample"
    )
    with pytest.raises(InputError, match="singular"):
        medfuse_cli.fuse_volume(np.ones((4, 4, 2)), np.ones((4, 4, 2)), np.zeros((4, 4)), "pet")


def test_the_mris_qform_and_sform_are_copied_each_as_it_is(ct_volumes, tmp_path: Path, run_cli) -> None:
    _, ct = ct_volumes
    image = nibabel.load(ct)
    shifted = LPS_AFFINE.copy()
    shifted[:3, 3] += (10.0, -5.0, 3.0)
    mri = nibabel.Nifti1Image(np.asarray(image.dataobj) + 1, LPS_AFFINE)
    mri.set_qform(LPS_AFFINE, code=1)
    mri.set_sform(shifted, code=2)
    nibabel.save(mri, tmp_path / "two-affines.nii.gz")
    ct_on_sform = nibabel.Nifti1Image(np.asarray(image.dataobj).astype(np.int16) * 8 - 1024, shifted)
    nibabel.save(ct_on_sform, tmp_path / "ct.nii.gz")
    out = tmp_path / "f.nii.gz"
    result = run_cli(
        "fuse", tmp_path / "two-affines.nii.gz", tmp_path / "ct.nii.gz", "-o", out, "--kind", "ct", "-q"
    )
    assert result.code == 0, result.stderr
    header = nibabel.load(out).header
    np.testing.assert_allclose(header.get_qform(), LPS_AFFINE, atol=1e-4)
    np.testing.assert_allclose(header.get_sform(), shifted, atol=1e-4)
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)


def test_outputs_that_would_mix_with_inputs_or_half_runs_are_refused_first(
    examples: Path, tmp_path: Path, run_cli
) -> None:
    volumes = examples / "volumes"
    mri, pet = volumes / "MRI_SERIES", volumes / "PET_SERIES"
    out, preview = tmp_path / "f.nii.gz", tmp_path / "p.png"
    assert "series folder" in _refusal(run_cli, tmp_path, mri, pet, "-o", out, "--slices", mri / "slices")
    assert "series folder" in _refusal(run_cli, tmp_path, mri, pet, "-o", pet / "f.nii.gz")
    assert "different paths" in _refusal(run_cli, tmp_path, mri, pet, "-o", out, "--slices", out)
    preview.write_bytes(b"an older preview")
    assert "--skip-existing" in _refusal(
        run_cli, tmp_path, mri, pet, "-o", out, "--preview", preview, "--skip-existing"
    )
    for flag in (("--resize",), ("--chroma", "drop"), ("--max-pixels", "100")):
        assert flag[0] in _refusal(run_cli, tmp_path, mri, pet, "-o", out, *flag)


def test_no_uptake_carries_no_colour(examples: Path, tmp_path: Path, run_cli) -> None:
    volumes = examples / "volumes"
    out = tmp_path / "f.nii.gz"
    args = ("fuse", volumes / "t1.nii.gz", volumes / "pet.nii.gz", "-o", out, "--kind", "pet", "-q")
    assert run_cli(*args, "--colormap", "viridis").code == 0  # viridis's zero is purple
    rgb = np.asarray(nibabel.load(out).dataobj)
    pet = np.asarray(nibabel.load(volumes / "pet.nii.gz").dataobj)
    background = pet <= 0
    assert background.any()
    channels = np.stack([rgb[c][background].astype(int) for c in "RGB"])
    assert np.abs(channels - channels.mean(axis=0)).max() <= 1  # gray where there is no uptake


def test_values_beyond_float32_are_refused_not_made_infinite(ct_volumes, tmp_path: Path, run_cli) -> None:
    mri, _ = ct_volumes
    huge = tmp_path / "huge.nii.gz"
    values = np.zeros((256, 256, 2))
    values[0, 0, 0] = 1e300
    nibabel.save(nibabel.Nifti1Image(values, LPS_AFFINE), huge)
    assert "float32" in _refusal(run_cli, tmp_path, mri, huge, "-o", tmp_path / "f.nii.gz", "--kind", "pet")


def test_a_window_that_shows_nothing_is_said_not_refused(examples: Path, tmp_path: Path, run_cli) -> None:
    volumes = examples / "volumes"
    args = (
        "fuse",
        volumes / "t1.nii.gz",
        volumes / "pet.nii.gz",
        "-o",
        tmp_path / "f.nii.gz",
        "--kind",
        "pet",
    )
    result = run_cli(*args, "--window-mri=-5,-1", "-q")
    assert result.code == 0
    assert (
        result.stderr.startswith("notice: the MRI window -5..-1")
        and "0 % of its non-zero voxels" in result.stderr
    )
    assert run_cli(*args, "--window-mri", "0,900", "-q", "--overwrite").stderr == ""
