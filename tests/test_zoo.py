"""The model zoo: records that match their files, the Python doors, ``medfuse models``, and an
import picture without circles or arrows running back up."""

from __future__ import annotations

import ast
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.fusers import create_fuser, get_fuser_spec, list_fusers
from medfuse_cli.fusers.registry import PROVENANCE_FIELDS
from medfuse_cli.weights import bundled_path

PACKAGE = Path(__file__).resolve().parent.parent / "medfuse_cli"
RECORDS = [record for spec in list_fusers() for record in spec.checkpoints]


def _header_metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        return json.loads(handle.read(size))["__metadata__"]


@pytest.mark.parametrize("record", RECORDS, ids=[r.name for r in RECORDS])
def test_each_record_equals_its_file_header(record) -> None:
    path = bundled_path(record)
    assert path.is_file(), f"{record.name} is not bundled"
    header = _header_metadata(path)
    for key in PROVENANCE_FIELDS:
        assert record.meta[key] == header[key], key
    assert record.test_metrics == json.loads(header["test_metrics"])


def test_models_json_prints_every_record_in_full(run_cli) -> None:
    result = run_cli("models", "--json")
    assert result.code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)["models"]}
    assert set(rows) == {spec.name for spec in list_fusers()}
    assert rows["lwnet"]["params"] == 6444 and rows["lywnet"]["params"] == 413_505
    assert rows["average"]["params"] == 0 and rows["average"]["checkpoints"] == []
    printed = {c["name"]: c for row in rows.values() for c in row["checkpoints"]}
    assert set(printed) == {r.name for r in RECORDS}
    for record in RECORDS:
        row = printed[record.name]
        assert row["sha256"] == record.sha256 and row["bundled"] is True
        assert row["command"] == record.meta["command"] and row["test_metrics"] == record.test_metrics
        # numbers and lists as such, not their text
        assert row["epochs"] == int(record.meta["epochs"]) and row["parameters"] in (6444, 413_505)
        assert row["wall_time_minutes"] == float(record.meta["wall_time_minutes"])
        assert row["data"] == json.loads(record.meta["data"]) and isinstance(row["data"], list)
        # each --resume session's command where a run was continued; a list, also when empty
        assert row["resumed"] == json.loads(record.meta["resumed"]) and isinstance(row["resumed"], list)
    for name in ("lywnet.harvard", "lywnet.ct"):
        # how the shipped LYWNet fuses (per pair) is part of its record; LWNet has no such setting
        assert printed[name]["normalization"] == "per-pair"
        # a checkpoint continued with --init says what came before its last step's epochs
        assert printed[name]["lineage"] == next(r for r in RECORDS if r.name == name).meta["lineage"]
    assert "lineage" not in printed["lwnet.ct"]
    assert "normalization" not in printed["lwnet.ct"]


def test_models_does_not_count_a_damaged_bundled_file(run_cli, tmp_path: Path, monkeypatch) -> None:
    from medfuse_cli import weights

    copy = tmp_path / "weights"
    shutil.copytree(weights.BUNDLED_DIR, copy)
    data = bytearray((copy / "lwnet-ct.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "lwnet-ct.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(weights, "BUNDLED_DIR", copy)
    result = run_cli("models", "--json")
    bundled = {
        c["name"]: c["bundled"] for row in json.loads(result.stdout)["models"] for c in row["checkpoints"]
    }
    assert bundled["lwnet.ct"] is False and bundled["lywnet.harvard"] is True


def test_models_table_names_every_checkpoint_and_its_command(run_cli) -> None:
    result = run_cli("models")
    assert result.code == 0
    for record in RECORDS:
        assert record.name in result.stdout and record.sha256 in result.stdout
    assert "normalization: per-pair" in result.stdout


def test_create_fuser_builds_weights_and_untrained_networks() -> None:
    ct = create_fuser("lwnet", checkpoint="lwnet.ct")
    functional = create_fuser("lwnet", checkpoint="functional")
    assert not torch.equal(ct.decoder.out.weight, functional.decoder.out.weight)
    untrained = create_fuser("lwnet", pretrained=False)
    assert sum(p.numel() for p in untrained.parameters()) == 6444
    assert not ct.training
    with pytest.raises(
        InputError, match=r"no checkpoint 'nope' \(known: lwnet.functional or functional, lwnet.ct or ct\)"
    ):
        create_fuser("lwnet", checkpoint="nope")
    with pytest.raises(InputError, match="classical rule"):
        create_fuser("average", weights="x.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        create_fuser("lwnet", weights="/nonexistent.safetensors")
    with pytest.raises(InputError, match="unknown model 'nope'"):
        get_fuser_spec("nope")


# --- the import picture -------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """medfuse modules ``path`` imports when it runs (``if TYPE_CHECKING`` blocks excluded),
    with the packages whose ``__init__`` such an import runs (all but the root's, which is lazy)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    own = _module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for end in range(2, len(parts) + 1):
                prefix = ".".join(parts[:end])
                if prefix in modules and prefix != own and not own.startswith(prefix + "."):
                    found.add(prefix)
    return found


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _runtime_imports(path, modules) for name, path in files.items()}


def test_the_import_picture_has_no_circle() -> None:
    graph = _import_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*trail[trail.index(target) :], target] if target in trail else [node, target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_no_arrow_runs_back_up() -> None:
    graph = _import_graph()
    leaf_rules = {
        "medfuse_cli.errors": set(),
        "medfuse_cli.fusers.registry": {"medfuse_cli.errors"},
        "medfuse_cli.atomic": set(),
    }
    for module, allowed in leaf_rules.items():
        assert graph[module] <= allowed, (module, graph[module] - allowed)
    for module, targets in graph.items():
        if not module.startswith(("medfuse_cli.cli", "medfuse_cli.__main__")):
            assert not any(t.startswith("medfuse_cli.cli") for t in targets), module
        if module.startswith("medfuse_cli.metrics"):
            assert all(t.startswith(("medfuse_cli.metrics", "medfuse_cli.errors")) for t in targets), module
        if module in ("medfuse_cli.weights", "medfuse_cli.io", "medfuse_cli.color", "medfuse_cli.pairs"):
            assert not any(t.startswith(("medfuse_cli.fusers", "medfuse_cli.pipeline")) for t in targets), (
                module
            )


def test_help_does_not_import_torch() -> None:
    """``medfuse --help`` starts in well under a second because no command imports torch (or the
    zoo, metrics, scipy) until it runs; measured, not timed here: the modules are checked."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medfuse_cli.cli.app import app\n"
        "heavy = [m for m in ('torch', 'scipy', 'medfuse_cli.pipeline', 'medfuse_cli.fusers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    helped = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "medfuse_cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0 and "--recipe" in helped.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in helped.stderr.splitlines() if "|" in line}
    assert imported and "torch" not in imported
