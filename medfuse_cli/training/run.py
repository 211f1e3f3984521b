"""The training-run skeleton both trainers use: folder, resume, time budget, provenance, events.

A run lives in one folder: a resumable state file (``training.state``) and a weights file whose
metadata carries the run's provenance and config (``training.provenance``), both rewritten after
every epoch. ``Run`` is one session of such a run:

- a new run refuses a folder that already holds one; ``--resume`` needs a saved state, reads the
  run's options back from its checkpoint and refuses given ones that contradict them;
- it sets torch's CPU thread count for the session (a resume reuses the run's unless told);
- ``train`` loops over epochs, saving after each, and stops between epochs once the next one
  would overrun ``--max-minutes``, judged by the previous epoch's duration on an injectable clock;
- it hands events (``training.events``) to a listener instead of drawing anything;
- under torchrun it is one of several processes (``training.distributed``): rank 0 alone makes
  the folder, writes and emits events (the others' listener is ``ignore``), every process reads
  a resumed run, the checks and saves are agreed on so that all fail or none, and rank 0's clock
  decides whether another epoch fits the budget.

A trainer supplies the model, the optimizer, one epoch's work and its own metadata::

    with Run(settings, RUN_FILES, config, on_event) as run:
        model, optimizer = ..., ...
        run.restore(model, optimizer)
        network = run.distribute(model)  # what train_epoch calls: DDP under torchrun, else model
        return run.train(model, optimizer, config.epochs, train_epoch, metadata)
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import TracebackType

import torch
from safetensors import SafetensorError, safe_open

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.output_folders import create_folder, remove_if_empty
from medfuse_cli.training import distributed
from medfuse_cli.training.config import Config, config_from_json, option_flag
from medfuse_cli.training.events import EpochFinished, EpochStarted, Listener, Message, ignore
from medfuse_cli.training.provenance import Provenance, git_commit
from medfuse_cli.training.state import TrainingState, load_training_state, save_training_state
from medfuse_cli.weights import write_checkpoint


@dataclass(frozen=True)
class RunFiles:
    """The files of one trainer's run folder.

    Attributes:
        state: file name of the resumable state (model, optimizer, progress).
        weights: file name of the usable checkpoint, whose metadata records the run.
        config_key: the metadata key that holds the trainer's config as JSON.
    """

    state: str
    weights: str
    config_key: str


@dataclass(frozen=True)
class RunSettings:
    """How one session of a run is carried out (what it learns is the trainer's config).

    Attributes:
        out: the run folder.
        data: training pair folders. On resume: empty means the run's own; others are refused.
        recipe: the recipe the config's values came from (recorded), or None. On resume: None
            means the run's own; another is refused.
        command: the command line, recorded (a new run's, or appended as a resumed session).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; an absent CUDA is an error. Under
            torchrun CUDA is each process's ``cuda:LOCAL_RANK``.
        threads: torch CPU threads for the session; None: the run's own on resume, else
            torch's default.
        resume: continue the run saved in ``out``.
        max_minutes: wall-time budget of this session in minutes (None: no limit).
        clock: monotonic seconds; tests pass their own to drive the budget.
    """

    out: Path
    data: tuple[str, ...] = ()
    recipe: str | None = None
    command: str = ""
    device: str = "auto"
    threads: int | None = None
    resume: bool = False
    max_minutes: float | None = None
    clock: Callable[[], float] = time.monotonic


def read_provenance(out: Path, files: RunFiles) -> Provenance:
    """The record of the run in ``out``, from its weights file's header (no tensor is read).

    Raises:
        CheckpointError: the weights file is missing, not safetensors, or records no run.
    """
    path = Path(out) / files.weights
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run's options cannot be read back")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint ({exc})") from None
    return Provenance.from_metadata(metadata, files.config_key, str(path))


def _nothing() -> None:
    """The between-epochs hook of a trainer that needs none."""


class Run:
    """One session of a training run (see the module docstring); a context manager.

    Args:
        settings: how this session runs.
        files: the trainer's run-folder files.
        config: the trainer's config; on resume it must equal the run's own except for the
            config type's ``CHANGEABLE_ON_RESUME`` fields.
        on_event: receives every event of the session (on rank 0; other ranks emit nothing).

    Raises:
        InputError: a new run in a folder that holds one (or is a file), no data for a new run,
            ``resume`` without a saved state, data, recipe or config values that contradict
            the run being resumed, or a ``max_minutes`` that is negative or not finite.
        DeviceError: ``settings.device`` is CUDA on a machine without it (an unknown device
            name is an InputError).
        CheckpointError: the run's files cannot be read back.

    Under torchrun, the error of any process is raised by all of them (see ``distributed.World.agree``).
    """

    def __init__(self, settings: RunSettings, files: RunFiles, config: Config, on_event: Listener = ignore):
        if settings.max_minutes is not None and not (
            math.isfinite(settings.max_minutes) and settings.max_minutes >= 0
        ):
            raise InputError(
                "--max-minutes must be a finite number of at least 0 (leave it out for no limit)"
            )
        self.out = Path(settings.out)
        self.files = files
        self.device = distributed.process_device(settings.device)
        self.world = distributed.start(self.device)
        self.emit = on_event if self.world.is_main else ignore
        self._setting_up = True  # until ``distribute``: a failing process tells the others
        self._created: list[Path] = []  # folders this run made (removed again if it fails empty)
        try:
            self._open(settings, config)
        except BaseException as error:
            remove_if_empty(self._created)
            self.world.close(error)
            raise

    def _open(self, settings: RunSettings, config: Config) -> None:
        self._max_minutes = settings.max_minutes
        self._clock = settings.clock
        self._started = self._clock()
        self._state: TrainingState | None = None
        if settings.resume:
            self._state, stored = self.world.agree(lambda: self._open_existing(settings, config))
            self.progress = self._state.progress
            self.threads = settings.threads or stored.threads or torch.get_num_threads()
            resumed = stored.resumed_by(settings.command, self.progress["epochs_done"], self.threads)
            self.provenance = replace(resumed, config=asdict(config))
        else:
            self.world.agree(lambda: self._open_new(settings))
            self.progress = {"epochs_done": 0, "seconds": 0.0}
            self.threads = settings.threads or torch.get_num_threads()
            self.provenance = Provenance(
                command=settings.command,
                git_commit=git_commit(),
                data=tuple(settings.data),
                recipe=settings.recipe,
                config=asdict(config),
                threads=self.threads,
            )
        self._seconds_before = float(self.progress["seconds"])
        self._threads_before = torch.get_num_threads()

    def _open_existing(self, settings: RunSettings, config: Config) -> tuple[TrainingState, Provenance]:
        state_path = self.out / self.files.state
        if not state_path.is_file():
            raise InputError(f"nothing to resume: {state_path} does not exist")
        stored = read_provenance(self.out, self.files)
        if settings.data and tuple(settings.data) != stored.data:
            raise InputError(
                f"{self.out} trains on {', '.join(stored.data)}; resume it without data folders or with those"
            )
        if settings.recipe is not None and settings.recipe != stored.recipe:
            raise InputError(
                f"{self.out} was started from recipe {stored.recipe or '(none)'}, not {settings.recipe}"
            )
        own = config_from_json(type(config), stored.config, str(self.out / self.files.weights))
        state = load_training_state(state_path)
        changeable = type(config).CHANGEABLE_ON_RESUME
        digests = {name: state.progress.get(key) for name, key in type(config).FILE_DIGESTS.items()}
        conflicts = [
            f"{option_flag(f.name)} {_shown(getattr(config, f.name))} (the run's: {_shown(getattr(own, f.name))})"
            for f in fields(config)
            if f.name not in changeable
            and _differs(getattr(config, f.name), getattr(own, f.name), digests.get(f.name))
        ]
        if conflicts:
            may = f"; only {', '.join(map(option_flag, changeable))} may change" if changeable else ""
            raise InputError(
                f"resuming {self.out} with other options: {'; '.join(conflicts)} (a resumed run keeps its own{may})"
            )
        self.emit(
            Message(
                f"resuming {self.out} after epoch {state.progress['epochs_done']} "
                f"({state.progress['seconds'] / 60:.1f} min so far)"
            )
        )
        return state, stored

    def _open_new(self, settings: RunSettings) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} is a file, not a run folder")
        held = [name for name in (self.files.state, self.files.weights) if (self.out / name).exists()]
        if held:
            raise InputError(
                f"{self.out} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                "or choose another --out"
            )
        if not settings.data:
            raise InputError("no training data: give the training pair folder(s)")
        if self.world.is_main:
            self._created = create_folder(self.out)

    def __enter__(self) -> Run:
        torch.set_num_threads(self.threads)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        torch.set_num_threads(self._threads_before)
        try:
            if (
                error is not None
                and self._setting_up
                and not distributed.is_agreed(error)
                and self.world.distributed
            ):
                # the others wait in ``distribute``'s agreement: fail there too
                self.world.exchange(error if isinstance(error, Exception) else InputError("interrupted"))
                distributed.mark_agreed(error)
        finally:
            if error is not None:  # a run that failed before saving anything leaves no folder it made
                remove_if_empty(self._created)
            self.world.close(error)

    @property
    def resumed(self) -> bool:
        """Whether this session continues a saved run."""
        return self._state is not None

    @property
    def data(self) -> list[Path]:
        """The run's training pair folders, as they were typed when it started.

        Raises:
            InputError: a resumed run's folder is not found from here (a relative path resumed
                from another working folder).
        """
        folders = [Path(folder) for folder in self.provenance.data]
        missing = [str(folder) for folder in folders if not folder.is_dir()]
        if self.resumed and missing:
            raise InputError(
                f"{self.out} trains on {', '.join(missing)}, not found from {Path.cwd()}: resume from "
                "the folder the run was started in (its data folders are kept as they were typed)"
            )
        return folders

    def message(self, text: str) -> None:
        """Emit one line of narrative."""
        self.emit(Message(text))

    def seconds(self) -> float:
        """Wall time of the whole run so far (earlier sessions included), in seconds."""
        return self._seconds_before + self._clock() - self._started

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the saved model and optimizer state into fresh ones (nothing for a new run)."""
        if self._state is not None:
            model.load_state_dict(self._state.model)
            optimizer.load_state_dict(self._state.optimizer)

    def distribute(self, module: torch.nn.Module) -> torch.nn.Module:
        """End the set-up: once every process has set up without error, ``module`` ready to train.

        Call it once, after the model is restored and before training. Under torchrun it first
        agrees that no process failed while setting up (a failing one raises in ``__exit__``
        and the others here), then wraps ``module`` in DistributedDataParallel; for one process
        it returns ``module`` itself.
        """
        self.world.agree(lambda: None)
        self._setting_up = False
        return self.world.wrap(module, self.device)

    def on_main(self, write: Callable[[], None]) -> None:
        """Call ``write`` on rank 0 alone; every process returns when it is done, or raises its error."""
        self.world.agree(write, main_only=True)

    def save(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, metadata: Mapping[str, str]
    ) -> None:
        """Write the state (to resume) and the weights (to use) with the trainer's ``metadata``
        and the run's provenance, epochs, wall time and device.

        Under torchrun, rank 0 writes and the others wait for it; the weights record the number
        of processes (``processes``, absent for one).

        Raises:
            OSError: a file cannot be written.
        """
        self.progress["seconds"] = round(self.seconds(), 1)

        def write() -> None:
            save_training_state(self.out / self.files.state, model, optimizer, self.progress)
            record = {
                **metadata,
                **self.provenance.metadata(self.files.config_key),
                "epochs": str(self.progress["epochs_done"]),
                "wall_time_minutes": f"{self.progress['seconds'] / 60:.1f}",
                "device": str(self.device),
            }
            if self.world.distributed:
                record["processes"] = str(self.world.size)
            write_checkpoint(self.out / self.files.weights, model.state_dict(), record)

        self.on_main(write)

    def train(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        train_epoch: Callable[[int], Mapping[str, float]],
        metadata: Callable[[], Mapping[str, str]],
        between_epochs: Callable[[], None] = _nothing,
    ) -> Path:
        """Run epochs until ``epochs`` are done or the budget stops the session.

        Args:
            model, optimizer: what is trained and saved.
            epochs: epochs the run plans in all (a resumed run continues its count).
            train_epoch: trains epoch ``epoch`` (1-based) and returns its metrics for
                ``EpochFinished``; it may emit ``StepDone`` events.
            metadata: the trainer's checkpoint metadata at the time of a save.
            between_epochs: work due after a saved epoch (and, on resume, before the first),
                e.g. SPI's label update; it runs before the budget is checked.

        Returns:
            The weights file, rewritten after every epoch.

        Raises:
            InputError: the session ends with no epoch done in the run (budget too small).
        """
        between_epochs()
        while self.progress["epochs_done"] < epochs:
            epoch = self.progress["epochs_done"] + 1
            if not self.world.broadcast(self._time_for_another_epoch()):  # rank 0's clock decides
                if epoch == 1:  # nothing saved: there is no run to resume
                    raise InputError("no epoch finished: raise --max-minutes")
                self.message(
                    f"stopping before epoch {epoch}: --max-minutes {self._max_minutes:g} would be exceeded; "
                    "continue with --resume"
                )
                break
            began = self._clock()
            self.emit(EpochStarted(epoch, epochs))
            metrics = train_epoch(epoch)
            seconds = self._clock() - began
            self.progress["epochs_done"] = epoch
            self.progress["last_epoch_seconds"] = round(seconds, 1)
            self.save(model, optimizer, metadata())
            self.emit(EpochFinished(epoch, epochs, seconds, dict(metrics)))
            between_epochs()
        else:
            self.message(f"done: {epochs} epochs in {self.seconds() / 60:.1f} min")
        if self.progress["epochs_done"] == 0:
            raise InputError("no epoch finished: raise --max-minutes")
        return self.out / self.files.weights

    def _time_for_another_epoch(self) -> bool:
        """Whether the next epoch, if it takes as long as the last one, ends within the budget."""
        if self._max_minutes is None:
            return True
        spent = self._clock() - self._started
        last = self.progress.get("last_epoch_seconds") or 0.0  # none yet, or a run saved before it was kept
        budget = self._max_minutes * 60
        return spent < budget and spent + last <= budget


def _differs(given: object, own: object, recorded_sha256: object = None) -> bool:
    """Whether a setting given on resume differs from the run's. A file setting (the config's
    ``FILE_DIGESTS``, e.g. ``--init``, made absolute by the command line) may be named by another
    path text (a copy, a link): a different text is compared by the sha256 the run recorded."""
    if recorded_sha256 is not None and given and own and given != own:
        path = Path(str(given))
        return not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != recorded_sha256
    return given != own


def _shown(value: object) -> str:
    """A setting as a resume conflict names it, as it would be typed: an unset one (``""``,
    None, no items) as ``none``, items joined by commas, named folders as ``NAME=DIR``, a
    number in its shortest form (``1e-6``, ``0.0005``)."""
    if value in ("", None) or (isinstance(value, tuple | list | dict) and not value):
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{name}={folder}" for name, folder in value.items())
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    if isinstance(value, float):  # 1e-06 as typed: 1e-6
        return re.sub(r"e([-+])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", repr(value))
    return str(value)
