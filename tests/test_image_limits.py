"""Decompression bombs and hostile headers: one pixel limit for every decoder, checked first.

The hostile files are built here from a few bytes: a PNG whose IHDR claims 100000x100000 (the
issue's 68-byte file, less its IDAT), and a ~0.9 MB PNG that inflates to 30000x30000 zeros
(900 MB) made of one compressed block repeated, so building it costs nothing either.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from medfuse_cli.errors import InputError
from medfuse_cli.io import DEFAULT_MAX_PIXELS, read_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: length, type, body and the CRC decoders check."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def ihdr(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))


def header_only_png(width: int, height: int) -> bytes:
    """Signature, IHDR and IEND: a size claim with no pixels behind it."""
    return PNG_SIGNATURE + ihdr(width, height) + chunk(b"IEND", b"")


def zeros_png(width: int, height: int) -> bytes:
    """A real 8-bit gray PNG of zeros, at deflate's ~1030:1 best, built without compressing it.

    Every filtered row is ``width + 1`` zero bytes; a few rows compressed once and fully
    flushed (so each copy stands alone) are repeated, and the zlib trailer's Adler-32 of n
    zeros is written out: (n mod 65521) << 16 | 1.
    """
    rows = math.gcd(height, 100)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes((width + 1) * rows)) + compressor.flush(zlib.Z_FULL_FLUSH)
    last_block = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    adler = (((width + 1) * height % 65521) << 16) | 1
    stream = b"\x78\xda" + block * (height // rows) + last_block + adler.to_bytes(4, "big")
    return PNG_SIGNATURE + ihdr(width, height) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def gray_png(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def never_decoded(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], bytes]:
    """``forbid(data)``: the test fails the moment imagecodecs or Pillow is handed ``data``.

    A bomb that got past the check fails fast here instead of taking gigabytes of a shared
    machine.
    """
    forbidden: list[bytes] = []
    png_decode, pillow_open = imagecodecs.png_decode, Image.open

    def guarded_png_decode(data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        if bytes(data) in forbidden:
            pytest.fail("imagecodecs.png_decode was handed a bomb")
        return png_decode(data, *args, **kwargs)

    def guarded_open(fp: object, *args: object, **kwargs: object) -> Image.Image:
        if isinstance(fp, io.BytesIO) and fp.getvalue() in forbidden:
            pytest.fail("PIL.Image.open was handed a bomb")
        return pillow_open(fp, *args, **kwargs)

    monkeypatch.setattr(imagecodecs, "png_decode", guarded_png_decode)
    monkeypatch.setattr(Image, "open", guarded_open)

    def forbid(data: bytes) -> bytes:
        forbidden.append(data)
        return data

    return forbid


def test_the_builders_make_real_pngs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bombs below are refused for their size, not for being malformed."""
    assert imagecodecs.png_decode(zeros_png(70, 300)).shape == (300, 70)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert Image.open(io.BytesIO(header_only_png(100_000, 100_000))).size == (100_000, 100_000)


def test_default_limit_is_pillows() -> None:
    assert DEFAULT_MAX_PIXELS == 1024**3 // 4 // 3 == 89_478_485


def test_header_bomb_is_refused_before_decoding(tmp_path: Path, never_decoded: Callable) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(never_decoded(header_only_png(100_000, 100_000)))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path} is 100000x100000 = 10,000,000,000 pixels, above the limit of 89,478,485 "
        "(a decompression bomb, or pass --max-pixels N to allow it)"
    )


def test_deflate_bomb_is_refused_quickly_before_decoding(tmp_path: Path, never_decoded: Callable) -> None:
    started = time.perf_counter()
    data = never_decoded(zeros_png(30_000, 30_000))
    assert len(data) < 1_000_000  # small on disk, 900 MB decoded (3.6 GB as float32)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"30000x30000 = 900,000,000 pixels, above the limit"):
        read_image(path)
    assert time.perf_counter() - started < 3


def test_the_limit_can_be_raised_and_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    path.write_bytes(zeros_png(300, 200))
    with pytest.raises(InputError, match=r"300x200 = 60,000 pixels, above the limit of 59,999"):
        read_image(path, max_pixels=59_999)
    image = read_image(path, max_pixels=60_000)
    assert image.pixels.shape == (200, 300) and image.pixels.max() == 0


@pytest.mark.parametrize("side", [9459, 9460])
def test_default_limit_boundary_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int
) -> None:
    """9459² is under Pillow's default and reaches the decoder; 9460² is refused before it."""

    def reached_decoder(*_: object) -> None:
        raise AssertionError("reached the decoder")

    monkeypatch.setattr(imagecodecs, "png_decode", reached_decoder)
    path = tmp_path / "edge.png"
    path.write_bytes(header_only_png(side, side))
    expected = (AssertionError, "reached the decoder") if side == 9459 else (InputError, "above the limit")
    with pytest.raises(expected[0], match=expected[1]):
        read_image(path)


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_pillow_formats_get_the_same_limit(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"image{suffix}"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    refusal = f"{path} is above the limit of 4,095 pixels (a decompression bomb"
    with pytest.raises(InputError, match=f"^{re.escape(refusal)}"):
        read_image(path, max_pixels=4095)
    assert read_image(path, max_pixels=4096).pixels.shape == (64, 64)


def test_pillows_global_neither_bypasses_nor_contradicts_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "image.tif"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's check switched off
    with pytest.raises(InputError, match="above the limit of 1,000"):
        read_image(path, max_pixels=1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # stricter than ours
    assert read_image(path).pixels.shape == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 100  # put back after the decode


def test_pillows_warning_band_is_refused_without_a_warning(tmp_path: Path) -> None:
    """4096 pixels is between 1x and 2x a limit of 3000: Pillow alone would only warn."""
    path = tmp_path / "image.tif"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="above the limit of 3,000"):
            read_image(path, max_pixels=3000)
    assert not caught


def test_an_icon_is_not_decoded_inside_image_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ICO's directory says 16x16, but Image.open decodes its embedded 64x64 PNG: Pillow's own
    check, at our limit, must stop that before the PNG is decoded."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buffer, "PNG")
    embedded = buffer.getvalue()
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(embedded), 22)  # at offset 6 + 16
    directory = struct.pack("<HHH", 0, 1, 1) + entry
    path = tmp_path / "icon.ico"
    path.write_bytes(directory + embedded)

    def decoded(*_: object) -> None:
        raise AssertionError("the embedded PNG was decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", decoded)
    with pytest.raises(InputError, match="above the limit of 1,000"):
        read_image(path, max_pixels=1000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PNG_SIGNATURE, r"PNG header \(IHDR\) is missing or cut short"),
        (PNG_SIGNATURE + ihdr(4, 4)[:12], r"PNG header \(IHDR\) is missing or cut short"),
        (PNG_SIGNATURE + chunk(b"IDAT", zlib.compress(bytes(20))), r"PNG header \(IHDR\) is missing"),
        (PNG_SIGNATURE + b"\x00\x00\x00\x05IHDR" + bytes(30), r"PNG header \(IHDR\) is missing"),
        (header_only_png(0, 4), "corrupt image .* its header claims 0x4 pixels"),
        (header_only_png(1, 2**31), "corrupt image .* its header claims 1x2147483648 pixels"),
        (ihdr(4, 4), "not an image"),  # no signature: Pillow's verdict
        (header_only_png(4, 4)[:29] + b"\x00\x00\x00\x00" + chunk(b"IEND", b""), "not an image"),  # IHDR CRC
        (PNG_SIGNATURE + ihdr(4, 4) + chunk(b"IDAT", b"garbage!") + chunk(b"IEND", b""), "corrupt"),
        (zeros_png(64, 64)[:60], "corrupt or truncated image .* truncated"),
    ],
    ids=[
        "signature-only",
        "ihdr-cut-short",
        "ihdr-missing",
        "ihdr-wrong-length",
        "zero-width",
        "height-beyond-png",
        "no-signature",
        "ihdr-bad-crc",
        "idat-not-deflate",
        "cut-inside-idat",
    ],
)
def test_hostile_headers_are_one_line_errors(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "hostile.png"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message) as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("failure", [RuntimeError("decoder bug"), ValueError("bad message bytes")])
def test_fast_decoder_failures_fall_back_to_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """What imagecodecs raises besides PngError (a UnicodeDecodeError when it cannot phrase its
    own error, say) leaves the file to Pillow instead of escaping."""

    def png_decode(*_: object) -> None:
        raise failure

    monkeypatch.setattr(imagecodecs, "png_decode", png_decode)
    path = gray_png(tmp_path / "g.png", seed=0)
    np.testing.assert_array_equal(read_image(path).pixels * 255, np.asarray(Image.open(path)))


def test_pillow_refusals_are_not_wrapped_twice(tmp_path: Path) -> None:
    """read_image's own one-line errors pass through the handler for Pillow's failures as they are."""
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 4)).save(path)
    with pytest.raises(InputError, match=f"^{re.escape(str(path))} has an alpha channel"):
        read_image(path)


def test_running_out_of_memory_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def png_decode(*_: object) -> None:
        raise MemoryError

    monkeypatch.setattr(imagecodecs, "png_decode", png_decode)
    path = gray_png(tmp_path / "g.png", seed=0)
    with pytest.raises(InputError, match=f"^{re.escape(f'not enough memory to decode {path}')}$"):
        read_image(path)


def test_cli_refuses_a_bomb_in_one_line(tmp_path: Path, run_cli: Callable, never_decoded: Callable) -> None:
    mri = gray_png(tmp_path / "mri.png", seed=0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(never_decoded(header_only_png(100_000, 100_000)))
    out = tmp_path / "fused.png"
    result = run_cli("fuse", mri, bomb, "-o", out, "-m", "average")
    assert result.code == 1
    assert result.stderr.startswith(f"error: {bomb} is 100000x100000 = 10,000,000,000 pixels")
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()


def test_folder_run_writes_the_good_pairs_and_names_the_bomb(
    tmp_path: Path, run_cli: Callable, never_decoded: Callable
) -> None:
    mri_dir, functional_dir, out = tmp_path / "MRI", tmp_path / "PET", tmp_path / "out"
    mri_dir.mkdir()
    functional_dir.mkdir()
    for seed, name in enumerate(("a", "b", "c")):
        gray_png(mri_dir / f"{name}.png", seed)
    gray_png(functional_dir / "a.png", seed=10)
    gray_png(functional_dir / "b.png", seed=11)
    (functional_dir / "c.png").write_bytes(never_decoded(zeros_png(30_000, 30_000)))
    result = run_cli("fuse", mri_dir, functional_dir, "-o", out, "--json", "-m", "average")
    assert result.code == 1
    summary = json.loads(result.stdout)
    assert summary["written"] == 2
    [failed] = summary["failed"]
    assert failed["pair"] == "c"
    assert failed["error"].startswith(f"{functional_dir / 'c.png'} is 30000x30000 = 900,000,000 pixels")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
