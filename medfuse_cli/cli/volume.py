"""``medfuse fuse`` on volumes: two NIfTI files or DICOM series folders in, a NIfTI volume out.

Everything that could refuse the run (output names, existing files, grids, kind, windows) is
checked before the first slice is fused; the volume is written atomically, then the optional
per-slice PNGs (``--slices``) and the lightbox montage (``--preview``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from medfuse_cli.cli import options
from medfuse_cli.errors import InputError, OutputError
from medfuse_cli.output_folders import create_folder, prepare_output_folder, remove_if_empty
from medfuse_cli.pipeline import Fusion, output_exists_message
from medfuse_cli.volume_fusion import FusedVolume, VolumeOptions, fuse_volumes
from medfuse_cli.volumes import NIFTI_SUFFIXES, axial_images, is_nifti_path, read_volume, write_nifti


@dataclass(frozen=True)
class VolumeOutputs:
    """Where a volume run writes: the NIfTI, and optionally slice PNGs and a preview PNG."""

    volume: Path
    slices: Path | None = None
    preview: Path | None = None


@dataclass(frozen=True)
class VolumeRun:
    """What a volume run did, for the summary line and ``--json`` (``checkpoint`` and its file's
    ``checkpoint_sha256`` as ``Fusion.checkpoint_for`` and ``Fusion.checkpoint_sha256`` give them)."""

    fused: FusedVolume | None
    outputs: VolumeOutputs
    checkpoint: str | None
    checkpoint_sha256: str | None
    slice_files: int
    skipped: bool
    seconds: float

    def to_json(self, fusion: Fusion) -> dict:
        """``medfuse fuse --json`` for a volume pair."""
        summary: dict = {**fusion.describe(), "output": str(self.outputs.volume), "skipped": self.skipped}
        if self.fused is not None:
            summary.update(
                self.fused.to_json(), checkpoint=self.checkpoint, checkpoint_sha256=self.checkpoint_sha256
            )
            summary["slices_written"] = self.slice_files
            summary["preview"] = str(self.outputs.preview) if self.outputs.preview else None
        summary["seconds"] = round(self.seconds, 3)
        return summary

    def summary_line(self, fusion: Fusion) -> str:
        """One line: what was fused, with what, and every decision taken from the data."""
        if self.skipped:
            return f"skipped: {self.outputs.volume} exists (--skip-existing)"
        fused = self.fused
        about = fusion.describe()
        parts = [f"{fused.kind.upper()} ({fused.kind_rule})"]
        parts.append(f"MRI window {fused.mri_window.describe()}")
        parts.append(f"{fused.kind.upper()} window {fused.second_window.describe()}")
        if fused.colormap:
            parts.append(f"colour map {fused.colormap}")
        if fused.resampled:
            parts.append("resampled onto the MRI's grid")
        if self.checkpoint:
            parts.append(f"checkpoint {self.checkpoint}")
        return (
            f"fused {fused.mri.shape[2]} slices ({fused.mri.describe_grid()}) with {about['model']}: "
            f"{'; '.join(parts)}; on {about['device']} ({about['backend']}), {about['threads']} thread(s), "
            f"in {self.seconds:.2f} s"
        )


def check_volume_outputs(outputs: VolumeOutputs, inputs: tuple[Path, Path], existing: str) -> None:
    """Refuse, before any work, outputs that could never be written or would replace a file.

    Raises:
        OutputError: a volume output that is not ``.nii``/``.nii.gz`` or ``-``, a missing
            output folder, an output that is an input, a preview that is not ``.png``, a
            ``--slices`` path that is a file, two outputs on one path, an output inside an input
            series folder, files that exist (``existing == "refuse"``), or a preview/slices that
            exist beside a missing volume (``existing == "skip"``: a half-finished run).
    """
    volume = outputs.volume
    if str(volume) == "-" or not is_nifti_path(volume):
        raise OutputError(
            f"a volume pair is written as NIfTI: -o must end in {' or '.join(NIFTI_SUFFIXES)}, got {volume}"
        )
    for path in (volume, outputs.preview):
        if path is None:
            continue
        if not path.parent.is_dir():
            raise OutputError(f"output folder does not exist: {path.parent}")
        if any(path.resolve() == source.resolve() for source in inputs):
            raise OutputError(f"refusing to write over an input: {path}")
    if outputs.preview is not None and outputs.preview.suffix.lower() != ".png":
        raise OutputError(f"--preview must be a .png file: {outputs.preview}")
    if outputs.slices is not None and outputs.slices.exists() and not outputs.slices.is_dir():
        raise OutputError(f"--slices must be a folder: {outputs.slices}")
    written = [path for path in (volume, outputs.preview, outputs.slices) if path is not None]
    if len({path.resolve() for path in written}) < len(written):
        raise OutputError("-o, --preview and --slices must name three different paths")
    for path in written:
        for source in inputs:
            if source.is_dir() and source.resolve() in path.resolve().parents:
                raise OutputError(f"refusing to write into an input series folder: {path} is inside {source}")
    extras = [path for path in (outputs.preview,) if path is not None and path.exists()]
    if outputs.slices is not None and outputs.slices.is_dir():
        extras += sorted(outputs.slices.glob("slice_*.png"))[:1]
    if existing == "refuse":
        if volume.exists():
            raise OutputError(output_exists_message(volume))
        if extras:
            raise OutputError(output_exists_message(extras[0]))
    if existing == "skip" and extras and not volume.exists():
        raise OutputError(
            f"{extras[0]} exists but {volume} does not: --skip-existing keeps a finished run's outputs "
            "whole; pass --overwrite, or remove it"
        )


def fuse_volume_files(
    fusion: Fusion,
    mri_path: Path,
    second_path: Path,
    outputs: VolumeOutputs,
    volume_options: VolumeOptions,
    batch_size: int,
    existing: str,
    quiet: bool,
) -> VolumeRun:
    """Read two volumes, fuse them, write the NIfTI (and slices, preview); see the module docstring.

    Raises:
        InputError, OutputError: as ``check_volume_outputs``, ``volumes.read_volume`` and
            ``volume_fusion.fuse_volumes``; a write that fails.
    """
    started = time.perf_counter()
    check_volume_outputs(outputs, (mri_path, second_path), existing)
    if existing == "skip" and outputs.volume.exists():
        return VolumeRun(None, outputs, None, None, 0, True, time.perf_counter() - started)
    mri, second = read_volume(mri_path), read_volume(second_path)
    with options.progress_bar("fusing slices", quiet) as progress:
        task = progress.add_task("fuse", total=mri.shape[2])
        fused = fuse_volumes(
            fusion, mri, second, volume_options, batch_size,
            on_slices=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    overwrite = existing == "replace"
    _write(outputs.volume, lambda: write_nifti(
        outputs.volume, fused.voxels, mri, fused.header_description(fusion.spec.name), overwrite=overwrite
    ))  # fmt: skip
    images = axial_images(fused.voxels, mri.affine) if outputs.slices or outputs.preview else None
    slice_files = _write_slices(images, outputs.slices, overwrite) if outputs.slices else 0
    if outputs.preview is not None:
        from medfuse_cli.io import write_png
        from medfuse_cli.montage import lightbox

        anatomy = axial_images(mri.voxels, mri.affine).reshape(len(images), -1)
        informative = anatomy.max(axis=1) > anatomy.min(axis=1)  # slices the MRI shows something in
        montage = lightbox(images, informative)
        _write(outputs.preview, lambda: write_png(outputs.preview, montage, 8, overwrite=overwrite))
    return VolumeRun(
        fused,
        outputs,
        fusion.checkpoint_for(fused.fuser_kind),
        fusion.checkpoint_sha256(fused.fuser_kind),
        slice_files,
        False,
        time.perf_counter() - started,
    )


def _write(path: Path, write) -> None:
    """Run ``write``; an existing file or a failed write is one ``OutputError`` naming ``path``."""
    try:
        write()
    except FileExistsError:
        raise OutputError(output_exists_message(path)) from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_slices(images, folder: Path, overwrite: bool) -> int:
    """One 8-bit PNG per axial slice, ``slice_000.png`` (inferior) upwards, in ``folder``."""
    from medfuse_cli.io import write_png

    created = create_folder(folder)
    try:
        prepare_output_folder(folder)
        width = max(3, len(str(len(images) - 1)))
        for index, image in enumerate(images):
            path = folder / f"slice_{index:0{width}d}.png"
            _write(path, lambda path=path, image=image: write_png(path, image, 8, overwrite=overwrite))
    except BaseException:
        remove_if_empty(created)
        raise
    return len(images)


def require_both_volumes(mri: Path, second: Path) -> bool:
    """True when both inputs are volumes, False when neither is.

    Raises:
        InputError: one is a volume (NIfTI, DICOM folder) and the other a 2-D image or folder.
    """
    from medfuse_cli.volumes import is_volume_input

    mri_volume, second_volume = is_volume_input(mri), is_volume_input(second)
    if mri_volume != second_volume:
        volume, other = (mri, second) if mri_volume else (second, mri)
        raise InputError(
            f"{volume} is a volume (NIfTI or DICOM series) but {other} is not: give two volumes, or two 2-D "
            "images (a folder is a DICOM series when its files are DICOM Part 10 files, with the DICM preamble)"
        )
    return mri_volume
