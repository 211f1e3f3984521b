"""Read and write images, and pair two folders by file name.

Images come in as float32 arrays in [0, 1], shape (H, W) for grayscale or (H, W, 3) for RGB,
scaled by their real bit depth (8 or 16), so a 16-bit input is never silently clipped. An RGB
image whose three channels are equal is treated as grayscale. Outputs are PNGs written
atomically: a temporary file in the destination folder, then a rename.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image, UnidentifiedImageError

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import MedfuseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PLAIN_PNG = {(0, 8), (0, 16), (2, 8)}  # (IHDR colour type, bit depth): gray 8/16, RGB 8
PNG_SUB_FILTER = 16  # libpng's PNG_FILTER_SUB: each byte minus the same channel of the pixel to its left


@dataclass(frozen=True)
class LoadedImage:
    """Pixels in [0, 1] and the bit depth they were stored with."""

    pixels: np.ndarray
    bit_depth: int
    path: Path

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order people and PIL use."""
        return self.pixels.shape[1], self.pixels.shape[0]


def read_image(path: Path) -> LoadedImage:
    """Decode an 8/16-bit grayscale or 8-bit RGB image; anything else is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise MedfuseError(f"file not found: {path}")
    if path.is_dir():
        raise MedfuseError(f"expected an image file, got a folder: {path}")
    data = path.read_bytes()
    _refuse_16bit_colour_png(data, path)
    decoded = _decode_plain_png(data)
    if decoded is None:
        decoded = _decode_with_pillow(data, path)
    pixels, bit_depth = decoded
    if (
        pixels.ndim == 3
        and np.array_equal(pixels[..., 0], pixels[..., 1])
        and np.array_equal(pixels[..., 0], pixels[..., 2])
    ):
        pixels = pixels[..., 0]
    scale = 255.0 if bit_depth == 8 else 65535.0
    return LoadedImage(pixels=(pixels.astype(np.float32) / scale), bit_depth=bit_depth, path=path)


def _decode_plain_png(data: bytes) -> tuple[np.ndarray, int] | None:
    """The common case, fast: an 8/16-bit gray or 8-bit RGB PNG decoded by imagecodecs
    (libspng, ~70 % of Pillow's time), or None to leave the file to Pillow.

    Everything else (other formats, palettes, alpha, low bit depths, transparency chunks that
    decode to an alpha channel, and files the fast decoder rejects) goes to Pillow, whose
    messages say what is wrong with them.
    """
    if _png_header(data) not in _PLAIN_PNG:
        return None
    try:
        pixels = imagecodecs.png_decode(data)
    except imagecodecs.PngError:
        return None
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3 and bit_depth == 8):
        return pixels, bit_depth
    return None


def _decode_with_pillow(data: bytes, path: Path) -> tuple[np.ndarray, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _pixels_of(image, path)
    except UnidentifiedImageError:
        raise MedfuseError(f"not an image (or a format medfuse cannot read): {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MedfuseError(f"corrupt or truncated image {path}: {_first_line(exc)}") from None


def _pixels_of(image: Image.Image, path: Path) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode in ("L", "RGB"):
        return np.asarray(image), 8
    if mode == "YCbCr" or mode == "CMYK":
        return np.asarray(image.convert("RGB")), 8
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image).astype(np.uint16), 16
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise MedfuseError(f"{path}: 32-bit integer pixels outside 0..65535 are not supported")
        return values.astype(np.uint16), 16
    if mode in ("RGBA", "LA", "P", "PA", "1"):
        what = {"P": "is a palette image", "PA": "is a palette image", "1": "is a 1-bit image"}
        raise MedfuseError(
            f"{path} {what.get(mode, 'has an alpha channel')} ({mode}); "
            "convert it to plain grayscale or RGB first"
        )
    raise MedfuseError(f"{path}: unsupported pixel format {mode}")


def _png_header(data: bytes) -> tuple[int, int] | None:
    """(IHDR colour type, bit depth) of PNG bytes, or None when ``data`` is not a PNG."""
    if data[:8] != _PNG_SIGNATURE or len(data) < 26:
        return None
    return data[25], data[24]


def _refuse_16bit_colour_png(data: bytes, path: Path) -> None:
    """Pillow would quietly drop a 16-bit colour PNG to 8 bits: say so instead."""
    if _png_header(data) in {(2, 16), (6, 16)}:  # RGB or RGBA, 16 bits per channel
        raise MedfuseError(f"{path} is a 16-bit colour PNG; medfuse reads colour images as 8-bit only")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_integer(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """Round [0, 1] floats to uint8 or uint16 (clipping only values outside [0, 1])."""
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.clip(np.rint(pixels.astype(np.float64) * top), 0, top).astype(dtype)


def encode_png(pixels: np.ndarray, bit_depth: int) -> bytes:
    """PNG bytes of a (H, W) or (H, W, 3) image in [0, 1]; colour is always 8-bit.

    Encoded by imagecodecs (libpng with zlib-ng) at deflate level 1 with the Sub filter on every
    row: 3.4 ms for a 256×256 fused colour image where Pillow, which tries all five PNG filters
    on every row, takes 6.0 ms at level 1; files come out ~2 % larger. In a folder run the encoder
    is the largest single cost per pair (see BENCHMARKS.md).
    """
    if pixels.ndim == 3 and bit_depth != 8:
        raise ValueError("colour PNGs are written with 8 bits per channel")
    return bytes(imagecodecs.png_encode(to_integer(pixels, bit_depth), level=1, filter=PNG_SUB_FILTER))


def write_png(destination: Path | str, pixels: np.ndarray, bit_depth: int) -> None:
    """Write a PNG atomically, or to standard output when ``destination`` is ``-``."""
    data = encode_png(pixels, bit_depth)
    if str(destination) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    write_atomically(Path(destination), lambda tmp: tmp.write_bytes(data))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedfuseError(f"folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pair_folders(first: Path, second: Path) -> list[tuple[str, Path, Path]]:
    """Pair the images of two folders by file stem; any image without a partner is an error."""
    first_files = {p.stem: p for p in list_images(first)}
    second_files = {p.stem: p for p in list_images(second)}
    if not first_files:
        raise MedfuseError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {first}")
    if not second_files:
        raise MedfuseError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {second}")
    only_first = sorted(set(first_files) - set(second_files))
    only_second = sorted(set(second_files) - set(first_files))
    if only_first or only_second:
        parts = []
        if only_first:
            parts.append(f"{len(only_first)} only in {first} (e.g. {', '.join(only_first[:3])})")
        if only_second:
            parts.append(f"{len(only_second)} only in {second} (e.g. {', '.join(only_second[:3])})")
        raise MedfuseError("folders do not pair up by file name: " + "; ".join(parts))
    return [(stem, first_files[stem], second_files[stem]) for stem in sorted(first_files)]
