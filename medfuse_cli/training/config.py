"""What defines what a training run learns: one frozen config per trainer, checked when built.

The configs carry no default values: every value comes from a named recipe
(``medfuse_cli.training.recipes``), the one place for training defaults, and the CLI replaces
the fields given on its command line (``dataclasses.replace``, which checks again). How a run
is carried out (folder, device, threads, time budget) is not here but in
``medfuse_cli.training.run.RunSettings``: those may differ between the sessions of one run.

A run stores its config (``dataclasses.asdict``, as JSON) in its checkpoints' metadata;
``config_from_json`` rebuilds it when the run is resumed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar, TypeVar

from medfuse_cli.errors import CheckpointError, InputError

LR_SCHEDULES = ("constant", "cosine")
TRAIN_NORMS = ("batch", "image", "pair")
CROP_SCALES = ("whole", "native")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _require_learning_rate(learning_rate: float) -> None:
    """Both trainers' check of ``--lr``: a finite number above 0 (NaN or inf would train a run
    into NaN weights)."""
    _require(math.isfinite(learning_rate) and learning_rate > 0, "--lr must be a finite number above 0")


@dataclass(frozen=True)
class SPIConfig:
    """LWNet trained with SPI, structural-similarity pseudo-label iteration (see ``training.spi``).

    Attributes:
        label_fusers: registered fusers whose fusions of the training pairs are candidate labels.
        label_dirs: NAME -> folder of another tool's fusions of the training pairs, also
            candidates (``medfuse_cli.pairs.find_fused`` layout).
        iterations: SPI iterations (label updates between them); at least 1.
        epochs: epochs per iteration; at least 1.
        batch_size: patches per Adam step.
        learning_rate: Adam's learning rate (constant), > 0.
        patch_size: patch side in pixels, at least 16 (LWNet works at 1/8 resolution).
        stride: pixels between patches.
        labelled_fraction: share of patches labelled at the start, in (0, 1].
        val_fraction: share of training pairs held out for validation metrics, in [0, 1).
        displace: an output replaces a label when it scores at least this × the label's score.
        admit: an output becomes an unlabelled patch's pseudo label when it scores at least
            this × the patch's best candidate.
        gradient_weight: weight of the edge loss toward the stronger source gradient (0: off).
        intensity_weight: weight of the L1 loss toward max(MRI, functional) (0: off).
        balance_weight: weight of 1 − min(SSIM(F, MRI), SSIM(F, functional)) in the loss (0: off).
        peak_weight: weight of 1 − PeakRetention (the functional peaks' lost excess) in the
            loss (0: off).
        detail_weight: weight of the detail term in the label score (0: the paper's SSIM sum).
        min_mean: a patch is dropped when both sources' mean intensity (in [0, 1]) is below this.
        seed: seeds the split, the labelled half, initialisation and every epoch's order.
    """

    label_fusers: tuple[str, ...]
    label_dirs: dict[str, str]
    iterations: int
    epochs: int
    batch_size: int
    learning_rate: float
    patch_size: int
    stride: int
    labelled_fraction: float
    val_fraction: float
    displace: float
    admit: float
    gradient_weight: float
    intensity_weight: float
    detail_weight: float
    min_mean: float
    seed: int
    balance_weight: float
    peak_weight: float

    # Fields a resumed run may change: none, since an SPI run's label updates are tied to its
    # iteration and epoch counts.
    CHANGEABLE_ON_RESUME: ClassVar[tuple[str, ...]] = ()
    # Fields naming a file, with the progress key of the sha256 the run read it with: none.
    FILE_DIGESTS: ClassVar[dict[str, str]] = {}
    # Fields added after runs were saved without them, with the value those runs trained with.
    STORED_BEFORE: ClassVar[dict[str, object]] = {"balance_weight": 0.0, "peak_weight": 0.0}

    def __post_init__(self) -> None:
        _require(self.iterations >= 1 and self.epochs >= 1, "--iterations and --epochs must be at least 1")
        _require(self.batch_size >= 1, "--batch-size must be at least 1")
        _require_learning_rate(self.learning_rate)
        _require(self.patch_size >= 16, "--patch-size must be at least 16")
        _require(self.stride >= 1, "--stride must be at least 1")
        _require(0 < self.labelled_fraction <= 1, "--labelled-fraction must be in (0, 1]")
        _require(0 <= self.val_fraction < 1, "--val-fraction must be in [0, 1)")
        ratios = (
            self.displace,
            self.admit,
            self.gradient_weight,
            self.intensity_weight,
            self.detail_weight,
            self.balance_weight,
            self.peak_weight,
        )
        _require(
            all(math.isfinite(ratio) and ratio >= 0 for ratio in ratios),
            "--displace, --admit and the loss and score weights must be finite numbers of at least 0",
        )
        _require(
            bool(self.label_fusers or self.label_dirs),
            "SPI needs candidate labels: pass --label-fuser NAME and/or --label-dir NAME=DIR",
        )


@dataclass(frozen=True)
class LYWNetConfig:
    """LYWNet trained the authors' way, as an autoencoder on single Y images (see ``training.lywnet_trainer``).

    Attributes:
        epochs: passes over every training image; at least 1.
        batch_size: images per Adam step.
        learning_rate: Adam's (first) learning rate, > 0.
        lr_schedule: ``constant`` (the authors') or ``cosine`` (from ``learning_rate`` down to
            ``min_lr`` over all planned steps).
        min_lr: the last learning rate of the cosine schedule, >= 0.
        size: side in pixels of the augmented training crops, a multiple of 4 and at least 8.
        crop_scale: where the crops come from: ``whole`` (the authors': the rescaled image resized
            to ``size`` on its short side, so a crop is nearly the whole image, 8x smaller than
            it is fused) or ``native`` (cropped from the rescaled image itself, at 0.5 to 1 times
            the scale it is fused at; our change, so the network learns the scale it works at).
        seed: seeds initialisation and every epoch's order and augmentation.
        monitor: pair folders whose images give a held-out loss after every epoch (none: off).
        train_norm: the statistics LYWNet's normalisation uses while training: ``batch`` (the
            authors', BatchNorm over the batch), ``image`` (each image's own, as the authors'
            weights infer; our fine-tuning change, so the loss trained is the loss of the network
            as it fuses) or ``pair`` (each training pair's two images together, which then batch
            as pairs with the same augmentation; the checkpoint infers per pair too).
        init: our own LYWNet checkpoint (``medfuse-lywnet-1`` format) to start from, or ``""``
            for the seeded random initialisation.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    min_lr: float
    size: int
    seed: int
    monitor: tuple[str, ...]
    train_norm: str
    init: str
    crop_scale: str

    # A resumed run may plan more (or fewer) epochs: the documented way to train longer.
    CHANGEABLE_ON_RESUME: ClassVar[tuple[str, ...]] = ("epochs",)
    # Fields naming a file, with the progress key of the sha256 the run read it with: a resume
    # compares another path text by that digest (the same file may have another name).
    FILE_DIGESTS: ClassVar[dict[str, str]] = {"init": "init_sha256"}
    # Fields added after runs were saved without them, with the value those runs trained with.
    STORED_BEFORE: ClassVar[dict[str, object]] = {"train_norm": "batch", "init": "", "crop_scale": "whole"}

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "--epochs must be at least 1")
        _require(self.batch_size >= 1, "--batch-size must be at least 1")
        _require_learning_rate(self.learning_rate)
        _require(
            self.lr_schedule in LR_SCHEDULES,
            f"unknown --lr-schedule '{self.lr_schedule}' (choose {' or '.join(LR_SCHEDULES)})",
        )
        _require(
            math.isfinite(self.min_lr) and self.min_lr >= 0, "--min-lr must be a finite number of at least 0"
        )
        _require(
            self.size >= 8 and self.size % 4 == 0,
            f"--crop-size must be a multiple of 4 and at least 8 (LYWNet's quarter-resolution level needs "
            f"2x2 pixels), got {self.size}",
        )
        _require(
            self.train_norm in TRAIN_NORMS,
            f"unknown --train-norm '{self.train_norm}' (choose {' or '.join(TRAIN_NORMS)})",
        )
        _require(
            not self.pairs or self.batch_size % 2 == 0,
            f"--train-norm pair batches whole pairs: --batch-size must be even, got {self.batch_size}",
        )
        _require(
            self.crop_scale in CROP_SCALES,
            f"unknown --crop-scale '{self.crop_scale}' (choose {' or '.join(CROP_SCALES)})",
        )

    @property
    def pairs(self) -> bool:
        """Whether training draws pairs that share normalisation statistics (``train_norm="pair"``)."""
        return self.train_norm == "pair"

    @property
    def native_crops(self) -> bool:
        """Whether crops come at the images' own scale (``crop_scale="native"``)."""
        return self.crop_scale == "native"


Config = SPIConfig | LYWNetConfig

# Config fields whose ``medfuse train`` option is not ``--`` + the field's name with dashes.
_FLAG_OF_FIELD = {
    "learning_rate": "--lr",
    "size": "--crop-size",
    "label_fusers": "--label-fuser",
    "label_dirs": "--label-dir",
}


def option_flag(field: str) -> str:
    """The ``medfuse train`` option that sets config field ``field`` (for messages)."""
    return _FLAG_OF_FIELD.get(field, "--" + field.replace("_", "-"))


C = TypeVar("C", SPIConfig, LYWNetConfig)


def config_from_json(config_type: type[C], stored: Mapping[str, object], source: str) -> C:
    """Rebuild a config from the JSON a run stored (lists become tuples).

    Keys that are not fields are left out: runs started before the run settings moved out of
    the configs stored them there (``max_minutes``, ``resume``, ``command``, ``data``, ...).
    Fields a config added later take its ``STORED_BEFORE`` value when a run lacks them.

    Raises:
        CheckpointError: a field is missing (``source`` names the file).
        InputError: a stored value fails the config's checks.
    """
    names = [f.name for f in fields(config_type)]
    stored = {**config_type.STORED_BEFORE, **stored}
    missing = [name for name in names if name not in stored]
    if missing:
        raise CheckpointError(f"{source}: the stored config lacks {', '.join(missing)}")
    values = {name: stored[name] for name in names}
    return config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
