"""What medfuse decides from the data (colour or gray, which checkpoint, threads) is robust to
marks, visible in the summary and ``--json``, and can be overridden."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.pipeline import COLOUR_SHARE, load_pair, read_colour
from medfuse_cli.weights import BUNDLED_DIR


def _ct_as_rgb(examples: Path, folder: Path, mark: str) -> Path:
    """The bundled CT saved as RGB with equal channels, plus a mark a viewer might leave."""
    gray = np.asarray(Image.open(examples / "CT-MRI" / "CT" / "2004.png"))
    rgb = np.repeat(gray[..., None], 3, axis=-1).copy()
    if mark == "one-level":
        rgb[100, 100, 0] ^= 1  # one level off in one channel
    elif mark == "letter":
        rgb[5:25, 5:20] = (255, 40, 40)  # a red orientation letter, 300 pixels
    path = folder / f"ct-{mark}.png"
    Image.fromarray(rgb, "RGB").save(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mark", ["one-level", "letter"])
def test_a_marked_ct_is_still_read_as_gray_and_says_so(
    mark: str, examples: Path, tmp_path: Path, run_cli
) -> None:
    mri = examples / "CT-MRI" / "MRI" / "2004.png"
    marked = _ct_as_rgb(examples, tmp_path, mark)
    clean = run_cli("fuse", mri, examples / "CT-MRI" / "CT" / "2004.png", "-o", tmp_path / "clean.png", "-q")
    result = run_cli("fuse", mri, marked, "-o", tmp_path / "marked.png", "--json")
    assert clean.code == 0 and result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    pair = summary["pairs"][0]
    assert pair["second_image"]["read_as"] == "gray" and pair["checkpoint"] == "lwnet.ct"
    assert pair["checkpoint_sha256"] == _sha(BUNDLED_DIR / "lwnet-ct.safetensors")  # the file used
    assert pair["second_image"]["coloured_share"] < COLOUR_SHARE
    assert pair["second_image"]["off_gray_pixels"] == (1 if mark == "one-level" else 300)
    fused = np.asarray(Image.open(tmp_path / "marked.png"))
    reference = np.asarray(Image.open(tmp_path / "clean.png"))
    assert fused.ndim == 2  # a gray output, like the clean CT's
    if mark == "one-level":
        assert np.abs(fused.astype(int) - reference).max() <= 1
    else:  # near the mark it shows; far away barely (LWNet's attention is global: the balanced
        # lwnet.ct moves 3 % of the far pixels, by at most 2 levels)
        far = np.ones_like(fused, bool)
        far[:60, :60] = False
        moved = np.abs(fused[far].astype(int) - reference[far])
        assert moved.max() <= 2 and np.mean(moved > 0) < 0.05
    line = run_cli("fuse", mri, marked, "-o", tmp_path / "line.png")
    assert (
        "second image gray" in line.stderr and "colour dropped" in line.stderr and "lwnet.ct" in line.stderr
    )


def test_chroma_keep_and_drop_override_the_decision(examples: Path, tmp_path: Path, run_cli) -> None:
    mri = examples / "CT-MRI" / "MRI" / "2004.png"
    marked = _ct_as_rgb(examples, tmp_path, "letter")
    kept = run_cli("fuse", mri, marked, "-o", tmp_path / "kept.png", "--chroma", "keep", "--json")
    assert kept.code == 0
    pair = json.loads(kept.stdout)["pairs"][0]
    assert pair["second_image"] == {**pair["second_image"], "read_as": "color", "decided_by": "--chroma keep"}
    assert pair["checkpoint"] == "lwnet.functional"
    assert np.asarray(Image.open(tmp_path / "kept.png")).ndim == 3
    spect = examples / "SPECT-MRI"
    dropped = run_cli(
        "fuse",
        spect / "MRI" / "10018.png",
        spect / "SPECT" / "10018.png",
        "-o",
        tmp_path / "d.png",
        "--chroma",
        "drop",
        "--json",
    )
    assert json.loads(dropped.stdout)["pairs"][0]["checkpoint"] == "lwnet.ct"
    assert np.asarray(Image.open(tmp_path / "d.png")).ndim == 2
    bad = run_cli("fuse", mri, marked, "-o", tmp_path / "bad.png", "--chroma", "maybe")
    assert bad.code == 1 and bad.stderr.startswith("error: --chroma") and not (tmp_path / "bad.png").exists()


def test_real_functional_images_are_colour(examples: Path) -> None:
    for kind, name in (("SPECT", "10018"), ("SPECT", "25014"), ("PET", "25022"), ("PET", "30066")):
        folder = examples / f"{kind}-MRI"
        pair = load_pair(name, folder / "MRI" / f"{name}.png", folder / kind / f"{name}.png")
        assert pair.second.is_color and pair.second.coloured_share > 4 * COLOUR_SHARE
    assert not read_colour(np.zeros((4, 4, 3), np.float32)).is_color


def test_a_coloured_mri_is_refused_but_a_marked_one_is_read(examples: Path, tmp_path: Path, run_cli) -> None:
    gray = np.asarray(Image.open(examples / "CT-MRI" / "MRI" / "2004.png"))
    marked = np.repeat(gray[..., None], 3, axis=-1).copy()
    marked[0:10, 0:10] = (0, 255, 0)
    Image.fromarray(marked, "RGB").save(tmp_path / "marked-mri.png")
    ct = examples / "CT-MRI" / "CT" / "2004.png"
    assert run_cli("fuse", tmp_path / "marked-mri.png", ct, "-o", tmp_path / "a.png", "-q").code == 0
    spect = examples / "SPECT-MRI" / "SPECT" / "10018.png"
    refused = run_cli("fuse", spect, ct, "-o", tmp_path / "b.png")
    assert refused.code == 1 and "MRI must be grayscale" in refused.stderr


def test_threads_are_an_option_of_every_command_that_reads_pairs(
    examples: Path, tmp_path: Path, run_cli
) -> None:
    spect = examples / "SPECT-MRI"
    mri, functional = spect / "MRI" / "10018.png", spect / "SPECT" / "10018.png"
    one = run_cli("fuse", mri, functional, "-o", tmp_path / "one.png", "--threads", "1", "--json")
    two = run_cli("fuse", mri, functional, "-o", tmp_path / "two.png", "--threads", "2", "--json")
    assert json.loads(one.stdout)["threads"] == 1 and json.loads(two.stdout)["threads"] == 2
    assert _sha(tmp_path / "one.png") == _sha(tmp_path / "two.png")
    default = run_cli("fuse", mri, functional, "-o", tmp_path / "d.png", "--json")
    assert json.loads(default.stdout)["threads"] == 1  # LWNet's measured default (BENCHMARKS.md)
    for command in (("evaluate", spect), ("benchmark",), ("train", spect)):
        result = run_cli(*command, "--help")
        assert "--threads" in result.stdout and "--device" in result.stdout, command


def test_a_folder_run_writes_the_bytes_a_single_fusion_writes(
    examples: Path, tmp_path: Path, run_cli
) -> None:
    """Same inputs, same bytes, whatever the batch: all six bundled pairs in one folder run."""
    mri_dir, second_dir = tmp_path / "MRI", tmp_path / "SECOND"
    mri_dir.mkdir()
    second_dir.mkdir()
    for folder in sorted(examples.iterdir()):
        kind = folder.name.split("-")[0]
        for mri in sorted((folder / "MRI").glob("*.png")):
            (mri_dir / f"{kind}{mri.name}").write_bytes(mri.read_bytes())
            (second_dir / f"{kind}{mri.name}").write_bytes((folder / kind / mri.name).read_bytes())
    assert run_cli("fuse", mri_dir, second_dir, "-o", tmp_path / "out", "--batch-size", "6", "-q").code == 0
    for mri in sorted(mri_dir.iterdir()):
        single = tmp_path / f"single-{mri.name}"
        assert run_cli("fuse", mri, second_dir / mri.name, "-o", single, "-q").code == 0
        assert _sha(single) == _sha(tmp_path / "out" / mri.name), mri.name
