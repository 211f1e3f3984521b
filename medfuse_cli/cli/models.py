"""``medfuse models``: every fuser, its size, and each checkpoint's full record."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from rich.table import Table

from medfuse_cli.cli import options

if TYPE_CHECKING:  # the zoo (and torch) is imported when the command runs, not for --help
    from medfuse_cli.fusers import Checkpoint, FuserSpec


def _parameter_count(spec: FuserSpec) -> int:
    """Parameters of the network (an untrained copy: the count does not depend on the weights)."""
    from medfuse_cli.fusers import create_fuser

    return sum(p.numel() for p in create_fuser(spec.name, pretrained=False).parameters())


# Header fields only some checkpoints carry, shown where present: how LYWNet normalises when it
# fuses, and what came before a run started with --init (its own epochs and wall time are the
# last step's only).
OPTIONAL_FIELDS = ("normalization", "lineage")

# Header fields whose text stands for a number or a list; --json gives them as such, so a script
# reads ``epochs`` as 3, not "3". The others (command, schedule, ...) are text.
TYPED_FIELDS = {
    "parameters": int,
    "epochs": int,
    "wall_time_minutes": float,
    "data": json.loads,
    "resumed": json.loads,
}


def checkpoint_row(record: Checkpoint) -> dict:
    """A checkpoint's record as ``medfuse models --json`` prints it: whether a bundled copy with
    the pinned sha256 is present (``bundled``; a damaged one is not counted), the header's
    fields, numbers and lists typed (``TYPED_FIELDS``), ``test_metrics`` parsed, and the
    fields only some records have (``OPTIONAL_FIELDS``: LYWNet's inference statistics and the
    lineage of a checkpoint continued with ``--init``)."""
    from medfuse_cli.fusers.registry import PROVENANCE_FIELDS
    from medfuse_cli.weights import bundled_path

    bundled = bundled_path(record)
    return {
        "name": record.name,
        "file": record.filename,
        "for": record.applies_to or "any pair",
        "bundled": bundled.is_file() and hashlib.sha256(bundled.read_bytes()).hexdigest() == record.sha256,
        "hub": f"{record.hub_repo}@{record.hub_revision}",
        "sha256": record.sha256,
        **{key: _typed(key, record.meta[key]) for key in PROVENANCE_FIELDS if key != "test_metrics"},
        **{key: record.meta[key] for key in OPTIONAL_FIELDS if key in record.meta},
        "test_metrics": record.test_metrics,
    }


def _typed(key: str, text: str) -> object:
    """A header field's value: ``TYPED_FIELDS``' type where it has one, else the text itself."""
    return TYPED_FIELDS[key](text) if key in TYPED_FIELDS else text


def models(as_json: bool = options.JSON) -> None:
    """List the fusers medfuse knows: kind, parameters, smallest input, and every checkpoint's
    record (file, sha256, Hub location, how it was trained, its test-split scores)."""
    from medfuse_cli.fusers import list_fusers

    rows = [
        {
            "name": spec.name,
            "kind": spec.kind,
            "summary": spec.summary,
            "reference": spec.reference,
            "params": _parameter_count(spec),
            "min_size": spec.min_size,
            "cpu_threads": spec.cpu_threads,
            "checkpoints": [checkpoint_row(record) for record in spec.checkpoints],
        }
        for spec in list_fusers()
    ]
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
        return
    console = options.stdout_console()
    table = Table(title="medfuse fusers")
    for column in ("name", "kind", "params", "min side", "checkpoints"):
        table.add_column(column)
    for row in rows:
        names = "\n".join(c["name"] for c in row["checkpoints"]) or "-"
        table.add_row(row["name"], row["kind"], f"{row['params']:,}", str(row["min_size"]), names)
    console.print(table)
    for row in rows:
        for record in row["checkpoints"]:
            console.print(f"\n[bold]{record['name']}[/bold] ({record['for']})", highlight=False)
            for key, value in record.items():
                if key not in ("name", "for") and value != []:  # "resumed: []" says nothing
                    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
                    console.print(f"  {key}: {text}", markup=False, highlight=False, soft_wrap=True)
