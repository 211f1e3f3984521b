"""The benchmark plan: which fusers, built how, timed on which inputs, reported as which rows.

Each fuser is built exactly as ``medfuse fuse`` builds it (``pipeline.Fusion``: its checkpoint,
or the one ``--checkpoint``/``--weights`` names, and its thread count). A network whose default
checkpoint is neither bundled nor downloadable is timed untrained (``pretrained=False``): valid
for speed (the amount of arithmetic does not depend on the values), silent on quality; its rows
say so. Nothing is written but the whole-flow row's PNG.

Per fuser and batch size, one row (measured with ``bench.measure``):

- latency of one call ``fuser(anatomical, functional)`` on (N, 1, H, W) Y planes of the bundled
  example pairs, already on the device, with the fuser's thread count, after untimed warm-up;
- FLOPs and parameters per pair, and peak memory above what was in use before the inputs;
- and one more row per fuser, ``<name>+io``, for the whole flow on the bundled SPECT-MRI pair:
  read both PNGs, split colour, fuse, merge colour, write a PNG to a temporary folder;
- with ``volume_slices``, a row ``<name>+volume`` for the whole volume flow: read a size×size×K
  MRI and grayscale PET pair of ``.nii.gz`` files made from the example pairs, window, colour
  map, fuse slice by slice, write the fused ``.nii.gz`` (``medfuse fuse t1.nii.gz pet.nii.gz``).

With ``backend="onnxruntime"`` (networks only, CPU only), each network is exported to ONNX in
memory as ``medfuse export`` exports it (``medfuse_cli.export``: checked against torch first) and
each row, ``<name>+onnxruntime``, times ``InferenceSession.run`` on the same inputs, with the
same warm-up and budget, and ``intra_op_num_threads`` = the row's thread count. Those rows are
per call only: the whole-flow rows time medfuse's torch flow, so they are not repeated.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medfuse_cli.bench.measure import (
    TimingBudget,
    count_flops,
    count_params,
    peak_memory,
    summarise,
    time_calls,
)
from medfuse_cli.errors import CheckpointError, InputError, MedfuseError
from medfuse_cli.fusers import get_fuser_spec
from medfuse_cli.fusers.registry import FUNCTIONAL
from medfuse_cli.onnx_runtime import BACKENDS
from medfuse_cli.pipeline import Fusion, load_pair, write_fused
from medfuse_cli.volume_fusion import VolumeOptions, fuse_volumes
from medfuse_cli.volumes import read_volume, write_nifti

EXAMPLE_PAIRS = (
    ("SPECT-MRI", "SPECT", "10018"),
    ("PET-MRI", "PET", "25022"),
    ("CT-MRI", "CT", "2004"),
    ("SPECT-MRI", "SPECT", "25014"),
    ("PET-MRI", "PET", "30066"),
    ("CT-MRI", "CT", "16011"),
)
FLOW_PAIR = EXAMPLE_PAIRS[0]  # colour functional image: the flow converts colour both ways


@dataclass(frozen=True)
class BenchRow:
    """One measured row.

    Attributes:
        model: the fuser's name, ``<name>+io`` for the whole-flow row (batch 1, the file's size).
        batch: pairs per call.
        height, width: pixels of each plane.
        params: the fuser's parameter count (0 for rules).
        gflops_per_pair: GFLOPs of one pair (convolutions and matrix products).
        median_ms, p90_ms: milliseconds per call.
        pairs_per_s: ``batch`` pairs per median call, per second.
        peak_mem_mb: MiB in use at the peak above before the inputs (``measure.peak_memory``).
        threads: torch CPU threads the calls ran with.
        checkpoint: what the network ran with (``Fusion.checkpoint_for``: a checkpoint name,
            ``--weights PATH`` or ``untrained``); None for a rule.
        checkpoint_sha256: the sha256 of that checkpoint's file (``Fusion.checkpoint_sha256``);
            None for a rule or untrained weights.
        untrained: timed with untrained weights: speed only, never quality.
        calls: timed calls behind the median and p90.
    """

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
    threads: int
    checkpoint: str | None
    checkpoint_sha256: str | None
    untrained: bool
    calls: int

    @property
    def gflops_per_s(self) -> float:
        return self.gflops_per_pair * self.pairs_per_s

    def to_json(self) -> dict:
        """The fields ``medfuse benchmark --json`` prints (``untrained`` shows in ``checkpoint``,
        ``calls`` only in the table)."""
        row = asdict(self)
        del row["untrained"], row["calls"]
        return row


@dataclass(frozen=True)
class BenchPlan:
    """What ``run_benchmark`` measures.

    Attributes:
        models: registered fuser names, in the order their rows come.
        device: where the fusers run.
        size: side in pixels of the square planes of the per-call rows.
        batches: batch sizes of the per-call rows, one row each.
        budget: warm-up, timed calls and time budget per row.
        threads: torch CPU threads for every fuser; None: each fuser's ``spec.cpu_threads``.
        checkpoint, weights: as ``medfuse fuse`` takes them, for the plan's one network.
        volume_slices: slices of the volume-flow row (0: no such row).
        backend: ``torch`` (the module) or ``onnxruntime`` (its ONNX export; see the module docstring).
    """

    models: tuple[str, ...]
    device: torch.device
    size: int = 256
    batches: tuple[int, ...] = (1, 16)
    budget: TimingBudget = field(default_factory=TimingBudget)
    threads: int | None = None
    checkpoint: str | None = None
    weights: Path | None = None
    volume_slices: int = 0
    backend: str = "torch"


def examples_dir() -> Path:
    """The bundled example pairs: the source tree's ``examples/`` or an installed copy.

    Raises:
        MedfuseError: neither exists.
    """
    for candidate in (
        Path(__file__).resolve().parents[2] / "examples",
        Path(sys.prefix) / "share" / "medfuse" / "examples",
    ):
        if candidate.is_dir():
            return candidate
    raise MedfuseError("the bundled example images are missing; benchmark needs them as inputs")


def example_paths(pair: tuple[str, str, str]) -> tuple[Path, Path]:
    """The MRI and functional PNG files of one of ``EXAMPLE_PAIRS``.

    Raises:
        MedfuseError: the bundled examples are missing.
    """
    folder, modality, name = pair
    root = examples_dir() / folder
    return root / "MRI" / f"{name}.png", root / modality / f"{name}.png"


def _resized(plane: np.ndarray, size: int) -> np.ndarray:
    if plane.shape == (size, size):
        return plane
    image = Image.fromarray(plane, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0)


def example_planes(size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Real inputs for timing: the bundled pairs' Y planes, resized and cycled to ``batch``.

    Returns:
        anatomical and functional float32 arrays (batch, 1, size, size) in [0, 1].
    """
    pairs = [load_pair(pair[2], *example_paths(pair)) for pair in EXAMPLE_PAIRS]
    chosen = [pairs[i % len(pairs)] for i in range(batch)]
    anatomical = np.stack([_resized(p.anatomical_y, size) for p in chosen])[:, None]
    functional = np.stack([_resized(p.functional_y, size) for p in chosen])[:, None]
    return anatomical, functional


def build_fusion(
    model: str,
    device: torch.device,
    threads: int | None = None,
    checkpoint: str | None = None,
    weights: Path | None = None,
) -> Fusion:
    """The fuser as ``medfuse fuse`` builds it, its functional-pair module loaded now.

    When no checkpoint or weights are named and the network's default checkpoint is
    unavailable, the fuser is built untrained: timing needs the arithmetic, not the values.

    Args:
        model: a registered fuser name.
        device: where it runs.
        threads: torch CPU threads during its calls; None: the fuser's ``spec.cpu_threads``.
        checkpoint, weights: as ``medfuse fuse``'s options (a network's only).

    Returns:
        the ``Fusion``; ``pretrained`` is False when it was built untrained.

    Raises:
        InputError: as ``Fusion`` (unknown model or checkpoint, weights for a rule, ...).
        CheckpointError: the named checkpoint or weights cannot be loaded (never replaced by
            untrained weights).
    """
    fusion = Fusion(model, device, checkpoint, weights, threads)
    try:
        fusion.module_for(FUNCTIONAL)
    except CheckpointError:
        if checkpoint is not None or weights is not None:
            raise
        return Fusion(model, device, threads=threads, pretrained=False)
    return fusion


def check_backend(plan: BenchPlan) -> None:
    """Refuse what a backend cannot time, before anything is built.

    Raises:
        InputError: an unknown backend; for ``onnxruntime``, a classical rule (not exported), a
            device other than the CPU, or ``volume_slices`` (the volume flow is torch's).
    """
    if plan.backend not in BACKENDS:
        raise InputError(f"--backend takes {' or '.join(BACKENDS)}, got '{plan.backend}'")
    if plan.backend == "torch":
        return
    rules = [name for name in plan.models if not get_fuser_spec(name).needs_weights]
    if rules:
        raise InputError(
            f"--backend onnxruntime times exported networks; {', '.join(rules)} "
            f"{'is a classical rule' if len(rules) == 1 else 'are classical rules'}"
        )
    if plan.device.type != "cpu":
        raise InputError(f"--backend onnxruntime runs on the CPU here; pass --device cpu, not {plan.device}")
    if plan.volume_slices:
        raise InputError("--volume-slices times medfuse's torch flow; drop it with --backend onnxruntime")


def _fusions(plan: BenchPlan) -> list[Fusion]:
    """Every fuser of the plan, built before anything is timed so a bad name fails at once.

    Raises:
        InputError: ``checkpoint`` or ``weights`` with other than exactly one network, or what
            ``check_backend`` refuses.
    """
    check_backend(plan)
    specs = [get_fuser_spec(model) for model in plan.models]
    networks = [spec.name for spec in specs if spec.needs_weights]
    chosen = plan.checkpoint is not None or plan.weights is not None
    if chosen and len(networks) != 1:
        raise InputError(
            f"--checkpoint and --weights need exactly one network model, got {len(networks)}"
            + (f" ({', '.join(networks)})" if networks else "")
        )
    return [
        build_fusion(
            spec.name,
            plan.device,
            plan.threads,
            plan.checkpoint if spec.needs_weights else None,
            plan.weights if spec.needs_weights else None,
        )
        for spec in specs
    ]


def _row(
    fusion: Fusion, label: str, batch: int, shape: tuple[int, int], times: list[float], peak_mb: float
) -> BenchRow:
    module = fusion.module_for(FUNCTIONAL)
    latency = summarise(times)
    return BenchRow(
        model=label,
        batch=batch,
        height=shape[0],
        width=shape[1],
        params=count_params(module),
        gflops_per_pair=count_flops(module, (1, 1, *shape), (1, 1, *shape)) / 1e9,
        median_ms=latency.median_ms,
        p90_ms=latency.p90_ms,
        pairs_per_s=batch * 1000 / latency.median_ms,
        peak_mem_mb=peak_mb,
        threads=fusion.describe()["threads"],
        checkpoint=fusion.checkpoint_for(FUNCTIONAL),
        checkpoint_sha256=fusion.checkpoint_sha256(FUNCTIONAL),
        untrained=not fusion.pretrained,
        calls=latency.calls,
    )


def bench_fuser(fusion: Fusion, size: int, batch: int, budget: TimingBudget) -> BenchRow:
    """Time the fuser alone on ``batch`` example pairs of size×size, already on the device.

    Returns:
        the row named after the fuser.
    """
    module = fusion.module_for(FUNCTIONAL)
    planes = example_planes(size, batch)
    with peak_memory(fusion.device) as peak:
        anatomical, functional = (torch.tensor(p, device=fusion.device) for p in planes)
        # Fusion owns the thread count during its calls; the module is called directly so that
        # only the fuser's arithmetic is timed, not fuse_y's copies and checks.
        with torch.inference_mode(), fusion.thread_scope():
            times = time_calls(lambda: module(anatomical, functional), fusion.device, budget)
    return _row(fusion, fusion.spec.name, batch, (size, size), times, peak.mb)


def onnxruntime_session(fusion: Fusion) -> object:
    """The fuser's functional-pair network exported to ONNX in memory (checked against torch, as
    ``medfuse export`` does) and loaded in an ONNX Runtime CPU session whose
    ``intra_op_num_threads`` is the fuser's thread count.

    Raises:
        InputError: the export failed, or ONNX Runtime differs from torch by more than
            ``export.CHECK_TOLERANCE``.
        MedfuseError: a package of the onnx extra is missing.
    """
    from medfuse_cli.export import checked_session, export_module

    module = fusion.module_for(FUNCTIONAL)
    data = export_module(module, fusion.spec.name).SerializeToString()
    session, _ = checked_session(module, fusion.spec.name, data, threads=fusion.describe()["threads"])
    return session


def bench_onnxruntime(
    fusion: Fusion, session: object, size: int, batch: int, budget: TimingBudget
) -> BenchRow:
    """Time ``session.run`` (an export of the fuser, ``onnxruntime_session``) on the inputs
    ``bench_fuser`` times torch on: ``batch`` example pairs of size×size, float32 numpy arrays.

    Returns:
        the ``<name>+onnxruntime`` row; parameters and FLOPs are the network's.
    """
    from medfuse_cli.export import INPUT_NAMES, OUTPUT_NAME

    planes = example_planes(size, batch)
    with peak_memory(torch.device("cpu")) as peak:
        feeds = {
            name: np.ascontiguousarray(p, np.float32) for name, p in zip(INPUT_NAMES, planes, strict=True)
        }
        times = time_calls(lambda: session.run([OUTPUT_NAME], feeds), torch.device("cpu"), budget)
    return _row(fusion, f"{fusion.spec.name}+onnxruntime", batch, (size, size), times, peak.mb)


def bench_flow(fusion: Fusion, scratch: Path, budget: TimingBudget) -> BenchRow:
    """Time read → colour split → fuse → colour merge → PNG write of the example pair.

    Returns:
        the ``<name>+io`` row (batch 1, the pair's own size); ``scratch`` receives its PNG.
    """
    mri, functional = example_paths(FLOW_PAIR)
    output = scratch / "fused.png"

    def flow() -> None:
        pair = load_pair(FLOW_PAIR[2], mri, functional)
        fused = fusion.fuse_y(pair.anatomical_y, pair.functional_y, pair.kind)
        write_fused(output, pair, fused)

    shape = load_pair(FLOW_PAIR[2], mri, functional).anatomical_y.shape
    with peak_memory(fusion.device) as peak:
        # The flow ends in a device-to-host copy, so wall-clock time is exact even on CUDA.
        times = time_calls(flow, torch.device("cpu"), budget)
    return _row(fusion, f"{fusion.spec.name}+io", 1, shape, times, peak.mb)


def bench_volume(fusion: Fusion, scratch: Path, size: int, slices: int, budget: TimingBudget) -> BenchRow:
    """Time read -> window -> colour map -> fuse -> write of a size×size×``slices`` NIfTI pair.

    The volumes are the example pairs' Y planes cycled along the slice axis: the MRI as int16
    arbitrary units (Y × 1000), the PET as float32 (Y × 10, an SUV-like range), 1 mm voxels.
    The fused volume goes to ``scratch`` as ``.nii.gz``; slices are fused 16 per call.

    Returns:
        the ``<name>+volume`` row: ``batch`` is the number of slices, ``pairs_per_s`` slices per second.
    """
    import nibabel

    anatomical, functional = example_planes(size, slices)
    mri_path, pet_path, output = scratch / "t1.nii.gz", scratch / "pet.nii.gz", scratch / "fused.nii.gz"
    nibabel.save(
        nibabel.Nifti1Image(np.moveaxis(anatomical[:, 0] * 1000, 0, -1).astype(np.int16), np.eye(4)), mri_path
    )
    nibabel.save(
        nibabel.Nifti1Image(np.moveaxis(functional[:, 0] * 10, 0, -1).astype(np.float32), np.eye(4)), pet_path
    )

    def flow() -> None:
        mri, pet = read_volume(mri_path), read_volume(pet_path)
        fused = fuse_volumes(fusion, mri, pet, VolumeOptions(kind="pet"))
        write_nifti(output, fused.voxels, mri, fused.header_description(fusion.spec.name), overwrite=True)

    with peak_memory(fusion.device) as peak:
        times = time_calls(flow, torch.device("cpu"), budget)
    return _row(fusion, f"{fusion.spec.name}+volume", slices, (size, size), times, peak.mb)


def run_benchmark(plan: BenchPlan, on_row: Callable[[str], None] = lambda _: None) -> list[BenchRow]:
    """Every fuser of the plan at every batch size, then its whole-flow row.

    Args:
        plan: what to measure.
        on_row: called with a row's label (``"lwnet batch 16"``, ``"lwnet+io"``,
            ``"lwnet export"``) as it starts.

    Returns:
        the rows, per fuser: one per batch size, then ``<name>+io``, then ``<name>+volume``
        when ``plan.volume_slices`` is set; with the onnxruntime backend, one
        ``<name>+onnxruntime`` row per batch size.

    Raises:
        InputError, CheckpointError: as ``build_fusion``, or ``checkpoint``/``weights`` with
            other than one network, or what ``check_backend`` refuses; raised before anything
            is timed. With the onnxruntime backend, as ``onnxruntime_session``.
    """
    fusions = _fusions(plan)
    rows = []
    if plan.backend == "onnxruntime":
        sessions = []
        for fusion in fusions:  # every export first: one that fails stops the run before any timing
            on_row(f"{fusion.spec.name} export")
            sessions.append(onnxruntime_session(fusion))
        for fusion, session in zip(fusions, sessions, strict=True):
            for batch in plan.batches:
                on_row(f"{fusion.spec.name}+onnxruntime batch {batch}")
                rows.append(bench_onnxruntime(fusion, session, plan.size, batch, plan.budget))
        return rows
    with tempfile.TemporaryDirectory(prefix="medfuse-bench-") as scratch:
        for fusion in fusions:
            for batch in plan.batches:
                on_row(f"{fusion.spec.name} batch {batch}")
                rows.append(bench_fuser(fusion, plan.size, batch, plan.budget))
            on_row(f"{fusion.spec.name}+io")
            rows.append(bench_flow(fusion, Path(scratch), plan.budget))
            if plan.volume_slices:
                on_row(f"{fusion.spec.name}+volume")
                rows.append(bench_volume(fusion, Path(scratch), plan.size, plan.volume_slices, plan.budget))
    return rows
