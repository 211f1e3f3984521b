"""How pairs of images sit on disk: the one place that knows the folder layouts.

A *pair set* is a folder holding ``MRI/`` and exactly one of ``SPECT/``, ``PET/`` or ``CT/``,
whose images pair up by file stem (``MRI/1012.png`` with ``SPECT/1012.png``). Data sets keep
several of them one or two levels down (``harvard/SPECT-MRI/test/``), with ``train/`` and
``test/`` side by side; evaluation reads the test split and training the train split. Fused
images another tool made for a pair set are found by the same stems, in a folder that holds them
directly or mirrors the data's layout.

``fuse`` pairs two folders, ``evaluate`` and ``train`` find pair sets and other tools' fused
images here, so every command reads the same layouts by the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

from medfuse_cli.errors import InputError

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ANATOMICAL = "MRI"
SECOND_MODALITIES = ("SPECT", "PET", "CT")
Split = Literal["train", "test"]
_SPLITS: tuple[Split, ...] = ("train", "test")


class PairFiles(NamedTuple):
    """The two files of one pair. A tuple so a folder run can unpack ``(name, mri, second)``."""

    name: str  # the file stem both images share
    mri: Path
    second: Path  # the SPECT, PET or CT image


@dataclass(frozen=True)
class PairSet:
    """One folder of pairs: its kind ("SPECT-MRI"), the label results are keyed by, its pairs."""

    kind: str
    label: str
    folder: Path
    pairs: tuple[PairFiles, ...]


def list_images(folder: Path) -> list[Path]:
    """The image files directly in a folder.

    Args:
        folder: A folder. Sub-folders, hidden files (``.name``: system files, other runs'
            temporary files) and files whose suffix is not one of ``IMAGE_SUFFIXES`` (compared
            case-insensitively) are ignored. An entry with an image suffix that is not a
            regular file (a broken symlink, a pipe) is listed, so reading it fails with its
            reason instead of the image being left out without a word.

    Returns:
        The image paths, sorted by name.

    Raises:
        MedfuseError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder not found: {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if not p.is_dir() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _by_stem(folder: Path) -> dict[str, Path]:
    """The images of ``folder`` by file stem; two files of one stem (``a.png``, ``a.jpg``) are an
    error, since either could be the pair's image."""
    found: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in found:
            raise InputError(
                f"two images named {path.stem} in {folder}: {found[path.stem].name} and {path.name}"
            )
        found[path.stem] = path
    return found


def pair_folders(first: Path, second: Path) -> list[PairFiles]:
    """Pair the images of two folders by file stem.

    A file without a partner is an error rather than skipped: a silently smaller folder run or
    evaluation would report numbers on a subset nobody asked for.

    Args:
        first: The MRI folder.
        second: The folder of the second modality (SPECT, PET or CT).

    Returns:
        One record per stem, sorted by stem.

    Raises:
        InputError: A folder is missing or holds no images, a stem occurs twice in one folder,
            or some stems occur in only one folder (the message counts them and names up to
            three per folder).
    """
    first_files = _by_stem(first)
    second_files = _by_stem(second)
    if not first_files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {first}")
    if not second_files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {second}")
    only_first = sorted(set(first_files) - set(second_files))
    only_second = sorted(set(second_files) - set(first_files))
    if only_first or only_second:
        parts = []
        if only_first:
            parts.append(f"{len(only_first)} only in {first} (e.g. {', '.join(only_first[:3])})")
        if only_second:
            parts.append(f"{len(only_second)} only in {second} (e.g. {', '.join(only_second[:3])})")
        raise InputError("folders do not pair up by file name: " + "; ".join(parts))
    return [PairFiles(stem, first_files[stem], second_files[stem]) for stem in sorted(first_files)]


def find_pair_sets(root: Path, split: Split) -> tuple[list[PairSet], bool]:
    """The pair sets in ``root`` or one or two folder levels below it.

    ``root`` is a pair set itself, or a parent such as ``harvard/`` (holding
    ``SPECT-MRI/test/``...) or ``harvard/SPECT-MRI/``. Wherever ``train/`` and ``test/`` pair
    sets sit side by side, the split not asked for is left out, so evaluation never scores
    training data and training never sees the test pairs. Hidden folders are skipped.

    Args:
        root: The folder to search.
        split: ``"test"`` for evaluation, ``"train"`` for training.

    Returns:
        The pair sets, sorted by folder, and whether ``root`` is a parent (False when ``root``
        itself is the one pair set). Labels are the kinds ("CT-MRI"), or the paths relative to
        ``root`` for kinds that occur more than once.

    Raises:
        MedfuseError: ``root`` is missing; a folder holds ``MRI/`` and not exactly one
            functional folder; a pair set's folders do not pair up (see ``pair_folders``); or
            no pair set is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"pair folder not found: {root}")
    direct = _pair_set_at(root)
    if direct is not None:
        return [direct], False
    found: list[PairSet] = []
    at_children: list[PairSet] = []
    for child in _subfolders(root):
        at_child = _pair_set_at(child)
        if at_child is not None:
            at_children.append(at_child)
        else:
            found.extend(_one_split(_pair_sets_in(_subfolders(child)), split))
    found.extend(_one_split(at_children, split))
    found.sort(key=lambda s: s.folder)
    if not found:
        raise InputError(
            f"no pairs in {root}: expected MRI/ and one of SPECT/, PET/, CT/ there or one or two levels down"
        )
    kinds = [s.kind for s in found]
    relabelled = [
        s
        if kinds.count(s.kind) == 1
        else PairSet(s.kind, s.folder.relative_to(root).as_posix(), s.folder, s.pairs)
        for s in found
    ]
    return relabelled, True


def find_fused(folder: Path, pair_set: PairSet, split: Split) -> list[Path]:
    """The images another tool fused from a pair set's pairs, found by file stem in ``folder``.

    ``folder`` holds the images directly, or in sub-folders that mirror the data: named after
    the pair set's kind, the split, or the pair set's folder and its parent, in any nesting
    (``DIR/SPECT-MRI/``, ``DIR/test/``, ``DIR/SPECT-MRI/test/`` for ``harvard/SPECT-MRI/test/``).
    Sub-folders named otherwise, e.g. after another kind, are never searched, so a mixed folder
    cannot hand a CT-MRI image to a SPECT-MRI pair. Where a stem occurs at several depths the
    deepest, most specific, copy is taken.

    Args:
        folder: The other tool's output folder.
        pair_set: The pairs whose fused images are wanted.
        split: The split being read (``"test"`` for evaluation, ``"train"`` for training).

    Returns:
        One path per pair, in the order of ``pair_set.pairs``.

    Raises:
        MedfuseError: ``folder`` is missing; some pairs have no image (the message counts them
            and names up to three); or a stem is found in two equally specific sub-folders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder not found: {folder}")
    names = {pair_set.kind, split, *pair_set.folder.parts[-2:]}
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        inside = path.relative_to(folder).parts[:-1]
        if path.suffix.lower() in IMAGE_SUFFIXES and set(inside) <= names and path.is_file():
            by_stem.setdefault(path.stem, []).append(path)
    missing = [pair.name for pair in pair_set.pairs if pair.name not in by_stem]
    if missing:
        raise InputError(f"{len(missing)} fused image(s) missing in {folder} (e.g. {', '.join(missing[:3])})")
    return [_most_specific(by_stem[pair.name], folder) for pair in pair_set.pairs]


def _most_specific(paths: list[Path], folder: Path) -> Path:
    """The deepest of the images found for one stem; two at that depth are ambiguous."""
    depth = max(len(p.parts) for p in paths)
    deepest = [p for p in paths if len(p.parts) == depth]
    if len(deepest) > 1:
        shown = ", ".join(p.relative_to(folder).as_posix() for p in deepest[:3])
        raise InputError(f"several fused images for {deepest[0].stem} in {folder}: {shown}")
    return deepest[0]


def _pair_set_at(folder: Path) -> PairSet | None:
    """The pair set in ``folder`` if it holds MRI/, None if it does not."""
    if not (folder / ANATOMICAL).is_dir():
        return None
    present = [m for m in SECOND_MODALITIES if (folder / m).is_dir()]
    if len(present) != 1:
        found = ", ".join(f"{m}/" for m in present) or "none"
        raise InputError(f"{folder} must hold MRI/ and exactly one of SPECT/, PET/, CT/ (found {found})")
    modality = present[0]
    kind = f"{modality}-{ANATOMICAL}"
    pairs = tuple(pair_folders(folder / ANATOMICAL, folder / modality))
    return PairSet(kind=kind, label=kind, folder=folder, pairs=pairs)


def _pair_sets_in(folders: list[Path]) -> list[PairSet]:
    return [s for s in map(_pair_set_at, folders) if s is not None]


def _one_split(siblings: list[PairSet], split: Split) -> list[PairSet]:
    """Sibling pair sets without the other split, where ``train/`` and ``test/`` both occur."""
    names = {s.folder.name for s in siblings}
    if not set(_SPLITS) <= names:
        return siblings
    return [s for s in siblings if s.folder.name == split or s.folder.name not in _SPLITS]


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def select_part(items: list[T], num_parts: int, part_id: int) -> list[T]:
    """Part ``part_id`` of ``num_parts`` of a sorted list: every ``num_parts``-th item from ``part_id``.

    The partition nnU-Net's ``-num_parts``/``-part_id`` users know: deterministic for a given
    sorted list, the parts disjoint and together the whole list, sizes within one of each other,
    so N jobs of a SLURM array (or any job runner) cover a corpus exactly once.

    Raises:
        InputError: ``num_parts`` < 1, or ``part_id`` outside 0 .. ``num_parts`` - 1.
    """
    if num_parts < 1:
        raise InputError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise InputError(
            f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}"
        )
    return items[part_id::num_parts]
