"""``medfuse fuse``: one pair of images, two folders paired by file name, or two volumes."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medfuse_cli.cli import options
from medfuse_cli.errors import InputError, MedfuseError, OutputError, single_line
from medfuse_cli.io import write_stdout
from medfuse_cli.output_folders import create_folder, prepare_output_folder, remove_if_empty

if TYPE_CHECKING:  # the flow (and torch) is imported when the command runs, not for --help
    from medfuse_cli.pipeline import Fusion, ImageOptions, PairOutcome
    from medfuse_cli.volume_fusion import VolumeOptions

_stderr = options.stderr


def fuse(
    mri: Path = typer.Argument(
        ...,
        help="MRI image, a folder of MRI images, a NIfTI volume (.nii, .nii.gz) or a DICOM series folder.",
    ),
    functional: Path = typer.Argument(
        ..., help="SPECT/PET/CT image, a folder paired by file name, or a volume (as the MRI)."
    ),
    output: str = typer.Option(
        ..., "--output", "-o", help="Output PNG (or - for stdout), a folder, or for volumes a .nii/.nii.gz."
    ),
    model: str = options.MODEL,
    device: str = options.DEVICE,
    threads: int | None = options.THREADS,
    backend: str = options.BACKEND,
    checkpoint: str | None = options.CHECKPOINT,
    weights: Path | None = options.WEIGHTS,
    temperature: float | None = typer.Option(
        None, "--temperature", help="LYWNet FDS temperature T [default: 30]."
    ),
    resize: bool = options.RESIZE,
    chroma: str = options.CHROMA,
    max_pixels: int = options.MAX_PIXELS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    skip_existing: bool = typer.Option(
        False,
        "--skip-existing",
        help="Keep existing output files and fuse only the pairs without one (resumes an interrupted folder run).",
    ),
    kind: str | None = typer.Option(
        None,
        "--kind",
        help="What the second input is: pet, spect or ct. Required for a NIfTI second volume (DICOM says it); for a 2-D gray image, pet/spect colour it (--colormap).",
    ),
    window_mri: str | None = typer.Option(
        None,
        "--window-mri",
        help="MRI window LO,HI in its units (2-D: stored values) [default: volumes 0.5-99.5th percentile of non-zero voxels; 2-D 0..255 for 8-bit files; 16-bit: 0 to 2^b-1, b the bits its largest value needs, e.g. 0..4095].",
    ),
    window_functional: str | None = typer.Option(
        None,
        "--window-functional",
        help="PET/SPECT window LO,HI in its units, e.g. SUV 0,8 (2-D gray: stored values) [default: volumes 0 to the 99.9th percentile of non-zero voxels; 2-D 0..255 for 8-bit files; 16-bit: 0 to 2^b-1, b the bits its largest value needs, e.g. 0..4095].",
    ),
    window_ct: str | None = typer.Option(
        None,
        "--window-ct",
        help="CT window: brain, subdural, soft, bone, or LO,HI in HU (2-D: LO,HI in stored values only) [default: volumes subdural, level 75 width 200; 2-D 0..255 for 8-bit files; 16-bit: 0 to 2^b-1, b the bits its largest value needs, e.g. 0..4095].",
    ),
    colormap: str | None = typer.Option(
        None,
        "--colormap",
        help="Colour map for a grayscale PET/SPECT, volume or 2-D (matplotlib's: hot, jet, viridis, ...) [default: hot for PET/SPECT volumes and --kind pet|spect].",
    ),
    resample: bool = typer.Option(
        False,
        "--resample",
        help="Volumes: resample the second onto the MRI's grid (trilinear) when they differ.",
    ),
    slices: Path | None = typer.Option(
        None, "--slices", help="Volumes: also write one PNG per axial slice here."
    ),
    preview: Path | None = typer.Option(
        None, "--preview", help="Volumes: also write a lightbox montage PNG."
    ),
    batch_size: int = options.BATCH_SIZE,
    num_parts: int = options.NUM_PARTS,
    part_id: int | None = options.PART_ID,
    quiet: bool = options.QUIET,
    as_json: bool = options.JSON,
) -> None:
    """Fuse an MRI with a functional image (only Y is fused; Cb/Cr are kept) into a PNG, or two volumes into a NIfTI.

    What medfuse decides from the data (colour or gray second image, which checkpoint, the
    intensity windows) is in the summary line and in --json; --chroma, --checkpoint, --kind and
    the --window-* options override it.
    """
    if output == "-" and as_json:
        raise InputError(
            "--json and -o - both use standard output; write the image to a file, or drop --json"
        )
    if overwrite and skip_existing:
        raise InputError("--overwrite replaces existing outputs and --skip-existing keeps them: pass one")
    existing = "replace" if overwrite else "skip" if skip_existing else "refuse"
    from medfuse_cli.pairs import select_part

    if num_parts > 1 and part_id is None:
        raise InputError(
            f"--num-parts {num_parts} needs --part-id I (0..{num_parts - 1}): which part this run fuses"
        )
    part_id = part_id or 0
    select_part([], num_parts, part_id)  # a part that does not exist fails before any work
    sharded = num_parts > 1
    from medfuse_cli.pipeline import Fusion, check_chroma
    from medfuse_cli.volume_fusion import VolumeOptions

    started = time.perf_counter()
    for source in (mri, functional):
        if not source.exists():
            raise InputError(f"file not found: {source}")
    fuser_options = {} if temperature is None else {"temperature": temperature}
    fusion = Fusion(model, device, checkpoint, weights, threads, fuser_options, backend=backend)
    check_chroma(chroma)  # an unknown value fails before any work
    from medfuse_cli.cli.volume import require_both_volumes

    volume_options = VolumeOptions(kind, window_mri, window_functional, window_ct, colormap, resample)
    if sharded and not (mri.is_dir() and functional.is_dir() and not require_both_volumes(mri, functional)):
        raise InputError(
            "--num-parts and --part-id split a folder run of 2-D pairs; give two folders of images"
        )
    if require_both_volumes(mri, functional):
        from medfuse_cli.io import DEFAULT_MAX_PIXELS

        two_d_only = {
            "--resize": resize,
            "--chroma": chroma != "auto",
            "--max-pixels": max_pixels != DEFAULT_MAX_PIXELS,
        }
        if any(two_d_only.values()):
            given = ", ".join(flag for flag, used in two_d_only.items() if used)
            verb = "apply" if "," in given else "applies"
            raise InputError(
                f"{given} {verb} to 2-D images; volumes are windowed (--window-*) and resampled (--resample)"
            )
        _fuse_volumes(
            fusion,
            mri,
            functional,
            output,
            volume_options,
            slices,
            preview,
            batch_size,
            existing,
            quiet,
            as_json,
        )
        return
    if slices is not None or preview is not None or resample:
        raise InputError("--slices, --preview and --resample apply to volumes (NIfTI or DICOM series)")
    from medfuse_cli.pipeline import ImageOptions, check_image_options

    # 2-D images: windows in stored values, a colour map for a gray PET/SPECT (checked before any work)
    image_options = check_image_options(
        ImageOptions(kind, window_mri, window_functional, window_ct, colormap)
    )
    reading = {"resize": resize, "chroma": chroma, "max_pixels": max_pixels, "image_options": image_options}
    stopped = None
    if mri.is_dir() or functional.is_dir():
        try:
            outcomes = _fuse_folders(
                fusion,
                mri,
                functional,
                Path(output),
                batch_size,
                reading,
                existing,
                quiet,
                (num_parts, part_id),
            )
        except _StoppedRun as run:
            outcomes, stopped = run.outcomes, run
    else:
        outcomes = [_fuse_one(fusion, mri, functional, output, existing=existing, **reading)]
    failed = [o for o in outcomes if o.error]
    seconds = time.perf_counter() - started
    if as_json:
        summary = {
            **fusion.describe(),
            "written": sum(o.written for o in outcomes),
            "skipped": sum(o.skipped for o in outcomes),
            "failed": [{"pair": o.name, "error": o.error} for o in failed],
            "pairs": [o.to_json() for o in outcomes],
            "seconds": round(seconds, 3),
        }
        if sharded:
            summary["part"] = {"id": part_id, "of": num_parts}
        if stopped is not None:
            summary["stopped"] = {"error": str(stopped.error), "pairs_not_fused": stopped.not_fused}
        write_stdout(f"{json.dumps(summary)}\n".encode())  # a full disk is one line, not a traceback
    elif not quiet and output != "-" and stopped is None:
        line = _summary_line(fusion, outcomes, seconds)
        _stderr.print(
            f"part {part_id} of {num_parts}: {line}" if sharded else line, markup=False, soft_wrap=True
        )
    if stopped is not None:
        raise stopped.described()
    if failed:
        raise typer.Exit(code=1)


def _fuse_volumes(
    fusion: Fusion,
    mri: Path,
    second: Path,
    output: str,
    volume_options: VolumeOptions,
    slices: Path | None,
    preview: Path | None,
    batch_size: int,
    existing: str,
    quiet: bool,
    as_json: bool,
) -> None:
    from medfuse_cli.cli.volume import VolumeOutputs, fuse_volume_files

    outputs = VolumeOutputs(Path(output), slices, preview)
    run = fuse_volume_files(fusion, mri, second, outputs, volume_options, batch_size, existing, quiet)
    if as_json:
        write_stdout(f"{json.dumps(run.to_json(fusion))}\n".encode())
    elif not quiet:
        _stderr.print(run.summary_line(fusion), markup=False, soft_wrap=True)


def _summary_line(fusion: Fusion, outcomes: list[PairOutcome], seconds: float) -> str:
    """One line: how many pairs, with what, what was decided from the data, and what was kept."""
    written = [o for o in outcomes if o.written]
    about = fusion.describe()
    line = f"fused {len(written)} of {len(outcomes)} pair(s) with {about['model']}"
    if len(written) == 1 and written[0].second is not None:
        only = written[0]
        line += f" (second image {only.second.describe()}"
        if only.levels is not None:
            line += ": " + ", ".join(only.levels.describe())
        if only.checkpoint:
            line += f", checkpoint {only.checkpoint}"
        line += ")"
    elif written:
        readings = Counter("colour" if o.second.is_color else "gray" for o in written if o.second)
        checkpoints = Counter(o.checkpoint for o in written if o.checkpoint)
        line += " (second images " + ", ".join(f"{n} {what}" for what, n in sorted(readings.items()))
        levels = [o.levels for o in written if o.levels is not None]
        colormaps = Counter(level.colormap for level in levels if level.colormap)
        if colormaps:
            line += "; colour map " + ", ".join(f"{name} ×{n}" for name, n in sorted(colormaps.items()))
        windowed = sum(not level.plain_windows for level in levels)
        if windowed:
            line += f"; {windowed} with windows other than their files' full range (see --json)"
        if checkpoints:
            line += "; checkpoints " + ", ".join(f"{name} ×{n}" for name, n in sorted(checkpoints.items()))
        line += ")"
    line += f" on {about['device']} ({about['backend']}), {about['threads']} thread(s), in {seconds:.2f} s"
    skipped = sum(o.skipped for o in outcomes)
    return f"{line}; {skipped} skipped (output exists)" if skipped else line


def _check_output_file(output: Path, inputs: tuple[Path, ...]) -> None:
    """Refuse an output file that could never be written, before any work."""
    if not output.parent.is_dir():
        raise OutputError(f"output folder does not exist: {output.parent}")
    if any(output.resolve() == source.resolve() for source in inputs):
        raise OutputError(f"refusing to write over an input: {output}")
    if output.suffix.lower() != ".png":
        raise OutputError(f"output must be a .png file (or -): {output}")


def _fuse_one(
    fusion: Fusion,
    mri: Path,
    functional: Path,
    output: str,
    resize: bool,
    chroma: str,
    max_pixels: int,
    existing: str,
    image_options: ImageOptions,
) -> PairOutcome:
    from medfuse_cli.pipeline import (
        PairOutcome,
        load_pair,
        notice_if_blank,
        output_exists_message,
        write_fused,
        write_outcome,
    )

    if output != "-":
        path = Path(output)
        _check_output_file(path, (mri, functional))
        if existing != "replace" and path.exists():  # checked again when the file is published
            if existing == "skip":
                return PairOutcome(mri.stem, path, skipped=True)
            raise OutputError(output_exists_message(path))
        prepare_output_folder(path.parent)
    pair = load_pair(mri.stem, mri, functional, resize, chroma, max_pixels, options=image_options)
    fused = fusion.fuse_y(pair.anatomical_y, pair.functional_y, pair.kind)
    done = PairOutcome.fused(pair.name, Path(output), pair, fusion, notice_if_blank(pair, fused, fusion))
    if output == "-":
        write_fused(output, pair, fused)
        return done
    outcome = write_outcome(done, pair, fused, existing)
    if outcome.error:
        raise OutputError(outcome.error)
    return outcome


class _StoppedRun(Exception):
    """A folder run stopped by an error of the whole run (its weights), with the pairs decided
    before it: ``--json`` still lists them, and the error line says how many were written."""

    def __init__(self, error: MedfuseError, outcomes: list[PairOutcome], jobs: int) -> None:
        super().__init__(str(error))
        self.error, self.outcomes = error, outcomes
        self.not_fused = jobs - len(outcomes)

    def described(self) -> MedfuseError:
        """The error, saying what the run had done when it stopped."""
        written = sum(o.written for o in self.outcomes)
        return type(self.error)(
            f"{self.error} (the run stopped: {written} pair(s) written before it, {self.not_fused} not fused)"
        )


def _fuse_folders(
    fusion: Fusion,
    mri_dir: Path,
    functional_dir: Path,
    output_dir: Path,
    batch_size: int,
    reading: dict,
    existing: str,
    quiet: bool,
    part: tuple[int, int] = (1, 0),
) -> list[PairOutcome]:
    """Fuse part ``part`` = (num_parts, part_id) of the pairs of two folders into ``output_dir``."""
    from medfuse_cli.pairs import pair_folders, select_part
    from medfuse_cli.pipeline import PairJob, fuse_folders, in_job_order

    if not (mri_dir.is_dir() and functional_dir.is_dir()):
        raise InputError("give two folders, or two image files, not one of each")
    if str(output_dir) == "-":
        raise OutputError("a folder run writes files: -o must be a folder, not -")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output must be a folder for a folder run: {output_dir}")
    if output_dir.resolve() in (mri_dir.resolve(), functional_dir.resolve()):
        raise OutputError("the output folder must differ from both input folders")
    pairs = select_part(pair_folders(mri_dir, functional_dir), *part)
    jobs = [PairJob(name, a, b, output_dir / f"{name}.png") for name, a, b in pairs]
    present = [job.output.name for job in jobs if job.output.exists()]
    if present and existing == "refuse":
        raise OutputError(
            f"{len(present)} output file(s) exist in {output_dir} (e.g. {', '.join(present[:3])}); "
            "pass --overwrite to replace them, or --skip-existing to keep them and fuse the rest"
        )
    created = create_folder(output_dir)
    try:
        prepare_output_folder(output_dir)
        with options.progress_bar("fusing", quiet) as progress:
            task = progress.add_task("fuse", total=len(jobs))

            def report(outcome: PairOutcome) -> None:
                decided.append(outcome)
                progress.advance(task)
                if outcome.error:  # --quiet drops progress and the summary, never an error
                    progress.console.print(
                        single_line(f"failed {outcome.name}: {outcome.error}"), markup=False
                    )

            decided: list[PairOutcome] = []
            try:
                return fuse_folders(
                    fusion, jobs, batch_size=batch_size, on_done=report, existing=existing, **reading
                )
            except MedfuseError as exc:  # the run's weights: pairs decided before it are still reported
                raise _StoppedRun(exc, in_job_order(decided, jobs), len(jobs)) from None
    finally:
        remove_if_empty(created)
