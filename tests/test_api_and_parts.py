"""The Python door ``medfuse_cli.fuse`` gives what the CLI writes, and ``--num-parts/--part-id``
split a folder run so that the parts together are exactly one whole run."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medfuse_cli
from medfuse_cli.errors import InputError
from medfuse_cli.pairs import select_part


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fuse_on_arrays_equals_the_png_the_cli_writes(examples: Path, tmp_path: Path, run_cli) -> None:
    mri, spect = examples / "SPECT-MRI" / "MRI" / "10018.png", examples / "SPECT-MRI" / "SPECT" / "10018.png"
    assert run_cli("fuse", mri, spect, "-o", tmp_path / "cli.png", "-q").code == 0
    written = np.asarray(Image.open(tmp_path / "cli.png"))
    fused = medfuse_cli.fuse(np.asarray(Image.open(mri)), np.asarray(Image.open(spect)), device="cpu")
    assert fused.shape == (256, 256, 3) and fused.dtype == np.float32
    np.testing.assert_array_equal(np.rint(fused * 255).astype(np.uint8), written)
    from_paths = medfuse_cli.fuse(str(mri), spect, device="cpu")
    np.testing.assert_array_equal(from_paths, fused)


def test_float_arrays_in_unit_range_are_taken_as_they_are(examples: Path) -> None:
    mri = np.asarray(Image.open(examples / "CT-MRI" / "MRI" / "2004.png"))
    ct = np.asarray(Image.open(examples / "CT-MRI" / "CT" / "2004.png"))
    as_bytes = medfuse_cli.fuse(mri, ct, device="cpu")
    as_floats = medfuse_cli.fuse(mri / 255.0, ct.astype(np.float32) / 255.0, device="cpu")
    assert as_bytes.ndim == 2  # a CT pair is gray
    np.testing.assert_allclose(as_floats, as_bytes, atol=1e-6)
    dimmer = medfuse_cli.fuse(mri / 255.0, ct / 510.0, device="cpu")  # never stretched back up
    assert dimmer.mean() < as_bytes.mean()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((8, 8), np.int32), "uint8, uint16"),
        (np.full((8, 8), 1.5), r"\[0, 1\]"),
        (np.full((8, 8), np.nan), r"\[0, 1\]"),
        (np.zeros((8, 8, 4), np.uint8), "shape"),
        (np.zeros((8, 8, 3), np.uint16), "uint8, uint16"),
        (np.zeros((0, 8), np.float32), "H, W >= 1"),
    ],
)
def test_arrays_it_cannot_take_whole_are_refused(bad: np.ndarray, message: str) -> None:
    good = np.zeros((8, 8), np.uint8)
    with pytest.raises(InputError, match=message):
        medfuse_cli.fuse(good, bad, device="cpu")


def test_select_part_covers_every_item_once() -> None:
    items = list(range(11))
    parts = [select_part(items, 4, i) for i in range(4)]
    assert sorted(item for part in parts for item in part) == items
    assert [len(p) for p in parts] == [3, 3, 3, 2]
    for bad in ((0, 0), (3, 3), (3, -1)):
        with pytest.raises(InputError):
            select_part(items, *bad)


@pytest.fixture
def five_pairs(examples: Path, tmp_path: Path) -> tuple[Path, Path]:
    mri, ct = tmp_path / "MRI", tmp_path / "CT"
    mri.mkdir()
    ct.mkdir()
    sources = sorted((examples / "CT-MRI" / "MRI").glob("*.png"))
    for index, name in enumerate("abcde"):
        source = sources[index % len(sources)]
        shutil.copy(source, mri / f"{name}.png")
        shutil.copy(examples / "CT-MRI" / "CT" / source.name, ct / f"{name}.png")
    return mri, ct


def test_the_parts_of_a_folder_run_are_one_whole_run(five_pairs, tmp_path: Path, run_cli) -> None:
    mri, ct = five_pairs
    assert run_cli("fuse", mri, ct, "-o", tmp_path / "whole", "-q").code == 0
    parts = tmp_path / "parts"
    for part in range(3):
        result = run_cli("fuse", mri, ct, "-o", parts, "--num-parts", 3, "--part-id", part, "--skip-existing")
        assert result.code == 0 and result.stderr.splitlines()[-1].startswith(f"part {part} of 3: ")
    whole = {p.name: _sha(p) for p in (tmp_path / "whole").iterdir()}
    assert {p.name: _sha(p) for p in parts.iterdir()} == whole and len(whole) == 5


def test_a_killed_part_resumes_with_skip_existing(five_pairs, tmp_path: Path, run_cli) -> None:
    mri, ct = five_pairs
    out = tmp_path / "out"
    assert run_cli("fuse", mri, ct, "-o", out, "--num-parts", 2, "--part-id", 0, "-q").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "e.png"]
    (out / "c.png").unlink()  # as if the job died before this pair
    kept = _sha(out / "a.png")
    result = run_cli(
        "fuse", mri, ct, "-o", out, "--num-parts", 2, "--part-id", 0, "--skip-existing", "--json"
    )
    assert (
        result.code == 0 and '"skipped": 2' in result.stdout and '"part": {"id": 0, "of": 2}' in result.stdout
    )
    assert _sha(out / "a.png") == kept and (out / "c.png").exists()


def test_parts_are_refused_where_there_is_nothing_to_split(examples: Path, tmp_path: Path, run_cli) -> None:
    pair = (examples / "CT-MRI" / "MRI" / "2004.png", examples / "CT-MRI" / "CT" / "2004.png")
    result = run_cli("fuse", *pair, "-o", tmp_path / "f.png", "--num-parts", 2, "--part-id", 0)
    assert result.code == 1 and "folder run" in result.stderr and not (tmp_path / "f.png").exists()
    result = run_cli(
        "fuse",
        examples / "CT-MRI" / "MRI",
        examples / "CT-MRI" / "CT",
        "-o",
        tmp_path / "o",
        "--num-parts",
        2,
        "--part-id",
        2,
    )
    assert result.code == 1 and result.stderr.startswith("error: --part-id must be in 0..1")
    folders = (examples / "CT-MRI" / "MRI", examples / "CT-MRI" / "CT")
    result = run_cli("fuse", *folders, "-o", tmp_path / "o", "--num-parts", 2)  # which part?
    assert result.code == 1 and "needs --part-id" in result.stderr and not (tmp_path / "o").exists()


def test_a_weights_file_is_hashed_as_it_was_loaded(tmp_path: Path) -> None:
    """The digest a result names is the file's when the fusion read it: replacing or removing the
    file mid-run does not change the digest reported (the ONNX test checks the weights in use)."""
    from medfuse_cli.fusers import get_fuser_spec
    from medfuse_cli.fusers.registry import CT, FUNCTIONAL
    from medfuse_cli.pipeline import Fusion
    from medfuse_cli.weights import BUNDLED_DIR

    mine = tmp_path / "mine.safetensors"
    shutil.copy(BUNDLED_DIR / "lwnet-ct.safetensors", mine)
    fusion = Fusion("lwnet", "cpu", weights=mine)
    shutil.copy(BUNDLED_DIR / "lwnet-functional.safetensors", mine)  # another file, same path
    expected = get_fuser_spec("lwnet").checkpoint("ct").sha256
    assert fusion.checkpoint_sha256(FUNCTIONAL) == fusion.checkpoint_sha256(CT) == expected
    mine.unlink()
    assert fusion.checkpoint_sha256(CT) == expected
    assert Fusion("average").checkpoint_sha256(CT) is None
