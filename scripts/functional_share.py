"""How much of the functional image a fusion keeps: Σ|F − MRI| / Σ|functional − MRI| on Y.

0 means the fused Y is the MRI's (the functional signal survives only in Cb/Cr), 0.5 the
average, 1 the functional image. SSIM, Qabf and VIF do not penalise copying the MRI, so this
number is printed next to them in the model card. Pairs as ``medfuse evaluate`` reads them.

Usage: python scripts/functional_share.py PAIRDIR LABEL=FUSEDDIR [LABEL=FUSEDDIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from medfuse_cli.evaluation.scoring import SPLIT, luma8
from medfuse_cli.io import read_image
from medfuse_cli.pairs import find_fused, find_pair_sets


def functional_share(pair_dir: Path, fused_dir: Path) -> float:
    """Σ|F − A| / Σ|B − A| over the pairs of one pair folder, on 8-bit Y as evaluate sees it."""
    (pair_set,), _ = find_pair_sets(pair_dir, SPLIT)
    fused = find_fused(fused_dir, pair_set, SPLIT)
    moved = apart = 0.0
    for files, fused_path in zip(pair_set.pairs, fused, strict=True):
        a, b, f = (luma8(read_image(path).pixels) for path in (files.mri, files.second, fused_path))
        moved += float(np.abs(f - a).sum())
        apart += float(np.abs(b - a).sum())
    return moved / apart


def main(argv: list[str]) -> None:
    pair_dir, *fused = argv
    for item in fused:
        label, folder = item.split("=", 1)
        print(f"{label}\t{functional_share(Path(pair_dir), Path(folder)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
