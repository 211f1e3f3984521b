"""Training pairs and the patches cut from them, with candidate labels from fusers and folders.

A data folder is laid out like ``harvard/<PAIR>/train/``: an ``MRI`` folder and one folder of the
second modality (SPECT, PET or CT), paired by file name. Images are kept whole as Y tensors;
a patch is (image, top, left), so candidates and labels are crops of whole-image fusions: the
same pixels a fuser or another tool produced for the full slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from medfuse_cli.color import split_luma
from medfuse_cli.errors import MedfuseError
from medfuse_cli.io import IMAGE_SUFFIXES, pair_folders, read_image

SECOND_MODALITIES = ("SPECT", "PET", "CT")


@dataclass
class PairSet:
    """Whole training images as (1, H, W) Y tensors, one entry per pair."""

    names: list[str]  # "<data folder>/<file stem>", unique across folders
    anatomical: list[Tensor]
    functional: list[Tensor]
    second_is_color: list[bool]


def find_pair_folders(data: Path) -> list[tuple[Path, Path]]:
    """(MRI folder, second-modality folder) for ``data`` or for each of its sub-folders."""
    data = Path(data)
    if not data.is_dir():
        raise MedfuseError(f"data folder not found: {data}")
    candidates = [data, *sorted(p for p in data.iterdir() if p.is_dir())]
    found = []
    for folder in candidates:
        seconds = [folder / m for m in SECOND_MODALITIES if (folder / m).is_dir()]
        if (folder / "MRI").is_dir() and len(seconds) == 1:
            found.append((folder / "MRI", seconds[0]))
    if not found:
        raise MedfuseError(
            f"{data} holds no MRI/ + SPECT|PET|CT/ folders (expected the layout of harvard/<PAIR>/train/)"
        )
    return found


def _y_tensor(path: Path) -> tuple[Tensor, bool]:
    image = read_image(path)
    y, _ = split_luma(image.pixels)
    return torch.from_numpy(y).unsqueeze(0), image.is_color


def load_pairs(folders: list[Path]) -> PairSet:
    """Read every pair under the given data folders (each as ``find_pair_folders`` accepts)."""
    pairs = PairSet(names=[], anatomical=[], functional=[], second_is_color=[])
    for data in folders:
        for mri_dir, second_dir in find_pair_folders(data):
            for stem, mri_path, second_path in pair_folders(mri_dir, second_dir):
                (anatomical, _), (functional, is_color) = _y_tensor(mri_path), _y_tensor(second_path)
                if anatomical.shape != functional.shape:
                    raise MedfuseError(f"{stem}: MRI and {second_dir.name} sizes differ")
                pairs.names.append(f"{mri_dir.parent}/{stem}")
                pairs.anatomical.append(anatomical)
                pairs.functional.append(functional)
                pairs.second_is_color.append(is_color)
    return pairs


def read_label_folder(folder: Path, pairs: PairSet) -> list[Tensor]:
    """Y of the fused image another tool made for each pair, found by file stem in ``folder``.

    ``folder`` may hold the images directly or mirror the data's pair folders
    (``<folder>/<PAIR>/train/<stem>.png``, as ``../shared/labels/<METHOD>/`` does); a stem is
    looked up under the sub-folder whose path ends like the pair's data folder.
    """
    index: dict[str, list[Path]] = {}
    if not Path(folder).is_dir():
        raise MedfuseError(f"label folder not found: {folder}")
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(path.stem, []).append(path)
    labels = []
    for name, anatomical in zip(pairs.names, pairs.anatomical, strict=True):
        data_dir, stem = name.rsplit("/", 1)
        found = index.get(stem, [])
        if len(found) > 1:
            tail = Path(data_dir).parts[-2:]
            found = [p for p in found if p.parent.parts[-len(tail) :] == tail] or found
        if len(found) != 1:
            what = "no" if not found else "several"
            raise MedfuseError(f"label folder {folder} has {what} image(s) for {stem}")
        label, _ = _y_tensor(found[0])
        if label.shape != anatomical.shape:
            raise MedfuseError(
                f"{found[0]} is {tuple(label.shape[1:])}, its pair {tuple(anatomical.shape[1:])}"
            )
        labels.append(label)
    return labels


def patch_grid(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of size×size patches every ``stride`` pixels, the last flush with the border."""
    if height < size or width < size:
        return []

    def starts(extent: int) -> list[int]:
        points = list(range(0, extent - size + 1, stride))
        if points[-1] != extent - size:
            points.append(extent - size)
        return points

    return [(top, left) for top in starts(height) for left in starts(width)]


@dataclass
class Patches:
    """Patch positions into a PairSet: ``index[i] = (image, top, left)``."""

    index: Tensor  # (P, 3) int64
    size: int

    def __len__(self) -> int:
        return len(self.index)

    def crop(self, images: list[Tensor], rows: Tensor) -> Tensor:
        """(len(rows), 1, size, size) crops of ``images`` at the given patches."""
        s = self.size
        return torch.stack(
            [images[i][:, top : top + s, left : left + s] for i, top, left in self.index[rows].tolist()]
        )


def make_patches(pairs: PairSet, images: list[int], size: int, stride: int, min_mean: float) -> Patches:
    """Patches of the chosen images, dropping those where both sources are nearly black.

    A patch of background in both modalities teaches nothing and every candidate scores alike
    on it; ``min_mean`` is the mean intensity (on [0, 1]) at least one source must reach.
    """
    rows = []
    for i in images:
        _, height, width = pairs.anatomical[i].shape
        for top, left in patch_grid(height, width, size, stride):
            a = pairs.anatomical[i][:, top : top + size, left : left + size]
            b = pairs.functional[i][:, top : top + size, left : left + size]
            if max(a.mean().item(), b.mean().item()) >= min_mean:
                rows.append((i, top, left))
    if not rows:
        raise MedfuseError(f"no {size}×{size} patches with content in the training images")
    return Patches(index=torch.tensor(rows, dtype=torch.int64), size=size)
