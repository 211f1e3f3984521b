"""What a training run tells whoever watches it: four kinds of event and the listener type.

Trainers and the run skeleton never draw or print; they hand events to a listener. The CLI's
listener turns them into a progress bar and one line per epoch on stderr; a Python caller passes
its own (or none: ``ignore``), and a test can record them. Events are small frozen records, so a
listener may keep them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EpochStarted:
    """An epoch begins.

    Attributes:
        epoch: 1-based, counted over the whole run (a resumed run continues the count).
        epochs: epochs the run plans in all.
    """

    epoch: int
    epochs: int


@dataclass(frozen=True)
class StepDone:
    """An optimizer step of the current epoch is done.

    Attributes:
        epoch: as in ``EpochStarted``.
        step: steps done in this epoch, 1..``steps``.
        steps: optimizer steps in this epoch.
        loss: running mean of the epoch's training loss so far (the trainer's loss, unitless).
        samples_per_second: training samples (patches or images) per second of wall time so far.
    """

    epoch: int
    step: int
    steps: int
    loss: float
    samples_per_second: float


@dataclass(frozen=True)
class EpochFinished:
    """An epoch is done and saved (the run can be resumed after it).

    Attributes:
        epoch, epochs: as in ``EpochStarted``.
        seconds: wall time of the epoch's work (``train_epoch``), saving left out.
        metrics: the trainer's numbers for the epoch, by name (e.g. ``loss``, ``lr``,
            ``held_out_loss``), in the order a one-line summary should show them.
    """

    epoch: int
    epochs: int
    seconds: float
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Message:
    """One line of narrative: what was loaded, a resume, an SPI label update, why the run stopped."""

    text: str


Event = EpochStarted | StepDone | EpochFinished | Message
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener of a run nobody watches: drops every event."""
