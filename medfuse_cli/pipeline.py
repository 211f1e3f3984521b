"""The one fusion flow: files -> Y (+ CbCr) -> fuser -> fused Y + CbCr -> files.

``load_pair`` reads and checks a pair, ``Fusion`` holds the built fusers on a device and fuses
batches of same-sized pairs, ``compose`` puts the functional image's chroma back. ``fuse_folders``
runs the flow over two folders with decoding and encoding overlapped on worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medfuse_cli.color import merge_luma, split_luma
from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.registry import FuserSpec, get_fuser_spec
from medfuse_cli.io import LoadedImage, read_image, write_png
from medfuse_cli.runtime import keep_heap_memory
from medfuse_cli.weights import read_checkpoint, resolve_checkpoint


@dataclass(frozen=True)
class Pair:
    """An MRI and a functional (or CT) image, as Y planes plus the functional chroma."""

    name: str
    anatomical_y: np.ndarray
    functional_y: np.ndarray
    chroma: np.ndarray | None
    bit_depth: int

    @property
    def is_color(self) -> bool:
        return self.chroma is not None


def load_pair(name: str, mri_path: Path, functional_path: Path, resize: bool = False) -> Pair:
    """Read both images and check they can be fused; ``resize`` fits the second to the MRI."""
    mri = read_image(mri_path)
    functional = read_image(functional_path)
    if mri.is_color:
        raise MedfuseError(f"{mri_path}: the MRI must be grayscale, got a colour image")
    if mri.size != functional.size:
        if not resize:
            raise MedfuseError(
                f"sizes differ: {mri_path} is {mri.size[0]}x{mri.size[1]}, {functional_path} is "
                f"{functional.size[0]}x{functional.size[1]} (register them, or pass --resize)"
            )
        functional = _resized(functional, mri.size)
    functional_y, chroma = split_luma(functional.pixels)
    bit_depth = 16 if mri.bit_depth == 16 and functional.bit_depth == 16 and chroma is None else 8
    return Pair(name, mri.pixels, functional_y, chroma, bit_depth)


def _resized(image: LoadedImage, size: tuple[int, int]) -> LoadedImage:
    """Bicubic resize in float, per channel, so no precision is lost to 8-bit."""
    channels = image.pixels if image.is_color else image.pixels[..., None]
    planes = [
        np.asarray(Image.fromarray(channels[..., c], mode="F").resize(size, Image.Resampling.BICUBIC))
        for c in range(channels.shape[-1])
    ]
    pixels = np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
    return LoadedImage(pixels if image.is_color else pixels[..., 0], image.bit_depth, image.path)


def compose(pair: Pair, fused_y: np.ndarray) -> np.ndarray:
    """The output image: fused Y with the functional image's Cb/Cr, or gray for CT."""
    return merge_luma(fused_y, pair.chroma)


class Fusion:
    """A named fuser built on a device, with the checkpoint chosen per kind of pair."""

    def __init__(
        self,
        model: str,
        device: torch.device,
        weights: Path | None = None,
        checkpoint: str | None = None,
        options: dict | None = None,
    ) -> None:
        keep_heap_memory()  # tensors reuse freed pages instead of faulting in new ones each call
        self.spec: FuserSpec = get_fuser_spec(model)
        self.device = device
        self.weights = weights
        self.checkpoint = checkpoint
        self.options = options or {}
        self._modules: dict[str | None, torch.nn.Module] = {}
        if weights is not None and not self.spec.needs_weights:
            raise MedfuseError(f"model '{model}' is a classical rule and takes no --weights")
        if checkpoint is not None:
            self.spec.checkpoint(checkpoint)

    def module_for(self, is_color: bool) -> torch.nn.Module:
        """The module for a colour-functional or grayscale pair, built once."""
        if not self.spec.needs_weights:
            key = None
        elif self.weights is not None:
            key = "--weights"
        else:
            key = self.checkpoint or self.spec.default_checkpoint(is_color).name
        if key not in self._modules:
            self._modules[key] = self._build(key)
        return self._modules[key]

    def _build(self, key: str | None) -> torch.nn.Module:
        loaded = None
        if key == "--weights":
            loaded = read_checkpoint(self.weights)
        elif key is not None:
            loaded = resolve_checkpoint(self.spec.checkpoint(key))
        module = self.spec.build(loaded, self.options)
        return module.eval().to(self.device)

    @torch.inference_mode()
    def fuse_y(self, anatomical: np.ndarray, functional: np.ndarray, is_color: bool) -> np.ndarray:
        """Fuse a stack (N, H, W) or a single (H, W) pair of Y planes; returns the same shape."""
        single = anatomical.ndim == 2
        a = torch.from_numpy(np.ascontiguousarray(anatomical)).to(self.device, torch.float32)
        b = torch.from_numpy(np.ascontiguousarray(functional)).to(self.device, torch.float32)
        if single:
            a, b = a[None], b[None]
        fused = self.module_for(is_color)(a[:, None], b[:, None])[:, 0]
        result = fused.clamp(0.0, 1.0).float().cpu().numpy()
        return result[0] if single else result

    def fuse_pairs(self, pairs: list[Pair]) -> list[np.ndarray]:
        """Fuse pairs, batching those that share size and colour."""
        results: list[np.ndarray | None] = [None] * len(pairs)
        groups: dict[tuple, list[int]] = {}
        for index, pair in enumerate(pairs):
            groups.setdefault((pair.anatomical_y.shape, pair.is_color), []).append(index)
        for (_, is_color), indices in groups.items():
            fused = self.fuse_y(
                np.stack([pairs[i].anatomical_y for i in indices]),
                np.stack([pairs[i].functional_y for i in indices]),
                is_color,
            )
            for i, plane in zip(indices, fused, strict=True):
                results[i] = plane
        return results  # type: ignore[return-value]


@dataclass(frozen=True)
class PairJob:
    """One pair of a folder run: its name, inputs and output file."""

    name: str
    mri: Path
    functional: Path
    output: Path


@dataclass(frozen=True)
class PairOutcome:
    name: str
    output: Path
    error: str | None = None


def fuse_folders(
    fusion: Fusion,
    jobs: list[PairJob],
    batch_size: int = 16,
    resize: bool = False,
    on_done: Callable[[PairOutcome], None] = lambda _: None,
    workers: int = 2,
    fuse_threads: int | None = None,
) -> list[PairOutcome]:
    """Fuse every job; a pair that fails is reported and skipped, the others are written.

    Decoding of the next batch, and colour merging and encoding of the previous one, run on
    worker threads while the fuser works (numpy, imagecodecs and Pillow release the GIL), so the flow is
    not serialised on I/O. On CPU the fuser gets ``fuse_threads`` torch threads, by default one
    fewer than configured: the workers need a core, and torch threads that share theirs
    spin-wait against them (see BENCHMARKS.md).
    """
    outcomes: list[PairOutcome] = []
    with _torch_threads(fusion.device, fuse_threads), ThreadPoolExecutor(max_workers=workers) as pool:
        writes: list[tuple[PairJob, Future]] = []
        for batch in _loaded_batches(pool, jobs, batch_size, resize):
            good = [(job, pair) for job, pair in batch if isinstance(pair, Pair)]
            for job, failure in batch:
                if isinstance(failure, MedfuseError):
                    outcome = PairOutcome(job.name, job.output, str(failure))
                    outcomes.append(outcome)
                    on_done(outcome)
            fused = fusion.fuse_pairs([pair for _, pair in good])
            for (job, pair), plane in zip(good, fused, strict=True):
                writes.append((job, pool.submit(write_fused, job.output, pair, plane)))
            writes = _collect_finished(writes, outcomes, on_done, wait=False)
        _collect_finished(writes, outcomes, on_done, wait=True)
    return outcomes


@contextmanager
def _torch_threads(device: torch.device, wanted: int | None) -> Iterator[None]:
    """Run the block with ``wanted`` torch threads on CPU (default: one fewer), then restore."""
    configured = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(wanted or max(1, configured - 1))
    try:
        yield
    finally:
        torch.set_num_threads(configured)


def write_fused(output: Path | str, pair: Pair, fused_y: np.ndarray) -> None:
    """Write the fused image of ``pair`` (``-``: standard output), in the pair's bit depth."""
    write_png(output, compose(pair, fused_y), pair.bit_depth)


def _loaded_batches(
    pool: ThreadPoolExecutor, jobs: list[PairJob], batch_size: int, resize: bool
) -> Iterator[list[tuple[PairJob, Pair | MedfuseError]]]:
    """Batches of loaded pairs; the next batch decodes on a worker while this one is fused."""

    def load_batch(batch: list[PairJob]) -> list[tuple[PairJob, Pair | MedfuseError]]:
        return [(job, _try_load(job, resize)) for job in batch]

    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    upcoming = pool.submit(load_batch, batches[0]) if batches else None
    for index in range(len(batches)):
        current = upcoming
        if index + 1 < len(batches):
            upcoming = pool.submit(load_batch, batches[index + 1])
        yield current.result()


def _try_load(job: PairJob, resize: bool) -> Pair | MedfuseError:
    try:
        return load_pair(job.name, job.mri, job.functional, resize)
    except MedfuseError as exc:
        return exc


def _collect_finished(
    writes: list[tuple[PairJob, Future]],
    outcomes: list[PairOutcome],
    on_done: Callable[[PairOutcome], None],
    wait: bool,
) -> list[tuple[PairJob, Future]]:
    """Record finished writes (all of them when ``wait``); return those still running."""
    still_running = []
    for job, future in writes:
        if not wait and not future.done():
            still_running.append((job, future))
            continue
        try:
            future.result()
            outcome = PairOutcome(job.name, job.output)
        except OSError as exc:
            outcome = PairOutcome(job.name, job.output, f"cannot write {job.output}: {exc.strerror or exc}")
        outcomes.append(outcome)
        on_done(outcome)
    return still_running
