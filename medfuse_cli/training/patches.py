"""Training pairs and the patches cut from them, with candidate labels from fusers and folders.

Training data is found by ``medfuse_cli.pairs`` from its train split (``harvard/<PAIR>/train/``:
an ``MRI`` folder and one folder of the second modality, paired by file name). Images are kept
whole as Y tensors; a patch is (image, top, left), so candidates and labels are crops of
whole-image fusions: the same pixels a fuser or another tool produced for the full slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from medfuse_cli import pairs as layout
from medfuse_cli.color import split_luma
from medfuse_cli.errors import MedfuseError
from medfuse_cli.io import read_image

SPLIT: layout.Split = "train"


@dataclass
class PairSet:
    """Whole training images as (1, H, W) Y tensors, one entry per pair."""

    names: list[str]  # "<data folder>/<file stem>", unique across folders
    anatomical: list[Tensor]
    functional: list[Tensor]
    second_is_color: list[bool]
    sources: list[layout.PairSet]  # the pair sets read, in the order of the entries


def _y_tensor(path: Path) -> tuple[Tensor, bool]:
    image = read_image(path)
    y, _ = split_luma(image.pixels)
    return torch.from_numpy(y).unsqueeze(0), image.is_color


def load_pairs(folders: list[Path]) -> PairSet:
    """Read every pair of the train split under the given data folders.

    Args:
        folders: Pair sets or their parents (see ``medfuse_cli.pairs.find_pair_sets``); where
            ``train/`` and ``test/`` sit side by side only ``train/`` is read.

    Returns:
        The pairs' Y planes in [0, 1], float32, each (1, H, W), in folder and file-stem order.

    Raises:
        MedfuseError: No pair set is found, folders do not pair up, an image cannot be read, or
            a pair's sizes differ.
    """
    pairs = PairSet(names=[], anatomical=[], functional=[], second_is_color=[], sources=[])
    for data in folders:
        pair_sets, _ = layout.find_pair_sets(data, SPLIT)
        for pair_set in pair_sets:
            pairs.sources.append(pair_set)
            for files in pair_set.pairs:
                (anatomical, _), (functional, is_color) = _y_tensor(files.mri), _y_tensor(files.second)
                if anatomical.shape != functional.shape:
                    raise MedfuseError(
                        f"training pair {files.name}: {files.mri} is {_size(anatomical)} but {files.second} "
                        f"is {_size(functional)} pixels; a pair must be co-registered at one size"
                    )
                pairs.names.append(f"{pair_set.folder}/{files.name}")
                pairs.anatomical.append(anatomical)
                pairs.functional.append(functional)
                pairs.second_is_color.append(is_color)
    return pairs


def _size(plane: Tensor) -> str:
    """A (1, H, W) plane's size as users read it (and `medfuse fuse` says it): WIDTHxHEIGHT."""
    return f"{plane.shape[-1]}x{plane.shape[-2]}"


def read_label_folder(folder: Path, pairs: PairSet) -> list[Tensor]:
    """Y of the fused image another tool made for each training pair.

    Args:
        folder: The tool's output, holding the images directly or mirroring the data's layout
            (``<folder>/<PAIR>/train/<stem>.png``, as ``../shared/labels/<METHOD>/`` does); see
            ``medfuse_cli.pairs.find_fused``.
        pairs: The training pairs the labels are for.

    Returns:
        One (1, H, W) float32 Y tensor in [0, 1] per pair, in the order of ``pairs``.

    Raises:
        MedfuseError: The folder is missing, an image is missing or ambiguous, or a label's size
            differs from its pair's.
    """
    paths = [path for pair_set in pairs.sources for path in layout.find_fused(folder, pair_set, SPLIT)]
    labels = []
    for path, anatomical in zip(paths, pairs.anatomical, strict=True):
        label, _ = _y_tensor(path)
        if label.shape != anatomical.shape:
            raise MedfuseError(f"{path} is {tuple(label.shape[1:])}, its pair {tuple(anatomical.shape[1:])}")
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
