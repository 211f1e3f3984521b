"""Measuring tools: time a call, summarise the times, peak memory of a block, FLOPs of a module.

Generic on purpose: nothing here knows what a fuser is, so each tool can be checked against a
known call, allocation or module (``tests/test_benchmark.py``) and the benchmark plan
(``bench.plan``) only decides what to measure.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

Clock = Callable[[], float]


@dataclass(frozen=True)
class TimingBudget:
    """How long to measure one call: untimed warm-up calls, then timed calls, within a budget.

    Attributes:
        warmup: untimed calls first (caches, oneDNN kernel choice, allocator pools); at least 1
            runs, more only while ``max_seconds`` lasts.
        repeat: timed calls at most.
        max_seconds: wall-clock seconds for the warm-up, and again for the timed calls, after
            which no new call starts (2 timed calls always run, so there is a median).
    """

    warmup: int = 3
    repeat: int = 20
    max_seconds: float = 30.0


@dataclass(frozen=True)
class Latency:
    """Per-call times summarised: the median and 90th percentile (linear interpolation between
    samples, numpy's default) of ``calls`` samples, in milliseconds."""

    median_ms: float
    p90_ms: float
    calls: int


def summarise(times_ms: Sequence[float]) -> Latency:
    """The median and p90 of per-call times.

    Args:
        times_ms: at least one duration in milliseconds.

    Returns:
        their ``Latency``; e.g. 1, 2, ..., 10 ms give a median of 5.5 ms and a p90 of 9.1 ms.

    Raises:
        ValueError: no times.
    """
    if not times_ms:
        raise ValueError("no times to summarise")
    return Latency(statistics.median(times_ms), float(np.percentile(times_ms, 90)), len(times_ms))


def time_calls(
    call: Callable[[], object], device: torch.device, budget: TimingBudget, clock: Clock = time.perf_counter
) -> list[float]:
    """Milliseconds per call after warm-up; stops early once the budget is spent.

    Args:
        call: the work to time, run as is (set threads or inference mode around it).
        device: where ``call`` computes; on CUDA each call is timed with CUDA events and a
            synchronise, since kernels run asynchronously to Python.
        budget: warm-up and timed calls, and the time budget.
        clock: seconds on a monotonic clock (tests inject a fake one); times CPU calls and
            keeps the budget.

    Returns:
        one duration in milliseconds per timed call, in call order: at least 2, at most
        ``budget.repeat`` (or 2 when that is smaller).
    """
    deadline = clock() + budget.max_seconds
    for index in range(max(1, budget.warmup)):
        if index and clock() > deadline:
            break
        call()
    _synchronize(device)
    deadline = clock() + budget.max_seconds
    times: list[float] = []
    while len(times) < max(2, budget.repeat) and (len(times) < 2 or clock() < deadline):
        times.append(_timed(call, device, clock))
    return times


def _timed(call: Callable[[], object], device: torch.device, clock: Clock) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    started = clock()
    call()
    return (clock() - started) * 1000


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PeakMemory:
    """What ``peak_memory`` measured: ``mb``, MiB, filled in when its block exits."""

    mb: float = 0.0


@contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak memory used inside the block, above what was in use when it started.

    On CUDA: the caching allocator's peak minus what was allocated at the start. On CPU: the
    growth of the process's resident set, peak ``VmHWM`` (reset through
    ``/proc/self/clear_refs``) minus ``VmRSS`` at the start, both from ``/proc/self/status``
    (Linux only). Freed heap is handed back first (``malloc_trim``), so memory an earlier block
    freed but kept resident does not hide this block's growth. Where ``clear_refs`` may not be
    written, only growth past the process's earlier peak is seen.

    Args:
        device: the device whose memory counts.

    Yields:
        a ``PeakMemory`` whose ``mb`` (MiB, float, never below 0) is set when the block exits.
    """
    measured = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield measured
        torch.cuda.synchronize(device)
        measured.mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    _release_free_heap()
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
    except OSError:
        before = max(before, _status_kib("VmHWM"))
    yield measured
    # The reset peak can sit a few pages under the earlier VmRSS reading: never report below 0.
    measured.mb = max(0, _status_kib("VmHWM") - before) / 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _release_free_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: freed memory may stay resident
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def count_flops(module: torch.nn.Module, *input_shapes: tuple[int, ...]) -> int:
    """FLOPs of one call ``module(*inputs)``, as ``torch.utils.flop_counter`` counts them.

    Convolutions and matrix products only, 2 FLOPs per multiply-add (a convolution counts
    every output position times the whole kernel, padding included); element-wise work counts 0.
    Counted on a copy on the ``meta`` device: shapes only, no arithmetic, so hundreds of GFLOPs
    are counted at once and ``module`` itself is left where it is.

    Args:
        module: called with one float32 tensor per shape.
        input_shapes: the inputs' shapes, e.g. ``(1, 1, 256, 256), (1, 1, 256, 256)``.

    Returns:
        the FLOP count (int).
    """
    shadow = copy.deepcopy(module).to("meta")
    inputs = [torch.empty(shape, device="meta") for shape in input_shapes]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        shadow(*inputs)
    return counter.get_total_flops()


def count_params(module: torch.nn.Module) -> int:
    """The number of parameters (elements of every parameter tensor) of ``module``."""
    return sum(p.numel() for p in module.parameters())
