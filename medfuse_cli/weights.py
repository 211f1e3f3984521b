"""Find, verify and load checkpoints: safetensors only, checksummed, finite, loaded strictly.

Resolution of a registered checkpoint (``resolve_checkpoint``): a bundled file whose sha256 is
the pinned one *is* that checkpoint and is used without asking the network; otherwise the
Hugging Face Hub serves it at its pinned revision (sha256 verified, cached by the Hub client);
an unreachable Hub gives one notice (through ``logging``, logger ``medfuse_cli``) and the
bundled file where one exists. An explicit ``--weights PATH`` is read by ``read_checkpoint``.
Pickle files are never unpickled: anything that is not a valid safetensors file is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import CheckpointError, OutputError

if TYPE_CHECKING:  # the record's type only: weights.py sits below the model zoo
    from medfuse_cli.fusers.registry import Checkpoint

log = logging.getLogger("medfuse_cli")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """Tensors and header metadata read from a verified safetensors file.

    Attributes:
        tensors: name -> tensor, on the CPU, every floating tensor finite.
        metadata: the header's ``__metadata__`` (string keys and values).
        source: the file it came from, for messages.
        sha256: the hex sha256 of the bytes the tensors were read from (None when built in
            memory), so a result can name the exact file even if the path changes later.
        tensors_verified: whether the header recorded a ``tensors_sha256`` (then checked); a
            file without one was read as it is.
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    source: str
    sha256: str | None = None
    tensors_verified: bool = False


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
# Header key of the digest of the tensors a checkpoint was written with (``tensor_digest``).
TENSOR_DIGEST_KEY = "tensors_sha256"
# The values of HF_HUB_OFFLINE that mean "offline", as huggingface_hub reads them (upper-cased).
_HUB_OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The hex sha256 of named tensors: each name, dtype, shape and raw bytes, in name order.

    Why: a whole-file sha256 can only be pinned for shipped checkpoints. This digest travels in
    the header of every checkpoint medfuse writes, so a file passed with ``--weights`` whose tensor
    bytes were damaged after writing (a bad copy, a truncated-and-padded transfer) is refused
    instead of fusing with wrong weights.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def require_checkpoint_file(path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` is a regular file: missing, a folder, or another
    kind of file (a device such as /dev/null, a named pipe), each said as such."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint is a folder, not a file: {path}")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"checkpoint is not a regular file (a device or a pipe): {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")


def read_checkpoint(path: Path, sha256: str | None = None) -> LoadedCheckpoint:
    """Read a checkpoint: a verified safetensors file (``read_safetensors``) whose floating
    tensors are all finite.

    Args:
        path: a ``.safetensors`` file.
        sha256: the expected hex digest of the whole file, or None to skip that check
            (``--weights PATH``, whose tensor digest is still checked).

    Returns:
        Its tensors (CPU) and header metadata.

    Raises:
        CheckpointError: as ``read_safetensors``, or a NaN or infinite value (the message names
            the tensor).
    """
    loaded = read_safetensors(path, sha256)
    for name, tensor in loaded.tensors.items():
        # Through float32: torch has no isfinite for its 8-bit float types.
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.float()).all()):
            raise CheckpointError(f"checkpoint {path}: tensor {name} holds NaN or infinite values")
    return loaded


def read_safetensors(path: Path, sha256: str | None = None) -> LoadedCheckpoint:
    """Read a safetensors file after checking it is one, its sha256 if given, and the digest of
    its tensors if its header records one.

    Args:
        path: a ``.safetensors`` file.
        sha256: the expected hex digest of the whole file, or None to skip that check.

    Returns:
        Its tensors (CPU, any values) and header metadata (the digest removed).

    Raises:
        CheckpointError: the file is missing, a folder, a pickle, not valid safetensors, does not
            match ``sha256``, or its tensors do not match the digest its header records (files
            medfuse wrote; files without one, e.g. converted from elsewhere, are read as they are).
    """
    path = Path(path)
    require_checkpoint_file(path)
    try:
        data = path.read_bytes()  # once: what is hashed is what is loaded
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    # A safetensors header length can itself begin with pickle's or zip's magic bytes (e.g. a
    # 640-byte header is 80 02 00 ...), so the JSON brace at byte 8 decides first.
    if data[8:9] != _SAFETENSORS_HEADER_START and data.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{path} is a pickle/PyTorch file; only safetensors checkpoints load")
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise CheckpointError(f"checksum mismatch for {path}: the file is corrupt or not the expected one")
    try:
        tensors = load(data)
        metadata = _header_metadata(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint ({_first_line(exc)})") from None
    recorded = metadata.pop(TENSOR_DIGEST_KEY, None)
    if recorded is not None and tensor_digest(tensors) != recorded:
        raise CheckpointError(
            f"{path}: its tensor data do not match the {TENSOR_DIGEST_KEY} its header records: the file "
            "is damaged, or a program changed its tensors and kept medfuse's header"
        )
    return LoadedCheckpoint(
        tensors=tensors,
        metadata=metadata,
        source=str(path),
        sha256=digest,
        tensors_verified=recorded is not None,
    )


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file's header (string keys and values).

    Raises:
        ValueError: the header is not JSON (``json.JSONDecodeError``) or not an object.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return dict(header.get("__metadata__") or {})


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Save tensors with string metadata, atomically, the tensors' digest added to the header
    (``TENSOR_DIGEST_KEY``; ``read_checkpoint`` verifies and removes it).

    Raises:
        OutputError: the file cannot be written (full disk, no permission); nothing is left.
    """
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    try:
        # Serialised in memory and written into the temporary file as it was created (mode 0666
        # less the umask, as for every output): safetensors' own save_file makes its files 0600,
        # which colleagues on a shared cluster could not read.
        data = save(contiguous, metadata=metadata | {TENSOR_DIGEST_KEY: tensor_digest(contiguous)})
        write_atomically(Path(path), lambda tmp: tmp.write_bytes(data), overwrite=True)
    except (SafetensorError, OSError) as exc:  # safetensors reports a full disk as its own error
        raise OutputError(f"cannot write {path}: {_first_line(exc)}") from None


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors into ``module``; any missing, unexpected or misshapen tensor is an error.

    Raises:
        CheckpointError: naming up to four missing or unexpected tensors, or the first whose
            shape differs, and ``source``.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise CheckpointError(
            f"checkpoint {source} does not match {type(module).__name__}: {'; '.join(parts)}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint {source} does not match {type(module).__name__}: tensor {name} has "
                f"shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    module.load_state_dict(tensors, strict=True)


def _few(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def bundled_path(record: Checkpoint) -> Path:
    """Where ``record``'s file would be bundled (it may be absent)."""
    return BUNDLED_DIR / record.filename


def resolve_checkpoint(record: Checkpoint) -> LoadedCheckpoint:
    """Find, verify and read the file of a registered checkpoint.

    A bundled file with the pinned sha256 is used at once (no network). Otherwise (no bundled
    file, or a damaged one) the Hub copy at the pinned revision, unless ``HF_HUB_OFFLINE`` is set;
    a Hub that cannot serve it is one notice, then the error.

    Raises:
        CheckpointError: neither source gives a file with the pinned sha256.
    """
    bundled = bundled_path(record)
    bundled_problem = None
    if bundled.is_file():
        try:
            return read_checkpoint(bundled, record.sha256)  # hashed once, as it is read
        except CheckpointError as exc:
            bundled_problem = str(exc)
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in _HUB_OFFLINE_VALUES
    if not offline:
        downloaded = _download_from_hub(record)
        if downloaded is not None:
            return read_checkpoint(downloaded, record.sha256)
    if bundled_problem is not None:
        hub = "HF_HUB_OFFLINE is set, so the Hub was not asked for" if offline else "the Hub cannot serve"
        raise CheckpointError(
            f"the bundled file cannot be used ({bundled_problem}) and {hub} {record.filename}: {_bundled_remedy()}"
        )
    raise CheckpointError(
        f"checkpoint {record.filename} is neither bundled nor downloadable: {_bundled_remedy()}"
    )


def _bundled_remedy() -> str:
    """What to do about a missing or damaged bundled file: $MEDFUSE_WEIGHTS_DIR, when set, is
    where medfuse looked, and reinstalling would not change that."""
    if os.environ.get("MEDFUSE_WEIGHTS_DIR"):
        return (
            f"$MEDFUSE_WEIGHTS_DIR points at {BUNDLED_DIR}; unset it, fix that folder, or pass --weights PATH"
        )
    return "reinstall medfuse or pass --weights PATH"


def _download_from_hub(record: Checkpoint) -> Path | None:
    """Fetch ``record`` from the Hub at its revision (the caller checks the sha256); None (and
    one notice) when the Hub cannot serve it.

    One metadata request without retries comes first: ``hf_hub_download`` alone retries an
    unreachable Hub with back-off for half a minute, too long for an offline clinic machine.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    url = hf_hub_url(record.hub_repo, record.filename, revision=record.hub_revision)
    try:
        get_hf_file_metadata(url, timeout=10)
        path = hf_hub_download(
            repo_id=record.hub_repo, filename=record.filename, revision=record.hub_revision
        )
    # The Hub client raises the transport errors of whichever HTTP library its version ships
    # with (requests, httpx, httpx2); any failure here only means "not from the Hub", and
    # whatever file is used next is checksum-verified.
    except Exception as exc:
        log.warning("Hugging Face Hub unavailable for %s (%s)", record.filename, _first_line(exc)[:80])
        return None
    return Path(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
