"""Blank pairs (both inputs one value each): what a network makes of them is said, never hidden."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

from medfuse_cli.blank_pairs import blank_pairs_made_up
from medfuse_cli.volumes import from_axial_images

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def test_only_blank_pairs_fused_outside_both_values_are_counted() -> None:
    zeros, gray = np.zeros((2, 8, 8), np.float32), np.full((2, 8, 8), 0.3, np.float32)
    textured = np.random.default_rng(0).uniform(0, 1, (2, 8, 8)).astype(np.float32)
    assert blank_pairs_made_up(zeros, zeros, gray).tolist() == [True, True]
    assert blank_pairs_made_up(zeros, gray, gray * 0.5).tolist() == [False, False]  # between the two
    assert blank_pairs_made_up(zeros, zeros, zeros + 0.4 / 255).tolist() == [False, False]  # rounds to 0
    assert blank_pairs_made_up(textured, zeros, gray).tolist() == [False, False]  # content: fused as is
    stray = zeros.copy()
    stray[:, 0, 0] = 2 / 255  # a black slice with one faint pixel: blank; 3 levels: content
    assert blank_pairs_made_up(stray, zeros, gray).tolist() == [True, True]
    stray[:, 0, 0] = 3 / 255
    assert blank_pairs_made_up(stray, zeros, gray).tolist() == [False, False]
    white = np.ones_like(zeros)  # black and white fused to a gray: between the two, as an average
    assert blank_pairs_made_up(zeros, white, gray).tolist() == [False, False]
    assert bool(blank_pairs_made_up(zeros[0], zeros[0], gray[0])) is True  # one (H, W) pair


def _png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)
    return path


def test_a_blank_pair_fused_to_gray_is_said(tmp_path: Path, run_cli) -> None:
    mri, ct = _png(tmp_path / "z.png", 0), _png(tmp_path / "ct.png", 0)
    said = run_cli("fuse", mri, ct, "-o", tmp_path / "f.png", "-m", "lywnet", "-q", "--threads", "1")
    assert said.code == 0, said.stderr
    fused = np.asarray(Image.open(tmp_path / "f.png").convert("L"))
    assert said.stderr == (
        "notice: pair z: both inputs are blank after their windows (2 levels of 255 or less of "
        "contrast each); lywnet turned them into values outside the inputs' (mean "
        f"{100 * fused.mean() / 255:.0f} % of full scale), not image content\n"
    )
    folders = tmp_path / "mri", tmp_path / "ct"
    for folder in folders:  # a blank pair "z" beside one with content, "t"
        folder.mkdir()
        _png(folder / "z.png", 0)
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32), np.uint8)).save(folder / "t.png")
    scripted = run_cli("fuse", *folders, "-o", tmp_path / "out", "-m", "lywnet", "--json", "-q")
    assert scripted.code == 0, scripted.stderr
    rows = {row["pair"]: row for row in json.loads(scripted.stdout)["pairs"]}
    assert rows["z"]["blank_pair_made_up"] is True and rows["t"]["blank_pair_made_up"] is False
    assert scripted.stderr.startswith("notice: pair z: both inputs are blank")
    quiet = run_cli("fuse", mri, ct, "-o", tmp_path / "g.png", "-m", "average", "-q", "--json")
    assert quiet.code == 0 and quiet.stderr == ""  # the average of two blacks is black
    assert json.loads(quiet.stdout)["pairs"][0]["blank_pair_made_up"] is False


@pytest.mark.parametrize("model", ["lywnet", "average"])
def test_a_volumes_blank_slices_are_counted(tmp_path: Path, run_cli, model: str) -> None:
    rng = np.random.default_rng(1)
    slices = rng.integers(0, 200, (3, 32, 32)).astype(np.int16)
    slices[0] = 0  # a blank end slice in both scans
    paths = []
    for name, images in (("t1", slices), ("pet", slices[:, ::-1])):
        paths.append(tmp_path / f"{name}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(from_axial_images(images, AFFINE), AFFINE), paths[-1])
    out = tmp_path / f"{model}.nii.gz"
    said = run_cli("fuse", *paths, "-o", out, "--kind", "pet", "-m", model, "-q", "--threads", "1", "--json")
    assert said.code == 0, said.stderr
    made_up = json.loads(said.stdout)["blank_slices_made_up"]
    if model == "average":
        assert said.stderr == "" and made_up == 0
    else:
        assert (
            said.stderr.startswith("notice: 1 of 3 axial slices: both inputs are blank after")
            and made_up == 1
        )
