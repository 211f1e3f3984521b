"""Inference timing the way an engineer would measure it: warm, synchronised, on real images.

Each fuser is built exactly as ``medfuse fuse`` builds it (``pipeline.Fusion``). A network
whose checkpoint is neither bundled nor downloadable is timed with random weights written to a
temporary checkpoint and loaded through the same builder: that is valid for speed (the
amount of arithmetic does not depend on the values) and says nothing about quality; its rows say so.

What is measured, per fuser and batch size:

- latency of one call ``fuser(anatomical, functional)`` on tensors already on the device, after
  warm-up calls that are not counted; on CUDA with events and a synchronise;
- FLOPs per pair from ``torch.utils.flop_counter`` (convolutions and matrix products; element-
  wise operations are not counted, so rules made only of those count 0);
- peak memory of the calls above what was allocated before the inputs were made: the CUDA
  allocator's peak, or on CPU the growth of the process's resident set (peak ``VmHWM`` after
  resetting it, minus ``VmRSS`` before, both from ``/proc/self/status``, so Linux only; freed
  heap is returned with ``malloc_trim`` first so earlier rows do not hide this one's growth);
- and one more row per fuser, ``<name>+io``, for the whole flow on the bundled SPECT-MRI pair:
  read both PNGs, split colour, fuse, merge colour, write a PNG to a temporary folder.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.registry import get_fuser_spec
from medfuse_cli.pipeline import Fusion, load_pair, write_fused
from medfuse_cli.weights import write_checkpoint

EXAMPLE_PAIRS = (
    ("SPECT-MRI", "SPECT", "10018"),
    ("PET-MRI", "PET", "25022"),
    ("CT-MRI", "CT", "2004"),
    ("SPECT-MRI", "SPECT", "25014"),
    ("PET-MRI", "PET", "30066"),
    ("CT-MRI", "CT", "16011"),
)
FLOW_PAIR = EXAMPLE_PAIRS[0]  # colour functional image: the flow converts colour both ways
WITH_CHECKPOINT = "checkpoint"
RANDOM_WEIGHTS = "random"
NO_WEIGHTS = "none"


@dataclass(frozen=True)
class BenchRow:
    """One measured row; ``model`` ends in ``+io`` for the whole-flow rows (batch 1, file size)."""

    model: str
    batch: int
    height: int
    width: int
    params: int
    gflops_per_pair: float
    median_ms: float
    p90_ms: float
    pairs_per_s: float
    peak_mem_mb: float
    weights: str
    calls: int

    @property
    def gflops_per_s(self) -> float:
        return self.gflops_per_pair * self.pairs_per_s

    def to_json(self) -> dict:
        """The documented JSON fields only (``weights`` and ``calls`` are shown in the table)."""
        row = asdict(self)
        del row["weights"], row["calls"]
        return row


@dataclass(frozen=True)
class BenchSettings:
    """How long to measure: warm-up and timed calls per row, capped by a time budget."""

    warmup: int = 3
    repeat: int = 20
    max_seconds: float = 30.0


def examples_dir() -> Path:
    """The bundled example pairs: the source tree's ``examples/`` or an installed copy."""
    for candidate in (
        Path(__file__).resolve().parent.parent / "examples",
        Path(sys.prefix) / "share" / "medfuse" / "examples",
    ):
        if candidate.is_dir():
            return candidate
    raise MedfuseError("the bundled example images are missing; benchmark needs them as inputs")


def _example_paths(pair: tuple[str, str, str]) -> tuple[Path, Path]:
    folder, modality, name = pair
    root = examples_dir() / folder
    return root / "MRI" / f"{name}.png", root / modality / f"{name}.png"


def _resized(plane: np.ndarray, size: int) -> np.ndarray:
    if plane.shape == (size, size):
        return plane
    image = Image.fromarray(plane, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0)


def example_planes(size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Y planes of the bundled pairs resized to size×size, cycled to ``batch``: (N, 1, H, W)."""
    pairs = [load_pair(pair[2], *_example_paths(pair)) for pair in EXAMPLE_PAIRS]
    chosen = [pairs[i % len(pairs)] for i in range(batch)]
    anatomical = np.stack([_resized(p.anatomical_y, size) for p in chosen])[:, None]
    functional = np.stack([_resized(p.functional_y, size) for p in chosen])[:, None]
    return anatomical, functional


def _random_checkpoint(model: str, folder: Path) -> Path | None:
    """A checkpoint file with seeded random weights for ``model``, or None for unknown networks."""
    from medfuse_cli.fusers import lwnet, lywnet

    architectures = {
        "lwnet": (lwnet.LWNet, {}),
        "lywnet": (lywnet.LYWNet, {"format": lywnet.OWN_FORMAT, "normalization": lywnet.PER_IMAGE}),
    }
    if model not in architectures:
        return None
    network, metadata = architectures[model]
    torch.manual_seed(0)
    path = folder / f"{model}-random.safetensors"
    write_checkpoint(path, network().state_dict(), {**metadata, "note": "random weights, timing only"})
    return path


def build_fusion(model: str, device: torch.device, scratch: Path) -> tuple[Fusion, str]:
    """The fuser as ``medfuse fuse`` builds it, or with random weights when it has none."""
    fusion = Fusion(model, device)
    if not fusion.spec.needs_weights:
        return fusion, NO_WEIGHTS
    try:
        fusion.module_for(is_color=True)
        return fusion, WITH_CHECKPOINT
    except MedfuseError:
        path = _random_checkpoint(model, scratch)
        if path is None:
            raise
        return Fusion(model, device, weights=path), RANDOM_WEIGHTS


def count_flops(module: torch.nn.Module, height: int, width: int) -> int:
    """FLOPs for one pair (convolutions and matrix products, as torch's counter defines them).

    Counted on a copy on the ``meta`` device: shapes only, no arithmetic, so even LYWNet's
    hundreds of GFLOPs are counted instantly.
    """
    shadow = copy.deepcopy(module).to("meta")
    y = torch.empty(1, 1, height, width, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        shadow(y, y)
    return counter.get_total_flops()


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


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float]]:
    """Yield a function returning the peak memory (MiB) used inside the block, as documented."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        peak = [0.0]
        yield lambda: peak[0]
        torch.cuda.synchronize(device)
        peak[0] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    _release_free_heap()
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
    except OSError:  # not allowed here: only growth past the earlier peak can be seen
        before = max(before, _status_kib("VmHWM"))
    peak = [0.0]
    yield lambda: peak[0]
    peak[0] = max(0, _status_kib("VmHWM") - before) / 1024


def time_calls(call: Callable[[], object], device: torch.device, settings: BenchSettings) -> list[float]:
    """Milliseconds per call after warm-up; stops early once the time budget is spent.

    At least one warm-up and two timed calls always run, so the slowest networks still give a
    median and a p90 (of few samples: the table shows how many).
    """
    deadline = time.perf_counter() + settings.max_seconds
    for index in range(max(1, settings.warmup)):
        if index and time.perf_counter() > deadline:
            break
        call()
    _synchronize(device)
    deadline = time.perf_counter() + settings.max_seconds
    times: list[float] = []
    while len(times) < max(2, settings.repeat) and (len(times) < 2 or time.perf_counter() < deadline):
        times.append(_timed(call, device))
    return times


def _timed(call: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(
    model: str,
    batch: int,
    shape: tuple[int, int],
    params: int,
    flops: float,
    times: list[float],
    mem: float,
    weights: str,
) -> BenchRow:
    median = statistics.median(times)
    return BenchRow(
        model=model,
        batch=batch,
        height=shape[0],
        width=shape[1],
        params=params,
        gflops_per_pair=flops / 1e9,
        median_ms=median,
        p90_ms=float(np.percentile(times, 90)),
        pairs_per_s=batch * 1000 / median,
        peak_mem_mb=mem,
        weights=weights,
        calls=len(times),
    )


def bench_fuser(fusion: Fusion, weights: str, size: int, batch: int, settings: BenchSettings) -> BenchRow:
    """Time the fuser alone on a batch of real-looking Y planes already on the device."""
    module = fusion.module_for(is_color=True)
    params = sum(p.numel() for p in module.parameters())
    flops = count_flops(module, size, size)
    planes = example_planes(size, batch)
    with peak_memory(fusion.device) as peak:
        anatomical, functional = (torch.tensor(p, device=fusion.device) for p in planes)
        with torch.inference_mode():
            times = time_calls(lambda: module(anatomical, functional), fusion.device, settings)
    return _row(fusion.spec.name, batch, (size, size), params, flops, times, peak(), weights)


def bench_flow(fusion: Fusion, weights: str, scratch: Path, settings: BenchSettings) -> BenchRow:
    """Time read → colour split → fuse → colour merge → PNG write for the example pair."""
    mri, functional = _example_paths(FLOW_PAIR)
    output = scratch / "fused.png"

    def flow() -> None:
        pair = load_pair(FLOW_PAIR[2], mri, functional)
        fused = fusion.fuse_y(pair.anatomical_y, pair.functional_y, pair.is_color)
        write_fused(output, pair, fused)

    module = fusion.module_for(is_color=True)
    params = sum(p.numel() for p in module.parameters())
    shape = load_pair(FLOW_PAIR[2], mri, functional).anatomical_y.shape
    flops = count_flops(module, *shape)
    with peak_memory(fusion.device) as peak:
        # The flow ends in a device-to-host copy, so wall-clock time is exact even on CUDA.
        times = time_calls(flow, torch.device("cpu"), settings)
    return _row(f"{fusion.spec.name}+io", 1, shape, params, flops, times, peak(), weights)


def run_benchmark(
    models: list[str],
    device: torch.device,
    size: int,
    batches: list[int],
    settings: BenchSettings,
    on_row: Callable[[str], None] = lambda _: None,
) -> list[BenchRow]:
    """Every requested fuser at every batch size, then its whole-flow row."""
    for model in models:
        get_fuser_spec(model)  # unknown names fail before anything is timed
    rows = []
    with tempfile.TemporaryDirectory(prefix="medfuse-bench-") as scratch:
        for model in models:
            fusion, weights = build_fusion(model, device, Path(scratch))
            for batch in batches:
                on_row(f"{model} batch {batch}")
                rows.append(bench_fuser(fusion, weights, size, batch, settings))
            on_row(f"{model}+io")
            rows.append(bench_flow(fusion, weights, Path(scratch), settings))
    return rows
