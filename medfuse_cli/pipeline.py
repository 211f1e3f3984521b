"""The one fusion flow: files -> Y (+ CbCr) -> fuser -> fused Y + CbCr -> files.

``load_pair`` reads a pair and decides, from the data, how to read its second image (colour or
gray; ``ColourReading`` says what was decided and why) and how its stored values become [0, 1]
(a ``windows.Window`` per grayscale image, a colour map for a grayscale PET/SPECT; ``Levels``
says what was decided and why, ``ImageOptions`` carries the user's overrides); ``Fusion`` holds
one named fuser with its checkpoints, device and thread count, and fuses batches of same-sized
pairs; ``compose`` puts the functional image's chroma back. ``fuse_folders`` runs the flow over
many pairs with decoding and encoding overlapped on worker threads. Every command (fuse,
evaluate, benchmark, train's label fusers) goes through ``Fusion``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from medfuse_cli.blank_pairs import blank_pairs_made_up, notice_blank_pairs
from medfuse_cli.color import chroma_offsets, merge_luma, split_luma
from medfuse_cli.colormaps import DEFAULT_COLORMAP, check_colormap, colormap_luma
from medfuse_cli.devices import resolve_device
from medfuse_cli.errors import InputError, MedfuseError
from medfuse_cli.export import WeightsRecord, loaded_record, weights_record
from medfuse_cli.fusers import check_weights_choice, get_fuser_spec, load_weights
from medfuse_cli.fusers.registry import CT, FUNCTIONAL, check_fuser_inputs
from medfuse_cli.io import DEFAULT_MAX_PIXELS, LoadedImage, read_image, write_png
from medfuse_cli.onnx_runtime import ONNXRUNTIME, TORCH, check_backend, require_onnx_packages
from medfuse_cli.onnx_runtime import session_for as onnx_session_for
from medfuse_cli.runtime import keep_heap_memory
from medfuse_cli.volume_fusion import SECOND_KINDS
from medfuse_cli.windows import CT_PRESETS, Window, parse_range

CHROMA_MODES = ("auto", "keep", "drop")
# What to do with an output file that exists: replace it (--overwrite), refuse it (that pair
# fails; the CLI's default), or skip the pair (--skip-existing).
EXISTING_OUTPUTS = ("replace", "refuse", "skip")
# A pixel counts as coloured when its Cb or Cr is more than this many 8-bit levels off gray:
# one level of rounding in one channel moves chroma by at most half a level.
CHROMA_LEVELS = 2.0
# An image is colour when at least this share of its pixels is coloured. Measured on the Harvard
# atlas: every pseudo-colour SPECT/PET slice has 8 % or more, every CT 0 %; a burned-in coloured
# orientation letter or a one-level slip in one channel stays far below 2 %.
COLOUR_SHARE = 0.02
# The units of a 2-D image's windows: the integers stored in the file (no rescale, no HU).
STORED_VALUES = "stored values"
# The window rules that are the plain full range of a file (not mentioned in summary lines).
# A float array handed to ``api.fuse`` (values in [0, 1], no file): ``LoadedImage.bit_depth``.
FLOAT_DEPTH = 32
PLAIN_FLOAT_RULE = "auto: float values in [0, 1] as given"
_PLAIN_RULES = (
    "auto: 8-bit range",
    "auto: 16-bit range",
    "auto: 8-bit range (Y of an RGB file)",
    PLAIN_FLOAT_RULE,
)


@dataclass(frozen=True)
class ColourReading:
    """How an image's colour was read, and the evidence.

    Attributes:
        is_color: True: its Cb/Cr are carried into the output; False: only its Y is used.
        coloured_share: share of pixels whose chroma is more than ``CHROMA_LEVELS`` off gray
            (what ``auto`` decides by).
        off_gray_pixels: pixels whose R, G, B are not all equal (their colour is dropped when
            the image is read as gray).
        decided_by: ``"auto"`` or the ``--chroma`` value that forced the reading.
    """

    is_color: bool
    coloured_share: float
    off_gray_pixels: int
    decided_by: str

    def describe(self) -> str:
        """E.g. ``gray (300 pixels' colour dropped, auto)`` or ``colour (36 % coloured pixels, auto)``."""
        if self.is_color:
            return f"colour ({100 * self.coloured_share:.3g} % coloured pixels, {self.decided_by})"
        if self.off_gray_pixels:
            return f"gray ({self.off_gray_pixels} pixels' colour dropped, {self.decided_by})"
        return f"gray ({self.decided_by})"

    def to_json(self) -> dict:
        """The reading as ``--json`` reports it (per pair)."""
        return {
            "read_as": "color" if self.is_color else "gray",
            "coloured_share": round(self.coloured_share, 6),
            "off_gray_pixels": self.off_gray_pixels,
            "decided_by": self.decided_by,
        }


@dataclass(frozen=True)
class ImageOptions:
    """What the user chose for a 2-D pair's levels and kind (None everywhere: automatic).

    Attributes:
        kind: ``pet``, ``spect`` or ``ct`` (``--kind``): a gray PET/SPECT is coloured with
            ``colormap`` (default ``hot``); a CT must be gray.
        window_mri, window_functional, window_ct: ``LO,HI`` in the image's stored values
            (``--window-*``); a CT preset name is refused (a 2-D image carries no Hounsfield units).
        colormap: a matplotlib colour map that turns a gray second image into a PET/SPECT.
    """

    kind: str | None = None
    window_mri: str | None = None
    window_functional: str | None = None
    window_ct: str | None = None
    colormap: str | None = None


def check_image_options(options: ImageOptions) -> ImageOptions:
    """``options`` if every value can apply to some 2-D pair; else one ``InputError``.

    Checks what needs no image: ``kind`` is pet, spect or ct; windows are ``LO,HI``; no CT
    preset; the colour map exists (matplotlib); no ``--colormap`` with ``--kind ct``.

    Raises:
        InputError: the first value that fails, named by its option.
    """
    if options.kind is not None and options.kind not in SECOND_KINDS:
        raise InputError(f"--kind takes {', '.join(SECOND_KINDS)}, got '{options.kind}'")
    if options.kind == "ct" and options.colormap is not None:
        raise InputError("--colormap applies to PET/SPECT; a CT pair is fused in gray")
    if options.window_ct in CT_PRESETS:
        raise InputError(
            f"--window-ct {options.window_ct} is in Hounsfield units, which a 2-D image (PNG, TIFF) does not "
            "carry; pass --window-ct LO,HI in its stored values"
        )
    for option, text in (
        ("--window-mri", options.window_mri),
        ("--window-functional", options.window_functional),
        ("--window-ct", options.window_ct),
    ):
        if text is not None:
            parse_range(text, option)
    if options.colormap is not None:
        check_colormap(options.colormap)
    return options


@dataclass(frozen=True)
class Levels:
    """How a pair's stored values became [0, 1] and what its second image was taken to be.

    Attributes:
        mri_window: the MRI's window, in stored values (``STORED_VALUES``).
        second_window: the second image's window in stored values; None when it was read as
            colour from an RGB file (its pixels are used as they are).
        colormap: the colour map that turned a gray second image into a PET/SPECT, or None.
        kind_given: the ``--kind`` value, or None.
        kind_from: how the kind was decided: ``--kind pet``, ``--colormap hot``, or
            ``read as gray (auto)`` (the colour reading, see ``ColourReading``).
        is_ct: True when the second image is fused as a CT (gray, ``lwnet.ct``).
    """

    mri_window: Window
    second_window: Window | None
    colormap: str | None
    kind_given: str | None
    kind_from: str
    is_ct: bool

    @property
    def plain_windows(self) -> bool:
        """True when every window is its file's plain full range (``is_plain_window``)."""
        return all(w is None or is_plain_window(w) for w in (self.mri_window, self.second_window))

    @property
    def second_label(self) -> str:
        """``CT``, ``PET``, ``SPECT`` (from ``--kind``) or ``PET/SPECT``: how messages name it."""
        if self.kind_given is not None:
            return self.kind_given.upper()
        return "CT" if self.is_ct else "PET/SPECT"

    def describe(self) -> list[str]:
        """The summary line's parts: the kind and how it was decided, every window that is not
        the plain full range of its file, and the colour map, e.g. ``CT window 0..4095 stored
        values (auto: 12-bit values in a 16-bit file)``."""
        # a kind read from the image's colour needs no reason here: the reading is said before it
        auto = self.kind_from.startswith("read as ")
        parts = [self.second_label if auto else f"{self.second_label} ({self.kind_from})"]
        if not is_plain_window(self.mri_window):
            parts.append(f"MRI window {self.mri_window.describe()}")
        if self.second_window is not None and not is_plain_window(self.second_window):
            parts.append(f"{self.second_label} window {self.second_window.describe()}")
        if self.colormap is not None:
            parts.append(f"colour map {self.colormap}")
        return parts

    def to_json(self) -> dict:
        """``windows``, ``colormap``, ``kind`` (``functional``/``ct``), ``kind_given``, ``kind_from``."""
        return {
            "windows": {
                "mri": self.mri_window.to_json(),
                "second": None if self.second_window is None else self.second_window.to_json(),
            },
            "colormap": self.colormap,
            "kind": CT if self.is_ct else FUNCTIONAL,
            "kind_given": self.kind_given,
            "kind_from": self.kind_from,
        }


def is_plain_window(window: Window) -> bool:
    """True for the automatic full range of an 8-bit or 16-bit file (nothing worth saying)."""
    return window.rule in _PLAIN_RULES


def stored_window(image: LoadedImage, given: str | None, option: str) -> Window:
    """The window of a grayscale image, in its stored values (``STORED_VALUES``).

    Automatic: 0..255 for an 8-bit file; for a 16-bit file 0..2**b - 1, where b = max(8, bits
    its largest stored value needs), so 12-bit values in a 16-bit PNG (DICOM exports, 0..4095)
    fill [0, 1] instead of its bottom 6 %.

    Args:
        image: an (H, W) grayscale image as ``read_image`` returns it.
        given: ``LO,HI`` in stored values (``option``'s text), or None for the automatic rule.
        option: the option ``given`` came from, for its rule and messages.

    Raises:
        InputError: a malformed ``given``.
    """
    if given is not None:
        return Window(*parse_range(given, option), STORED_VALUES, option)
    if image.bit_depth == FLOAT_DEPTH:
        return Window(0.0, 1.0, STORED_VALUES, PLAIN_FLOAT_RULE)
    if image.bit_depth == 8:
        return Window(0.0, 255.0, STORED_VALUES, "auto: 8-bit range")
    bits = max(8, int(stored_values(image).max()).bit_length())
    if bits >= 16:
        return Window(0.0, 65535.0, STORED_VALUES, "auto: 16-bit range")
    return Window(0.0, float(2**bits - 1), STORED_VALUES, f"auto: {bits}-bit values in a 16-bit file")


def stored_values(image: LoadedImage) -> np.ndarray:
    """The integers the file stores: ``pixels`` × 255 or × 65535, rounded (float64, same shape);
    a float array's own values."""
    if image.bit_depth == FLOAT_DEPTH:
        return image.pixels.astype(np.float64)
    top = 255.0 if image.bit_depth == 8 else 65535.0
    return np.rint(image.pixels.astype(np.float64) * top)


@dataclass(frozen=True)
class Pair:
    """An MRI and a functional (or CT) image, as Y planes plus the functional chroma.

    Attributes:
        name: the pair's name (the MRI's file stem).
        anatomical_y, functional_y: float32 (H, W) in [0, 1].
        chroma: float32 (H, W, 2) Cb/Cr in [0, 1] of the second image, None when read as gray.
        bit_depth: 8 or 16, the depth the fused PNG is written with.
        second: how the second image's colour was read (of the file, before any colour map).
        mri_coloured_share: share of coloured pixels in the MRI (their colour is not used).
        levels: the windows, colour map and kind decided for the pair (``load_pair`` sets it;
            None for pairs built by hand).
    """

    name: str
    anatomical_y: np.ndarray
    functional_y: np.ndarray
    chroma: np.ndarray | None
    bit_depth: int
    second: ColourReading
    mri_coloured_share: float = 0.0
    levels: Levels | None = None

    @property
    def is_color(self) -> bool:
        """True when the second image was read as colour (its chroma goes to the output)."""
        return self.chroma is not None

    @property
    def kind(self) -> str:
        """``"functional"`` (colour second image, or a gray one given a colour map) or ``"ct"``:
        which checkpoint it gets."""
        return FUNCTIONAL if self.is_color else CT


def check_chroma(mode: str) -> str:
    """``mode`` if it is a ``--chroma`` value (auto, keep, drop); else an ``InputError``."""
    if mode not in CHROMA_MODES:
        raise InputError(f"--chroma takes {', '.join(CHROMA_MODES)}, got '{mode}'")
    return mode


def read_colour(pixels: np.ndarray, chroma: str = "auto") -> ColourReading:
    """Decide whether an image in [0, 1] ((H, W) or (H, W, 3)) is read as colour.

    ``auto`` calls it colour when at least ``COLOUR_SHARE`` of its pixels are coloured, so a few
    coloured marks do not turn a CT into a SPECT; ``keep``/``drop`` force colour/gray.

    Raises:
        InputError: an unknown ``chroma`` mode.
    """
    check_chroma(chroma)
    share, off_gray = 0.0, 0
    if pixels.ndim == 3:
        offsets = chroma_offsets(pixels)
        share = float((offsets * 255.0 > CHROMA_LEVELS).mean())
        off_gray = int(np.count_nonzero((pixels != pixels[..., :1]).any(axis=-1)))
    if chroma == "auto":
        return ColourReading(share >= COLOUR_SHARE, share, off_gray, "auto")
    return ColourReading(chroma == "keep", share, off_gray, f"--chroma {chroma}")


def load_pair(
    name: str,
    mri_path: Path,
    functional_path: Path,
    resize: bool = False,
    chroma: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    options: ImageOptions = ImageOptions(),
) -> Pair:
    """Read both images, window them into [0, 1], and check they can be fused.

    Every grayscale image gets a ``windows.Window`` in its stored values (``stored_window``;
    ``options`` overrides it per image). The second image is a PET/SPECT (functional pair: its
    Y is fused, its Cb/Cr carried) when it is read as colour, or when it is gray and
    ``options`` gives a colour map or ``kind`` pet/spect (colour map ``hot`` unless another is
    given: applied after its window); otherwise a CT (gray output). ``Pair.levels`` says what
    was decided and why.

    Args:
        name: the pair's name, for messages and outputs.
        mri_path, functional_path: image files (PNG, JPEG, TIFF; 8/16-bit gray or 8-bit RGB).
        resize: fit the second image to the MRI's size (bicubic, in float, after its window)
            instead of refusing.
        chroma: how to read the second image's colour: ``auto``, ``keep`` or ``drop``.
        max_pixels: the decompression-bomb limit of each image (``--max-pixels``).
        options: kind, windows and colour map (``ImageOptions``; the default: all automatic).

    Returns:
        The ``Pair``: Y planes float32 (H, W) in [0, 1] at the MRI's size, chroma float32
        (H, W, 2) in [0, 1] or None, bit depth 16 only for a gray output of two 16-bit inputs.

    Raises:
        InputError: a colour MRI, sizes that differ without ``resize``, what ``read_image``
            refuses, and options that do not fit the pair: a window for an RGB image, a window
            for the other kind (``--window-ct`` for a PET/SPECT, ``--window-functional`` for a
            CT), ``--kind ct`` for a second image read as colour, ``--colormap`` for one that is
            already colour, and what ``check_image_options`` refuses.
    """
    check_image_options(options)
    mri = read_image(mri_path, max_pixels=max_pixels)
    functional = read_image(functional_path, max_pixels=max_pixels)
    return pair_from_images(name, mri, functional, resize, chroma, options)


def pair_from_images(
    name: str,
    mri: LoadedImage,
    functional: LoadedImage,
    resize: bool = False,
    chroma: str = "auto",
    options: ImageOptions = ImageOptions(),
) -> Pair:
    """``load_pair`` on images already decoded (files, or arrays: ``api.fuse``); same rules, same errors."""
    check_image_options(options)
    mri_reading = read_colour(mri.pixels)
    if mri_reading.is_color:
        raise InputError(
            f"{mri.path}: the MRI must be grayscale, but {100 * mri_reading.coloured_share:.3g} % of its "
            "pixels are coloured"
        )
    if mri.size != functional.size:
        if not resize:
            raise InputError(
                f"sizes differ: {mri.path} is {mri.size[0]}x{mri.size[1]}, {functional.path} is "
                f"{functional.size[0]}x{functional.size[1]} (register them, or pass --resize)"
            )
        if functional.is_color:  # a gray image is resized after its window, in [0, 1]
            functional = _resized(functional, mri.size)
    mri_window, anatomical_y = _windowed_y(mri, options.window_mri, "--window-mri")
    reading = read_colour(functional.pixels, chroma)
    colormap, kind_from = _second_kind(functional.path, reading, options)
    is_ct = not reading.is_color and colormap is None
    option = "--window-ct" if is_ct else "--window-functional"
    given = _second_window_text(functional, options, is_ct, kind_from)
    second_window, functional_y = _windowed_y(functional, given, option)
    if functional_y.shape != anatomical_y.shape:  # a gray image, resized after its window
        functional_y = _resized_plane(functional_y, mri.size)
    cbcr = None
    if reading.is_color:
        _, cbcr = split_luma(functional.pixels)
        if cbcr is None:  # --chroma keep on a gray image: neutral chroma (its window stays)
            cbcr = np.full((*functional_y.shape, 2), 0.5, np.float32)
        else:  # an RGB file read as colour: its pixels as they are, no window
            second_window = None
    if colormap is not None:
        functional_y, cbcr = colormap_luma(functional_y, colormap)
    levels = Levels(mri_window, second_window, colormap, options.kind, kind_from, is_ct)
    bit_depth = 16 if mri.bit_depth == 16 and functional.bit_depth == 16 and cbcr is None else 8
    return Pair(
        name, anatomical_y, functional_y, cbcr, bit_depth, reading, mri_reading.coloured_share, levels
    )


def _second_kind(path: Path, reading: ColourReading, options: ImageOptions) -> tuple[str | None, str]:
    """The colour map a gray second image gets (None: it stays gray, a CT, or it is colour
    already), and how its kind was decided; refuses options that contradict its reading."""
    kind = options.kind
    if reading.is_color:
        if kind == "ct":
            raise InputError(
                f"--kind ct, but {path} is read as {reading.describe()}; a CT is gray "
                "(pass --chroma drop to read its Y)"
            )
        if options.colormap is not None:
            if reading.decided_by != "auto":
                raise InputError(
                    f"--colormap colours a gray image, and {reading.decided_by} reads {path} as colour"
                )
            raise InputError(
                f"--colormap applies to a gray image, and {path} is already coloured "
                f"({100 * reading.coloured_share:.3g} % coloured pixels)"
            )
        return None, f"--kind {kind}" if kind else f"read as colour ({reading.decided_by})"
    if options.colormap is not None or kind in ("pet", "spect"):
        colormap = options.colormap or DEFAULT_COLORMAP
        return colormap, f"--kind {kind}" if kind else f"--colormap {colormap}"
    return None, f"--kind {kind}" if kind else f"read as gray ({reading.decided_by})"


def _second_window_text(image: LoadedImage, options: ImageOptions, is_ct: bool, kind_from: str) -> str | None:
    """The window option's text that applies to the second image (``--window-ct`` for a CT,
    ``--window-functional`` for a PET/SPECT); refuses the other one, and either for an RGB file."""
    given = {"--window-functional": options.window_functional, "--window-ct": options.window_ct}
    for option, text in given.items():
        if text is not None and image.is_color:
            raise InputError(
                f"{option} applies to grayscale images, and {image.path} is an RGB (colour) image"
            )
    option, other = (
        ("--window-ct", "--window-functional") if is_ct else ("--window-functional", "--window-ct")
    )
    if given[other] is not None:
        what = "a CT" if is_ct else "a PET/SPECT"
        raise InputError(
            f"{other} does not apply: {image.path} is fused as {what} ({kind_from}); pass {option}"
        )
    return given[option]


def _windowed_y(image: LoadedImage, given: str | None, option: str) -> tuple[Window, np.ndarray]:
    """An image's window and its Y in [0, 1] (float32 (H, W)): a gray image's stored values
    through its window; an RGB image's Y as it is (no window can be given for it)."""
    if image.is_color:
        if given is not None:
            raise InputError(
                f"{option} applies to grayscale images, and {image.path} is an RGB (colour) image"
            )
        y, _ = split_luma(image.pixels)
        return Window(0.0, 255.0, STORED_VALUES, "auto: 8-bit range (Y of an RGB file)"), y
    window = stored_window(image, given, option)
    return window, window.apply(stored_values(image))


def _resized_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float32 (H, W) plane in [0, 1] resized to ``size`` (width, height): bicubic, clipped."""
    resized = Image.fromarray(plane.astype(np.float32), mode="F").resize(size, Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized), 0.0, 1.0).astype(np.float32)


def _resized(image: LoadedImage, size: tuple[int, int]) -> LoadedImage:
    """Bicubic resize in float, per channel, so no precision is lost to 8-bit."""
    channels = image.pixels if image.is_color else image.pixels[..., None]
    planes = [
        np.asarray(Image.fromarray(channels[..., c], mode="F").resize(size, Image.Resampling.BICUBIC))
        for c in range(channels.shape[-1])
    ]
    pixels = np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
    return LoadedImage(pixels if image.is_color else pixels[..., 0], image.bit_depth, image.path)


def compose(pair: Pair, fused_y: np.ndarray) -> np.ndarray:
    """The output image: fused Y with the functional image's Cb/Cr, or gray for CT."""
    return merge_luma(fused_y, pair.chroma)


class Fusion:
    """One named fuser on a device: the checkpoint per kind of pair, the threads, the calls.

    Args:
        model: a registered fuser name.
        device: ``auto``, ``cpu``, ``cuda`` (or a ``torch.device``); CUDA that is absent is an error.
        checkpoint: a shipped checkpoint for every pair (default: per pair, from its kind).
        weights: a safetensors file for every pair instead of a shipped checkpoint.
        threads: torch CPU threads during fusion (default: the fuser's measured choice); with
            ``onnxruntime``, the session's intra-op threads.
        options: fuser-specific settings, e.g. ``{"temperature": 30.0}`` for LYWNet.
        pretrained: False builds networks with untrained weights: for timing only, never for
            images anyone looks at (``medfuse benchmark`` says so in its rows).
        backend: ``torch`` (the module) or ``onnxruntime``: the network's ONNX export, as
            ``medfuse export`` writes it for the same weights and options, in an ONNX Runtime
            CPU session (``medfuse_cli.onnx_runtime``: exported once per checkpoint and cached).
            Networks only, CPU only (``auto`` is the CPU); needs the onnx extra.

    Raises:
        InputError: unknown model or checkpoint, weights or a checkpoint for a classical rule,
            both a checkpoint and weights, threads below 1, an unknown backend, or
            ``onnxruntime`` with a classical rule or a CUDA device.
        DeviceError: an unavailable device.
        CheckpointError: ``weights`` cannot be read or do not fit the network (read at once).
        MedfuseError: ``onnxruntime`` without the onnx extra installed.
    """

    def __init__(
        self,
        model: str = "lwnet",
        device: torch.device | str = "auto",
        checkpoint: str | None = None,
        weights: Path | None = None,
        threads: int | None = None,
        options: dict | None = None,
        pretrained: bool = True,
        backend: str = TORCH,
    ) -> None:
        keep_heap_memory()  # tensors reuse freed pages instead of faulting in new ones each call
        self.spec = get_fuser_spec(model)
        self.backend = check_backend(backend, self.spec, device)
        if backend == ONNXRUNTIME and str(device) == "auto":
            device = "cpu"  # the session runs on the CPU; the module is exported from there
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if threads is not None and threads < 1:
            raise InputError(f"--threads must be at least 1, got {threads}")
        self.threads = threads if threads is not None else self.spec.cpu_threads
        self.weights = weights
        self.checkpoint = check_weights_choice(self.spec, checkpoint, weights)
        self.options = options or {}
        self.spec.check_options(self.options)
        self.pretrained = pretrained
        self._modules: dict[str | None, nn.Module] = {}
        self._sessions: dict[str | None, object] = {}
        self._weights_record: WeightsRecord | None = None  # the --weights file as it was read
        if self.backend == ONNXRUNTIME:
            require_onnx_packages()  # one line before any work, not one per pair
        if weights is not None and self.pretrained:
            # One file for every pair: read (and verified) now, so a bad file is one error
            # before any work, not the same failure repeated for each pair of a folder.
            self.module_for(FUNCTIONAL)

    def checkpoint_for(self, kind: str) -> str | None:
        """What a pair of ``kind`` is fused with: a checkpoint name, ``--weights PATH``, or None
        for a classical rule."""
        if not self.spec.needs_weights:
            return None
        if not self.pretrained:
            return "untrained"
        if self.weights is not None:
            return f"--weights {self.weights}"
        return self.checkpoint or self.spec.checkpoint_for(kind).name

    def checkpoint_sha256(self, kind: str) -> str | None:
        """The sha256 of the safetensors file pairs of ``kind`` are fused with: a shipped
        checkpoint's pinned digest (its file is verified against it before it is loaded), or that
        of the bytes the ``--weights`` file was read from when this fusion was made (a file
        replaced or removed later does not change it); None for a classical rule or untrained
        weights."""
        name = self.checkpoint_for(kind)
        if name is None or not self.pretrained:
            return None
        if self.weights is not None:
            return self._weights_record.sha256
        return self.spec.checkpoint(name).sha256

    def weights_record(self, kind: str) -> WeightsRecord:
        """What pairs of ``kind`` are fused with, for an ONNX export's metadata and cache key:
        name, sha256 (as ``checkpoint_sha256``) and header; for untrained weights, the name only.

        Raises:
            CheckpointError: a shipped checkpoint cannot be found or verified.
        """
        name = self.checkpoint_for(kind) or self.spec.name
        if not self.pretrained:
            return WeightsRecord(name)
        if self.weights is not None:
            return self._weights_record
        return weights_record(self.spec, name)

    def module_for(self, kind: str) -> nn.Module:
        """The module for pairs of ``kind`` (``"functional"`` or ``"ct"``), built once."""
        key = self.checkpoint_for(kind)
        if key not in self._modules:
            if key is None or not self.pretrained:
                loaded = None
            elif self.weights is not None:
                loaded = load_weights(self.spec, weights=self.weights)
                self._weights_record = loaded_record(key, loaded)
            else:
                loaded = load_weights(self.spec, checkpoint=key)
            self._modules[key] = self.spec.build(loaded, **self.options).eval().to(self.device)
        return self._modules[key]

    def session_for(self, kind: str) -> object:
        """The ONNX Runtime session for pairs of ``kind`` (backend ``onnxruntime``), made once:
        the export of ``module_for(kind)`` from the user cache, or exported now and cached
        (``onnx_runtime.session_for``), with ``describe()["threads"]`` intra-op threads.

        Raises:
            MedfuseError: the onnx extra is missing; CheckpointError: the weights cannot be
                read; InputError: the export fails or does not reproduce torch.
        """
        key = self.checkpoint_for(kind)
        if key not in self._sessions:
            with self.thread_scope():  # tracing and checking the module are torch work
                self._sessions[key] = onnx_session_for(
                    self.spec,
                    key or self.spec.name,
                    self.weights_record(kind),
                    self.options,
                    self.describe()["threads"],
                    lambda: self.module_for(kind),
                    pretrained=self.pretrained,
                )
        return self._sessions[key]

    def describe(self) -> dict:
        """Model, device, threads and backend, for summaries and ``--json``."""
        return {
            "model": self.spec.name,
            "device": str(self.device),
            "threads": self.threads or torch.get_num_threads(),
            "backend": self.backend,
        }

    @contextmanager
    def thread_scope(self) -> Iterator[None]:
        """Run the block with this fusion's torch thread count on CPU, then restore the process's
        (torch's count is process-wide; nothing outside the block is changed)."""
        configured = torch.get_num_threads()
        wanted = self.threads if self.device.type == "cpu" and self.threads else configured
        if wanted != configured:
            torch.set_num_threads(wanted)
        try:
            yield
        finally:
            if wanted != configured:
                torch.set_num_threads(configured)

    @torch.inference_mode()
    def fuse_y(self, anatomical: np.ndarray, functional: np.ndarray, kind: str) -> np.ndarray:
        """Fuse Y planes: a stack (N, H, W) or one (H, W) pair, float32/float64 in [0, 1].

        Returns:
            float32 array of the input's shape, in [0, 1].

        Raises:
            InputError: other dtypes (e.g. uint8: scale to [0, 1] first), values outside [0, 1]
                or not finite, shapes that differ, or sides below the fuser's ``min_size``.
            MedfuseError: the fuser produced non-finite values (never written).
        """
        _check_planes(anatomical, functional)
        if self.backend == ONNXRUNTIME:
            return self._fuse_y_onnxruntime(anatomical, functional, kind)
        single = anatomical.ndim == 2
        module = self.module_for(kind)
        with self.thread_scope():  # every tensor operation, checks and copies included
            a = torch.from_numpy(np.ascontiguousarray(anatomical)).to(self.device, torch.float32)
            b = torch.from_numpy(np.ascontiguousarray(functional)).to(self.device, torch.float32)
            if single:
                a, b = a[None], b[None]
            fused = module(a[:, None], b[:, None])[:, 0]
            if not bool(torch.isfinite(fused).all()):
                raise MedfuseError(f"{self.spec.name} produced NaN or infinite values; nothing was written")
            result = fused.clamp(0.0, 1.0).float().cpu().numpy()
        return result[0] if single else result

    def _fuse_y_onnxruntime(self, anatomical: np.ndarray, functional: np.ndarray, kind: str) -> np.ndarray:
        """``fuse_y`` through the ONNX Runtime session: the same checks before (the fuser's
        ``check_fuser_inputs``) and after (non-finite values, clamp), and one ``session.run``
        per pair, so a pair's bytes never depend on the batch it came in."""
        from medfuse_cli.export import INPUT_NAMES, OUTPUT_NAME

        session = self.session_for(kind)
        single = anatomical.ndim == 2
        a = np.ascontiguousarray(anatomical, dtype=np.float32)  # as torch's .to(float32) rounds
        b = np.ascontiguousarray(functional, dtype=np.float32)
        if single:
            a, b = a[None], b[None]
        a, b = a[:, None], b[:, None]  # (N, 1, H, W)
        with self.thread_scope():
            check_fuser_inputs(self.spec.name, self.spec.min_size, torch.from_numpy(a), torch.from_numpy(b))
        runs = [
            session.run([OUTPUT_NAME], {INPUT_NAMES[0]: a[i : i + 1], INPUT_NAMES[1]: b[i : i + 1]})[0]
            for i in range(a.shape[0])
        ]
        fused = np.concatenate(runs)[:, 0] if runs else np.empty(a.shape[:1] + a.shape[2:], np.float32)
        if not np.isfinite(fused).all():
            raise MedfuseError(f"{self.spec.name} produced NaN or infinite values; nothing was written")
        result = np.clip(fused, 0.0, 1.0).astype(np.float32, copy=False)
        return result[0] if single else result

    def fuse_pairs(self, pairs: list[Pair]) -> list[np.ndarray | MedfuseError]:
        """Fuse pairs, batching those that share size and kind.

        Returns, per pair, its fused Y (float32 (H, W) in [0, 1]) or the ``MedfuseError`` that
        stopped its batch (e.g. a size below the fuser's minimum): one pair's failure never
        takes the others down.

        Raises:
            CheckpointError: the weights for a kind cannot be found, verified or loaded (the
                whole run's problem, so it is raised once rather than returned per pair).
            InputError, MedfuseError: the ONNX export fails, or the onnx extra is missing.
        """
        results: list[np.ndarray | MedfuseError | None] = [None] * len(pairs)
        groups: dict[tuple, list[int]] = {}
        for index, pair in enumerate(pairs):
            groups.setdefault((pair.anatomical_y.shape, pair.kind), []).append(index)
        for (_, kind), indices in groups.items():
            # Weights that cannot be read, or an export that fails, stop the run with one error
            # rather than failing every pair of the kind with the same line.
            if self.backend == ONNXRUNTIME:
                self.session_for(kind)
            else:
                self.module_for(kind)
            try:
                fused = self.fuse_y(
                    np.stack([pairs[i].anatomical_y for i in indices]),
                    np.stack([pairs[i].functional_y for i in indices]),
                    kind,
                )
            except MedfuseError as exc:
                fused = [exc] * len(indices)
            for i, plane in zip(indices, fused, strict=True):
                results[i] = plane
        return results  # type: ignore[return-value]


def notice_if_blank(pair: Pair, fused_y: np.ndarray, fusion: Fusion) -> bool:
    """A ``notice:`` when ``pair`` is blank in both inputs and came out as values of neither
    (``medfuse_cli.blank_pairs``); ``fused_y`` is its (H, W) fused Y in [0, 1]. Returns
    whether it was."""
    made_up = blank_pairs_made_up(pair.anatomical_y, pair.functional_y, fused_y)
    if made_up:  # the mean level is only needed for the notice
        notice_blank_pairs(made_up, fused_y.mean(), f"pair {pair.name}", fusion.spec.name)
    return bool(made_up)


def _check_planes(anatomical: np.ndarray, functional: np.ndarray) -> None:
    """What ``Fusion.fuse_y`` checks of its arrays before turning them into tensors: numpy
    float planes of one shape. Sizes and values (finite, in [0, 1]) are the fuser's own check
    (``fusers.registry.check_fuser_inputs``), made once, on the tensors."""
    for label, plane in (("anatomical", anatomical), ("functional", functional)):
        if not isinstance(plane, np.ndarray) or plane.dtype not in (np.float32, np.float64):
            dtype = getattr(plane, "dtype", type(plane).__name__)
            raise InputError(f"{label} Y must be a float32 or float64 array in [0, 1], got {dtype}")
        if plane.ndim not in (2, 3):
            raise InputError(f"{label} Y must be (H, W) or (N, H, W), got shape {plane.shape}")
    if anatomical.shape != functional.shape:
        raise InputError(f"Y planes differ in shape: {anatomical.shape} vs {functional.shape}")


@dataclass(frozen=True)
class PairJob:
    """One pair of a folder run: its name, inputs and output file."""

    name: str
    mri: Path
    functional: Path
    output: Path


@dataclass(frozen=True)
class PairOutcome:
    """What became of one pair: written, failed (``error``) or skipped, and what was decided for it.

    Attributes:
        name, output: the pair and its output file.
        error: one line saying why nothing was written, or None.
        second: how its second image's colour was read (None when it could not be read).
        checkpoint: what it was fused with (see ``Fusion.checkpoint_for``).
        checkpoint_sha256: the sha256 of that checkpoint's file (``Fusion.checkpoint_sha256``).
        skipped: its output existed and was kept (``existing="skip"``); nothing was written.
        mri_coloured_share: share of the MRI's pixels that were coloured (their colour unused).
        levels: its windows, colour map and kind (None when it could not be read).
        blank_made_up: both inputs were blank and the fuser made values outside both
            (``notice_if_blank``).
    """

    name: str
    output: Path
    error: str | None = None
    second: ColourReading | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    skipped: bool = False
    mri_coloured_share: float = 0.0
    levels: Levels | None = None
    blank_made_up: bool = False

    @classmethod
    def fused(
        cls, name: str, output: Path, pair: Pair, fusion: Fusion, blank_made_up: bool = False
    ) -> PairOutcome:
        """The outcome of a pair that ``fusion`` fused, with what was decided for it."""
        return cls(
            name,
            output,
            None,
            pair.second,
            fusion.checkpoint_for(pair.kind),
            fusion.checkpoint_sha256(pair.kind),
            mri_coloured_share=pair.mri_coloured_share,
            levels=pair.levels,
            blank_made_up=blank_made_up,
        )

    @property
    def written(self) -> bool:
        """Whether its output file was written (neither failed nor skipped)."""
        return self.error is None and not self.skipped

    def to_json(self) -> dict:
        """The pair's entry in ``medfuse fuse --json``: output, whether it was ``written``, error,
        and what was decided (``second_image``, ``checkpoint``, ``checkpoint_sha256``,
        ``blank_pair_made_up``, and ``Levels.to_json``'s ``windows``, ``colormap``, ``kind``,
        ``kind_given``, ``kind_from``)."""
        row: dict = {"pair": self.name, "output": str(self.output), "written": self.written}
        if self.error:
            row["error"] = self.error
        if self.skipped:
            row["skipped"] = True
        if self.second is not None:
            row["second_image"] = self.second.to_json()
            row["checkpoint"] = self.checkpoint
            row["checkpoint_sha256"] = self.checkpoint_sha256
            row["blank_pair_made_up"] = self.blank_made_up
            if self.levels is not None:
                row.update(self.levels.to_json())
        if self.mri_coloured_share:  # a few coloured marks in the MRI: only its Y was used
            row["mri_image"] = {"read_as": "gray", "coloured_share": round(self.mri_coloured_share, 6)}
        return row


def fuse_folders(
    fusion: Fusion,
    jobs: list[PairJob],
    batch_size: int = 16,
    resize: bool = False,
    on_done: Callable[[PairOutcome], None] = lambda _: None,
    workers: int = 2,
    chroma: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    existing: str = "replace",
    image_options: ImageOptions = ImageOptions(),
) -> list[PairOutcome]:
    """Fuse every job; a pair that fails is reported, the others are written.

    Decoding of the next batch, and colour merging and encoding of the previous one, run on
    worker threads while the fuser works (numpy, imagecodecs and Pillow release the GIL), so the flow is
    not serialised on I/O. The fuser runs with ``fusion.threads`` torch threads (one for LWNet and
    the rules: the workers need the other core, and torch threads that share theirs spin-wait
    against them, see BENCHMARKS.md).

    Args:
        fusion: the fuser, with its device and threads.
        jobs: the pairs and their output files (whose folders must exist).
        batch_size: pairs fused per call (pairs of one size and kind are batched).
        resize, chroma, max_pixels: how each pair is read (as ``load_pair``).
        on_done: called with each outcome as soon as it is decided (progress).
        workers: threads that decode and encode.
        existing: what an output file that exists means (see ``write_outcome``): ``replace``
            it, ``refuse`` it (that pair fails), or ``skip`` the pair (checked before its work,
            and again when its file is published). One of ``EXISTING_OUTPUTS``.
        image_options: kind, windows and colour map for every pair (as ``load_pair``'s
            ``options``); a pair they do not fit fails with its one-line reason.

    Returns:
        Every job's outcome, in the order of ``jobs`` (``on_done`` sees them in the order they
        were decided, which the worker threads make vary from run to run; a summary does not).

    Raises:
        InputError: an unknown ``existing``, or ``image_options`` that fit no pair
            (``check_image_options``).
        CheckpointError, MedfuseError: weights or an ONNX export that a kind of pair needs cannot
            be used (``Fusion.fuse_pairs``): the run stops, after ``on_done`` has been called
            for every pair decided before (those written stay written).
    """
    check_image_options(image_options)
    if existing not in EXISTING_OUTPUTS:
        raise InputError(f"existing must be one of {', '.join(EXISTING_OUTPUTS)}, got '{existing}'")
    outcomes: list[PairOutcome] = []

    def report(outcome: PairOutcome) -> None:
        outcomes.append(outcome)
        on_done(outcome)

    remaining = []
    for job in jobs:
        if existing == "skip" and job.output.exists():
            report(PairOutcome(job.name, job.output, skipped=True))
        else:
            remaining.append(job)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        writes: list[Future[PairOutcome]] = []
        load = functools.partial(
            _try_load, resize=resize, chroma=chroma, max_pixels=max_pixels, image_options=image_options
        )
        try:
            for batch in _loaded_batches(pool, remaining, batch_size, load):
                writes += _fuse_batch(fusion, batch, pool, report, existing)
                writes = _collect_finished(writes, report, wait=False)
        finally:  # a run stopped by its weights still reports the pairs it wrote before
            _collect_finished(writes, report, wait=True)
    return in_job_order(outcomes, jobs)


def in_job_order(outcomes: list[PairOutcome], jobs: list[PairJob]) -> list[PairOutcome]:
    """``outcomes`` sorted as their ``jobs`` are (by output file): worker threads decide pairs in
    an order that varies from run to run, and a summary must not."""
    position = {job.output: index for index, job in enumerate(jobs)}
    return sorted(outcomes, key=lambda outcome: position[outcome.output])


def _fuse_batch(
    fusion: Fusion,
    batch: list[tuple[PairJob, Pair | MedfuseError]],
    pool: ThreadPoolExecutor,
    report: Callable[[PairOutcome], None],
    existing: str,
) -> list[Future[PairOutcome]]:
    """Fuse one loaded batch: report each pair that could not be read or fused, and return the
    writes of the others, submitted to ``pool``.

    Raises:
        CheckpointError, MedfuseError: as ``Fusion.fuse_pairs`` (the run's weights).
    """
    good = [(job, pair) for job, pair in batch if isinstance(pair, Pair)]
    for job, failure in batch:
        if isinstance(failure, MedfuseError):
            report(PairOutcome(job.name, job.output, str(failure)))
    writes = []
    for (job, pair), plane in zip(good, fusion.fuse_pairs([pair for _, pair in good]), strict=True):
        if isinstance(plane, MedfuseError):
            report(replace(PairOutcome.fused(job.name, job.output, pair, fusion), error=str(plane)))
        else:
            blank = notice_if_blank(pair, plane, fusion)
            done = PairOutcome.fused(job.name, job.output, pair, fusion, blank)
            writes.append(pool.submit(write_outcome, done, pair, plane, existing))
    return writes


def write_fused(output: Path | str, pair: Pair, fused_y: np.ndarray, *, overwrite: bool = True) -> None:
    """Write the fused image of ``pair`` (``-``: standard output), in the pair's bit depth.

    Raises:
        FileExistsError, OSError, BrokenPipeError, OutputError: as ``medfuse_cli.io.write_png``.
    """
    write_png(output, compose(pair, fused_y), pair.bit_depth, overwrite=overwrite)


def write_outcome(done: PairOutcome, pair: Pair, fused_y: np.ndarray, existing: str) -> PairOutcome:
    """Write ``pair``'s fused image to the file ``done.output``; return what became of it.

    Whether the file exists is decided when it is published, not before, so a file that another
    run wrote in the meantime is never replaced unless ``existing`` is ``replace``.

    Args:
        done: the pair's outcome so far (its output a file, not ``-``).
        pair, fused_y: what to write (as ``write_fused``).
        existing: ``replace`` an existing file, ``refuse`` it (an error), or ``skip`` the pair.

    Returns:
        ``done``; with ``skipped`` set, or with an ``error`` (exists, cannot write, disk full)
        when nothing was written.
    """
    try:
        write_fused(done.output, pair, fused_y, overwrite=existing == "replace")
    except FileExistsError:
        if existing == "skip":
            return replace(done, skipped=True)
        return replace(done, error=output_exists_message(done.output))
    except OSError as exc:
        return replace(done, error=f"cannot write {done.output}: {exc.strerror or exc}")
    return done


def output_exists_message(output: Path) -> str:
    """The one-line message for an output that exists and is neither to be replaced nor skipped."""
    return f"output exists: {output} (pass --overwrite to replace it, or --skip-existing to keep it)"


def _loaded_batches(
    pool: ThreadPoolExecutor,
    jobs: list[PairJob],
    batch_size: int,
    load: Callable[[PairJob], Pair | MedfuseError],
) -> Iterator[list[tuple[PairJob, Pair | MedfuseError]]]:
    """Batches of loaded pairs; the next batch decodes on a worker while this one is fused."""

    def load_batch(batch: list[PairJob]) -> list[tuple[PairJob, Pair | MedfuseError]]:
        return [(job, load(job)) for job in batch]

    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    upcoming = pool.submit(load_batch, batches[0]) if batches else None
    for index in range(len(batches)):
        current = upcoming
        if index + 1 < len(batches):
            upcoming = pool.submit(load_batch, batches[index + 1])
        yield current.result()


def _try_load(
    job: PairJob, resize: bool, chroma: str, max_pixels: int, image_options: ImageOptions
) -> Pair | MedfuseError:
    try:
        return load_pair(job.name, job.mri, job.functional, resize, chroma, max_pixels, options=image_options)
    except MedfuseError as exc:
        return exc


def _collect_finished(
    writes: list[Future[PairOutcome]], report: Callable[[PairOutcome], None], wait: bool
) -> list[Future[PairOutcome]]:
    """Report finished writes (all of them when ``wait``); return those still running."""
    still_running = []
    for future in writes:
        if wait or future.done():
            report(future.result())
        else:
            still_running.append(future)
    return still_running
