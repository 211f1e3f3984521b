"""How a report was made: the command, the versions, the date, and what each method is (the
checkpoints with their sha256, the folder another tool's images came from)."""

from __future__ import annotations

import platform
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch

from medfuse_cli import __version__
from medfuse_cli.evaluation.methods import Method
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.fusers import get_fuser_spec
from medfuse_cli.weights import sha256_of


@dataclass(frozen=True)
class MethodSource:
    """What one method is: ``what`` in words (fuser and checkpoint, a weights file, a folder of
    images), with the sha256 of the weights it used where it used some."""

    label: str
    what: str
    sha256: str | None = None


@dataclass(frozen=True)
class Provenance:
    """The report's account of itself. ``date`` is the one part that changes between runs."""

    command: str
    versions: str
    date: str
    methods: tuple[MethodSource, ...]


def collect(methods: list[Method], results: list[PairSetResult]) -> Provenance:
    """The provenance of a run that scored ``methods`` into ``results``.

    The command is this process's (``medfuse`` and its arguments, shell-quoted); checkpoints are
    those each network actually used on some pair set (``PairSetResult.checkpoints``), with the
    sha256 the model zoo pins for them (a file is verified against it before it is loaded);
    a ``--weights`` file's sha256 is computed from the file.

    Raises:
        OSError: A weights file can no longer be read.
    """
    return Provenance(
        command=shlex.join(["medfuse", *sys.argv[1:]]),
        versions=(
            f"medfuse {__version__} · torch {torch.__version__} · numpy {np.__version__} · "
            f"Python {platform.python_version()}"
        ),
        date=datetime.now().astimezone().isoformat(sep=" ", timespec="seconds"),
        methods=tuple(source for method in methods for source in _sources(method, results)),
    )


def _sources(method: Method, results: list[PairSetResult]) -> list[MethodSource]:
    if method.model is None:
        return [MethodSource(method.label, f"images fused elsewhere, read from {method.fused_dir}")]
    spec = get_fuser_spec(method.model)
    if not spec.needs_weights:
        return [MethodSource(method.label, f"{spec.name}: classical rule, no weights")]
    if method.weights is not None:
        return [
            MethodSource(
                method.label, f"{spec.name}: weights file {method.weights}", sha256_of(method.weights)
            )
        ]
    used = sorted({name for r in results for name in r.checkpoints.get(method.label, ())})
    if not used:
        return [MethodSource(method.label, f"{spec.name}: not run (skipped)")]
    return [
        MethodSource(method.label, f"{spec.name}: checkpoint {name}", spec.checkpoint(name).sha256)
        for name in used
    ]
