"""The README's Python examples run as written (from the repository root, on the bundled examples)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_example_runs(
    code: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "lwnet" in printed and "SSIM" in printed


def test_the_readme_has_python_examples() -> None:
    assert BLOCKS


# --- every command the README shows --------------------------------------------------------

COMMANDS = [
    line.strip().split("   #")[0].strip()
    for line in (ROOT / "README.md").read_text().splitlines()
    if line.startswith("    medfuse ")
]


def _runs_here(command: str) -> bool:
    """Commands on shipped data run in the test; those on ../shared data or long trainings are
    parsed (every option and value checked) but not run."""
    return "../shared" not in command and "DATA" not in command and " train " not in f" {command} "


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command_parses(command: str) -> None:
    import shlex

    import click
    import typer

    from medfuse_cli.cli.app import app

    words = shlex.split(command.split("|")[0])[1:]
    group = typer.main.get_command(app)
    with group.make_context("medfuse", list(words)) as context:
        sub = group.get_command(context, words[0])
        assert sub is not None, words[0]
        try:
            sub.make_context(words[0], words[1:], parent=context).close()
        except click.exceptions.UsageError as exc:  # a README line that cannot work as written
            pytest.fail(f"{command}: {exc}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if _runs_here(c)], ids=lambda c: c[:60])
def test_readme_command_runs_on_shipped_data(command: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "examples").symlink_to(ROOT / "examples")
    shell = command.replace("medfuse ", f"{sys.executable} -m medfuse_cli ", 1)
    done = subprocess.run(
        shell,
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
