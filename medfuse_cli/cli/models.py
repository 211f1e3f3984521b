"""``medfuse models``: every fuser with its kind, size and checkpoints' provenance."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from medfuse_cli.cli import options
from medfuse_cli.fusers.registry import FuserSpec, list_fusers
from medfuse_cli.weights import BUNDLED_DIR


def _parameter_count(spec: FuserSpec) -> int | None:
    """Parameters of the network as the registry builds it (None for classical rules)."""
    if not spec.needs_weights:
        return 0
    module = spec.build(None, {})
    return sum(p.numel() for p in module.parameters())


def models(as_json: bool = options.JSON) -> None:
    """List the fusers medfuse knows, their parameter counts and checkpoints."""
    rows = []
    for spec in list_fusers():
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "summary": spec.summary,
                "params": _parameter_count(spec),
                "checkpoints": [
                    {
                        "name": c.name,
                        "file": c.filename,
                        "for": c.applies_to or "any pair",
                        "bundled": (BUNDLED_DIR / c.filename).is_file(),
                        "hub": f"{c.hub_repo}@{c.hub_revision}",
                        "sha256": c.sha256,
                        "provenance": c.provenance,
                    }
                    for c in spec.checkpoints
                ],
            }
        )
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
        return
    table = Table(title="medfuse fusers")
    for column in ("name", "kind", "params", "checkpoints", "provenance"):
        table.add_column(column)
    for row in rows:
        checkpoints = "\n".join(
            f"{c['name']}: {c['file']} ({c['for']}{', bundled' if c['bundled'] else ''})"
            for c in row["checkpoints"]
        )
        provenance = "\n".join(c["provenance"] for c in row["checkpoints"]) or row["summary"]
        table.add_row(row["name"], row["kind"], f"{row['params']:,}", checkpoints or "-", provenance)
    Console().print(table)
