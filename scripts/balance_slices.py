"""The test slices where a fusion keeps least of the MRI, shown before and after a retraining.

For every pair of one pair folder, SSIM(F, MRI) (``SSIM_A`` of ``medfuse evaluate``, on 8-bit
Y) is computed for a peer's fused image and for LWNet with two checkpoints, "before" and
"after". The ``--count`` pairs where "before" falls furthest below the peer are drawn, one row
each: MRI, second image, peer, before, after, each fusion titled with its SSIM(F, MRI). Issue
15 asks for this look at the slices where a large bright CT area hid MRI structure.

Usage: python scripts/balance_slices.py PAIRDIR --peer NAME=DIR --before W.safetensors
           --after W.safetensors -o figure.png [--count 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medfuse_cli import api
from medfuse_cli.errors import InputError, MedfuseError
from medfuse_cli.evaluation.scoring import SPLIT, luma8
from medfuse_cli.io import read_image
from medfuse_cli.metrics.structural import ssim_source_term
from medfuse_cli.pairs import find_fused, find_pair_sets


def main() -> None:
    """Parse the command line and draw the figure; a bad input is one ``error:`` line, status 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path, help="one pair folder, e.g. harvard/CT-MRI/test")
    parser.add_argument("--peer", required=True, help="NAME=DIR of the peer's fused images")
    parser.add_argument("--before", type=Path, required=True, help="LWNet checkpoint before")
    parser.add_argument("--after", type=Path, required=True, help="LWNet checkpoint after")
    parser.add_argument("--count", type=int, default=3, help="rows (pairs) to draw, at least 1")
    parser.add_argument("-o", "--output", type=Path, required=True, help="figure (PNG)")
    args = parser.parse_args()
    try:
        draw(args.pairs, args.peer, args.before, args.after, args.count, args.output)
    except (MedfuseError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def draw(pairs: Path, peer: str, before: Path, after: Path, count: int, output: Path) -> None:
    """Score every pair of ``pairs``, print the ``count`` worst rows and save the figure.

    Raises:
        InputError: a bad ``peer`` or ``count``, a folder that is not one pair folder, a
            missing fused image, a missing output folder.
        CheckpointError: a checkpoint that cannot be loaded.
    """
    peer_name, separator, peer_dir = peer.partition("=")
    if not separator or not peer_name or not peer_dir:
        raise InputError(f"--peer takes NAME=DIR, got {peer!r}")
    if peer_name in ("before", "after"):
        raise InputError(
            f"--peer NAME must not be 'before' or 'after' (the checkpoints' columns), got {peer_name!r}"
        )
    if count < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    if output.suffix.lower() != ".png":
        raise InputError(f"-o takes a .png file, got {output}")
    if not output.parent.is_dir():
        raise InputError(f"the output's folder does not exist: {output.parent}")
    pair_sets, _ = find_pair_sets(pairs, SPLIT)
    if len(pair_sets) != 1:
        raise InputError(f"{pairs} holds {len(pair_sets)} pair folders; give one, e.g. harvard/CT-MRI/test")
    (pair_set,) = pair_sets
    peer_files = find_fused(Path(peer_dir), pair_set, SPLIT)
    rows = []
    for files, peer_file in zip(pair_set.pairs, peer_files, strict=True):
        mri, second = read_image(files.mri).pixels, read_image(files.second).pixels
        fused = {
            peer_name: read_image(peer_file).pixels,
            "before": api.fuse(files.mri, files.second, weights=before),
            "after": api.fuse(files.mri, files.second, weights=after),
        }
        mri8 = luma8(mri)
        scores = {name: ssim_source_term(mri8, luma8(image)) for name, image in fused.items()}
        rows.append((scores["before"] - scores[peer_name], files.name, mri, second, fused, scores))
    rows.sort(key=lambda row: row[0])

    shown = rows[:count]
    figure = Figure(figsize=(12.5, 2.7 * len(shown)))
    axes = figure.subplots(len(shown), 5, squeeze=False)
    for ax_row, (_, name, mri, second, fused, scores) in zip(axes, shown, strict=True):
        panels = [(f"{name}: MRI", mri), (pair_set.kind.split("-")[0], second)]
        panels += [(f"{label}: SSIM(F,MRI) {scores[label]:.3f}", image) for label, image in fused.items()]
        for ax, (title, image) in zip(ax_row, panels, strict=True):
            ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    figure.tight_layout()
    figure.savefig(output, dpi=90)
    for delta, name, *_, scores in shown:
        print(
            name,
            " ".join(f"{label} {value:.3f}" for label, value in scores.items()),
            f"(before-peer {delta:+.3f})",
        )


if __name__ == "__main__":
    main()
