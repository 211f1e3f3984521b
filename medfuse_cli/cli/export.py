"""``medfuse export``: a network, with its checkpoint's provenance, as a checked ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medfuse_cli.cli import options
from medfuse_cli.io import write_stdout

_stderr = options.stderr

# --checkpoint means what it means everywhere (a shipped checkpoint); only its default differs:
# an exported file holds one network, so there is no choice per pair.
CHECKPOINT: str | None = typer.Option(
    None,
    "--checkpoint",
    help="A shipped checkpoint, e.g. lwnet.ct [default: the network's first, e.g. lwnet.functional].",
)
_STEPS = {"export": "exporting {model} to ONNX", "check": "checking {model} with ONNX Runtime"}


def export(
    model: str = typer.Argument(..., help="The network to export: lwnet or lywnet (see `medfuse models`)."),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write."),
    checkpoint: str | None = CHECKPOINT,
    weights: Path | None = options.WEIGHTS,
    opset: int = typer.Option(20, "--opset", help="ONNX opset of the graph, 18 to 23."),
    temperature: float | None = typer.Option(
        None, "--temperature", help="LYWNet FDS temperature T, built into the graph [default: 30]."
    ),
    device: str = options.DEVICE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Export a network to ONNX: inputs anatomical and functional, output fused, each float32
    (batch, 1, height, width) luminance in [0, 1], with batch, height and width dynamic.

    The checkpoint's record (name, sha256, training provenance) is in the file's metadata. Before
    the file is written, ONNX Runtime runs it and must match torch within 1e-4 (two sizes,
    batch 1 and 3). Needs the onnx extra: pip install 'medfuse[onnx]'.
    """
    from medfuse_cli.devices import resolve_device
    from medfuse_cli.export import export_onnx

    fuser_options = {} if temperature is None else {"temperature": temperature}
    with options.progress_bar("{task.description}", quiet, eta=False) as progress:
        task = progress.add_task(_STEPS["export"].format(model=model), total=len(_STEPS))
        done = [0]

        def step(name: str) -> None:
            progress.update(task, description=_STEPS[name].format(model=model), completed=done[0])
            done[0] += 1

        result = export_onnx(
            model,
            output,
            checkpoint=checkpoint,
            weights=weights,
            device=resolve_device(device),
            opset=opset,
            options=fuser_options,
            overwrite=overwrite,
            on_step=step,
        )
    if as_json:
        write_stdout(f"{json.dumps(result.to_json())}\n".encode())
    elif not quiet:
        layout = " × ".join(str(axis) for axis in result.outputs[0]["shape"])
        _stderr.print(
            f"exported {result.model} ({result.checkpoint.name}) to {result.file}: opset {result.opset}, "
            f"{result.size_bytes / 1024:,.0f} KiB, sha256 {result.sha256[:16]}…; inputs anatomical, "
            f"functional → fused, float32 {layout}; ONNX Runtime matches torch within "
            f"{result.max_abs_diff:.2g}; {result.seconds:.1f} s",
            markup=False,
            highlight=False,
        )
