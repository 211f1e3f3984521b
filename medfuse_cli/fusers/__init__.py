"""The model zoo: every built-in fuser, and the two doors to it, ``create_fuser`` and ``list_fusers``.

Importing this package registers the built-ins (classical rules, LWNet, LYWNet) in
``registry``, the way torchvision's ``models/__init__.py`` imports its model modules.

>>> from medfuse_cli.fusers import create_fuser, list_fusers
>>> [spec.name for spec in list_fusers()]
['average', 'laplacian', 'lwnet', 'lywnet', 'maximum', 'wavelet']
>>> fuser = create_fuser("lwnet", checkpoint="ct")  # the bundled CT-MRI checkpoint
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.fusers import classical, lwnet, lywnet  # noqa: F401  (they register themselves)
from medfuse_cli.fusers.registry import Checkpoint, FuserSpec, get_fuser_spec, registered_fusers
from medfuse_cli.weights import LoadedCheckpoint, read_checkpoint, resolve_checkpoint


def list_fusers() -> list[FuserSpec]:
    """Every registered fuser's spec (name, kind, checkpoints with provenance), by name."""
    return registered_fusers()


def create_fuser(
    name: str,
    checkpoint: str | None = None,
    weights: Path | str | None = None,
    device: torch.device | str = "cpu",
    pretrained: bool = True,
    **options: object,
) -> nn.Module:
    """Build a fuser, with its weights, in eval mode on ``device``.

    The module takes two float32 Y tensors in [0, 1] of shape (N, 1, H, W) (H, W at least the
    spec's ``min_size``) and returns the fused Y, same shape and range.

    Args:
        name: a registered fuser (``list_fusers()``).
        checkpoint: a shipped checkpoint of it, ``"lwnet.ct"`` or ``"ct"``; default: its first
            (``Fusion`` instead picks one per pair from the second image).
        weights: a safetensors file to load instead of a shipped checkpoint (no sha256 pinned).
        device: where the module's tensors live.
        pretrained: False builds a network with untrained weights, for parameter counts and
            timing only (timm's convention); classical rules ignore it.
        **options: fuser-specific settings, e.g. LYWNet's ``temperature``.

    Raises:
        InputError: unknown fuser or checkpoint, or weights given to a classical rule.
        CheckpointError: the checkpoint is missing, corrupt, not finite or does not fit.
    """
    spec = get_fuser_spec(name)
    spec.check_options(options)
    loaded = load_weights(spec, checkpoint, weights) if pretrained else None
    return spec.build(loaded, **options).eval().to(device)


def check_weights_choice(
    spec: FuserSpec, checkpoint: str | None = None, weights: Path | str | None = None
) -> str | None:
    """Check a choice of weights for ``spec`` before anything is read; return the checkpoint's
    full name (``ct`` -> ``lwnet.ct``), or None when none is named.

    Raises:
        InputError: weights or a checkpoint named for a classical rule, both given, or a
            checkpoint the fuser does not ship.
    """
    if not spec.needs_weights and (weights is not None or checkpoint is not None):
        raise InputError(f"model '{spec.name}' is a classical rule and takes no checkpoint or weights")
    if weights is not None and checkpoint is not None:
        raise InputError("give --checkpoint or --weights, not both")
    return spec.checkpoint(checkpoint).name if checkpoint is not None else None


def load_weights(
    spec: FuserSpec, checkpoint: str | None = None, weights: Path | str | None = None
) -> LoadedCheckpoint | None:
    """The verified tensors ``spec`` is built with: ``weights`` if given, else ``checkpoint``
    (default: the first shipped); None for a classical rule.

    Raises:
        InputError: weights or a checkpoint named for a classical rule, or both given.
        CheckpointError: as ``read_checkpoint`` and ``resolve_checkpoint``; or a ``weights``
            file with a shipped checkpoint's header but other bytes (``_check_shipped_header``).
    """
    checkpoint = check_weights_choice(spec, checkpoint, weights)
    if not spec.needs_weights:
        return None
    if weights is not None:
        return _check_shipped_header(spec, read_checkpoint(Path(weights)))
    return resolve_checkpoint(spec.checkpoint(checkpoint) if checkpoint else spec.checkpoints[0])


def _check_shipped_header(spec: FuserSpec, loaded: LoadedCheckpoint) -> LoadedCheckpoint:
    """Refuse a file that claims to be a shipped checkpoint and is not.

    A file whose header records no tensor digest (the shipped LWNet files predate it) cannot be
    checked against itself; if its provenance header is a shipped checkpoint's, the file is a
    copy of that checkpoint, and the pinned sha256 says whether the copy is whole.

    Raises:
        CheckpointError: the header is a shipped checkpoint's and the bytes are not its bytes.
    """
    if loaded.tensors_verified:
        return loaded
    for record in spec.checkpoints:
        claims = bool(record.meta) and all(loaded.metadata.get(k) == v for k, v in record.meta.items())
        if claims and loaded.sha256 != record.sha256:
            raise CheckpointError(
                f"{loaded.source} has the header of the shipped {record.name} but not its sha256 "
                f"({loaded.sha256[:12]}…, the shipped file's {record.sha256[:12]}…): the copy is damaged "
                f"or was changed; use --checkpoint {record.tag} for the verified file"
            )
    return loaded


__all__ = [
    "Checkpoint",
    "FuserSpec",
    "check_weights_choice",
    "create_fuser",
    "get_fuser_spec",
    "list_fusers",
    "load_weights",
]
