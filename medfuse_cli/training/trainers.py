"""Which trainer trains which network: ``--model`` names, their configs, run files and entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medfuse_cli.errors import InputError
from medfuse_cli.training import lywnet_trainer, spi
from medfuse_cli.training.config import LYWNetConfig, SPIConfig
from medfuse_cli.training.run import RunFiles


@dataclass(frozen=True)
class Trainer:
    """One trainable network.

    Attributes:
        model: its ``--model`` name.
        config_type: the config its recipes hold.
        files: its run folder's files.
        train: ``train(config, settings, on_event) -> weights file``.
    """

    model: str
    config_type: type[SPIConfig] | type[LYWNetConfig]
    files: RunFiles
    train: Callable[..., Path]


TRAINERS: dict[str, Trainer] = {
    "lwnet": Trainer("lwnet", SPIConfig, spi.RUN_FILES, spi.train_lwnet),
    "lywnet": Trainer("lywnet", LYWNetConfig, lywnet_trainer.RUN_FILES, lywnet_trainer.train_lywnet),
}


def get_trainer(model: str) -> Trainer:
    """The trainer of network ``model``.

    Raises:
        InputError: ``model`` is not trainable (the message lists those that are).
    """
    if model not in TRAINERS:
        raise InputError(f"cannot train '{model}' (trainable: {', '.join(TRAINERS)})")
    return TRAINERS[model]


def trainer_of_run(out: Path) -> Trainer:
    """The trainer whose saved state the run folder ``out`` holds.

    Raises:
        InputError: ``out`` holds no trainer's state (nothing to resume).
    """
    for trainer in TRAINERS.values():
        if (Path(out) / trainer.files.state).is_file():
            return trainer
    expected = " or ".join(trainer.files.state for trainer in TRAINERS.values())
    raise InputError(f"nothing to resume: {out} holds no training state ({expected})")
