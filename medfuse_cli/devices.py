"""Turn ``--device auto|cpu|cuda`` into a torch device, refusing what the machine lacks."""

from __future__ import annotations

import torch

from medfuse_cli.errors import DeviceError, InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent CUDA is an error, not a fallback."""
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise InputError(f"unknown device '{name}' (choose from {', '.join(DEVICE_CHOICES)})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA device is available (use --device cpu)")
    return torch.device(name)
