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
