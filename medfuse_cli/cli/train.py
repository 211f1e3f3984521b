"""``medfuse train``: fit a network to training pairs, from a named recipe, resumable.

The values come from a recipe (``--recipe``, else the network's default one; with ``--resume``,
the run's own options), and every option given on the command line replaces the recipe's value;
so the training options here default to None and their help lists each recipe's value. The
trainers emit events (``medfuse_cli.training.events``); this module draws them on stderr.

Under ``torchrun --nproc_per_node=K -m medfuse_cli train ...`` (``training.distributed``) the K
processes train one run together; rank 0 alone draws, prints and reports an error (the others
end with status 1 in silence).
"""

from __future__ import annotations

import copy
import functools
import logging
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import typer
from rich.progress import TaskID
from typer.models import OptionInfo

from medfuse_cli.cli import options
from medfuse_cli.errors import InputError, MedfuseError
from medfuse_cli.training.config import option_flag
from medfuse_cli.training.events import EpochFinished, EpochStarted, Event, Message, StepDone
from medfuse_cli.training.recipes import DEFAULT_RECIPES, RECIPES

_LWNET, _LYWNET, _BOTH = ("lwnet",), ("lywnet",), ("lwnet", "lywnet")


def _show(value: object) -> str:
    """A recipe value as --help shows it (None is a thread count: torch's default)."""
    if value is None:
        return "all cores"
    if isinstance(value, dict):
        return ", ".join(f"{name}={folder}" for name, folder in value.items()) or "none"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value) or "none"


def _recipe_values(field: str) -> str:
    """Help text naming each recipe's value of ``field`` (a config field, or ``threads``)."""
    groups: dict[str, list[str]] = {}
    for recipe in RECIPES.values():
        holder = recipe if field == "threads" else recipe.config
        if hasattr(holder, field):
            groups.setdefault(_show(getattr(holder, field)), []).append(recipe.name)
    shown = "; ".join(f"{value} ({', '.join(names)})" for value, names in groups.items())
    return f"Default: the recipe's: {shown}."


def _from_recipe(shared: OptionInfo, help: str, field: str) -> OptionInfo:
    """A shared option (same flag and bounds) whose value, when not given, is the recipe's."""
    option = copy.copy(shared)
    option.default = None
    option.help = f"{help} {_recipe_values(field)}"
    return option


def _recipe_option(flag: str, help: str, field: str) -> OptionInfo:
    """A training option of this command whose value, when not given, is the recipe's."""
    return typer.Option(None, flag, help=f"{help} {_recipe_values(field)}")


_RECIPE_HELP = (
    "Named training defaults: "
    + "; ".join(f"{recipe.name} ({recipe.model}): {recipe.summary}" for recipe in RECIPES.values())
    + ". Default: "
    + ", ".join(f"{name} for {model}" for model, name in DEFAULT_RECIPES.items())
    + "; with --resume, the run's own."
)


def _is_main_process() -> bool:
    """Whether this process reports: rank 0 under torchrun, or the only one (a malformed ``RANK``
    counts as rank 0, so that the training reports it)."""
    from medfuse_cli.training.distributed import environment_rank  # imports torch: not for --help

    try:
        return environment_rank() == 0
    except MedfuseError:
        return True


def _reported_by_rank_zero(command: Callable[..., None]) -> Callable[..., None]:
    """``command``, except that under torchrun a process other than rank 0 ends an error with
    status 1 and no message: rank 0 reports it (every process fails alike, see ``World.agree``)."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except MedfuseError:
            if _is_main_process():
                raise
            raise typer.Exit(1) from None

    return run


@_reported_by_rank_zero
def train(
    data: list[Path] | None = typer.Argument(
        None,
        help="Training folder(s) laid out like harvard/<PAIR>/train/ (MRI/ + SPECT|PET|CT/), or their "
        "parent. Not needed with --resume (the run's own).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: training state and the weights file."),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help=f"Network to train: {' or '.join(DEFAULT_RECIPES)}. Default: the recipe's; with --resume, the run's.",
    ),
    recipe: str | None = typer.Option(None, "--recipe", help=_RECIPE_HELP),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run saved in --out with its own options; options given must agree with them "
        "(lywnet may change --epochs). --device, --threads and --max-minutes apply to this session.",
    ),
    max_minutes: float | None = typer.Option(
        None,
        "--max-minutes",
        help="Stop between epochs once the next epoch would end after this many minutes of this session.",
    ),
    device: str = options.DEVICE,
    threads: int | None = _from_recipe(
        options.THREADS, "CPU threads for torch; with --resume, the run's unless given.", "threads"
    ),
    batch_size: int | None = _from_recipe(
        options.BATCH_SIZE, "Patches (lwnet) or images (lywnet) per optimizer step.", "batch_size"
    ),
    epochs: int | None = _recipe_option("--epochs", "Epochs (per SPI iteration for lwnet).", "epochs"),
    learning_rate: float | None = _recipe_option(
        "--lr", "Adam learning rate (the first, for cosine).", "learning_rate"
    ),
    seed: int | None = _recipe_option("--seed", "Seed for splits, initialisation and shuffles.", "seed"),
    iterations: int | None = _recipe_option("--iterations", "lwnet: SPI iterations.", "iterations"),
    label_fuser: list[str] | None = _recipe_option(
        "--label-fuser",
        "lwnet: a registered fuser whose outputs are candidate labels (repeatable). Giving --label-fuser "
        "or --label-dir replaces all of the recipe's candidates.",
        "label_fusers",
    ),
    label_dir: list[str] | None = _recipe_option(
        "--label-dir",
        "lwnet: NAME=DIR, fused images of the training pairs by another tool (repeatable).",
        "label_dirs",
    ),
    patch_size: int | None = _recipe_option("--patch-size", "lwnet: patch side in pixels.", "patch_size"),
    stride: int | None = _recipe_option(
        "--stride", "lwnet: step between patches (the paper's density is ~23).", "stride"
    ),
    labelled_fraction: float | None = _recipe_option(
        "--labelled-fraction", "lwnet: share of patches labelled at the start.", "labelled_fraction"
    ),
    val_fraction: float | None = _recipe_option(
        "--val-fraction", "lwnet: share of pairs held out for validation.", "val_fraction"
    ),
    displace: float | None = _recipe_option(
        "--displace", "lwnet: an output replaces a label when it scores ≥ this × the label.", "displace"
    ),
    admit: float | None = _recipe_option(
        "--admit",
        "lwnet: an output becomes a pseudo label when it scores ≥ this × the best candidate.",
        "admit",
    ),
    gradient_weight: float | None = _recipe_option(
        "--gradient-weight",
        "lwnet: weight of the edge loss toward the stronger source gradient (0: off).",
        "gradient_weight",
    ),
    intensity_weight: float | None = _recipe_option(
        "--intensity-weight",
        "lwnet: weight of the intensity loss toward max(MRI, functional) (0: off).",
        "intensity_weight",
    ),
    balance_weight: float | None = _recipe_option(
        "--balance-weight",
        "lwnet: weight of the loss term 1 − min(SSIM(F, MRI), SSIM(F, functional)) (0: off).",
        "balance_weight",
    ),
    peak_weight: float | None = _recipe_option(
        "--peak-weight",
        "lwnet: weight of the loss term 1 − PeakRetention, the functional peaks' lost excess (0: off).",
        "peak_weight",
    ),
    detail_weight: float | None = _recipe_option(
        "--detail-weight",
        "lwnet: weight of the detail term in the label score (0: SSIM sum only, as in the paper).",
        "detail_weight",
    ),
    lr_schedule: str | None = _recipe_option(
        "--lr-schedule", "lywnet: constant (the authors') or cosine (down to --min-lr).", "lr_schedule"
    ),
    min_lr: float | None = _recipe_option(
        "--min-lr", "lywnet: last learning rate of a cosine schedule.", "min_lr"
    ),
    monitor: list[Path] | None = _recipe_option(
        "--monitor",
        "lywnet: pair folder whose images give a held-out loss each epoch (repeatable).",
        "monitor",
    ),
    train_norm: str | None = _recipe_option(
        "--train-norm",
        "lywnet: normalisation statistics while training: batch (the authors'), image (as they infer) "
        "or pair (both images of a training pair; the checkpoint then infers per pair).",
        "train_norm",
    ),
    crop_size: int | None = _recipe_option(
        "--crop-size", "lywnet: side in pixels of the training crops (the authors': 32).", "size"
    ),
    crop_scale: str | None = _recipe_option(
        "--crop-scale",
        "lywnet: whole (the authors': each image resized to --crop-size) or native (crops at 0.5-1x the scale fused).",
        "crop_scale",
    ),
    init: Path | None = _recipe_option(
        "--init", "lywnet: start from this LYWNet checkpoint of ours (a run's lywnet.safetensors).", "init"
    ),
    quiet: bool = options.QUIET,
) -> None:
    """Train a fusion network from a recipe; state is saved after every epoch, so a run can be resumed.

    Several processes: torchrun --nproc_per_node=K -m medfuse_cli train ... (the global batch stays
    --batch-size; rank 0 writes and prints).
    """
    candidates_given = bool(label_fuser or label_dir)
    given = [
        ("epochs", epochs, _BOTH),
        ("batch_size", batch_size, _BOTH),
        ("learning_rate", learning_rate, _BOTH),
        ("seed", seed, _BOTH),
        ("iterations", iterations, _LWNET),
        ("label_fusers", tuple(label_fuser or ()) if candidates_given else None, _LWNET),
        ("label_dirs", _named_folders(label_dir or []) if candidates_given else None, _LWNET),
        ("patch_size", patch_size, _LWNET),
        ("stride", stride, _LWNET),
        ("labelled_fraction", labelled_fraction, _LWNET),
        ("val_fraction", val_fraction, _LWNET),
        ("displace", displace, _LWNET),
        ("admit", admit, _LWNET),
        ("gradient_weight", gradient_weight, _LWNET),
        ("intensity_weight", intensity_weight, _LWNET),
        ("balance_weight", balance_weight, _LWNET),
        ("peak_weight", peak_weight, _LWNET),
        ("detail_weight", detail_weight, _LWNET),
        ("lr_schedule", lr_schedule, _LYWNET),
        ("min_lr", min_lr, _LYWNET),
        ("monitor", tuple(str(m) for m in monitor) if monitor else None, _LYWNET),
        ("train_norm", train_norm, _LYWNET),
        ("size", crop_size, _LYWNET),
        ("crop_scale", crop_scale, _LYWNET),
        # absolute: a resume from another folder names the same file only if it is the same file
        ("init", str(init.absolute()) if init else None, _LYWNET),
    ]
    # Imported here, not at the top: the trainers pull in torch, which `--help` need not pay for.
    from medfuse_cli.training.run import RunSettings
    from medfuse_cli.training.trainers import starting_point

    start = starting_point(out, model, recipe, resume)
    changes = {}
    for field, value, models in given:
        if value is None:
            continue
        if start.trainer.model not in models:
            raise InputError(f"{option_flag(field)} applies to --model {models[0]} only")
        changes[field] = value
    settings = RunSettings(
        out=out,
        data=tuple(str(folder) for folder in data or ()),
        recipe=start.recipe,
        command=shlex.join(["medfuse", *sys.argv[1:]]),
        device=device,
        threads=threads if threads is not None else start.threads,
        resume=resume,
        max_minutes=max_minutes,
    )
    if _is_main_process():
        _notice_repeated_data(settings.data)
    quiet = quiet or not _is_main_process()
    with _Screen(quiet) as screen:
        weights = start.trainer.train(replace(start.config, **changes), settings, screen)
    if not quiet:
        print(f"weights: {weights}")


def _notice_repeated_data(data: tuple[str, ...]) -> None:
    """Say when one data folder is given more than once: its pairs then count that many times in
    every epoch (a way to weigh one pair kind), which must not happen unnoticed."""
    counts = Counter(Path(folder).resolve() for folder in data)
    for folder in data:
        times = counts.pop(Path(folder).resolve(), 1)  # popped: each folder is said once, as first typed
        if times > 1:
            logging.getLogger("medfuse_cli").info(
                "%s is given %d times: its pairs count %d times in every epoch", folder, times, times
            )


def _named_folders(pairs: list[str]) -> dict[str, str]:
    """Parse repeated NAME=DIR options into {NAME: DIR}.

    Raises:
        InputError: an item is not NAME=DIR, or a name is given twice.
    """
    named = {}
    for item in pairs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--label-dir expects NAME=DIR, got '{item}'")
        if name in named:
            raise InputError(f"--label-dir name '{name}' given twice")
        named[name] = folder
    return named


class _Screen:
    """Draws a run's events on stderr: a transient bar for the running epoch (on a terminal),
    then one whole line per finished epoch and per message (soft-wrapped: a line never breaks,
    also when stderr is a file). Nothing with ``quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        # A bar only on a terminal: elsewhere rich's live display leaves a blank line behind.
        self.bar = options.progress_bar("{task.description}", quiet or not options.stderr.is_terminal)
        self.task: TaskID | None = None
        self.epochs = 0

    def __enter__(self) -> _Screen:
        self.bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bar.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, EpochStarted):
            self.epochs = event.epochs
            self.task = self.bar.add_task(f"epoch {event.epoch}/{event.epochs}", total=None)
        elif isinstance(event, StepDone) and self.task is not None:
            self.bar.update(
                self.task,
                completed=event.step,
                total=event.steps,
                description=f"epoch {event.epoch}/{self.epochs} · loss {event.loss:.4f} · "
                f"{event.samples_per_second:.1f}/s",
            )
        elif isinstance(event, EpochFinished):
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            numbers = ", ".join(
                f"{name.replace('_', ' ')} {value:.4g}" for name, value in event.metrics.items()
            )
            self._line(f"epoch {event.epoch}/{event.epochs}: {numbers} ({event.seconds:.0f} s)")
        elif isinstance(event, Message):
            self._line(event.text)

    def _line(self, text: str) -> None:
        if not self.quiet:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
