"""Fuse a folder of PNG pairs end to end and report pairs per second.

The folder is made from the bundled example pairs (SPECT, PET and CT with their MRIs), each
copy flipped, rotated and shifted so no two files are alike, written as ordinary PNGs. Two
timings are reported (the first also as CPU time and page faults per pair, which a busy
machine distorts less than wall time):

- ``fuse_folders``: the function ``medfuse fuse DIR DIR -o DIR`` runs (decode, fuse, encode
  overlapped on worker threads), with the fuser already built and warmed up;
- ``medfuse fuse`` as a user runs it, in a fresh process: start-up and loading included.

Usage: python scripts/benchmark_folder.py [--pairs 1000] [--model lwnet] [--batch-size 16] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medfuse_cli.bench.plan import EXAMPLE_PAIRS, build_fusion, example_paths
from medfuse_cli.pipeline import PairJob, fuse_folders


def make_pairs(folder: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``count`` augmented copies of the example pairs into folder/MRI and folder/FUNC."""
    rng = np.random.default_rng(seed)
    mri_dir, functional_dir = folder / "MRI", folder / "FUNC"
    mri_dir.mkdir(parents=True)
    functional_dir.mkdir()
    sources = []
    for pair in EXAMPLE_PAIRS:
        mri, functional = example_paths(pair)
        sources.append((np.asarray(Image.open(mri)), np.asarray(Image.open(functional))))
    for index in range(count):
        mri, functional = sources[index % len(sources)]
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        shift = tuple(int(s) for s in rng.integers(-12, 13, size=2))

        def augment(
            image: np.ndarray, turns: int = turns, flip: bool = flip, shift: tuple = shift
        ) -> np.ndarray:
            image = np.rot90(image, turns)
            image = np.flip(image, 1) if flip else image
            return np.ascontiguousarray(np.roll(image, shift, axis=(0, 1)))

        Image.fromarray(augment(mri)).save(mri_dir / f"{index:05d}.png")
        Image.fromarray(augment(functional)).save(functional_dir / f"{index:05d}.png")
    return mri_dir, functional_dir


def _cost_per_pair(
    before: resource.struct_rusage, after: resource.struct_rusage, pairs: int
) -> tuple[float, float]:
    """CPU milliseconds (all threads) and minor page faults per pair: less load-sensitive than pairs/s."""
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu * 1000 / pairs, (after.ru_minflt - before.ru_minflt) / pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--model", default="lwnet")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads while fusing, as medfuse's --threads (default: the fuser's own choice)",
    )
    parser.add_argument("--skip-cli", action="store_true", help="only time fuse_folders in this process")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="medfuse-folder-") as scratch:
        root = Path(scratch)
        mri_dir, functional_dir = make_pairs(root, args.pairs)
        fusion = build_fusion(args.model, torch.device("cpu"), threads=args.threads)
        names = sorted(p.stem for p in mri_dir.iterdir())

        def jobs(out: Path) -> list[PairJob]:
            out.mkdir(exist_ok=True)
            return [
                PairJob(n, mri_dir / f"{n}.png", functional_dir / f"{n}.png", out / f"{n}.png") for n in names
            ]

        fuse_folders(fusion, jobs(root / "warm")[: 2 * args.batch_size], batch_size=args.batch_size)
        usage, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        outcomes = fuse_folders(fusion, jobs(root / "out"), batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        cpu_ms, faults = _cost_per_pair(usage, resource.getrusage(resource.RUSAGE_SELF), len(outcomes))
        failed = [o for o in outcomes if o.error]
        note = "" if fusion.pretrained else " (random weights: speed only)"
        print(
            f"fuse_folders: {len(outcomes) - len(failed)} pairs with {args.model}{note} in {seconds:.2f} s "
            f"= {len(outcomes) / seconds:.1f} pairs/s ({fusion.describe()['threads']} torch thread(s), "
            f"batch {args.batch_size}); CPU {cpu_ms:.1f} ms and {faults:.0f} page faults per pair"
        )
        if failed:
            sys.exit(f"{len(failed)} pairs failed, e.g. {failed[0].error}")

        if not args.skip_cli and not fusion.pretrained:
            print("medfuse fuse (fresh process): skipped, it has no checkpoint to load")
        elif not args.skip_cli:
            shutil.rmtree(root / "out")
            command = [sys.executable, "-m", "medfuse_cli", "fuse", str(mri_dir), str(functional_dir)]
            command += ["-o", str(root / "out"), "-m", args.model, "-q", "--device", "cpu"]
            command += ["--batch-size", str(args.batch_size)]
            if args.threads is not None:
                command += ["--threads", str(args.threads)]
            started = time.perf_counter()
            subprocess.run(command, check=True)
            seconds = time.perf_counter() - started
            print(f"medfuse fuse (fresh process, start-up included): {args.pairs / seconds:.1f} pairs/s")


if __name__ == "__main__":
    main()
