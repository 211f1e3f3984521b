"""LYWNet training: the authors' loss and augmentation, and a tiny run that resumes exactly."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.fusers.lywnet import OWN_FORMAT, PER_IMAGE, PER_PAIR, LYWNet, load_lywnet
from medfuse_cli.training.events import Message
from medfuse_cli.training.lywnet_trainer import (
    STATE_FILE,
    WEIGHTS_FILE,
    augment,
    augmentation_draws,
    autoencoder_loss,
    finalize_checkpoint,
    held_out_images,
    held_out_loss,
    learning_rate_at,
    train_lywnet,
    training_units,
)
from medfuse_cli.training.recipes import RECIPES
from medfuse_cli.training.run import RunSettings
from medfuse_cli.weights import BUNDLED_DIR, read_checkpoint, write_checkpoint

CONFIG = replace(RECIPES["lywnet-authors"].config, batch_size=3, size=8, seed=7)


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


def _train(data: Path, out: Path, epochs: int, **settings: object) -> Path:
    """A tiny run of ``epochs`` epochs in ``out`` (resumed when it holds one)."""
    resume = (out / STATE_FILE).exists()
    run = RunSettings(out=out, data=(str(data),), command="test", resume=resume, threads=1, **settings)
    return train_lywnet(replace(CONFIG, epochs=epochs), run)


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


@pytest.mark.parametrize("shape", [(1, 40, 40), (1, 37, 60), (1, 60, 37)])
def test_augmentation_draws_move_the_generator_as_augment_does(shape: tuple[int, int, int]) -> None:
    """A process that augments only its share of a batch draws the other images' augmentation
    without the pixel work (``augmentation_draws``): the next image's augmentation is the same."""
    y, following = torch.rand(shape), torch.rand(1, 30, 30)
    augmented, drawn = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    augment(y, 8, augmented)
    turns, rescaled, resized, top, left = augmentation_draws(y.shape, 8, drawn)
    assert torch.equal(augment(following, 8, augmented), augment(following, 8, drawn))
    assert min(resized) >= 8 and 0 <= top <= resized[0] - 8 and 0 <= left <= resized[1] - 8
    height, width = shape[1:] if turns % 2 == 0 else shape[:0:-1]
    assert rescaled[0] <= height and rescaled[1] <= width


def test_native_crops_keep_the_images_own_scale() -> None:
    """``crop_scale="native"`` crops from the rescaled image (0.5 to 1 times its size) instead of
    resizing it to the crop size: a 64 px image is never shrunk below 32 px on its short side."""
    y = torch.rand(1, 64, 64)
    for seed in range(20):
        _, rescaled, resized, _, _ = augmentation_draws(y.shape, 8, torch.Generator().manual_seed(seed), True)
        assert resized == rescaled and 32 <= min(resized) <= 64
        whole = augmentation_draws(y.shape, 8, torch.Generator().manual_seed(seed))[2]
        assert min(whole) == 8
    crop = augment(y, 8, torch.Generator().manual_seed(0), native=True)
    assert crop.shape == (1, 8, 8)
    # A ramp keeps its slope per pixel at native scale (at most 2x steeper), not 8x as when
    # the whole image is resized to the crop; a quarter turn moves the slope to the other axis.
    ramp = torch.linspace(0, 1, 64).repeat(64, 1)[None]

    def slope(crop: torch.Tensor) -> float:
        return float(crop.diff(dim=-1).abs().mean() + crop.diff(dim=-2).abs().mean())

    for seed in range(5):
        native = slope(augment(ramp, 8, torch.Generator().manual_seed(seed), native=True))
        whole = slope(augment(ramp, 8, torch.Generator().manual_seed(seed)))
        assert native < 2.2 / 63 < 5 / 63 < whole


def test_held_out_images_at_native_scale_are_the_whole_images() -> None:
    images = [torch.rand(1, 24, 24), torch.rand(1, 30, 41)]
    native = held_out_images(images, 8, native=True)
    assert [tuple(y.shape) for y in native] == [(1, 1, 24, 24), (1, 1, 30, 41)]
    assert torch.equal(native[1][0], images[1])
    assert [tuple(y.shape) for y in held_out_images(images, 8)] == [(1, 1, 8, 8)] * 2


def test_held_out_loss_scores_each_image_whole_and_equals_the_batch_loss() -> None:
    """Images of any size are scored on their own pixels (padded as LYWNet pads to fuse); for
    images of one size the per-image mean is the loss of the whole batch."""
    torch.manual_seed(0)
    model = LYWNet().eval()
    same = [torch.rand(1, 1, 16, 16) for _ in range(3)]
    with torch.no_grad():
        batch_loss, _ = autoencoder_loss(model.autoencode(torch.cat(same)), torch.cat(same))
    assert held_out_loss(model, same)["loss"] == pytest.approx(batch_loss.item(), rel=1e-4)
    odd = held_out_loss(model, [torch.rand(1, 1, 30, 41), torch.rand(1, 1, 6, 6)])
    assert all(np.isfinite(value) for value in odd.values())


@pytest.mark.parametrize("size", [4, 15, 30])
def test_crop_sizes_lywnet_cannot_take_are_refused(size: int) -> None:
    with pytest.raises(InputError, match="--crop-size must be a multiple of 4 and at least 8"):
        replace(CONFIG, size=size)


def test_native_crops_larger_than_half_an_image_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    """20 px images rescaled to 0.5-1x are 10-20 px: a 12 px native crop would need enlarging."""
    run = RunSettings(out=tmp_path / "big", data=(str(tiny_data),), command="test", threads=1)
    with pytest.raises(InputError, match=r"--crop-size 12 does not fit --crop-scale native.*8 or less"):
        train_lywnet(replace(CONFIG, size=12, crop_scale="native"), run)
    assert not (tmp_path / "big").exists()


def test_a_native_monitor_image_too_small_to_fuse_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    monitor = tmp_path / "monitor"
    for modality in ("MRI", "CT"):
        (monitor / modality).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 9), np.uint8)).save(monitor / modality / "a.png")
    run = RunSettings(out=tmp_path / "small", data=(str(tiny_data),), command="test", threads=1)
    config = replace(CONFIG, epochs=1, crop_scale="native", monitor=(str(monitor),))
    with pytest.raises(InputError, match=r"--monitor: 2 image.* smaller than LYWNet fuses \(9x4"):
        train_lywnet(config, run)


def test_native_crop_scale_is_a_training_option(tiny_data: Path, tmp_path: Path) -> None:
    path = train_lywnet(
        replace(CONFIG, epochs=1, crop_scale="native"),
        RunSettings(out=tmp_path / "native", data=(str(tiny_data),), command="test", threads=1),
    )
    meta = read_checkpoint(path).metadata
    assert json.loads(meta["options"])["crop_scale"] == "native"
    assert "8 px crops at native scale" in meta["schedule"]
    with pytest.raises(InputError, match="unknown --crop-scale 'tiny'"):
        replace(CONFIG, crop_scale="tiny")


def test_resumed_run_equals_an_uninterrupted_one(tiny_data: Path, tmp_path: Path) -> None:
    straight = _train(tiny_data, tmp_path / "straight", 2)
    _train(tiny_data, tmp_path / "split", 1)
    resumed = _train(tiny_data, tmp_path / "split", 2)  # a resumed run may plan more epochs
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    meta = b.metadata
    assert meta["format"] == OWN_FORMAT and meta["normalization"] == PER_IMAGE
    assert meta["epochs"] == "2" and meta["images"] == "8" and meta["command"] == "test"
    assert json.loads(meta["data"]) == [str(tiny_data)]
    assert [e["epoch"] for e in json.loads(meta["training_log"])] == [1, 2]
    assert json.loads(meta["options"])["epochs"] == 2
    assert {"wall_time_minutes", "git_commit", "schedule"} <= meta.keys()
    model = load_lywnet(b)
    with torch.no_grad():
        fused = model(torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20))
    assert fused.shape == (1, 1, 20, 20)


def test_a_run_saved_before_recipes_resumes_exactly(tiny_data: Path, tmp_path: Path) -> None:
    """Runs started before the run skeleton (e.g. one still training when it came) recorded
    their options with the run settings in them and no recipe, threads or sessions."""
    straight = _train(tiny_data, tmp_path / "straight", 2)
    old = tmp_path / "old"
    _train(tiny_data, old, 1)
    loaded = read_checkpoint(old / WEIGHTS_FILE)
    metadata = {
        k: v for k, v in loaded.metadata.items() if k not in ("recipe", "threads", "resumed", "device")
    }
    options = json.loads(metadata["options"]) | {"device": "cpu", "max_minutes": None, "resume": False}
    metadata["options"] = json.dumps(options | {"command": "test", "data": [str(tiny_data)]})
    write_checkpoint(old / WEIGHTS_FILE, loaded.tensors, metadata)

    resumed = _train(tiny_data, old, 2)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert json.loads(b.metadata["resumed"])[0]["after_epoch"] == 1


def test_resume_needs_a_state_and_a_new_run_needs_a_new_folder(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to resume"):
        train_lywnet(CONFIG, RunSettings(out=tmp_path / "none", resume=True))
    _train(tiny_data, tmp_path / "run", 1)
    assert (tmp_path / "run" / STATE_FILE).is_file() and (tmp_path / "run" / WEIGHTS_FILE).is_file()
    with pytest.raises(InputError, match="pass --resume"):
        train_lywnet(replace(CONFIG, epochs=1), RunSettings(out=tmp_path / "run", data=(str(tiny_data),)))
    with pytest.raises(InputError, match="no epoch finished"):  # a clock that stands still
        _train(tiny_data, tmp_path / "no-time", 1, max_minutes=0.0, clock=lambda: 0.0)


def test_a_pair_is_augmented_with_the_same_draws() -> None:
    """``train_norm="pair"`` trains a pair as one unit: both images turned, rescaled and cropped alike."""
    images = [torch.rand(1, 20, 24) for _ in range(4)]
    units = training_units(images, pairs=True)
    assert len(units) == 2 and torch.equal(units[1], torch.cat([images[1], images[3]]))
    assert training_units(images, pairs=False) is images
    for native in (False, True):
        pair = augment(units[0], 8, torch.Generator().manual_seed(3), native)
        first = augment(images[0], 8, torch.Generator().manual_seed(3), native)
        second = augment(images[2], 8, torch.Generator().manual_seed(3), native)
        torch.testing.assert_close(pair, torch.cat([first, second]))


def test_a_pair_statistics_run_makes_a_per_pair_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    config = replace(CONFIG, epochs=1, batch_size=4, train_norm="pair", monitor=(str(tiny_data),))
    path = train_lywnet(
        config, RunSettings(out=tmp_path / "pair", data=(str(tiny_data),), command="test", threads=1)
    )
    meta = read_checkpoint(path).metadata
    assert meta["normalization"] == PER_PAIR and "pair statistics in training" in meta["schedule"]
    log = json.loads(meta["training_log"])[0]
    assert log["images_per_second"] > 0 and math.isfinite(log["held_out"]["loss"])
    assert load_lywnet(read_checkpoint(path)).normalization == PER_PAIR
    with pytest.raises(
        InputError, match="--train-norm pair batches whole pairs: --batch-size must be even, got 3"
    ):
        replace(CONFIG, train_norm="pair")


def test_init_from_a_checkpoint_that_infers_otherwise_is_said(tiny_data: Path, tmp_path: Path) -> None:
    """A per-pair ``init`` trained with batch statistics makes a per-image checkpoint: said."""
    pair = replace(CONFIG, epochs=1, batch_size=4, train_norm="pair")
    settings = RunSettings(out=tmp_path / "pair", data=(str(tiny_data),), command="test", threads=1)
    start = train_lywnet(pair, settings)
    for train_norm, out, noted in (("batch", "batch", True), ("pair", "again", False)):
        events: list[object] = []
        config = replace(pair, train_norm=train_norm, init=str(start))
        train_lywnet(config, replace(settings, out=tmp_path / out), events.append)
        lines = [event.text for event in events if isinstance(event, Message)]
        said = [line for line in lines if line.startswith("note: the --init checkpoint")]
        expected = (
            "note: the --init checkpoint fuses with per-pair statistics; with --train-norm batch "
            "this run's checkpoint will fuse with per-image statistics (--train-norm pair keeps per-pair)"
        )
        assert said == ([expected] if noted else [])
    # without its ``normalization`` the file is refused, as `medfuse fuse` refuses it
    loaded = read_checkpoint(start)
    unnamed = tmp_path / "no-normalization.safetensors"
    write_checkpoint(
        unnamed, loaded.tensors, {k: v for k, v in loaded.metadata.items() if k != "normalization"}
    )
    with pytest.raises(
        CheckpointError, match=r"^--init: checkpoint .* has no 'normalization' in its metadata"
    ):
        train_lywnet(replace(pair, init=str(unnamed)), replace(settings, out=tmp_path / "unnamed"))
    assert not (tmp_path / "unnamed" / "lywnet.safetensors").exists()


def test_cosine_schedule_runs_from_lr_to_min_lr() -> None:
    cosine = replace(CONFIG, learning_rate=1e-3, lr_schedule="cosine", min_lr=1e-5)
    assert learning_rate_at(cosine, 0, 100) == pytest.approx(1e-3)
    assert learning_rate_at(cosine, 50, 100) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate_at(cosine, 100, 100) == pytest.approx(1e-5)
    assert learning_rate_at(CONFIG, 50, 100) == CONFIG.learning_rate


def test_medfuse_train_lywnet_command(tiny_data: Path, tmp_path: Path, run_cli) -> None:
    options = ["--model", "lywnet", "--epochs", "1", "--threads", "1", "-q"]
    result = run_cli("train", tiny_data, "-o", tmp_path / "cli", *options)
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert read_checkpoint(tmp_path / "cli" / WEIGHTS_FILE).metadata["command"].startswith("medfuse train")


def test_a_data_folder_given_twice_is_said_and_counts_twice(tiny_data: Path, tmp_path: Path, run_cli) -> None:
    """Giving a folder twice weighs its pairs double, which a user may mean (to favour one pair
    kind) or not: the notice says so, and the run trains on both copies."""
    options = ["--model", "lywnet", "--epochs", "1", "--threads", "1", "-q"]
    result = run_cli("train", tiny_data, f"{tiny_data}/", "-o", tmp_path / "twice", *options)
    assert result.code == 0, result.stderr
    assert f"notice: {tiny_data} is given 2 times: its pairs count 2 times in every epoch" in result.stderr
    once = run_cli("train", tiny_data, "-o", tmp_path / "once", *options)
    assert "notice" not in once.stderr
    images = [read_checkpoint(tmp_path / run / WEIGHTS_FILE).metadata["images"] for run in ("once", "twice")]
    assert int(images[1]) == 2 * int(images[0])


def test_resume_from_another_folder_refuses_an_init_that_is_another_file(
    tiny_data: Path, tmp_path: Path, run_cli, monkeypatch
) -> None:
    """The same relative --init text in another working folder names another file."""
    options = ["--model", "lywnet", "--threads", "1", "-q", "--init", "start.safetensors"]
    for folder, source in (("a", BUNDLED_DIR / "lywnet-harvard.safetensors"), ("b", None)):
        (tmp_path / folder).mkdir()
        if source is not None:
            (tmp_path / folder / "start.safetensors").write_bytes(source.read_bytes())
    monkeypatch.chdir(tmp_path / "a")
    assert run_cli("train", tiny_data, "-o", tmp_path / "run", "--epochs", "1", *options).code == 0
    (tmp_path / "b" / "start.safetensors").write_bytes((tmp_path / "run" / WEIGHTS_FILE).read_bytes())
    monkeypatch.chdir(tmp_path / "b")
    refused = run_cli("train", "-o", tmp_path / "run", "--resume", "--epochs", "2", *options)
    assert refused.code == 1
    assert f"--init {tmp_path / 'b' / 'start.safetensors'} (the run's: {tmp_path / 'a'}" in refused.stderr
    monkeypatch.chdir(tmp_path / "a")
    resumed = run_cli("train", "-o", tmp_path / "run", "--resume", "--epochs", "2", *options)
    assert resumed.code == 0, resumed.stderr


def test_resume_from_another_folder_says_where_relative_data_is(
    tiny_data: Path, tmp_path: Path, run_cli, monkeypatch
) -> None:
    monkeypatch.chdir(tiny_data.parent)
    options = ["--model", "lywnet", "--threads", "1", "-q", "-o", tmp_path / "run"]
    assert run_cli("train", tiny_data.name, "--epochs", "1", *options).code == 0
    monkeypatch.chdir(tmp_path / "run")
    result = run_cli("train", "--resume", "--epochs", "2", *options)
    assert result.code == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'run'} trains on {tiny_data.name}, not found from ")
    assert "resume from the folder the run was started in" in result.stderr


def test_finalize_adds_test_metrics_and_keeps_the_tensors(tiny_data: Path, tmp_path: Path) -> None:
    run = _train(tiny_data, tmp_path / "run", 1)
    metrics = {"CT-MRI": {"n": 4, "mean": {"SSIM": 0.5}}}
    finalize_checkpoint(run, tmp_path / "final.safetensors", metrics)
    before, after = read_checkpoint(run), read_checkpoint(tmp_path / "final.safetensors")
    assert all(torch.equal(before.tensors[k], after.tensors[k]) for k in before.tensors)
    assert json.loads(after.metadata.pop("test_metrics")) == metrics
    assert after.metadata == before.metadata
    finalize_checkpoint(run, tmp_path / "continued.safetensors", metrics, lineage="3 epochs in all")
    assert read_checkpoint(tmp_path / "continued.safetensors").metadata["lineage"] == "3 epochs in all"
