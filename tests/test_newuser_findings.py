"""Faults a fresh-clone tester found, each kept as a test (one ``error:`` line, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _one_error_line(result) -> None:
    assert result.code == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_a_setting_the_fuser_does_not_take_is_refused(examples: Path, tmp_path: Path, run_cli) -> None:
    ct = examples / "CT-MRI"
    result = run_cli(
        "fuse",
        ct / "MRI" / "2004.png",
        ct / "CT" / "2004.png",
        "-o",
        tmp_path / "x.png",
        "--temperature",
        "5",
    )
    _one_error_line(result)
    assert "takes no temperature" in result.stderr and not (tmp_path / "x.png").exists()


def test_an_unwritable_report_folder_is_one_line(examples: Path, run_cli) -> None:
    _one_error_line(
        run_cli(
            "evaluate",
            examples / "CT-MRI",
            "-m",
            "average",
            "--metrics",
            "SSIM",
            "--out",
            "/proc/medfuse-report",
        )
    )


def test_a_device_file_is_not_read_forever(examples: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("fuse", examples / "CT-MRI" / "MRI" / "2004.png", "/dev/zero", "-o", tmp_path / "x.png")
    _one_error_line(result)
    assert "device or pipe" in result.stderr


@pytest.mark.parametrize(
    "args", [("--batch", "100000", "--size", "256"), ("--batch", "1", "--size", "100000")]
)
def test_a_benchmark_too_large_for_memory_is_refused(args: tuple[str, ...], run_cli) -> None:
    _one_error_line(run_cli("benchmark", "-m", "average", *args))


def test_absurd_thread_counts_are_usage_errors(examples: Path, tmp_path: Path, run_cli) -> None:
    ct = examples / "CT-MRI"
    result = run_cli(
        "fuse",
        ct / "MRI" / "2004.png",
        ct / "CT" / "2004.png",
        "-o",
        tmp_path / "x.png",
        "--threads",
        "100000000000000000000",
    )
    _one_error_line(result)
    assert "--threads" in result.stderr and "medfuse fuse --help" in result.stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["train", "DATA", "-o", "RUN", "--balance-weight", "abc"], "--balance-weight"),
        (["fuse", "MRI"], "'functional'"),
        (["evaluate", "DATA", "--no-such-option"], "--no-such-option"),
        (["no-such-command"], "no-such-command"),
        (["fuse", "MRI", "SPECT", "--threads"], "requires an argument. (see 'medfuse fuse --help')"),
        (["train", "DATA", "--crop-size"], "(see 'medfuse train --help')"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], names: str, tmp_path: Path, run_cli) -> None:
    """A value of the wrong type, a missing argument, an unknown option or command: one
    ``error:`` line and status 1 (the brief's rule), not Click's usage block with status 2."""
    result = run_cli(*(str(tmp_path / a) if a.isupper() else a for a in args))
    _one_error_line(result)
    assert names in result.stderr


def test_hidden_files_are_not_images_and_a_stem_twice_is_an_error(tmp_path: Path, run_cli) -> None:
    import numpy as np
    from PIL import Image

    mri, ct = tmp_path / "MRI", tmp_path / "CT"
    for folder in (mri, ct):
        folder.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (mri / ".hidden.png").write_bytes(b"not an image")
    assert run_cli("fuse", mri, ct, "-o", tmp_path / "out", "-m", "average", "-q").code == 0
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(ct / "a.tif")
    _one_error_line(run_cli("fuse", mri, ct, "-o", tmp_path / "out2", "-m", "average"))


def test_weights_given_twice_or_to_no_network_are_refused(examples: Path, run_cli) -> None:
    ct = examples / "CT-MRI"
    _one_error_line(run_cli("evaluate", ct, "-m", "average", "--weights", "x.safetensors"))
    _one_error_line(run_cli("evaluate", ct, "-m", "lwnet@lwnet.functional", "--checkpoint", "lwnet.ct"))


def test_a_table_into_a_closed_pipe_is_the_quiet_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    # `true` exits at once, long before the table is written: the pipe is closed for certain
    script = f"{sys.executable} -m medfuse_cli models | true; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "141" and done.stderr == ""


def test_a_one_pixel_wide_noisy_image_is_written(tmp_path: Path, run_cli) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("m", "c"):
        Image.fromarray(rng.integers(0, 256, (256, 1), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    result = run_cli(
        "fuse", tmp_path / "m.png", tmp_path / "c.png", "-o", tmp_path / "o.png", "-m", "average", "-q"
    )
    assert result.code == 0, result.stderr
    assert Image.open(tmp_path / "o.png").size == (1, 256)


def test_marks_in_the_mri_are_said_in_json(examples: Path, tmp_path: Path, run_cli) -> None:
    import json

    import numpy as np
    from PIL import Image

    gray = np.asarray(Image.open(examples / "CT-MRI" / "MRI" / "2004.png"))
    marked = np.repeat(gray[..., None], 3, axis=-1).copy()
    marked[0:10, 0:10] = (0, 255, 0)
    Image.fromarray(marked, "RGB").save(tmp_path / "mri.png")
    result = run_cli(
        "fuse",
        tmp_path / "mri.png",
        examples / "CT-MRI" / "CT" / "2004.png",
        "-o",
        tmp_path / "o.png",
        "--json",
    )
    assert json.loads(result.stdout)["pairs"][0]["mri_image"]["coloured_share"] > 0


def test_resume_of_a_folder_that_holds_no_training_state_is_one_line(tmp_path: Path, run_cli) -> None:
    import torch

    from medfuse_cli.weights import write_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "train-state.safetensors", {"x": torch.zeros(1)}, {"note": "not a state"})
    _one_error_line(run_cli("train", "-o", run, "--resume"))


@pytest.mark.parametrize("name", ["lwnet", "lywnet", "average", "laplacian", "wavelet", "maximum"])
def test_every_fuser_module_refuses_what_its_contract_excludes(name: str) -> None:
    import torch

    from medfuse_cli.errors import InputError
    from medfuse_cli.fusers import create_fuser

    fuser = create_fuser(name, pretrained=False)
    good = torch.rand(1, 1, 16, 16)
    for bad in (good * 255, torch.full_like(good, float("nan")), (good * 255).to(torch.uint8), good[:, 0]):
        with pytest.raises(InputError):
            fuser(bad, bad)
