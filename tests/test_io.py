"""Reading and writing images: bit depths, colour handling, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.errors import MedfuseError
from medfuse_cli.io import _decode_plain_png, _decode_with_pillow, read_image, write_png
from medfuse_cli.pairs import pair_folders


def test_8bit_gray_scaled_to_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8)).save(path)
    image = read_image(path)
    assert image.bit_depth == 8 and not image.is_color
    np.testing.assert_allclose(image.pixels, [[0, 128 / 255, 1]], rtol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_keeps_its_range(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 300, 65535]], dtype=np.uint16)
    path = tmp_path / f"g{suffix}"
    Image.fromarray(values).save(path)
    image = read_image(path)
    assert image.bit_depth == 16
    np.testing.assert_allclose(image.pixels, values / 65535, rtol=1e-6)


def test_rgb_with_equal_channels_is_gray(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.fromarray(np.full((4, 5, 3), 77, dtype=np.uint8)).save(path)
    image = read_image(path)
    assert not image.is_color and image.pixels.shape == (4, 5)


def test_jpeg_colour_reads_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    assert read_image(path).is_color


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: Image.new("RGBA", (4, 4)).save(p), "alpha channel"),
        (lambda p: Image.new("P", (4, 4)).save(p), "palette"),
        (lambda p: p.write_text("not an image"), "not an image"),
    ],
)
def test_unsupported_images_are_one_line_errors(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(MedfuseError, match=message):
        read_image(path)


def test_truncated_png_is_reported(tmp_path: Path, examples: Path) -> None:
    source = examples / "CT-MRI" / "MRI" / "2004.png"
    path = tmp_path / "cut.png"
    path.write_bytes(source.read_bytes()[:2000])
    with pytest.raises(MedfuseError, match="corrupt or truncated"):
        read_image(path)


def test_16bit_colour_png_is_refused_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "c16.png"
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (4).to_bytes(4, "big") * 2 + bytes([16, 2])
    path.write_bytes(header + b"\x00" * 64)
    with pytest.raises(MedfuseError, match="16-bit colour"):
        read_image(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(MedfuseError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(MedfuseError, match="folder"):
        read_image(tmp_path)


def test_write_png_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    write_png(tmp_path / "out.png", pixels, 16)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    back = read_image(tmp_path / "out.png")
    assert back.bit_depth == 16
    np.testing.assert_allclose(back.pixels, pixels, atol=1 / 65535)


def test_pairing_by_name_reports_unmatched(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for name in ("1", "2", "3"):
        Image.new("L", (2, 2)).save(first / f"{name}.png")
    Image.new("L", (2, 2)).save(second / "1.png")
    Image.new("L", (2, 2)).save(second / "9.png")
    with pytest.raises(MedfuseError, match=r"2 only in .*a .*2, 3.*1 only in .*b .*9"):
        pair_folders(first, second)
    (first / "2.png").unlink()
    (first / "3.png").unlink()
    (second / "9.png").unlink()
    assert [name for name, _, _ in pair_folders(first, second)] == ["1"]


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(MedfuseError, match="no images"):
        pair_folders(tmp_path / "a", tmp_path / "b")


def test_outputs_get_ordinary_file_permissions(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (0600); the result must look like any other new file."""
    write_png(tmp_path / "out.png", np.zeros((4, 4), np.float32), 8)
    (tmp_path / "plain.png").write_bytes(b"")  # what open() gives under this umask
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == (tmp_path / "plain.png").stat().st_mode & 0o777


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((23, 31), np.uint8), ((23, 31), np.uint16), ((23, 31, 3), np.uint8)],
)
def test_fast_png_path_reads_what_pillow_reads(tmp_path: Path, shape: tuple, dtype: type) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    fast = _decode_plain_png(data)
    assert fast is not None  # gray 8/16-bit and 8-bit RGB take the fast decoder
    slow = _decode_with_pillow(data, path)
    assert fast[1] == slow[1] and fast[0].dtype == slow[0].dtype
    np.testing.assert_array_equal(fast[0], slow[0])


def test_fast_png_path_leaves_palettes_and_alpha_to_pillow(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "palette.png")
    for name in ("alpha.png", "palette.png"):
        assert _decode_plain_png((tmp_path / name).read_bytes()) is None
        with pytest.raises(MedfuseError, match=r"palette|alpha"):
            read_image(tmp_path / name)
