"""Shared fixtures: the bundled examples, and running the CLI in-process like a user would."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from medfuse_cli.cli.app import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``medfuse ARGS`` through the console-script entry point; return code and output."""

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["medfuse", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def disk_full_on(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``disk_full_on(NAME)``: from now on, writing an evaluation output file called NAME fails
    as a full disk does (``OutputFiles.write`` raises ``OutputError``); ``monkeypatch.undo()``
    ends it."""
    from medfuse_cli.errors import OutputError
    from medfuse_cli.evaluation.files import OutputFiles

    write = OutputFiles.write

    def fail_on(name: str) -> None:
        def full_disk(self: OutputFiles, path: Path, *rest: object) -> object:
            if path.name == name:
                raise OutputError(f"cannot write {path}: No space left on device")
            return write(self, path, *rest)

        monkeypatch.setattr(OutputFiles, "write", full_disk)

    return fail_on
