"""`medfuse fuse` end to end: colour handling, folders, determinism and every bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.color import rgb_to_ycbcr
from medfuse_cli.io import read_image

SPECT = ("SPECT-MRI", "SPECT", "10018")


def pair_paths(examples: Path, pair: str = "SPECT-MRI", modality: str = "SPECT", name: str = "10018"):
    return examples / pair / "MRI" / f"{name}.png", examples / pair / modality / f"{name}.png"


def _rgb8(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255


def test_colour_is_carried_and_y_is_the_fusers(run_cli, examples: Path, tmp_path: Path) -> None:
    mri, spect = pair_paths(examples)
    out = tmp_path / "fused.png"
    result = run_cli("fuse", mri, spect, "-o", out, "--model", "average", "--quiet")
    assert result.code == 0, result.stderr
    fused = rgb_to_ycbcr(_rgb8(out)) * 255
    source = rgb_to_ycbcr(_rgb8(spect)) * 255
    expected_y = (read_image(mri).pixels * 255 + source[..., 0]) / 2
    # A new Y with the old chroma can leave the RGB gamut; an RGB PNG must clip those pixels,
    # so the check covers the pixels that are representable (nearly all of them).
    unclipped = np.concatenate([expected_y[..., None], source[..., 1:]], axis=-1) / 255
    unclipped[..., 1:] -= 0.5
    rgb = unclipped @ np.array([[1, 0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]]).T
    in_gamut = np.all((rgb >= 0) & (rgb <= 1), axis=-1)
    assert in_gamut.mean() > 0.95
    assert np.abs(fused[..., 1:] - source[..., 1:])[in_gamut].max() <= 1.0
    assert np.abs(fused[..., 0] - expected_y)[in_gamut].max() <= 1.0


def test_ct_pair_gives_gray_output(run_cli, examples: Path, tmp_path: Path) -> None:
    mri, ct = pair_paths(examples, "CT-MRI", "CT", "2004")
    out = tmp_path / "ct.png"
    assert run_cli("fuse", mri, ct, "-o", out, "-m", "maximum", "-q").code == 0
    image = Image.open(out)
    assert image.mode == "L"
    expected = np.maximum(np.asarray(Image.open(mri)), np.asarray(Image.open(ct)))
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_same_inputs_give_identical_bytes(run_cli, examples: Path, tmp_path: Path) -> None:
    mri, spect = pair_paths(examples)
    digests = []
    for name in ("a.png", "b.png"):
        assert run_cli("fuse", mri, spect, "-o", tmp_path / name, "-m", "laplacian", "-q").code == 0
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_folder_run_matches_single_runs(run_cli, examples: Path, tmp_path: Path) -> None:
    folder = examples / "SPECT-MRI"
    result = run_cli(
        "fuse", folder / "MRI", folder / "SPECT", "-o", tmp_path / "out", "-m", "laplacian", "--json"
    )
    assert result.code == 0, result.stderr
    assert '"written": 2' in result.stdout
    for name in ("10018", "25014"):
        single = tmp_path / f"single-{name}.png"
        run_cli(
            "fuse",
            folder / "MRI" / f"{name}.png",
            folder / "SPECT" / f"{name}.png",
            "-o",
            single,
            "-m",
            "laplacian",
        )
        assert (tmp_path / "out" / f"{name}.png").read_bytes() == single.read_bytes()


def test_folder_run_skips_a_bad_pair_and_fails(run_cli, examples: Path, tmp_path: Path) -> None:
    mri_dir, spect_dir = tmp_path / "MRI", tmp_path / "SPECT"
    mri_dir.mkdir()
    spect_dir.mkdir()
    for name in ("10018", "25014"):
        mri, spect = pair_paths(examples, name=name)
        (mri_dir / mri.name).write_bytes(mri.read_bytes())
        (spect_dir / spect.name).write_bytes(spect.read_bytes())
    (spect_dir / "25014.png").write_bytes(b"garbage")
    result = run_cli("fuse", mri_dir, spect_dir, "-o", tmp_path / "out", "-m", "average", "--json")
    assert result.code == 1
    assert '"written": 1' in result.stdout and "25014" in result.stdout
    assert (tmp_path / "out" / "10018.png").is_file()
    assert not (tmp_path / "out" / "25014.png").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["10018.png"]


def test_quiet_folder_run_still_names_the_pair_that_failed(run_cli, examples: Path, tmp_path: Path) -> None:
    """--quiet drops progress and the summary; an exit status 1 with nothing said would be a
    failure the user cannot act on."""
    mri_dir, spect_dir = tmp_path / "MRI", tmp_path / "SPECT"
    mri_dir.mkdir()
    spect_dir.mkdir()
    mri, spect = pair_paths(examples)
    (mri_dir / mri.name).write_bytes(mri.read_bytes())
    (spect_dir / spect.name).write_bytes(b"garbage")
    result = run_cli("fuse", mri_dir, spect_dir, "-o", tmp_path / "out", "-m", "average", "-q")
    assert result.code == 1
    assert result.stderr.startswith("failed 10018: ") and result.stderr.count("\n") == 1


def test_a_run_stopped_by_its_weights_still_says_what_it_wrote(
    run_cli, examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CT pair fused before the damaged functional checkpoint was needed stays written: the
    error line counts it, and --json lists it, with the error, for a script to act on."""
    from medfuse_cli import weights

    bundled = tmp_path / "bundled"
    bundled.mkdir()
    for name in ("lwnet-functional.safetensors", "lwnet-ct.safetensors"):
        (bundled / name).write_bytes((weights.BUNDLED_DIR / name).read_bytes())
    damaged = bytearray((bundled / "lwnet-functional.safetensors").read_bytes())
    damaged[-8] ^= 0xFF
    (bundled / "lwnet-functional.safetensors").write_bytes(bytes(damaged))
    monkeypatch.setattr(weights, "BUNDLED_DIR", bundled)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mri_dir, second_dir = tmp_path / "MRI", tmp_path / "second"
    mri_dir.mkdir()
    second_dir.mkdir()
    ct_mri, ct = pair_paths(examples, "CT-MRI", "CT", "2004")
    mri, spect = pair_paths(examples)
    for folder, a, b in ((mri_dir, ct_mri, mri), (second_dir, ct, spect)):
        (folder / "a.png").write_bytes(a.read_bytes())  # the CT pair sorts first
        (folder / "b.png").write_bytes(b.read_bytes())
    out = tmp_path / "out"
    args = ("fuse", mri_dir, second_dir, "-o", out, "-m", "lwnet", "--batch-size", "1")
    result = run_cli(*args, "--json")
    error = [line for line in result.stderr.splitlines() if not line.startswith("fusing: ")]
    assert result.code == 1 and len(error) == 1
    assert error[0].startswith("error: the bundled file cannot be used (checksum mismatch")
    assert error[0].endswith("(the run stopped: 1 pair(s) written before it, 1 not fused)")
    assert "HF_HUB_OFFLINE is set, so the Hub was not asked for lwnet-functional.safetensors" in error[0]
    summary = json.loads(result.stdout)
    assert summary["written"] == 1 and [(p["pair"], p["written"]) for p in summary["pairs"]] == [("a", True)]
    assert summary["stopped"]["pairs_not_fused"] == 1
    assert summary["stopped"]["error"].startswith("the bundled file cannot be used")
    assert [p.name for p in out.iterdir()] == ["a.png"]


def test_a_newline_in_a_file_name_keeps_each_message_on_one_line(
    run_cli, examples: Path, tmp_path: Path
) -> None:
    """A script reads one ``failed``/``error`` line per problem; a newline in a name must not split one."""
    mri_dir, spect_dir = tmp_path / "MRI", tmp_path / "SPECT"
    mri_dir.mkdir()
    spect_dir.mkdir()
    mri, _ = pair_paths(examples)
    for name in ("a\nb.png", "c\x0bd\x1b[31m.png"):  # a newline; a vertical tab and a terminal colour
        (mri_dir / name).write_bytes(mri.read_bytes())
        (spect_dir / name).write_bytes(b"garbage")
    result = run_cli("fuse", mri_dir, spect_dir, "-o", tmp_path / "out", "-m", "average", "-q")
    assert result.code == 1
    assert result.stderr.count("\n") == 2 and "\x1b" not in result.stderr and "\x0b" not in result.stderr
    assert result.stderr.startswith("failed a\\nb: ")
    assert "failed c\\x0bd\\x1b[31m: " in result.stderr
    single = run_cli("fuse", spect_dir / "a\nb.png", mri, "-o", tmp_path / "one.png", "-m", "average")
    assert single.code == 1
    assert single.stderr.startswith("error: ") and "a\\nb.png" in single.stderr
    assert single.stderr.count("\n") == 1


def test_a_damaged_checkpoint_fails_a_folder_run_once(
    run_cli, examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights are the run's, not a pair's: one error line, not the same line per pair."""
    from medfuse_cli import weights

    bundled = tmp_path / "bundled"
    bundled.mkdir()
    damaged = bytearray((weights.BUNDLED_DIR / "lwnet-functional.safetensors").read_bytes())
    damaged[-8] ^= 0xFF
    (bundled / "lwnet-functional.safetensors").write_bytes(bytes(damaged))
    monkeypatch.setattr(weights, "BUNDLED_DIR", bundled)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folders = examples / "SPECT-MRI"
    result = run_cli("fuse", folders / "MRI", folders / "SPECT", "-o", tmp_path / "out", "-m", "lwnet")
    assert result.code == 1
    assert result.stderr.startswith("error: the bundled file cannot be used (checksum mismatch")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_stdout_output_for_pipelines(examples: Path) -> None:
    mri, ct = pair_paths(examples, "CT-MRI", "CT", "2004")
    done = subprocess.run(
        [sys.executable, "-m", "medfuse_cli", "fuse", str(mri), str(ct), "-o", "-", "-m", "average"],
        capture_output=True,
        check=True,
    )
    assert done.stdout[:8] == b"\x89PNG\r\n\x1a\n"


def _bad(tmp_path: Path, examples: Path, case: str) -> list:
    """Arguments for one bad-input case (files made in tmp_path)."""
    mri, spect = pair_paths(examples)
    out = tmp_path / "out.png"
    if case == "missing file":
        return ["fuse", tmp_path / "nope.png", spect, "-o", out]
    if case == "missing folder":
        return ["fuse", tmp_path / "nodir", tmp_path / "nodir2", "-o", tmp_path / "o"]
    if case == "not an image":
        (tmp_path / "x.png").write_text("hello")
        return ["fuse", tmp_path / "x.png", spect, "-o", out]
    if case == "truncated":
        (tmp_path / "t.png").write_bytes(mri.read_bytes()[:3000])
        return ["fuse", tmp_path / "t.png", spect, "-o", out]
    if case == "sizes differ":
        Image.open(mri).resize((128, 100)).save(tmp_path / "small.png")
        return ["fuse", tmp_path / "small.png", spect, "-o", out]
    if case == "rgba":
        Image.open(spect).convert("RGBA").save(tmp_path / "rgba.png")
        return ["fuse", mri, tmp_path / "rgba.png", "-o", out]
    if case == "palette":
        Image.open(spect).convert("P").save(tmp_path / "p.png")
        return ["fuse", mri, tmp_path / "p.png", "-o", out]
    if case == "colour mri":
        return ["fuse", spect, spect, "-o", out]
    if case == "empty folder":
        (tmp_path / "e1").mkdir()
        (tmp_path / "e2").mkdir()
        return ["fuse", tmp_path / "e1", tmp_path / "e2", "-o", tmp_path / "o"]
    if case == "names differ":
        (tmp_path / "m").mkdir()
        (tmp_path / "s").mkdir()
        (tmp_path / "m" / "1.png").write_bytes(mri.read_bytes())
        (tmp_path / "s" / "2.png").write_bytes(spect.read_bytes())
        return ["fuse", tmp_path / "m", tmp_path / "s", "-o", tmp_path / "o"]
    if case == "unknown model":
        return ["fuse", mri, spect, "-o", out, "-m", "nosuchnet"]
    if case == "unknown device":
        return ["fuse", mri, spect, "-o", out, "--device", "tpu"]
    if case == "missing output folder":
        return ["fuse", mri, spect, "-o", tmp_path / "missing" / "out.png", "-m", "average"]
    if case == "output exists":
        out.write_bytes(b"keep me")
        return ["fuse", mri, spect, "-o", out, "-m", "average"]
    if case == "output is an input":
        return ["fuse", mri, spect, "-o", mri, "-m", "average", "--overwrite"]
    if case == "empty weights":  # "" would otherwise be read as the current folder "."
        return ["fuse", mri, spect, "-o", out, "-m", "lwnet", "--weights", ""]
    if case == "empty weights=":
        return ["fuse", mri, spect, "-o", out, "-m", "lwnet", "--weights="]
    if case == "empty input":
        return ["fuse", "", spect, "-o", out]
    raise AssertionError(case)


BAD_CASES = [
    ("missing file", "file not found"),
    ("missing folder", "not found"),
    ("not an image", "not an image"),
    ("truncated", "truncated"),
    ("sizes differ", "256x256.*128x100|128x100.*256x256"),
    ("rgba", "alpha"),
    ("palette", "palette"),
    ("colour mri", "must be grayscale"),
    ("empty folder", "no images"),
    ("names differ", "do not pair up"),
    ("unknown model", "unknown model"),
    ("unknown device", "unknown device"),
    ("missing output folder", "output folder does not exist"),
    ("output exists", "--overwrite"),
    ("output is an input", "input"),
    ("empty weights", r"^error: empty argument \(word 9 after medfuse, after '--weights'\)"),
    ("empty weights=", "^error: empty value in --weights=: give one"),
    ("empty input", r"^error: empty argument \(word 2 after medfuse, after 'fuse'\)"),
]


@pytest.mark.parametrize(("case", "message"), BAD_CASES, ids=[c for c, _ in BAD_CASES])
def test_bad_input_is_one_line_and_touches_nothing(run_cli, examples, tmp_path: Path, case, message) -> None:
    import re

    args = _bad(tmp_path, examples, case)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    examples_before = {p: p.stat().st_mtime_ns for p in examples.rglob("*.png")}
    args = args if "-m" in args or "--model" in args else [*args, "-m", "average"]
    result = run_cli(*args)
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in examples.rglob("*.png")} == examples_before


def test_an_option_value_ending_in_equals_and_help_beside_an_empty_word_are_taken(
    run_cli, examples: Path, tmp_path: Path
) -> None:
    """Only an empty word or an empty ``--option=`` is refused, and ``--help`` still shows the help."""
    mri, spect = pair_paths(examples)
    result = run_cli("fuse", mri, spect, f"--output={tmp_path / 'fused='}.png", "-m", "average", "-q")
    assert result.code == 0, result.stderr
    assert (tmp_path / "fused=.png").is_file()
    shown = run_cli("fuse", "--help", "")
    assert shown.code == 0 and "Usage" in shown.stdout


def test_cuda_requested_without_gpu(run_cli, examples: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    mri, spect = pair_paths(examples)
    result = run_cli("fuse", mri, spect, "-o", tmp_path / "o.png", "-m", "average", "--device", "cuda")
    assert result.code == 1 and "CUDA" in result.stderr


def test_resize_fixes_a_size_mismatch_explicitly(run_cli, examples: Path, tmp_path: Path) -> None:
    mri, spect = pair_paths(examples)
    Image.open(spect).resize((128, 128)).save(tmp_path / "small.png")
    result = run_cli(
        "fuse", mri, tmp_path / "small.png", "-o", tmp_path / "o.png", "-m", "average", "--resize", "-q"
    )
    assert result.code == 0
    assert Image.open(tmp_path / "o.png").size == (256, 256)


def test_overwrite_is_opt_in(run_cli, examples: Path, tmp_path: Path) -> None:
    mri, spect = pair_paths(examples)
    out = tmp_path / "o.png"
    out.write_bytes(b"old")
    assert run_cli("fuse", mri, spect, "-o", out, "-m", "average", "--overwrite", "-q").code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_sixteen_bit_pairs_give_sixteen_bit_output(run_cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(tmp_path / f"{name}.png")
    out = tmp_path / "o.png"
    assert run_cli("fuse", tmp_path / "a.png", tmp_path / "b.png", "-o", out, "-m", "maximum", "-q").code == 0
    fused = read_image(out)
    assert fused.bit_depth == 16
    expected = np.maximum(read_image(tmp_path / "a.png").pixels, read_image(tmp_path / "b.png").pixels)
    np.testing.assert_allclose(fused.pixels, expected, atol=1 / 65535)
