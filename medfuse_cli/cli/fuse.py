"""``medfuse fuse``: one pair of images, or two folders paired by file name."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from medfuse_cli.cli import options
from medfuse_cli.devices import resolve_device
from medfuse_cli.errors import MedfuseError
from medfuse_cli.io import pair_folders
from medfuse_cli.pipeline import Fusion, PairJob, PairOutcome, fuse_folders, load_pair, write_fused

_stderr = options.stderr


def fuse(
    mri: Path = typer.Argument(..., help="MRI image, or a folder of MRI images."),
    functional: Path = typer.Argument(..., help="SPECT/PET/CT image, or a folder paired by file name."),
    output: str = typer.Option(..., "--output", "-o", help="Output PNG (or - for stdout), or a folder."),
    model: str = options.MODEL,
    device: str = options.DEVICE,
    weights: Path | None = typer.Option(None, "--weights", help="A safetensors checkpoint to use instead."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Which shipped checkpoint (default: chosen from the inputs)."
    ),
    temperature: float | None = typer.Option(None, "--temperature", help="LYWNet FDS temperature T."),
    resize: bool = typer.Option(False, "--resize", help="Resize the second image to the MRI's size."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Pairs fused per call in folder runs."),
    quiet: bool = options.QUIET,
    as_json: bool = options.JSON,
) -> None:
    """Fuse an MRI with a functional image (only Y is fused; Cb/Cr are kept) into a PNG."""
    started = time.perf_counter()
    for source in (mri, functional):
        if not source.exists():
            raise MedfuseError(f"file not found: {source}")
    fuser_options = {} if temperature is None else {"temperature": temperature}
    fusion = Fusion(model, resolve_device(device), weights, checkpoint, fuser_options)
    if mri.is_dir() or functional.is_dir():
        outcomes = _fuse_folders(fusion, mri, functional, Path(output), batch_size, resize, overwrite, quiet)
    else:
        outcomes = [_fuse_one(fusion, mri, functional, output, resize, overwrite)]
    failed = [o for o in outcomes if o.error]
    seconds = time.perf_counter() - started
    if as_json:
        summary = {
            "model": model,
            "device": str(fusion.device),
            "written": len(outcomes) - len(failed),
            "failed": [{"pair": o.name, "error": o.error} for o in failed],
            "seconds": round(seconds, 3),
        }
        print(json.dumps(summary))
    elif not quiet and output != "-":
        _stderr.print(
            f"fused {len(outcomes) - len(failed)} of {len(outcomes)} pair(s) with {model} in {seconds:.2f} s"
        )
    if failed:
        raise typer.Exit(code=1)


def _check_output_file(output: Path, inputs: tuple[Path, ...], overwrite: bool) -> None:
    if not output.parent.is_dir():
        raise MedfuseError(f"output folder does not exist: {output.parent}")
    if any(output.resolve() == source.resolve() for source in inputs):
        raise MedfuseError(f"refusing to write over an input: {output}")
    if output.exists() and not overwrite:
        raise MedfuseError(f"output exists: {output} (pass --overwrite to replace it)")
    if output.suffix.lower() != ".png":
        raise MedfuseError(f"output must be a .png file (or -): {output}")


def _fuse_one(
    fusion: Fusion, mri: Path, functional: Path, output: str, resize: bool, overwrite: bool
) -> PairOutcome:
    if output != "-":
        _check_output_file(Path(output), (mri, functional), overwrite)
    pair = load_pair(mri.stem, mri, functional, resize)
    fused = fusion.fuse_y(pair.anatomical_y, pair.functional_y, pair.is_color)
    write_fused(output, pair, fused)
    return PairOutcome(pair.name, Path(output))


def _fuse_folders(
    fusion: Fusion,
    mri_dir: Path,
    functional_dir: Path,
    output_dir: Path,
    batch_size: int,
    resize: bool,
    overwrite: bool,
    quiet: bool,
) -> list[PairOutcome]:
    if not (mri_dir.is_dir() and functional_dir.is_dir()):
        raise MedfuseError("give two folders, or two image files, not one of each")
    if str(output_dir) == "-":
        raise MedfuseError("a folder run writes files: -o must be a folder, not -")
    if output_dir.exists() and not output_dir.is_dir():
        raise MedfuseError(f"output must be a folder for a folder run: {output_dir}")
    if output_dir.resolve() in (mri_dir.resolve(), functional_dir.resolve()):
        raise MedfuseError("the output folder must differ from both input folders")
    pairs = pair_folders(mri_dir, functional_dir)
    jobs = [PairJob(name, a, b, output_dir / f"{name}.png") for name, a, b in pairs]
    existing = [job.output.name for job in jobs if job.output.exists()]
    if existing and not overwrite:
        raise MedfuseError(
            f"{len(existing)} output file(s) exist in {output_dir} (e.g. {', '.join(existing[:3])}); "
            "pass --overwrite to replace them"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    with options.progress_bar("fusing", quiet) as progress:
        task = progress.add_task("fuse", total=len(jobs))

        def report(outcome: PairOutcome) -> None:
            progress.advance(task)
            if outcome.error and not quiet:
                progress.console.print(f"skipped {outcome.name}: {outcome.error}", markup=False)

        return fuse_folders(fusion, jobs, batch_size=batch_size, resize=resize, on_done=report)
