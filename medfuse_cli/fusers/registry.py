"""One registry of named fusers: classical rules and networks behind one interface.

A fuser is a ``torch.nn.Module`` whose ``forward(anatomical, functional)`` takes two Y tensors
in [0, 1] of shape (N, 1, H, W) on any device and returns the fused Y in [0, 1], same shape.
Classical rules are modules without parameters, so ``evaluate``, ``benchmark`` and SPI treat
every fuser alike. Each entry carries the checkpoints it can load and where they come from, in
the spirit of torchvision's ``Weights`` records, so ``medfuse models`` can print provenance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from medfuse_cli.errors import MedfuseError


@dataclass(frozen=True)
class CheckpointSpec:
    """A shipped checkpoint: bundled file name, Hub location, checksum and provenance.

    ``applies_to`` says which input pairs it is meant for: ``"functional"`` (colour SPECT/PET
    second image) or ``"ct"`` (grayscale second image); ``None`` means any pair.
    """

    name: str
    filename: str
    sha256: str
    provenance: str
    applies_to: str | None = None
    hub_repo: str = "medfuse/medfuse-weights"
    hub_revision: str = "main"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """Tensors and header metadata read from a verified safetensors file."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    source: str


Builder = Callable[[LoadedCheckpoint | None, dict], torch.nn.Module]


@dataclass(frozen=True)
class FuserSpec:
    """How to build one named fuser and what it needs."""

    name: str
    kind: str  # "classical" or "network"
    summary: str
    build: Builder
    checkpoints: tuple[CheckpointSpec, ...] = field(default_factory=tuple)

    @property
    def needs_weights(self) -> bool:
        return self.kind == "network"

    def checkpoint(self, name: str) -> CheckpointSpec:
        for spec in self.checkpoints:
            if spec.name == name:
                return spec
        known = ", ".join(c.name for c in self.checkpoints) or "none"
        raise MedfuseError(f"model '{self.name}' has no checkpoint '{name}' (known: {known})")

    def default_checkpoint(self, second_is_color: bool) -> CheckpointSpec:
        """The checkpoint meant for this kind of pair: colour functional image or CT."""
        wanted = "functional" if second_is_color else "ct"
        for spec in self.checkpoints:
            if spec.applies_to in (wanted, None):
                return spec
        raise MedfuseError(f"model '{self.name}' ships no checkpoint for {wanted} pairs")


_REGISTRY: dict[str, FuserSpec] = {}


def register_fuser(spec: FuserSpec) -> FuserSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"fuser '{spec.name}' registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_fuser_spec(name: str) -> FuserSpec:
    _load_builtin_fusers()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise MedfuseError(f"unknown model '{name}' (known: {known})") from None


def list_fusers() -> list[FuserSpec]:
    _load_builtin_fusers()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def _load_builtin_fusers() -> None:
    """Import the modules that register the built-in fusers (once; imports are cached)."""
    import medfuse_cli.fusers.classical
    import medfuse_cli.fusers.lwnet
    import medfuse_cli.fusers.lywnet  # noqa: F401
