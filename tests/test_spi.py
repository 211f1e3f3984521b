"""SPI training end to end on the bundled examples: labels, thresholds, checkpoints, resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_run import EpochClock

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.io import write_png
from medfuse_cli.metrics.balance import peak_retention
from medfuse_cli.training.labels import NO_LABEL, LabelSet, read_labels, save_labels
from medfuse_cli.training.losses import detail_score, fusion_loss, peak_loss, ssim, structural_score
from medfuse_cli.training.patches import load_pairs, patch_grid
from medfuse_cli.training.recipes import RECIPES
from medfuse_cli.training.run import RunSettings
from medfuse_cli.training.spi import LABELS_FILE, STATE_FILE, WEIGHTS_FILE, train_lwnet
from medfuse_cli.weights import read_checkpoint, write_checkpoint

CONFIG = replace(
    RECIPES["lwnet-functional"].config,
    label_fusers=("average", "laplacian"),
    iterations=2,
    epochs=1,
    patch_size=32,
    stride=112,
    val_fraction=0.5,
    displace=0.0,
    admit=0.0,
)


def _train(
    examples: Path, out: Path, label_dir: Path, clock: EpochClock | None = None, **changes: object
) -> Path:
    """SPI on the SPECT-MRI examples with two fusers and one label folder as candidates; with a
    clock, a session of 1.5 minutes on it (one epoch); resumes when ``out`` holds a run."""
    config = replace(CONFIG, label_dirs={"maximum-png": str(label_dir)}, **changes)
    settings = RunSettings(
        out=out,
        data=(str(examples / "SPECT-MRI"),),
        resume=(out / STATE_FILE).exists(),
        threads=1,
        max_minutes=None if clock is None else 1.5,
        clock=clock or EpochClock(),
    )
    return train_lwnet(config, settings, settings.clock.listen)


@pytest.fixture
def label_dir(examples: Path, tmp_path: Path) -> Path:
    """Fused images of the example pairs 'made by another tool' (here: the pixel maximum)."""
    folder = tmp_path / "labels" / "SPECT-MRI" / "train"
    folder.mkdir(parents=True)
    pairs = load_pairs([examples / "SPECT-MRI"])
    for name, a, b in zip(pairs.names, pairs.anatomical, pairs.functional, strict=True):
        fused = torch.maximum(a, b)[0].numpy()
        write_png(folder / f"{name.rsplit('/', 1)[1]}.png", fused, 8)
    return tmp_path / "labels"


def test_resumed_run_equals_uninterrupted_run(examples: Path, tmp_path: Path, label_dir: Path) -> None:
    straight = _train(examples, tmp_path / "straight", label_dir)
    pieces = tmp_path / "pieces"
    # each session's budget allows one epoch: epochs take a minute on the test's clock
    _train(examples, pieces, label_dir, EpochClock())  # epoch 1, then its label update
    first = read_checkpoint(pieces / WEIGHTS_FILE).metadata
    assert first["epochs"] == "1" and len(json.loads(first["spi_log"])) == 1
    _train(examples, pieces, label_dir, EpochClock())  # epoch 2 and the final validation
    done = EpochClock()
    _train(examples, pieces, label_dir, done)  # nothing is left to do
    assert done.events[-1].text.startswith("done: 2 epochs")

    a, b = read_checkpoint(straight), read_checkpoint(pieces / WEIGHTS_FILE)
    for name, tensor in a.tensors.items():
        assert torch.equal(tensor, b.tensors[name]), name
    log = json.loads(a.metadata["spi_log"])
    assert json.loads(b.metadata["spi_log"]) == log
    assert [entry["iteration"] for entry in log] == [1, 2]
    # thresholds of 0 let every output in: SPI must have admitted and replaced labels
    assert log[0]["added"] > 0 and log[0]["replaced"] > 0
    validation = log[-1]["validation"]
    assert set(validation) == {"SSIM", "Qabf", "VIF", "SSIM_min", "PeakRetention", "functional_share"}
    assert 0.0 <= validation["functional_share"] <= 1.0  # a convex mix of the sources
    assert a.metadata["epochs"] == "2" and a.metadata["network"] == "LWNet"
    assert set(json.loads(a.metadata["initial_label_wins"])) == {"average", "laplacian", "maximum-png"}
    assert json.loads(a.metadata["config"])["label_dirs"] == {"maximum-png": str(label_dir)}
    assert (pieces / STATE_FILE).is_file() and (pieces / LABELS_FILE).is_file()


def test_label_file_round_trips_and_damage_is_refused(tmp_path: Path) -> None:
    """A resumed run reads its labels back; a damaged or foreign label file is one error, not a
    traceback mid-training or, worse, training on wrong labels."""
    best = torch.tensor([0.5, 0.7, 0.2])
    labels = LabelSet(
        source=torch.tensor([1, NO_LABEL, 0]),
        score=torch.tensor([0.5, -float("inf"), 0.2]),
        best_candidate=best,
        pseudo={1: torch.full((1, 4, 4), 0.25)},
        version=2,
    )
    path = tmp_path / LABELS_FILE
    save_labels(path, labels, [{"iteration": 1}])
    back, log = read_labels(path, best)
    assert torch.equal(back.source, labels.source) and torch.equal(back.score, labels.score)
    assert torch.equal(back.pseudo[1], labels.pseudo[1]) and back.version == 2 and log == [{"iteration": 1}]
    with pytest.raises(CheckpointError, match="this run has 4"):
        read_labels(path, torch.zeros(4))
    damaged = bytearray(path.read_bytes())
    damaged[-3] ^= 0x10
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="do not match the tensors_sha256"):
        read_labels(path, best)
    write_checkpoint(path, {"source": labels.source, "score": labels.score}, {"version": "2"})
    with pytest.raises(CheckpointError, match="not an SPI label file medfuse wrote"):
        read_labels(path, best)


def test_strict_thresholds_keep_the_initial_labels(examples: Path, tmp_path: Path, label_dir: Path) -> None:
    weights = _train(examples, tmp_path / "run", label_dir, displace=100.0, admit=100.0)
    log = json.loads(read_checkpoint(weights).metadata["spi_log"])
    assert log[0]["added"] == 0 and log[0]["replaced"] == 0
    assert log[0]["labelled"] == log[1]["labelled"]


def test_cli_trains_and_refuses_bad_input(examples: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "cli"
    common = ["train", examples / "CT-MRI", "--model", "lwnet", "--out", out, "--quiet"]
    tiny = [
        "--iterations",
        "1",
        "--epochs",
        "1",
        "--patch-size",
        "64",
        "--stride",
        "96",
        "--val-fraction",
        "0",
    ]
    balance = ["--balance-weight", "0.5", "--peak-weight", "0.25"]
    result = run_cli(*common, *tiny, *balance, "--label-fuser", "average", "--label-fuser", "maximum")
    assert result.code == 0, result.stderr
    metadata = read_checkpoint(out / WEIGHTS_FILE).metadata
    assert "--label-fuser average" in metadata["command"]
    config = json.loads(metadata["config"])
    assert (config["balance_weight"], config["peak_weight"]) == (0.5, 0.25)

    again = run_cli(*common, *tiny, "--label-fuser", "average")
    assert again.code == 1 and "--resume" in again.stderr
    bad_dir = run_cli(*common[:-2], tmp_path / "other", *tiny, "--label-dir", "nofolder")
    assert bad_dir.code == 1 and "NAME=DIR" in bad_dir.stderr


def test_spi_needs_candidate_labels() -> None:
    with pytest.raises(InputError, match="candidate labels"):
        replace(CONFIG, label_fusers=(), label_dirs={})
    for weight in (-1.0, float("nan"), float("inf")):  # NaN once trained a run into NaN weights
        with pytest.raises(InputError, match="finite numbers of at least 0"):
            replace(CONFIG, peak_weight=weight)
    with pytest.raises(InputError, match="--lr must be a finite number above 0"):
        replace(CONFIG, learning_rate=float("inf"))


def test_patch_grid_covers_the_image_edge_to_edge() -> None:
    assert patch_grid(256, 256, 120, 68) == [(top, left) for top in (0, 68, 136) for left in (0, 68, 136)]
    assert patch_grid(100, 130, 120, 68) == []
    assert patch_grid(120, 130, 120, 100) == [(0, 0), (0, 10)]


def test_scores_prefer_the_better_fusion() -> None:
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    average, blurred = (a + b) / 2, torch.full_like(a, 0.5)
    assert (structural_score(average, a, b) > structural_score(blurred, a, b)).all()
    assert (detail_score(torch.maximum(a, b), a, b) > detail_score(blurred, a, b)).all()
    assert np.isclose(float(detail_score(a, a, a.mul(0))[0]), 1.0, atol=1e-5)


def test_intensity_term_penalises_copying_the_mri() -> None:
    torch.manual_seed(0)
    mri, functional = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    label = torch.maximum(mri, functional)

    def loss(output: torch.Tensor, intensity_weight: float) -> float:
        return float(fusion_loss(output, label, mri, functional, 0.0, intensity_weight))

    assert loss(mri, 2.0) > loss(mri, 0.0)  # the MRI copy is pulled back toward the brighter source
    assert loss(label, 2.0) == loss(label, 0.0)  # max(MRI, functional) itself costs nothing extra


def test_peak_loss_is_one_minus_the_metrics_peak_retention() -> None:
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, size=(3, 1, 40, 40)).astype(np.float64)
    mri, functional = levels[:2]
    for fused in (mri, functional, (mri + functional) / 2, levels[2]):
        expected = 1 - peak_retention(mri[0], functional[0], fused[0])
        a, b, f = (torch.from_numpy(x[None] / 255).float() for x in (mri, functional, fused))
        assert float(peak_loss(f, a, b)[0]) == pytest.approx(expected, abs=1e-5)
    # without a pixel where the functional image is brighter there is nothing to lose
    a = torch.from_numpy(mri[None] / 255).float()
    assert float(peak_loss(a, a, a * 0)[0]) == 0.0


def test_balance_term_penalises_leaning_on_one_source() -> None:
    torch.manual_seed(0)
    mri, functional = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    average = (mri + functional) / 2

    def loss(output: torch.Tensor, balance_weight: float) -> float:
        return float(fusion_loss(output, average, mri, functional, 0.0, 0.0, balance_weight))

    # against the same label, copying the MRI costs more with the balance term on
    assert loss(mri, 1.0) - loss(mri, 0.0) > loss(average, 1.0) - loss(average, 0.0) > 0
