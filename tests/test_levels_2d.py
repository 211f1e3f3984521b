"""2-D pairs: every grayscale image gets a window in its stored values (12-bit values in a 16-bit
PNG fill [0, 1]), a gray PET/SPECT gets a colour map, and both are said and can be overridden."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.errors import InputError
from medfuse_cli.io import read_image
from medfuse_cli.pipeline import ImageOptions, load_pair

TWELVE_BIT_RULE = "auto: 12-bit values in a 16-bit file"


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _ct16(examples: Path, folder: Path, name: str = "2004") -> Path:
    """The bundled 8-bit CT as a 16-bit PNG holding 12-bit values (x 16: 0..4080), as DICOM exports give."""
    ct = _gray(examples / "CT-MRI" / "CT" / f"{name}.png")
    assert ct.dtype == np.uint8 and ct.max() == 255
    path = folder / f"{name}.png"
    Image.fromarray(ct.astype(np.uint16) * 16).save(path)
    assert read_image(path).bit_depth == 16
    return path


def _gray_pet(examples: Path, folder: Path, name: str = "25022") -> Path:
    """The bundled pseudo-colour PET reduced to its luma (L), as a grayscale PET export."""
    path = folder / f"{name}.png"
    Image.open(examples / "PET-MRI" / "PET" / f"{name}.png").convert("L").save(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(result, output: Path, *words: str) -> None:
    """One ``error:`` line naming ``words``, exit 1, no traceback, nothing written."""
    assert result.code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not output.exists()


def test_12_bit_values_in_a_16_bit_ct_fill_the_window(examples: Path, tmp_path: Path, run_cli) -> None:
    mri = examples / "CT-MRI" / "MRI" / "2004.png"
    ct8 = examples / "CT-MRI" / "CT" / "2004.png"
    ct16 = _ct16(examples, tmp_path)
    reference = run_cli("fuse", mri, ct8, "-o", tmp_path / "ref.png", "-q")
    result = run_cli("fuse", mri, ct16, "-o", tmp_path / "fused.png", "--json")
    assert reference.code == 0 and result.code == 0, result.stderr
    fused = _gray(tmp_path / "fused.png").astype(float)
    expected = _gray(tmp_path / "ref.png").astype(float)
    assert fused.shape == expected.shape and fused.ndim == 2  # 8-bit MRI: an 8-bit gray output
    bone = _gray(ct8) >= 250
    assert bone.sum() > 100
    assert fused[bone].mean() >= 240  # scaled by 65535 it was ~55
    assert np.abs(fused - expected).mean() < 2
    pair = json.loads(result.stdout)["pairs"][0]
    assert pair["windows"]["second"] == {
        "low": 0.0,
        "high": 4095.0,
        "units": "stored values",
        "rule": TWELVE_BIT_RULE,
    }
    assert pair["windows"]["mri"]["rule"] == "auto: 8-bit range"
    assert pair["kind"] == "ct" and pair["kind_given"] is None and pair["checkpoint"] == "lwnet.ct"
    assert pair["colormap"] is None
    assert pair["second_image"]["read_as"] == "gray"  # existing keys stay
    line = run_cli("fuse", mri, ct16, "-o", tmp_path / "line.png").stderr
    assert f"CT window 0..4095 stored values ({TWELVE_BIT_RULE})" in line
    assert "MRI window" not in line  # the plain 8-bit range is not worth a word
    plain = run_cli("fuse", mri, ct8, "-o", tmp_path / "plain.png").stderr
    assert "window" not in plain


def test_the_automatic_window_rule_per_bit_depth(examples: Path, tmp_path: Path) -> None:
    mri = examples / "CT-MRI" / "MRI" / "2004.png"
    ct = _gray(examples / "CT-MRI" / "CT" / "2004.png").astype(np.uint16)
    cases = {"full16": (ct * 257, 65535.0, "auto: 16-bit range"), "ten": (ct * 4, 1023.0, None)}
    cases["low"] = (ct // 2, 255.0, "auto: 8-bit values in a 16-bit file")  # b = max(8, 7)
    for name, (values, high, rule) in cases.items():
        Image.fromarray(values).save(tmp_path / f"{name}.png")
        pair = load_pair(name, mri, tmp_path / f"{name}.png")
        window = pair.levels.second_window
        assert (window.low, window.high) == (0.0, high), name
        assert window.rule == (rule or "auto: 10-bit values in a 16-bit file")
        np.testing.assert_allclose(pair.functional_y, np.clip(values / high, 0, 1), atol=1e-6)
    # the default reading of 8-bit files is unchanged (evaluate and training rely on it)
    pair = load_pair("2004", mri, examples / "CT-MRI" / "CT" / "2004.png")
    assert np.array_equal(pair.anatomical_y, read_image(mri).pixels)
    assert np.array_equal(pair.functional_y, read_image(examples / "CT-MRI" / "CT" / "2004.png").pixels)


def test_bit_depth_of_the_output(examples: Path, tmp_path: Path) -> None:
    mri16 = tmp_path / "mri16.png"
    Image.fromarray(_gray(examples / "CT-MRI" / "MRI" / "2004.png").astype(np.uint16) * 16).save(mri16)
    ct16 = _ct16(examples, tmp_path)
    assert load_pair("a", mri16, ct16).bit_depth == 16  # both 16-bit gray: 16-bit output
    coloured = load_pair("b", mri16, ct16, options=ImageOptions(colormap="hot"))
    assert coloured.bit_depth == 8 and coloured.chroma is not None and coloured.kind == "functional"


def test_window_ct_changes_the_output_and_is_reported(examples: Path, tmp_path: Path, run_cli) -> None:
    mri = examples / "CT-MRI" / "MRI" / "2004.png"
    ct16 = _ct16(examples, tmp_path)
    auto = run_cli("fuse", mri, ct16, "-o", tmp_path / "auto.png", "-q")
    result = run_cli("fuse", mri, ct16, "-o", tmp_path / "win.png", "--window-ct", "500,2500", "--json")
    assert auto.code == 0 and result.code == 0, result.stderr
    assert not np.array_equal(_gray(tmp_path / "auto.png"), _gray(tmp_path / "win.png"))
    second = json.loads(result.stdout)["pairs"][0]["windows"]["second"]
    assert second == {"low": 500.0, "high": 2500.0, "units": "stored values", "rule": "--window-ct"}
    pair = load_pair("2004", mri, ct16, options=ImageOptions(window_ct="500,2500"))
    stored = _gray(ct16).astype(float)
    np.testing.assert_allclose(pair.functional_y, np.clip((stored - 500) / 2000, 0, 1), atol=1e-6)
    line = run_cli("fuse", mri, ct16, "-o", tmp_path / "line.png", "--window-ct", "500,2500").stderr
    assert "CT window 500..2500 stored values (--window-ct)" in line
    mri_line = run_cli("fuse", mri, ct16, "-o", tmp_path / "m.png", "--window-mri", "20,200").stderr
    assert "MRI window 20..200 stored values (--window-mri)" in mri_line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--window-ct", "brain"), ("Hounsfield",)),
        (("--window-ct", "3,1"), ("--window-ct", "LO < HI")),
        (("--window-functional", "0,100"), ("--window-functional", "CT")),  # a gray CT, no colour map
        (("--kind", "pet", "--window-ct", "0,100"), ("--window-ct", "PET")),
        (("--kind", "ct", "--colormap", "hot"), ("--colormap",)),
        (("--kind", "mr"), ("--kind",)),
    ],
)
def test_window_and_kind_options_that_do_not_fit_a_gray_ct_are_refused(
    args: tuple[str, ...], words: tuple[str, ...], examples: Path, tmp_path: Path, run_cli
) -> None:
    output = tmp_path / "out.png"
    result = run_cli(
        "fuse", examples / "CT-MRI" / "MRI" / "2004.png", _ct16(examples, tmp_path), "-o", output, *args
    )
    _refused(result, output, *words)


def test_a_gray_pet_given_a_colour_map_is_a_functional_pair(examples: Path, tmp_path: Path, run_cli) -> None:
    mri = examples / "PET-MRI" / "MRI" / "25022.png"
    pet = _gray_pet(examples, tmp_path)
    hot = run_cli("fuse", mri, pet, "-o", tmp_path / "hot.png", "--colormap", "hot", "--json")
    assert hot.code == 0, hot.stderr
    pair = json.loads(hot.stdout)["pairs"][0]
    assert pair["checkpoint"] == "lwnet.functional" and pair["kind"] == "functional"
    assert pair["colormap"] == "hot" and pair["kind_from"] == "--colormap hot"
    assert pair["second_image"]["read_as"] == "gray"  # the file; the colour map made it a PET
    assert pair["windows"]["second"]["rule"] == "auto: 8-bit range"
    fused = np.asarray(Image.open(tmp_path / "hot.png"))
    assert fused.ndim == 3 and fused.dtype == np.uint8
    assert (np.abs(fused[..., 0].astype(int) - fused[..., 2]) > 20).mean() > 0.05  # really coloured
    gray = run_cli("fuse", mri, pet, "-o", tmp_path / "gray.png", "--json")  # without options: a CT
    assert json.loads(gray.stdout)["pairs"][0]["checkpoint"] == "lwnet.ct"
    assert np.asarray(Image.open(tmp_path / "gray.png")).ndim == 2
    as_pet = run_cli("fuse", mri, pet, "-o", tmp_path / "pet.png", "--kind", "pet", "--json")
    assert as_pet.code == 0, as_pet.stderr
    assert _sha(tmp_path / "pet.png") == _sha(tmp_path / "hot.png")
    pair = json.loads(as_pet.stdout)["pairs"][0]
    assert pair["kind_given"] == "pet" and pair["kind_from"] == "--kind pet" and pair["colormap"] == "hot"
    jet = run_cli("fuse", mri, pet, "-o", tmp_path / "jet.png", "--kind", "spect", "--colormap", "jet")
    assert jet.code == 0 and _sha(tmp_path / "jet.png") != _sha(tmp_path / "hot.png")
    assert "SPECT (--kind spect)" in jet.stderr and "colour map jet" in jet.stderr
    windowed = run_cli(
        "fuse", mri, pet, "-o", tmp_path / "w.png", "--kind", "pet", "--window-functional", "0,128"
    )
    assert windowed.code == 0 and _sha(tmp_path / "w.png") != _sha(tmp_path / "pet.png")
    assert "PET window 0..128 stored values (--window-functional)" in windowed.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--kind", "ct"), ("--kind ct", "colour")),
        (("--colormap", "hot"), ("--colormap", "already coloured")),
        (("--window-functional", "0,100"), ("--window-functional", "RGB")),
        (("--window-ct", "0,100"), ("--window-ct", "RGB")),
    ],
)
def test_options_for_gray_images_are_refused_on_a_colour_pet(
    args: tuple[str, ...], words: tuple[str, ...], examples: Path, tmp_path: Path, run_cli
) -> None:
    folder = examples / "PET-MRI"
    output = tmp_path / "out.png"
    result = run_cli("fuse", folder / "MRI" / "25022.png", folder / "PET" / "25022.png", "-o", output, *args)
    _refused(result, output, *words)


def test_a_window_on_an_rgb_mri_is_refused(examples: Path, tmp_path: Path, run_cli) -> None:
    gray = _gray(examples / "CT-MRI" / "MRI" / "2004.png")
    marked = np.repeat(gray[..., None], 3, axis=-1).copy()
    marked[0:10, 0:10] = (0, 255, 0)  # a few coloured marks: read by its Y
    Image.fromarray(marked, "RGB").save(tmp_path / "mri.png")
    ct = examples / "CT-MRI" / "CT" / "2004.png"
    assert run_cli("fuse", tmp_path / "mri.png", ct, "-o", tmp_path / "ok.png", "-q").code == 0
    output = tmp_path / "out.png"
    result = run_cli("fuse", tmp_path / "mri.png", ct, "-o", output, "--window-mri", "0,100")
    _refused(result, output, "--window-mri", "RGB")


def test_a_colour_pet_with_kind_pet_is_unchanged(examples: Path, tmp_path: Path, run_cli) -> None:
    folder = examples / "PET-MRI"
    mri, pet = folder / "MRI" / "25022.png", folder / "PET" / "25022.png"
    plain = run_cli("fuse", mri, pet, "-o", tmp_path / "plain.png", "--json")
    given = run_cli("fuse", mri, pet, "-o", tmp_path / "given.png", "--kind", "pet", "--json")
    assert plain.code == 0 and given.code == 0
    assert _sha(tmp_path / "plain.png") == _sha(tmp_path / "given.png")
    pair = json.loads(given.stdout)["pairs"][0]
    assert pair["windows"]["second"] is None and pair["colormap"] is None and pair["kind_given"] == "pet"
    assert json.loads(plain.stdout)["pairs"][0]["kind_from"] == "read as colour (auto)"


def test_a_gray_16_bit_ct_is_windowed_before_it_is_resized(examples: Path, tmp_path: Path) -> None:
    ct = _gray(examples / "CT-MRI" / "CT" / "2004.png")
    small = tmp_path / "small.png"
    Image.fromarray(ct[::2, ::2].astype(np.uint16) * 16).save(small)
    pair = load_pair("2004", examples / "CT-MRI" / "MRI" / "2004.png", small, resize=True)
    assert pair.functional_y.shape == (256, 256) and pair.levels.second_window.high == 4095.0
    assert pair.functional_y.max() > 0.95  # the 12-bit rule, not 4080 / 65535
    with pytest.raises(InputError, match="Hounsfield"):
        load_pair("2004", examples / "CT-MRI" / "MRI" / "2004.png", small, resize=True,
                  options=ImageOptions(window_ct="bone"))  # fmt: skip


def test_a_folder_run_applies_the_options_to_every_pair(examples: Path, tmp_path: Path, run_cli) -> None:
    mri_dir, pet_dir = tmp_path / "MRI", tmp_path / "PET"
    mri_dir.mkdir()
    pet_dir.mkdir()
    names = ("25022", "30066")
    for name in names:
        (mri_dir / f"{name}.png").write_bytes((examples / "PET-MRI" / "MRI" / f"{name}.png").read_bytes())
        _gray_pet(examples, pet_dir, name)
    result = run_cli("fuse", mri_dir, pet_dir, "-o", tmp_path / "out", "--colormap", "hot", "--json")
    assert result.code == 0, result.stderr
    pairs = json.loads(result.stdout)["pairs"]
    assert len(pairs) == 2
    assert all(p["colormap"] == "hot" and p["checkpoint"] == "lwnet.functional" for p in pairs)
    for name in names:
        fused = tmp_path / "out" / f"{name}.png"
        assert np.asarray(Image.open(fused)).ndim == 3
        single = tmp_path / f"single-{name}.png"
        args = ("fuse", mri_dir / f"{name}.png", pet_dir / f"{name}.png", "-o", single, "--colormap", "hot")
        assert run_cli(*args, "-q").code == 0
        assert _sha(single) == _sha(fused), name
    line = run_cli("fuse", mri_dir, pet_dir, "-o", tmp_path / "out2", "--kind", "pet").stderr
    assert "colour map hot ×2" in line and "lwnet.functional ×2" in line
    refused = run_cli("fuse", mri_dir, pet_dir, "-o", tmp_path / "out3", "--window-ct", "brain")
    _refused(refused, tmp_path / "out3", "Hounsfield")  # before any work: no folder is created
