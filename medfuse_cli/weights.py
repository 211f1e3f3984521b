"""Find, verify and load checkpoints: safetensors only, checksummed, loaded strictly.

Resolution order: an explicit ``--weights PATH`` wins; otherwise the Hugging Face Hub copy at
the spec's pinned revision; when the Hub cannot be reached, the file bundled in ``weights/``
(with a one-line notice). Pickle files are never unpickled: anything that is not a valid
safetensors file is refused with a message that says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.registry import CheckpointSpec, LoadedCheckpoint


def _bundled_dir() -> Path:
    """Where shipped checkpoints live: $MEDFUSE_WEIGHTS_DIR, the source tree's weights/, or
    <prefix>/share/medfuse/weights for a wheel install."""
    if os.environ.get("MEDFUSE_WEIGHTS_DIR"):
        return Path(os.environ["MEDFUSE_WEIGHTS_DIR"])
    source = Path(__file__).resolve().parent.parent / "weights"
    return source if source.is_dir() else Path(sys.prefix) / "share" / "medfuse" / "weights"


BUNDLED_DIR = _bundled_dir()
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_SAFETENSORS_HEADER_START = b"{"  # after the 8-byte header length, the JSON header begins


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path, sha256: str | None = None) -> LoadedCheckpoint:
    """Read a safetensors file after checking it is one (and, if given, its sha256)."""
    path = Path(path)
    if not path.is_file():
        raise MedfuseError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(9)
    # A safetensors header length can itself begin with pickle's or zip's magic bytes (e.g. a
    # 640-byte header is 80 02 00 ...), so the JSON brace at byte 8 decides first.
    if head[8:9] != _SAFETENSORS_HEADER_START and head.startswith(_PICKLE_MAGIC):
        raise MedfuseError(f"{path} is a pickle/PyTorch file; only safetensors checkpoints load")
    if sha256 is not None and sha256_of(path) != sha256:
        raise MedfuseError(f"checksum mismatch for {path}: the file is corrupt or not the expected one")
    try:
        tensors = load_file(str(path))
        metadata = _read_metadata(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedfuseError(f"{path} is not a valid safetensors checkpoint ({_first_line(exc)})") from None
    return LoadedCheckpoint(tensors=tensors, metadata=metadata, source=str(path))


def _read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors header (string keys and values)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    return dict(header.get("__metadata__") or {})


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Save tensors with string metadata, atomically."""
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    write_atomically(Path(path), lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors into ``module``; any missing, unexpected or misshapen tensor is an error."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise MedfuseError(f"checkpoint {source} does not match {type(module).__name__}: {'; '.join(parts)}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise MedfuseError(
                f"checkpoint {source} does not match {type(module).__name__}: tensor {name} has "
                f"shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    module.load_state_dict(tensors, strict=True)


def _few(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def resolve_checkpoint(spec: CheckpointSpec, weights_path: Path | None = None) -> LoadedCheckpoint:
    """Find and load the checkpoint for ``spec``: explicit path, then Hub, then bundled file."""
    if weights_path is not None:
        return read_checkpoint(weights_path)
    bundled = BUNDLED_DIR / spec.filename
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        downloaded = _download_from_hub(spec, fallback_exists=bundled.is_file())
        if downloaded is not None:
            return read_checkpoint(downloaded, spec.sha256)
    if not bundled.is_file():
        raise MedfuseError(
            f"checkpoint {spec.filename} is neither bundled nor downloadable; pass --weights PATH"
        )
    return read_checkpoint(bundled, spec.sha256)


def _download_from_hub(spec: CheckpointSpec, fallback_exists: bool) -> Path | None:
    """Fetch ``spec`` from the Hub at its pinned revision; None when the Hub cannot serve it.

    One metadata request without retries comes first: ``hf_hub_download`` alone retries an
    unreachable Hub with back-off for half a minute, too long for an offline clinic machine.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(spec.hub_repo, spec.filename, revision=spec.hub_revision), timeout=10)
        return Path(
            hf_hub_download(repo_id=spec.hub_repo, filename=spec.filename, revision=spec.hub_revision)
        )
    # The Hub client raises the transport errors of whichever HTTP library its version ships
    # with (requests, httpx, httpx2); any failure here only means "not from the Hub", and
    # whatever file is used next is checksum-verified.
    except Exception as exc:
        if fallback_exists:
            reason = _first_line(exc)[:80]
            print(
                f"notice: Hugging Face Hub unavailable ({reason}); using the bundled {spec.filename}",
                file=sys.stderr,
            )
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
