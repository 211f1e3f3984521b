"""medfuse: fuse co-registered MRI with SPECT, PET or CT images, from the shell or Python.

The Python doors (imported on first use, so ``import medfuse_cli`` and ``medfuse --help`` stay
light):

- ``create_fuser(name, checkpoint=None, weights=None, device="cpu", pretrained=True)`` and
  ``list_fusers()``: the model zoo (``medfuse_cli.fusers``);
- ``Fusion``: a fuser with per-pair checkpoint choice, device and threads (``medfuse_cli.pipeline``);
- ``fuse(mri, functional, model="lwnet", ...)``: a 2-D pair (arrays or paths) fused into the
  array ``medfuse fuse`` would write (``medfuse_cli.api``);
- ``fuse_volume(mri, second, affine, kind, ...)``: two co-registered volumes (arrays) fused slice
  by slice, as ``medfuse fuse`` does for NIfTI/DICOM (``medfuse_cli.api``);
- ``read_volume(path)``: a NIfTI file or DICOM series folder as voxels + affine (``medfuse_cli.volumes``);
- ``metrics``: the field's fusion metrics, each a function of (A, B, F) (``medfuse_cli.metrics``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_fuser": "medfuse_cli.fusers",
    "list_fusers": "medfuse_cli.fusers",
    "Fusion": "medfuse_cli.pipeline",
    "fuse": "medfuse_cli.api",
    "fuse_volume": "medfuse_cli.api",
    "read_volume": "medfuse_cli.volumes",
    "metrics": "medfuse_cli.metrics",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'medfuse_cli' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if name == "metrics" else getattr(module, name)


__all__ = [
    "Fusion",
    "__version__",
    "create_fuser",
    "fuse",
    "fuse_volume",
    "list_fusers",
    "metrics",
    "read_volume",
]
