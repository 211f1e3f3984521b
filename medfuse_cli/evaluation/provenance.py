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
    those each network actually used on some pair set, with the sha256 of their files
    (``PairSetResult.checkpoints``: a shipped checkpoint's pinned digest, which its file is
    verified against before it is loaded; a ``--weights`` file's own).
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
    used = {name: sha for r in results for name, sha in r.checkpoints.get(method.label, {}).items()}
    if not used:
        return [MethodSource(method.label, f"{spec.name}: not run (skipped)")]
    return [
        MethodSource(
            method.label,
            f"{spec.name}: weights file {method.weights}"
            if method.weights is not None
            else f"{spec.name}: checkpoint {name}",
            sha,
        )
        for name, sha in sorted(used.items())
    ]
