"""The files ``medfuse evaluate --out`` writes, each atomically so a crash leaves no half file."""

from __future__ import annotations

import json
from pathlib import Path

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import OutputError
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.evaluation.tables import markdown, per_image_csv, results_json, summary_csv


def write_reports(results: list[PairSetResult], parent: bool, out_dir: Path) -> list[Path]:
    """Write per_image.csv, summary.csv, summary.md and summary.json (UTF-8).

    Args:
        results: Scores per pair set.
        parent: Whether the pair folder was a parent of several pair sets (shapes the JSON).
        out_dir: The folder to write into; created with its parents if missing.

    Returns:
        The four paths, in the order above.

    Raises:
        OSError: A file cannot be written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "per_image.csv": per_image_csv(results),
        "summary.csv": summary_csv(results),
        "summary.md": markdown(results),
        "summary.json": json.dumps(results_json(results, parent), indent=2) + "\n",
    }
    written: list[Path] = []
    for name, text in files.items():
        path = out_dir / name
        # surrogateescape: a file name that is not UTF-8 is written back as the bytes it was
        write = lambda tmp, text=text: tmp.write_text(text, encoding="utf-8", errors="surrogateescape")  # noqa: E731
        try:
            write_atomically(path, write, overwrite=True)
        except OSError as exc:  # a report is whole or absent: the files already written go too
            for done in written:
                done.unlink(missing_ok=True)
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written
