"""Which trainer trains which network, and where a run's values start from.

``TRAINERS`` maps ``--model`` names to their configs, run files and entry points;
``starting_point`` decides, for a new run or a resume, which trainer runs and which config the
command line's options then change: a recipe's, or the resumed run's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medfuse_cli.errors import InputError
from medfuse_cli.training import lywnet_trainer, spi
from medfuse_cli.training.config import Config, LYWNetConfig, SPIConfig, config_from_json
from medfuse_cli.training.recipes import DEFAULT_RECIPES, get_recipe
from medfuse_cli.training.run import RunFiles, read_provenance


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


@dataclass(frozen=True)
class StartingPoint:
    """What a session starts from, before the command line's options change it.

    Attributes:
        trainer: the trainer that runs.
        config: the recipe's config (new run) or the run's own (resume).
        recipe: the recipe's name for a new run; for a resume, the one asked for (None: the run's).
        threads: the recipe's threads for a new run; None for a resume (the run's own).
    """

    trainer: Trainer
    config: Config
    recipe: str | None
    threads: int | None


def starting_point(out: Path, model: str | None, recipe: str | None, resume: bool) -> StartingPoint:
    """Pick the trainer and the config a session's options apply to.

    A new run takes ``recipe`` (default: the network's default recipe) and ``model`` (default:
    the recipe's); a resume takes the trainer and config of the run in ``out``.

    Raises:
        InputError: neither ``model`` nor ``recipe`` for a new run, an unknown model or
            recipe, a recipe for another network, nothing to resume in ``out``, or a resumed
            run of another network than ``model``.
        CheckpointError: the resumed run's checkpoint cannot be read back.
    """
    if resume:
        trainer = trainer_of_run(out)
        if model is not None and model != trainer.model:
            raise InputError(f"{out} holds a {trainer.model} run, not {model}")
        stored = read_provenance(out, trainer.files)
        config = config_from_json(trainer.config_type, stored.config, str(Path(out) / trainer.files.weights))
        return StartingPoint(trainer, config, recipe, None)
    if model is None and recipe is None:
        raise InputError(f"say what to train: --model {'|'.join(TRAINERS)} or --recipe NAME")
    chosen = get_recipe(recipe) if recipe is not None else None
    trainer = get_trainer(model if model is not None else chosen.model)
    chosen = chosen or get_recipe(DEFAULT_RECIPES[trainer.model])
    if chosen.model != trainer.model:
        raise InputError(f"recipe {chosen.name} trains {chosen.model}, not {trainer.model}")
    return StartingPoint(trainer, chosen.config, chosen.name, chosen.threads)
