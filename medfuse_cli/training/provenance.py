"""Where a trained checkpoint came from, as every trainer records it in the checkpoint's metadata.

``Provenance`` is written into the header of each checkpoint a run saves, and read back from
the run folder's checkpoint when the run is resumed: a resumed run keeps its options, its data,
and the command and commit it started from, and adds one entry per later session.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from medfuse_cli.errors import CheckpointError


def git_commit() -> str:
    """The commit of the medfuse source tree running now, or "unknown" outside a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


@dataclass(frozen=True)
class Provenance:
    """The record of a run that its checkpoints carry.

    Attributes:
        command: the command line that started the run.
        git_commit: the commit the run started from (``git_commit()``).
        data: the training pair folders, as given.
        recipe: the recipe the run's defaults came from, or None.
        config: the trainer's config, JSON-ready (``dataclasses.asdict``).
        threads: torch CPU threads of the latest session (a resume reuses them unless told);
            None where the run did not record them.
        resumed: one entry per later session: its ``command``, ``git_commit`` and the epoch it
            continued ``after_epoch``.
    """

    command: str
    git_commit: str
    data: tuple[str, ...]
    recipe: str | None
    config: dict
    threads: int | None
    resumed: tuple[dict, ...] = ()

    def resumed_by(self, command: str, after_epoch: int, threads: int) -> Provenance:
        """This record with a new session appended (and that session's thread count)."""
        session = {"command": command, "git_commit": git_commit(), "after_epoch": after_epoch}
        return replace(self, resumed=(*self.resumed, session), threads=threads)

    def metadata(self, config_key: str) -> dict[str, str]:
        """The header fields, strings as safetensors wants; the config under ``config_key``."""
        return {
            "command": self.command,
            "git_commit": self.git_commit,
            "data": json.dumps(list(self.data)),
            "recipe": self.recipe or "",
            config_key: json.dumps(self.config),
            "threads": str(self.threads),
            "resumed": json.dumps(list(self.resumed)),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], config_key: str, source: str) -> Provenance:
        """Read back what ``metadata`` wrote.

        Runs started before recipes, thread counts and session entries were recorded lack
        those fields; they read as None, None and no sessions.

        Raises:
            CheckpointError: ``command``, ``git_commit``, ``data`` or the config is missing
                or not JSON (``source`` names the file in the message).
        """
        try:
            return cls(
                command=metadata["command"],
                git_commit=metadata["git_commit"],
                data=tuple(json.loads(metadata["data"])),
                recipe=metadata.get("recipe") or None,
                config=json.loads(metadata[config_key]),
                threads=int(metadata["threads"]) if "threads" in metadata else None,
                resumed=tuple(json.loads(metadata.get("resumed", "[]"))),
            )
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{source} does not record its run ({type(exc).__name__}: {exc})") from None
