"""LYWNet training: the authors' loss and augmentation, and a tiny run that resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.lywnet import OWN_FORMAT, PER_IMAGE, load_lywnet
from medfuse_cli.training.lywnet_trainer import (
    STATE_FILE,
    WEIGHTS_FILE,
    LYWNetTrainingOptions,
    augment,
    autoencoder_loss,
    finalize_checkpoint,
    train_lywnet,
)
from medfuse_cli.weights import read_checkpoint


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Four 20x20 MRI/CT pairs of smooth random images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for modality in ("MRI", "CT"):
        (root / modality).mkdir(parents=True)
        for index in range(4):
            coarse = rng.uniform(0, 255, size=(5, 5)).astype(np.uint8)
            image = Image.fromarray(coarse).resize((20, 20), Image.Resampling.BILINEAR)
            image.save(root / modality / f"{index}.png")
    return root


def _options(epochs: int, resume: bool = False) -> LYWNetTrainingOptions:
    return LYWNetTrainingOptions(epochs=epochs, batch_size=3, size=8, seed=7, resume=resume, command="test")


def test_loss_is_the_authors_three_terms() -> None:
    torch.manual_seed(0)
    out, target = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    total, parts = autoencoder_loss(out, target)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    edge = ((F.conv2d(out, sobel).abs() - F.conv2d(target, sobel).abs()) ** 2).mean()
    cosine = 1 - F.cosine_similarity(out.view(2, -1), target.view(2, -1)).mean()
    mse = ((out - target) ** 2).mean()
    torch.testing.assert_close(total, mse + 25 * cosine + 4 * edge)
    assert parts["edge"] == pytest.approx(edge.item())
    same, _ = autoencoder_loss(target, target)
    assert same.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("shape", [(1, 40, 40), (1, 37, 60)])
def test_augment_gives_seeded_square_crops_in_range(shape: tuple[int, int, int]) -> None:
    y = torch.rand(shape)
    first = augment(y, 8, torch.Generator().manual_seed(3))
    again = augment(y, 8, torch.Generator().manual_seed(3))
    assert first.shape == (1, 8, 8)
    assert torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1


def test_resumed_run_equals_an_uninterrupted_one(tiny_data: Path, tmp_path: Path) -> None:
    straight = train_lywnet([tiny_data], tmp_path / "straight", _options(2), quiet=True)
    train_lywnet([tiny_data], tmp_path / "split", _options(1), quiet=True)
    resumed = train_lywnet([tiny_data], tmp_path / "split", _options(2, resume=True), quiet=True)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    meta = b.metadata
    assert meta["format"] == OWN_FORMAT and meta["normalization"] == PER_IMAGE
    assert meta["epochs"] == "2" and meta["images"] == "8" and meta["command"] == "test"
    assert json.loads(meta["data"]) == [str(tiny_data)]
    assert [e["epoch"] for e in json.loads(meta["training_log"])] == [1, 2]
    assert {"wall_time_minutes", "git_commit", "schedule"} <= meta.keys()
    model = load_lywnet(b)
    with torch.no_grad():
        fused = model(torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20))
    assert fused.shape == (1, 1, 20, 20)


def test_resume_needs_a_state_and_a_new_run_needs_a_new_folder(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(MedfuseError, match="nothing to resume"):
        train_lywnet([tiny_data], tmp_path / "none", _options(1, resume=True), quiet=True)
    train_lywnet([tiny_data], tmp_path / "run", _options(1), quiet=True)
    assert (tmp_path / "run" / STATE_FILE).is_file() and (tmp_path / "run" / WEIGHTS_FILE).is_file()
    with pytest.raises(MedfuseError, match="pass --resume"):
        train_lywnet([tiny_data], tmp_path / "run", _options(1), quiet=True)
    options = _options(1)
    options.max_minutes = 0.0
    with pytest.raises(MedfuseError, match="no epoch finished"):
        train_lywnet([tiny_data], tmp_path / "no-time", options, quiet=True)


def test_medfuse_train_lywnet_command(tiny_data: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli(
        "train", tiny_data, "--model", "lywnet", "-o", tmp_path / "cli", "--epochs", "1", "--quiet"
    )
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert read_checkpoint(tmp_path / "cli" / WEIGHTS_FILE).metadata["command"].startswith("medfuse train")


def test_finalize_adds_test_metrics_and_keeps_the_tensors(tiny_data: Path, tmp_path: Path) -> None:
    run = train_lywnet([tiny_data], tmp_path / "run", _options(1), quiet=True)
    metrics = {"CT-MRI": {"n": 4, "mean": {"SSIM": 0.5}}}
    finalize_checkpoint(run, tmp_path / "final.safetensors", metrics)
    before, after = read_checkpoint(run), read_checkpoint(tmp_path / "final.safetensors")
    assert all(torch.equal(before.tensors[k], after.tensors[k]) for k in before.tensors)
    assert json.loads(after.metadata.pop("test_metrics")) == metrics
    assert after.metadata == before.metadata
