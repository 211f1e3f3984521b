"""The resumable training state file: safetensors tensors + JSON, so resuming never unpickles.

A run saves after every epoch: the model's tensors (``model/<name>``), the optimizer's tensors
(flattened under ``optim/<param index>/<name>``), and everything else (the optimizer's scalars
and parameter groups, the run's progress record) as JSON in the safetensors header.
``load_training_state`` rebuilds both state dicts from what ``save_training_state`` wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from medfuse_cli.errors import CheckpointError
from medfuse_cli.weights import read_checkpoint, write_checkpoint

_MODEL = "model/"
_OPTIM = "optim/"


@dataclass
class TrainingState:
    """What a run needs to continue exactly where it stopped.

    Attributes:
        model: the model's ``state_dict`` (CPU tensors).
        optimizer: the optimizer's ``state_dict``, ready for ``Optimizer.load_state_dict``.
        progress: the run's JSON progress record (epochs done, seconds, the trainer's logs).
    """

    model: dict[str, torch.Tensor]
    optimizer: dict
    progress: dict


def save_training_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: dict
) -> None:
    """Write model, optimizer and the JSON-serialisable ``progress`` atomically to ``path``.

    Raises:
        OSError: the file cannot be written.
    """
    tensors = {_MODEL + name: t for name, t in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, per_param in optim_state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{_OPTIM}{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "progress": json.dumps(progress),
        "optim_groups": json.dumps(optim_state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
    }
    write_checkpoint(path, tensors, metadata)


def load_training_state(path: Path) -> TrainingState:
    """Read what ``save_training_state`` wrote.

    Raises:
        CheckpointError: the file is missing, not safetensors, holds non-finite values, or is
            not a training state.
    """
    loaded = read_checkpoint(path)
    if not {"progress", "optim_groups", "optim_scalars"} <= loaded.metadata.keys():
        raise CheckpointError(f"{path} is not a medfuse training state (its header lacks the run's progress)")
    model = {k[len(_MODEL) :]: v for k, v in loaded.tensors.items() if k.startswith(_MODEL)}
    state: dict[int, dict] = {}
    for name, value in loaded.tensors.items():
        if name.startswith(_OPTIM):
            index, key = name[len(_OPTIM) :].split("/", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in json.loads(loaded.metadata["optim_scalars"]).items():
        state.setdefault(int(index), {}).update(values)
    optimizer = {"state": state, "param_groups": json.loads(loaded.metadata["optim_groups"])}
    return TrainingState(model=model, optimizer=optimizer, progress=json.loads(loaded.metadata["progress"]))
