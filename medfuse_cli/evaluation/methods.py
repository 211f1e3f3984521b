"""What ``medfuse evaluate`` scores: the methods and the metrics named on the command line.

A method is a registered fuser, run during scoring, or a folder of images another tool fused.
Both are checked here, before any image is read, so a typo fails in a second rather than after
minutes of fusing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medfuse_cli.errors import InputError
from medfuse_cli.fusers import check_weights_choice, get_fuser_spec, list_fusers
from medfuse_cli.metrics import BALANCE_METRICS, LWNET_METRICS, LYWNET_METRICS, METRICS, resolve_metric_names

# The default: every metric either paper reports, LWNet's order first.
PAPER_METRICS = tuple(dict.fromkeys(LWNET_METRICS + LYWNET_METRICS))
METRIC_PRESETS = {
    "paper": PAPER_METRICS,
    "lwnet": LWNET_METRICS,
    "lywnet": LYWNET_METRICS,
    "balance": BALANCE_METRICS,
    "all": tuple(METRICS),
}


@dataclass(frozen=True)
class Method:
    """A registered fuser to run (with an optional checkpoint or weights file), or a folder of
    images fused elsewhere."""

    label: str
    model: str | None = None
    fused_dir: Path | None = None
    checkpoint: str | None = None
    weights: Path | None = None


def parse_model(spec: str, checkpoint: str | None = None, weights: Path | None = None) -> Method:
    """One ``--model`` value: ``[LABEL=]NAME[@CHECKPOINT|@WEIGHTS.safetensors]``.

    ``lwnet``, ``lwnet@lwnet.ct``, ``authors=lywnet@path/to/weights.safetensors``: a label lets
    one fuser be scored with two sets of weights in one run. Without ``@``, the command's
    ``--checkpoint``/``--weights`` apply (networks only).

    Raises:
        InputError: an unknown fuser or checkpoint, an empty label, weights or a checkpoint for
            a classical rule.
    """
    label, sep, rest = spec.partition("=")
    if not sep:
        label, rest = "", spec
    name, at, choice = rest.partition("@")
    name, label = name.strip(), label.strip()
    if sep and not label:
        raise InputError(f"--model takes [LABEL=]NAME[@CHECKPOINT|@FILE], got '{spec}'")
    fuser = get_fuser_spec(name)  # an unknown name fails here, before any image is read
    if at and (checkpoint or weights) and fuser.needs_weights:
        raise InputError(f"--model {spec} names its weights; --checkpoint/--weights would choose others")
    if at:
        choice = choice.strip()
        if not choice:  # Path("") would be the current folder
            raise InputError(f"--model {spec} names no checkpoint or file after '@'")
        # A path (a folder in it, or the .safetensors suffix) is a file; so is another existing
        # name, unless a shipped checkpoint has it (``./lwnet.ct`` names the file).
        shipped = any(choice in (record.name, record.tag) for record in fuser.checkpoints)
        looks_like_path = choice.endswith(".safetensors") or "/" in choice or os.sep in choice
        is_file = looks_like_path or (Path(choice).exists() and not shipped)
        checkpoint, weights = (None, Path(choice)) if is_file else (choice, None)
    elif not fuser.needs_weights:
        checkpoint = weights = None
    checkpoint = check_weights_choice(fuser, checkpoint, weights)
    return Method(label or name, model=name, checkpoint=checkpoint, weights=weights)


def parse_metrics(spec: str | None) -> list[str]:
    """The metrics ``--metrics`` asks for.

    Args:
        spec: A preset (paper, lwnet, lywnet, balance, all; any case), a comma-separated list of metric
            names, or None for the paper preset.

    Returns:
        Registered metric names, in the preset's or the list's order.

    Raises:
        MedfuseError: A listed name is not a registered metric.
    """
    if spec is None:
        return list(PAPER_METRICS)
    key = spec.strip().lower()
    if key in METRIC_PRESETS:
        return list(METRIC_PRESETS[key])
    return resolve_metric_names(name for name in spec.split(",") if name.strip())


def parse_fused(specs: Iterable[str]) -> list[Method]:
    """The ``--fused LABEL=DIR`` options as methods.

    Args:
        specs: The option values, each ``LABEL=DIR``.

    Returns:
        One method per option, in order, with surrounding blanks stripped from label and folder.

    Raises:
        MedfuseError: A value lacks ``=``, a label or a folder, or the folder does not exist.
    """
    methods = []
    for spec in specs:
        label, sep, folder = spec.partition("=")
        if not sep or not label.strip() or not folder.strip():
            raise InputError(f"--fused takes LABEL=DIR, got '{spec}'")
        path = Path(folder.strip())
        if not path.is_dir():
            raise InputError(f"--fused {label.strip()}: folder not found: {path}")
        methods.append(Method(label.strip(), fused_dir=path))
    return methods


def choose_methods(
    models: Iterable[str],
    fused: Iterable[str],
    checkpoint: str | None = None,
    weights: Path | None = None,
) -> tuple[list[Method], bool]:
    """The methods to score.

    Args:
        models: ``--model`` values (see ``parse_model``).
        fused: ``--fused LABEL=DIR`` values (see ``parse_fused``).
        checkpoint, weights: the command's ``--checkpoint``/``--weights``, for network models
            given without ``@``.

    Returns:
        The methods (models first) and whether the user named them; with neither option, every
        registered fuser of the default line-up (the slow LYWNet runs only when asked) and
        False, so that scoring may skip those that cannot run.

    Raises:
        MedfuseError: An unknown model or checkpoint, a bad ``--fused`` value, or a label used twice.
    """
    methods = [parse_model(spec, checkpoint, weights) for spec in models] + parse_fused(fused)
    if (checkpoint or weights) and not any(m.checkpoint or m.weights for m in methods):
        raise InputError("--checkpoint and --weights apply to a network given with --model (not to rules)")
    labels = [m.label for m in methods]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise InputError(f"method label used twice: {', '.join(duplicates)}")
    if methods:
        return methods, True
    if checkpoint is not None or weights is not None:
        raise InputError("--checkpoint and --weights need a network named with --model")
    return [Method(spec.name, model=spec.name) for spec in list_fusers() if spec.in_default_lineup], False
