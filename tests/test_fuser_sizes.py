"""Every fuser takes every input size from its declared minimum up, and refuses smaller ones in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.errors import InputError
from medfuse_cli.fusers import list_fusers
from medfuse_cli.fusers.registry import CT, FUNCTIONAL
from medfuse_cli.pipeline import Fusion

SIZES = [(side, side) for side in range(1, 41)] + [(1, 7), (7, 1), (3, 40), (40, 5), (17, 33), (64, 9)]
FUSERS = [spec.name for spec in list_fusers()]


@pytest.mark.parametrize("name", FUSERS)
def test_every_size_fuses_or_is_refused_cleanly(name: str) -> None:
    fusion = Fusion(name, "cpu")
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        a = rng.random((height, width), dtype=np.float32)
        b = rng.random((height, width), dtype=np.float32)
        for kind in (FUNCTIONAL, CT):
            if min(height, width) < fusion.spec.min_size:
                with pytest.raises(InputError, match=f"at least {fusion.spec.min_size}x"):
                    fusion.fuse_y(a, b, kind)
                continue
            fused = fusion.fuse_y(a, b, kind)
            assert fused.shape == (height, width), (name, height, width)
            assert fused.dtype == np.float32 and np.isfinite(fused).all()
            assert fused.min() >= 0.0 and fused.max() <= 1.0


def _gray_pair(folder: Path, side: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(side)
    paths = []
    for name in ("mri", "ct"):
        path = folder / f"{name}{side}.png"
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("name", FUSERS)
def test_the_cli_refuses_below_the_minimum_in_one_line(name: str, tmp_path: Path, run_cli) -> None:
    minimum = Fusion(name, "cpu").spec.min_size
    mri, ct = _gray_pair(tmp_path, minimum)
    fine = run_cli("fuse", mri, ct, "-o", tmp_path / "fine.png", "-m", name, "-q")
    assert fine.code == 0, fine.stderr
    assert Image.open(tmp_path / "fine.png").size == (minimum, minimum)
    if minimum > 1:
        mri, ct = _gray_pair(tmp_path, minimum - 1)
        small = run_cli("fuse", mri, ct, "-o", tmp_path / "small.png", "-m", name, "-q")
        assert small.code == 1
        assert small.stderr.startswith("error: ") and small.stderr.count("\n") == 1, small.stderr
        assert not (tmp_path / "small.png").exists()


def test_a_pair_the_fuser_refuses_is_that_pair_s_failure_in_a_folder_run(tmp_path: Path, run_cli) -> None:
    """LYWNet refuses 3×3; in a folder with two good 16×16 pairs, those are written and the JSON
    names the one that failed."""
    import json

    mri_dir, ct_dir = tmp_path / "MRI", tmp_path / "CT"
    mri_dir.mkdir()
    ct_dir.mkdir()
    rng = np.random.default_rng(1)
    for name, side in (("a", 16), ("b", 3), ("c", 16)):
        for folder in (mri_dir, ct_dir):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(folder / f"{name}.png")
    result = run_cli("fuse", mri_dir, ct_dir, "-o", tmp_path / "out", "-m", "lywnet", "--json")
    assert result.code == 1
    summary = json.loads(result.stdout)
    assert summary["written"] == 2
    assert [f["pair"] for f in summary["failed"]] == ["b"] and "at least 5x5" in summary["failed"][0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
