"""Read and write image files (how they are laid out in folders is ``medfuse_cli.pairs``).

Images come in as float32 arrays in [0, 1], shape (H, W) for grayscale or (H, W, 3) for RGB,
scaled by their real bit depth (8 or 16), so a 16-bit input is never silently clipped. An RGB
image whose three channels are equal is treated as grayscale. Outputs are PNGs written
atomically (``medfuse_cli.atomic``): a temporary file in the destination folder, then published
under its name in one step.

Every decoder is held to one pixel limit, ``DEFAULT_MAX_PIXELS`` unless raised, checked from the
file's header before any pixel is decoded: a few bytes can claim, or deflate to, gigabytes.
"""

from __future__ import annotations

import io
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import imagecodecs
import numpy as np
from PIL import Image, UnidentifiedImageError

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import InputError, MedfuseError, OutputError

# Pillow's own default limit (1024**3 // 4 // 3: 256 MiB of 24-bit pixels, about 9459x9459),
# written out rather than read from PIL.Image so that neither a Pillow upgrade nor another
# module's change to that global moves ours. Scans are 256..1024 pixels a side, so only a
# decompression bomb comes near it; an RGB image at the limit is still ~1 GiB as float32.
DEFAULT_MAX_PIXELS = 89_478_485
_MAX_SIDE = 2**31 - 1  # the largest width or height PNG allows; no real image of any format nears it
_BOMB_HINT = "(a decompression bomb, or pass --max-pixels N to allow it)"
# PIL.Image.MAX_IMAGE_PIXELS is one global: folder runs decode on worker threads, so one decode
# at a time sets it.
_PILLOW_LIMIT_LOCK = threading.Lock()

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = 29  # signature (8), IHDR length and type (8), IHDR data (13); decoders check its CRC
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
        """True for (H, W, 3) pixels (an RGB file whose channels are not all equal)."""
        return self.pixels.ndim == 3

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order people and PIL use."""
        return self.pixels.shape[1], self.pixels.shape[0]


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an 8/16-bit grayscale or 8-bit RGB image; anything else is a one-line error.

    Args:
        path: a PNG, JPEG, TIFF or other file Pillow reads.
        max_pixels: the most pixels (width × height, >= 1) an image may have, checked from its
            header before any pixel is decoded; raise it to read a large but legitimate image.

    Returns:
        The pixels as float32 in [0, 1], shape (H, W) or (H, W, 3), and their stored bit depth.

    Raises:
        InputError: a missing file, a folder, a device or pipe; an image above ``max_pixels`` or whose header
            is truncated or claims a zero or absurd size; an unsupported or corrupt image; not
            enough memory to decode it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a folder: {path}")
    if not path.is_file():  # a device, FIFO or socket (e.g. /dev/zero) has no end to read to
        raise InputError(f"expected an image file, got a device or pipe: {path}")
    data = path.read_bytes()
    if data.startswith(_PNG_SIGNATURE):
        _check_png_header(data, path, max_pixels)
    try:
        decoded = _decode_plain_png(data)
        if decoded is None:
            decoded = _decode_with_pillow(data, path, max_pixels)
        pixels, bit_depth = decoded
        if (
            pixels.ndim == 3
            and np.array_equal(pixels[..., 0], pixels[..., 1])
            and np.array_equal(pixels[..., 0], pixels[..., 2])
        ):
            pixels = pixels[..., 0]
        scale = 255.0 if bit_depth == 8 else 65535.0
        return LoadedImage(pixels=(pixels.astype(np.float32) / scale), bit_depth=bit_depth, path=path)
    except MemoryError:
        raise InputError(f"not enough memory to decode {path}") from None


def _decode_plain_png(data: bytes) -> tuple[np.ndarray, int] | None:
    """The common case, fast: an 8/16-bit gray or 8-bit RGB PNG decoded by imagecodecs
    (libspng, ~70 % of Pillow's time), or None to leave the file to Pillow.

    Everything else (other formats, palettes, alpha, low bit depths, transparency chunks that
    decode to an alpha channel, and files the fast decoder rejects) goes to Pillow, whose
    messages say what is wrong with them. The decoder rejects with ``PngError`` (a
    RuntimeError) or, when it cannot even phrase the error, a ValueError (UnicodeDecodeError);
    a MemoryError is left to ``read_image``, as Pillow would run out of memory too.
    """
    header = _png_header(data)
    if header is None or (header.colour_type, header.bit_depth) not in _PLAIN_PNG:
        return None
    try:
        pixels = imagecodecs.png_decode(data)
    except (RuntimeError, ValueError):
        return None
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3 and bit_depth == 8):
        return pixels, bit_depth
    return None


def _decode_with_pillow(
    data: bytes, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, int]:
    """Decode with Pillow, its decompression-bomb check set to ``max_pixels`` for this decode.

    ``Image.open`` reads the header (and Pillow checks its size there), but some plugins decode
    inside it (ICO) or find sizes only while loading (TIFF tiles, GIF frames), and Pillow checks
    those too: so its check, not only ours on ``image.size``, must run at our limit.
    """
    try:
        with _pillow_pixel_limit(max_pixels), Image.open(io.BytesIO(data)) as image:
            _check_size(path, *image.size, max_pixels)
            image.load()
            return _pixels_of(image, path)
    except MedfuseError:
        raise  # already one line about this file: the clauses below would wrap it again
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path} is above the limit of {max_pixels:,} pixels {_BOMB_HINT}") from None
    except UnidentifiedImageError:
        raise InputError(f"not an image (or a format medfuse cannot read): {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"corrupt or truncated image {path}: {_first_line(exc)}") from None


@contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Run Pillow with its decompression-bomb limit at ``max_pixels``, whatever the global says.

    Pillow only warns between its ``MAX_IMAGE_PIXELS`` and twice that (and refuses above), so
    the warning is raised as an error here: the refusal comes at ``max_pixels`` itself.
    """
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


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
            raise InputError(f"{path}: 32-bit integer pixels outside 0..65535 are not supported")
        return values.astype(np.uint16), 16
    if mode in ("RGBA", "LA", "P", "PA", "1"):
        what = {"P": "is a palette image", "PA": "is a palette image", "1": "is a 1-bit image"}
        raise InputError(
            f"{path} {what.get(mode, 'has an alpha channel')} ({mode}); "
            "convert it to plain grayscale or RGB first"
        )
    raise InputError(f"{path}: unsupported pixel format {mode}")


class _PngHeader(NamedTuple):
    """The IHDR fields medfuse looks at before decoding."""

    width: int
    height: int
    bit_depth: int
    colour_type: int


def _png_header(data: bytes) -> _PngHeader | None:
    """The IHDR of PNG bytes, or None when ``data`` is not a PNG or its IHDR is missing or cut short."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < _IHDR_END:
        return None
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":  # the first chunk must be IHDR, 13 bytes long
        return None
    return _PngHeader(
        int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), data[24], data[25]
    )


def _check_png_header(data: bytes, path: Path, max_pixels: int) -> None:
    """Refuse, from its IHDR alone, a PNG that no decoder should be handed.

    Raises:
        InputError: no complete IHDR, a zero, absurd or too large size, or 16 bits per colour
            channel (Pillow would quietly drop those to 8 bits).
    """
    header = _png_header(data)
    if header is None:
        raise InputError(f"corrupt or truncated image {path}: its PNG header (IHDR) is missing or cut short")
    _check_size(path, header.width, header.height, max_pixels)
    if (header.colour_type, header.bit_depth) in {(2, 16), (6, 16)}:  # RGB or RGBA, 16 bits
        raise InputError(f"{path} is a 16-bit colour PNG; medfuse reads colour images as 8-bit only")


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse a size read from a header, before any pixel is decoded: zero, absurd, or too large."""
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise InputError(f"corrupt image {path}: its header claims {width}x{height} pixels")
    if width * height > max_pixels:
        raise InputError(
            f"{path} is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,} {_BOMB_HINT}"
        )


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
    integers = to_integer(pixels, bit_depth)
    try:
        return bytes(imagecodecs.png_encode(integers, level=1, filter=PNG_SUB_FILTER))
    except imagecodecs.PngError:
        # imagecodecs sizes its output buffer from the pixel count plus a margin, which a tiny,
        # incompressible image (256×1 of noise) overruns; Pillow's encoder has no such limit.
        buffer = io.BytesIO()
        Image.fromarray(integers).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def write_png(destination: Path | str, pixels: np.ndarray, bit_depth: int, *, overwrite: bool = True) -> None:
    """Write a PNG atomically, or to standard output when ``destination`` is ``-``.

    A file is published whole or not at all (``medfuse_cli.atomic.write_atomically``).

    Args:
        destination: the file, or ``-``.
        pixels, bit_depth: as ``encode_png`` takes them.
        overwrite: replace an existing file (the default: callers such as the benchmark rewrite
            one file on purpose); without it, a file that exists when the PNG is published, even
            one that appeared while it was encoded, is kept.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is false.
        OSError: the file cannot be written (nothing is left behind).
        BrokenPipeError, OutputError: as ``write_stdout``.
    """
    data = encode_png(pixels, bit_depth)
    if str(destination) == "-":
        write_stdout(data)
        return
    write_atomically(Path(destination), lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def write_stdout(data: bytes = b"") -> None:
    """Write ``data`` to standard output after what was printed before it, and flush both.

    Every byte is written or an error raised: a short write (a pipe whose reader left, a disk
    that filled up) is never a silently truncated output.

    Raises:
        BrokenPipeError: the reader has gone (``| head``): not a failure of the write, and the
            caller decides how to end (the CLI: quietly).
        OutputError: any other failure, e.g. a full disk behind a redirection.
    """
    try:
        sys.stdout.flush()
        stream, rest = sys.stdout.buffer, memoryview(data)
        while rest:  # unbuffered (python -u, PYTHONUNBUFFERED), a write may take only part of it
            rest = rest[stream.write(rest) :]
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None
