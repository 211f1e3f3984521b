"""The model zoo's table: named fusers and the checkpoints each can load.

A leaf module in the spirit of torchvision's ``models/_api.py``: it holds records and a
dictionary and imports nothing of medfuse but its errors. The built-in fusers register
themselves when ``medfuse_cli.fusers`` imports their modules; building one (and loading its
weights) is ``medfuse_cli.fusers.create_fuser``'s job, not the table's.

A fuser is a ``torch.nn.Module`` whose ``forward(anatomical, functional)`` takes two float32 Y
tensors in [0, 1] of shape (N, 1, H, W) on one device and returns the fused Y, same shape and
range. Classical rules are modules without parameters, so ``evaluate``, ``benchmark`` and SPI
treat every fuser alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from medfuse_cli.errors import InputError

# What a checkpoint is meant for, decided from the second image of a pair.
FUNCTIONAL = "functional"  # a colour (pseudo-colour SPECT/PET) second image
CT = "ct"  # a grayscale second image
PAIR_KINDS = (FUNCTIONAL, CT)

# The header fields a checkpoint record repeats, in the order ``medfuse models`` shows them.
PROVENANCE_FIELDS = (
    "network",
    "format",
    "parameters",
    "data",
    "command",
    "schedule",
    "epochs",
    "wall_time_minutes",
    "git_commit",
    "resumed",  # each --resume session's command and commit ("[]" for a run never resumed)
    "test_metrics",
)


@dataclass(frozen=True)
class Checkpoint:
    """One shipped checkpoint: where it lives, how to verify it, and what it is.

    Like torchvision's ``Weights``: the file (bundled name, Hugging Face Hub repository and
    pinned revision, sha256) travels with its metadata. ``meta`` holds the file header's
    ``PROVENANCE_FIELDS`` verbatim (strings; ``test_metrics`` and ``resumed`` are JSON), and a
    test checks that they equal the header of the bundled file, so what ``medfuse models``
    prints is what the file says of itself.

    Attributes:
        fuser: the fuser it belongs to, e.g. ``"lwnet"``.
        tag: its name among that fuser's checkpoints, e.g. ``"ct"``; ``name`` is ``lwnet.ct``.
        filename: the file's name, bundled in ``weights/`` and on the Hub.
        sha256: the file's sha256 (hex); a file that does not match is never loaded.
        applies_to: ``"functional"`` or ``"ct"``: the pairs it is meant for (None: any pair).
        hub_repo, hub_revision: where the Hub serves it (a branch or tag; the bytes are pinned by ``sha256``).
        meta: the provenance header fields (see above).
    """

    fuser: str
    tag: str
    filename: str
    sha256: str
    applies_to: str | None
    meta: Mapping[str, str]
    hub_repo: str = "medfuse/medfuse-weights"
    hub_revision: str = "main"

    @property
    def name(self) -> str:
        """``<fuser>.<tag>``, the name ``--checkpoint`` accepts (the tag alone works too)."""
        return f"{self.fuser}.{self.tag}"

    @property
    def test_metrics(self) -> dict:
        """The test-split scores recorded in the header (parsed from ``meta``)."""
        return json.loads(self.meta.get("test_metrics", "{}"))


Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class FuserSpec:
    """How to build one named fuser, and what it needs.

    Attributes:
        name: the name ``--model`` takes.
        kind: ``"classical"`` (no weights) or ``"network"`` (needs a checkpoint to fuse).
        summary: one line for ``medfuse models``.
        reference: the paper it implements (authors, venue, DOI).
        build: ``build(loaded, **options) -> nn.Module`` with ``loaded`` a
            ``weights.LoadedCheckpoint``, or None for an untrained network (parameter counts
            and timing only, never fusion).
        min_size: the smallest height and width, in pixels, the fuser accepts.
        cpu_threads: torch threads it runs with on CPU unless told otherwise; None means
            torch's default (all cores). Chosen by measurement (BENCHMARKS.md).
        in_default_lineup: whether ``medfuse evaluate`` runs it when no method is named
            (False for fusers too slow to run unasked).
        option_names: the fuser-specific settings its builder takes (e.g. ``temperature``).
        checkpoints: the checkpoints it ships, the default first.
    """

    name: str
    kind: str
    summary: str
    build: Builder
    reference: str = ""
    min_size: int = 1
    cpu_threads: int | None = None
    in_default_lineup: bool = True
    option_names: tuple[str, ...] = ()
    checkpoints: tuple[Checkpoint, ...] = field(default_factory=tuple)

    @property
    def needs_weights(self) -> bool:
        """True for networks: they fuse only with a checkpoint or a weights file."""
        return self.kind == "network"

    def check_options(self, options: Mapping[str, object]) -> None:
        """Raise ``InputError`` for a setting this fuser does not take (e.g. LWNet's temperature)."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            takes = ", ".join(self.option_names) or "none"
            raise InputError(f"model '{self.name}' takes no {', '.join(unknown)} (its settings: {takes})")

    def checkpoint(self, name: str) -> Checkpoint:
        """The checkpoint called ``name`` (``lwnet.ct`` or ``ct``).

        Raises:
            InputError: the fuser has no such checkpoint (the message lists those it has).
        """
        for record in self.checkpoints:
            if name in (record.name, record.tag):
                return record
        known = ", ".join(f"{c.name} or {c.tag}" for c in self.checkpoints) or "none"
        raise InputError(f"model '{self.name}' has no checkpoint '{name}' (known: {known})")

    def checkpoint_for(self, pair_kind: str) -> Checkpoint:
        """The checkpoint meant for ``pair_kind`` (``"functional"`` or ``"ct"``).

        Raises:
            InputError: the fuser ships none for that kind of pair.
        """
        for record in self.checkpoints:
            if record.applies_to in (pair_kind, None):
                return record
        raise InputError(f"model '{self.name}' ships no checkpoint for {pair_kind} pairs")


def check_fuser_inputs(name: str, min_size: int, anatomical: torch.Tensor, functional: torch.Tensor) -> None:
    """The fuser contract, checked at every fuser's door before any arithmetic.

    Raises:
        InputError: not two floating (N, 1, H, W) tensors of one shape, a side below
            ``min_size``, or values that are not finite or outside [0, 1] (e.g. 0..255 images:
            scale them first).
    """
    if anatomical.dim() != 4 or anatomical.shape != functional.shape or anatomical.shape[1] != 1:
        raise InputError(
            f"{name}: needs two (N, 1, H, W) tensors of the same shape, "
            f"got {tuple(anatomical.shape)} and {tuple(functional.shape)}"
        )
    if not (anatomical.is_floating_point() and functional.is_floating_point()):
        raise InputError(
            f"{name}: needs floating tensors in [0, 1], got {anatomical.dtype} and {functional.dtype}"
        )
    height, width = anatomical.shape[-2:]
    if min(height, width) < min_size:
        raise InputError(
            f"{name}: needs images of at least {min_size}x{min_size} pixels, got {width}x{height}"
        )
    for tensor in (anatomical, functional):
        if tensor.device.type == "meta" or not tensor.numel():  # shapes only (FLOP counting)
            continue
        if not bool(((tensor >= 0) & (tensor <= 1)).all()):  # NaN fails too
            raise InputError(f"{name}: needs finite values in [0, 1] (scale 8-bit images by 1/255)")


_REGISTRY: dict[str, FuserSpec] = {}


def register_fuser(spec: FuserSpec) -> FuserSpec:
    """Add ``spec`` to the table. Raises ``ValueError`` for a name registered twice."""
    if spec.name in _REGISTRY:
        raise ValueError(f"fuser '{spec.name}' registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_fuser_spec(name: str) -> FuserSpec:
    """The spec registered as ``name``.

    Raises:
        InputError: no fuser of that name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise InputError(f"unknown model '{name}' (known: {known})") from None


def registered_fusers() -> list[FuserSpec]:
    """Every registered spec, by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
