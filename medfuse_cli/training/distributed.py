"""Training in several processes (``torchrun``): which process this is, and what the processes share.

``torchrun --nproc_per_node=K -m medfuse_cli train ...`` starts K processes with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. ``start`` reads
them and joins the processes' group: gloo on the CPU, NCCL on CUDA, where each process uses
``cuda:LOCAL_RANK`` (``process_device``). Without them, or with a world size of 1, a session is a
world of one process with no group, and every helper below returns its input unchanged: a
one-process run computes exactly what it did before this module.

How the processes share a run (``training.run``, ``training.spi``, ``training.lywnet_trainer``):

- every process draws the same order and augmentation for the global batch of ``--batch-size``
  samples and trains on its share, ``batch[rank::size]`` (``World.share``);
- DistributedDataParallel averages the gradients over the processes, and each process weights its
  loss by its samples × size / the global batch's samples (``World.loss_weight``), so the average
  is the one-process gradient of the batch, also when a batch does not divide evenly;
- rank 0 alone writes files and tells the listener; it decides whether another epoch fits the
  time budget (``World.broadcast``);
- what may fail (the run folder's checks, reading a resumed run, data, a save) is agreed on
  (``World.agree``): every process learns whether any failed before the next collective call,
  so all fail or none, and none waits for a process that has gone.

An ended process group stays referenced from Python until the process exits (``close``): torch
destroys a group whose last Python reference goes with the GIL released, but the DDP reducer,
freed when the trainer returns, would otherwise drop the last reference holding the GIL, and the
group's destructor then waits for a gloo worker thread that waits for the GIL to free a finished
call's tensors: on a busy machine this hung the end of a run.
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from medfuse_cli import errors
from medfuse_cli.devices import resolve_device
from medfuse_cli.errors import DeviceError, InputError, MedfuseError

T = TypeVar("T")
S = TypeVar("S", Tensor, list)

# How long a process waits in a collective call for the others: rank 0's saves and validation,
# which the others wait for, take seconds; a process that died is noticed by torchrun first.
TIMEOUT = timedelta(minutes=30)
_ERRORS = {cls.__name__: cls for cls in vars(errors).values() if isinstance(cls, type)}
_sessions = 0  # process groups this process has started: each gets its own keys in the store
_ended: list[object] = []  # process groups ``close`` ended, referenced until exit (module docstring)
atexit.register(_ended.clear)


def _environment(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name}={value!r} in the environment is not a number (torchrun sets it)") from None


def environment_size() -> int:
    """The number of training processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return max(_environment("WORLD_SIZE", 1), 1)


def environment_rank() -> int:
    """This process's rank among them (``RANK``; 0 without torchrun)."""
    return _environment("RANK", 0) if environment_size() > 1 else 0


def process_device(name: str) -> torch.device:
    """The device of this process for ``--device name``: as ``devices.resolve_device``, except
    that under torchrun CUDA (``cuda`` or ``auto`` on a machine with CUDA) is ``cuda:LOCAL_RANK``.

    Raises:
        InputError: an unknown device, or ``cuda:N`` under torchrun (each process takes its own).
        DeviceError: CUDA asked for and absent, or fewer GPUs than processes on this machine.
    """
    size = environment_size()
    if size > 1 and name.startswith("cuda:"):
        raise InputError(f"under torchrun each process uses cuda:LOCAL_RANK: pass --device cuda, not {name}")
    device = resolve_device(name)
    if size == 1 or device.type != "cuda":
        return device
    local = _environment("LOCAL_RANK", 0)
    if local >= torch.cuda.device_count():
        raise DeviceError(
            f"process {local} of this machine has no GPU of its own ({torch.cuda.device_count()} visible): "
            "start at most that many processes per machine"
        )
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class World:
    """The processes training one run, as seen from one of them.

    Attributes:
        rank: this process's rank, 0..size-1; rank 0 writes, prints and decides.
        size: the number of processes (1: no process group, every helper is the identity).
        owns_group: whether ``close`` ends the process group (this session started it).
    """

    rank: int = 0
    size: int = 1
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """Whether there are other processes to share the work with."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes, prints and decides."""
        return self.rank == 0

    def share(self, items: S) -> S:
        """This process's share of a global batch: ``items[rank::size]`` (all of it for one process)."""
        return items[self.rank :: self.size] if self.distributed else items

    def counts(self, total: int) -> list[int]:
        """How many of ``total`` items each rank's ``share`` holds, by rank."""
        return [len(range(rank, total, self.size)) for rank in range(self.size)]

    def loss_weight(self, share: int, total: int) -> float:
        """The weight of the mean loss over a share of ``share`` of ``total`` samples, such that
        DistributedDataParallel's average of the gradients is the mean gradient of all ``total``."""
        return share * self.size / total

    def all_gather(self, tensor: Tensor, counts: Sequence[int]) -> Tensor:
        """Every rank's ``tensor`` concatenated in rank order along the first dimension, whose length
        on rank r is ``counts[r]`` (known to every rank; the parts are padded to the longest)."""
        if not self.distributed:
            return tensor
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum of every rank's ``tensor`` (the same tensor for one process)."""
        if not self.distributed:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (a decision every rank must share), on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def agree(self, action: Callable[[], T], main_only: bool = False) -> T:
        """Run ``action`` on every rank (or on rank 0 alone), then fail on every rank if it failed on any.

        The ranks exchange the outcome in one collective call: a rank whose ``action`` raised raises
        it again; the others raise the failed rank's ``MedfuseError`` (the first such rank's, its
        message prefixed with ``process N:``), or a ``MedfuseError`` naming any other exception.

        Returns:
            ``action``'s result: this rank's own, or rank 0's on every rank with ``main_only``.
        """
        result, failure = None, None
        if self.is_main or not main_only:
            try:
                result = action()
            except Exception as exc:
                if not self.distributed:
                    raise
                failure = exc
        if not self.distributed:
            return result
        shared = result if main_only and self.is_main else None
        outcomes = self.exchange(failure, shared)
        if failure is not None:
            raise mark_agreed(failure)
        return outcomes[0][1] if main_only else result

    def exchange(self, failure: BaseException | None, shared: object = None) -> list[tuple]:
        """The collective half of ``agree``: every rank's (failure, ``shared``), by rank; raises the
        first other rank's failure when this rank has none. A rank that fails where the others
        call ``agree`` calls this with its failure, so that they fail too instead of waiting."""
        outcomes: list = [None] * self.size
        dist.all_gather_object(outcomes, (_describe(failure), shared))
        if failure is None:
            for rank, (described, _) in enumerate(outcomes):
                if described is not None:
                    raise mark_agreed(_rebuild(rank, *described))
        return outcomes

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (itself for one process); call the result to train.

        Every parameter takes part in every step (an empty share runs with weight 0); the networks
        have no buffers (no running statistics) to keep in step.
        """
        if not self.distributed:
            return module
        # LWNet keeps its weights channels-last; for its 1×1 convolutions DDP compares strides that
        # describe the same memory layout and warns on every process, though nothing is wrong.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device_ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def close(self, failure: BaseException | None = None) -> None:
        """End the process group, if this session started it (nothing for one process).

        Not after a ``failure`` that the processes did not agree on (see ``agree``): the others
        may be inside a collective call, where ending the group can hang; the process ends
        anyway, and torchrun stops the others.
        """
        if failure is not None and not is_agreed(failure):
            return
        if self.owns_group and dist.is_initialized():
            _ended.append(dist.group.WORLD)
            dist.destroy_process_group()


SINGLE = World()


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) with its gradient: the sum of every process's gradient of the sum."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gradient: Tensor) -> Tensor:
        total = gradient.clone()
        dist.all_reduce(total)
        return total


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The sum of every process's ``tensor``, differentiable: each process's loss depends on every
    process's ``tensor``, so the gradient a process receives is the sum of all of theirs (used by
    statistics shared over the processes; call it on every process alike)."""
    return _SumOverProcesses.apply(tensor)


def start(device: torch.device) -> World:
    """Join the other training processes torchrun started, or a world of one without them.

    Uses the group the caller already started, if any (then ``close`` leaves it alone); else
    starts one, gloo for a CPU ``device`` and NCCL for CUDA, rendezvousing through
    ``MASTER_ADDR``:``MASTER_PORT``. Each group this process starts uses its own keys in the
    rendezvous store, so that a Python caller can train twice under one torchrun.

    Raises:
        InputError: a world size above 1 without torch.distributed, or without the rest of the
            rendezvous variables (start the processes with torchrun).
    """
    global _sessions
    size = environment_size()
    if size == 1:
        return SINGLE
    if not dist.is_available():
        raise InputError("WORLD_SIZE is above 1 but this torch has no torch.distributed")
    if dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size())
    try:
        store, rank, size = next(dist.rendezvous("env://", timeout=TIMEOUT))
    except ValueError as exc:  # a variable torchrun sets is missing
        raise InputError(
            f"cannot join the other training processes: {exc} (start them with torchrun)"
        ) from None
    _sessions += 1
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=dist.PrefixStore(f"medfuse-train/{_sessions}/", store),
        rank=rank,
        world_size=size,
        timeout=TIMEOUT,
    )
    return World(rank=rank, size=size, owns_group=True)


def mark_agreed(failure: BaseException) -> BaseException:
    """``failure``, marked as raised by every process at the same point (``is_agreed``)."""
    failure._medfuse_agreed = True  # type: ignore[attr-defined]
    return failure


def is_agreed(failure: BaseException) -> bool:
    """Whether every process raised ``failure`` (or its own) at the same agreement, so that
    none is inside another collective call."""
    return getattr(failure, "_medfuse_agreed", False)


def _describe(failure: BaseException | None) -> tuple[str, str] | None:
    if failure is None:
        return None
    return type(failure).__name__, str(failure)


def _rebuild(rank: int, name: str, message: str) -> MedfuseError:
    """Another rank's failure as this rank's error: its own class when it was a MedfuseError."""
    kind = _ERRORS.get(name)
    if kind is not None and issubclass(kind, MedfuseError):
        return kind(f"process {rank}: {message}")
    return MedfuseError(f"process {rank} failed: {name}: {message}")
