"""ONNX Runtime sessions of a fuser network for ``medfuse fuse --backend onnxruntime``, from a
user cache of exported files.

Exporting LWNet takes 10–20 s (LYWNet about a minute), so each export is written once to a cache
folder (``cache_dir``: ``$MEDFUSE_CACHE``, else ``$XDG_CACHE_HOME/medfuse/onnx``, else
``~/.cache/medfuse/onnx``) and reused. A file is named
``<model>-<key>-<sha256>.onnx``: ``key`` (``cache_key``) digests what the export depends on
(the network, the checkpoint's sha256, the fuser options, the opset, and the versions of
medfuse, torch, onnx, onnxscript and onnxruntime), ``sha256`` is the file's own. A cached file
is used only when its bytes hash to the sha256 in its name, ONNX Runtime loads them, and its
metadata names the same network, checkpoint sha256, opset and options; any other file under the
key is removed and the network exported again, never trusted. Files are written atomically
(``atomic.write_atomically``), so concurrent runs that export the same network at once (a SLURM
array starting on an empty cache) each publish a complete file of the same name.

An export is made by ``export.export_with_metadata`` from the torch module ``Fusion`` built and
checked against it (``export.checked_session``) before it is cached, as ``medfuse export`` does.
Each export says so in one notice (logger ``medfuse_cli``), with where the cache is; a cache that
cannot be written makes the export serve this run only (the notice says why).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfuse_cli import __version__
from medfuse_cli.atomic import prepare_folder, write_atomically
from medfuse_cli.errors import InputError
from medfuse_cli.export import (
    DEFAULT_OPSET,
    WeightsRecord,
    check_installed,
    checked_session,
    export_with_metadata,
    ort_session,
)
from medfuse_cli.fusers import list_fusers
from medfuse_cli.fusers.registry import FuserSpec

log = logging.getLogger("medfuse_cli")

CACHE_ENV = "MEDFUSE_CACHE"
# Bumped when the naming or the checks of cached files change: older files are then not used.
CACHE_FORMAT = 1
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
PURPOSE = "--backend onnxruntime"
# Where a network runs: the torch module, or its ONNX export in an ONNX Runtime CPU session.
TORCH, ONNXRUNTIME = "torch", "onnxruntime"
BACKENDS = (TORCH, ONNXRUNTIME)


def check_backend(backend: str, spec: FuserSpec, device: torch.device | str) -> str:
    """``backend`` if ``spec`` can run on it on ``device``; checked before the device is resolved,
    so ``--device cuda --backend onnxruntime`` says what to change on any machine.

    Raises:
        InputError: an unknown backend; ``onnxruntime`` with a classical rule (there is no
            network to export: the rules run in torch) or a device other than the CPU.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend takes {' or '.join(BACKENDS)}, got '{backend}'")
    if backend == ONNXRUNTIME:
        if not spec.needs_weights:
            networks = ", ".join(s.name for s in list_fusers() if s.needs_weights)
            raise InputError(
                f"--backend onnxruntime runs a network's ONNX export, and {spec.name} is a classical rule "
                f"(the rules run in torch): drop --backend, or pick a network ({networks})"
            )
        if str(device) not in ("auto", "cpu"):
            raise InputError(f"--backend onnxruntime runs on the CPU: pass --device cpu, not {device}")
    return backend


def require_onnx_packages() -> None:
    """The onnx extra is installed (checked without importing it).

    Raises:
        MedfuseError: one line naming what is missing and ``pip install 'medfuse[onnx]'``.
    """
    check_installed(PURPOSE, *ONNX_PACKAGES)


def cache_dir() -> Path | None:
    """Where exported files are cached: ``$MEDFUSE_CACHE``, else ``$XDG_CACHE_HOME/medfuse/onnx``
    (an absolute ``XDG_CACHE_HOME`` only, as the XDG specification says), else
    ``~/.cache/medfuse/onnx``; None when there is no home folder to put it in."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "medfuse" / "onnx"
    try:
        return Path.home() / ".cache" / "medfuse" / "onnx"
    except RuntimeError:  # no HOME and no passwd entry
        return None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def cache_key(model: str, checkpoint_sha256: str, options: Mapping[str, object], opset: int) -> str:
    """The hex sha256 of everything an export depends on: network, checkpoint, options, opset,
    and the versions of medfuse and of the packages that export and run it."""
    fields = {
        "format": CACHE_FORMAT,
        "model": model,
        "checkpoint_sha256": checkpoint_sha256,
        "options": dict(options),
        "opset": opset,
        "medfuse": __version__,
        "torch": torch.__version__,
        **{package: _version(package) for package in ONNX_PACKAGES},
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _expected_metadata(
    spec: FuserSpec, sha256: str, options: Mapping[str, object], opset: int
) -> dict[str, str]:
    """The ``metadata_props`` a cached file must carry (``export.onnx_metadata``'s)."""
    return {
        "medfuse.model": spec.name,
        "medfuse.opset": str(opset),
        "medfuse.options": json.dumps(dict(options), sort_keys=True) if options else "",
        "checkpoint.sha256": sha256,
    }


def _load_cached(path: Path, threads: int, expected: Mapping[str, str]) -> tuple[Any | None, str | None]:
    """A session of the cached ``path`` and None, or None and why the file cannot be used."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed by a concurrent run since it was listed
        return None, None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    named = path.stem.rsplit("-", 1)[-1]
    if hashlib.sha256(data).hexdigest() != named:
        return None, "is corrupt (its sha256 is not the one in its name)"
    try:
        session = ort_session(data, threads)
    except Exception as exc:  # ONNX Runtime's own errors (InvalidProtobuf, Fail, ...)
        return None, f"does not load in ONNX Runtime ({type(exc).__name__})"
    props = session.get_modelmeta().custom_metadata_map
    if any(props.get(key, "") != value for key, value in expected.items()):
        return None, "was exported from other weights or options"
    return session, None


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache: the file is skipped each time, never used
        path.unlink(missing_ok=True)


def _writable(folder: Path) -> str | None:
    """None when exports can be published in ``folder`` (created if need be); else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        prepare_folder(folder)  # clears temporary files of killed runs, probes the folder
    except OSError as exc:
        return f"cannot write {folder}: {exc.strerror or exc}"
    return None


def session_for(
    spec: FuserSpec,
    label: str,
    record: WeightsRecord,
    options: Mapping[str, object],
    threads: int,
    build: Callable[[], nn.Module],
    *,
    pretrained: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Any:
    """An ONNX Runtime CPU session of the network ``Fusion`` builds, from the cache or exported now.

    Args:
        spec: the network's spec.
        label: what it is fused with (``Fusion.checkpoint_for``: ``lwnet.ct``, ``--weights PATH``).
        record: the weights ``build`` loads (``Fusion.weights_record``): its sha256, of the bytes
            that were loaded, keys the cache, so a file replaced since cannot be confused with it.
        options: fuser options (part of the export and of the key).
        threads: the session's ``intra_op_num_threads`` (one thread between operators).
        build: returns the torch module (CPU, eval mode); called only to export.
        pretrained: False (random weights, for timing): exported for this run only, not cached.
        opset: ONNX opset of the export.

    Returns:
        an ``onnxruntime.InferenceSession`` with inputs ``anatomical``, ``functional`` and output
        ``fused`` (see ``medfuse_cli.export``).

    Raises:
        MedfuseError: the onnx extra is missing.
        CheckpointError: the weights cannot be read (a cache miss builds the network).
        InputError: the export failed or does not reproduce torch (nothing is cached).
    """
    require_onnx_packages()
    folder = cache_dir() if pretrained else None
    not_cached = "untrained weights" if not pretrained else "no home folder for a cache"
    file_name, rejected = None, None
    if folder is not None:
        key = cache_key(spec.name, record.sha256, options, opset)[:16]
        expected = _expected_metadata(spec, record.sha256, options, opset)
        for path in sorted(folder.glob(f"{spec.name}-{key}-*.onnx")) if folder.is_dir() else []:
            session, reason = _load_cached(path, threads, expected)
            if session is not None:
                return session
            if reason is not None:
                _remove(path)
                rejected = f"the cached {path} {reason}"
        file_name = f"{spec.name}-{key}-{{sha256}}.onnx"
        problem = _writable(folder)
        if problem is not None:
            not_cached, folder = problem, None
    network = build()  # a checkpoint that cannot be read fails here, before the notice
    what = f"{spec.name} ({label})"
    if folder is None:
        message = f"exporting {what} to ONNX for {PURPOSE}, for this run only (not cached: {not_cached})"
    elif rejected:
        message = f"exporting {what} to ONNX again, into the cache {folder}"
    else:
        message = f"exporting {what} to ONNX for {PURPOSE}, once: later runs reuse it from the cache {folder}"
    log.info(f"{rejected}: {message}" if rejected else message)
    data = export_with_metadata(network, spec, record, opset, options).SerializeToString()
    session, _ = checked_session(network, spec.name, data, threads)
    if folder is not None and file_name is not None:
        target = folder / file_name.format(sha256=hashlib.sha256(data).hexdigest())
        try:
            write_atomically(target, lambda tmp: tmp.write_bytes(data), overwrite=True)
        except OSError as exc:  # a full disk: this run still has its session
            log.info(
                "cannot cache the ONNX export in %s (%s): it served this run only",
                folder,
                exc.strerror or exc,
            )
    return session
