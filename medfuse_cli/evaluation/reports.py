"""The tables ``medfuse evaluate --out`` writes (and ``--report`` writes beside its page)."""

from __future__ import annotations

import json
from pathlib import Path

from medfuse_cli.evaluation.files import OutputFiles
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.evaluation.tables import markdown, per_image_csv, results_json, summary_csv

TABLE_FILES = ("per_image.csv", "summary.csv", "summary.md", "summary.json")


def write_reports(
    results: list[PairSetResult], parent: bool, out_dir: Path, files: OutputFiles
) -> list[Path]:
    """Write per_image.csv, summary.csv, summary.md and summary.json (UTF-8) into ``out_dir``.

    Args:
        results: Scores per pair set.
        parent: Whether the pair folder was a parent of several pair sets (shapes the JSON).
        out_dir: The folder to write into; created with its parents if missing.
        files: The run's writer (atomic writes, ``--overwrite``, removal if the run fails).

    Returns:
        The four paths, in the order of ``TABLE_FILES``.

    Raises:
        OutputError: A file exists without ``--overwrite`` or cannot be written.
    """
    texts = {
        "per_image.csv": per_image_csv(results),
        "summary.csv": summary_csv(results),
        "summary.md": markdown(results),
        "summary.json": json.dumps(results_json(results, parent), indent=2) + "\n",
    }
    return [files.write_text(out_dir / name, texts[name]) for name in TABLE_FILES]
