"""Export a fuser network to ONNX, with its checkpoint's provenance, checked against torch.

The graph takes two float32 tensors ``anatomical`` and ``functional`` of shape
(batch, 1, height, width), luminance (Y) in [0, 1], and returns ``fused``, the same shape, in
[0, 1]; batch, height and width are dynamic. It computes what the module ``create_fuser`` builds
(eval mode) computes, with two differences that change no number beyond float round-off:

- **The whole batch in one pass.** At inference LWNet and LYWNet fuse each pair on its own (a
  Python loop, so that batching never moves a bit in torch; ``LWNet.forward``). A traced loop
  would freeze the batch size, so the exported graph runs the networks' batched path, which
  their training uses: no normalisation layer mixes pairs (LWNet has none, LYWNet's are per
  image or per pair), so each pair's result equals the per-pair one within float32 round-off (3e-7 for
  LWNet, measured by ``check_against_torch`` and ``tests/test_export.py``).
- **Padding without a branch.** Both networks pad H and W up to a multiple of 4 only when they
  are not one already; ``torch.export`` records such a branch for the example input's size and
  drops the other (an LWNet exported from a 64x64 example then failed on 30x45 in ONNX
  Runtime). The graph always pads, by ``-H mod 4`` rows and ``-W mod 4`` columns (zero when
  there is nothing to pad), with the network's own mode (edge replication for LWNet,
  reflection for LYWNet).

The input checks of ``registry.check_fuser_inputs`` (shape, [0, 1], finite) are not in the
graph: ONNX cannot raise. A caller of the ONNX file checks its inputs itself.

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``, the
default since torch 2.9), which needs ``onnxscript``; the TorchScript exporter (``dynamo=False``)
is deprecated and froze LWNet's per-pair loop at the example's batch size. ``onnx``,
``onnxscript`` and ``onnxruntime`` are the ``onnx`` extra (``pip install 'medfuse[onnx]'``).

Every export is checked before it is written: ONNX Runtime (CPU) runs it on random inputs of
two sizes that are not multiples of 4, batch 1 and 3, and its output must equal torch's within
``CHECK_TOLERANCE``; otherwise nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfuse_cli import __version__
from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import InputError, MedfuseError, OutputError
from medfuse_cli.fusers import check_weights_choice, create_fuser, get_fuser_spec, list_fusers
from medfuse_cli.fusers.lwnet import SHALLOW_STRIDE, LWNet
from medfuse_cli.fusers.lywnet import LYWNet
from medfuse_cli.fusers.registry import FuserSpec
from medfuse_cli.weights import LoadedCheckpoint, read_checkpoint, resolve_checkpoint

if TYPE_CHECKING:
    import onnx

INPUT_NAMES = ("anatomical", "functional")
OUTPUT_NAME = "fused"
AXES = {0: "batch", 2: "height", 3: "width"}
# torch 2.13's exporter writes opset 18 and up; below 18 it falls back to ONNX's version
# converter, which fails on Pad and then silently keeps 18. 23 is the newest it knows.
MIN_OPSET, MAX_OPSET = 18, 23
DEFAULT_OPSET = 20  # torch's own default, pinned so that a torch upgrade does not change files
# ONNX Runtime against torch on the check inputs: measured 3e-7 for LWNet, 5e-6 for LYWNet.
CHECK_TOLERANCE = 1e-4
# The example the graph is traced with: batch 2 (torch specialises sizes 0 and 1) and sides
# that differ from each other and from the batch and are not multiples of 4.
_EXAMPLE_SHAPE = (2, 1, 29, 35)
# Check shapes: other sides than the example's, neither a multiple of 4, batch 1 and 3.
CHECK_SHAPES = ((1, 1, 45, 61), (3, 1, 23, 18))
_PIP_HINT = "pip install 'medfuse[onnx]'"


# --- the graph -----------------------------------------------------------------------------


def _pad_to_multiple(x: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    """Pad the bottom and right of ``x`` (N, C, H, W) to multiples of ``multiple``, always
    (zero rows or columns when a side is one already), so the traced graph has no branch."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode=mode)


def _lwnet_graph(network: LWNet, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
    """``LWNet._fuse`` on the whole batch, padding without a branch (edge replication)."""
    height, width = anatomical.shape[-2:]
    shallow, deep = network.encoders(
        _pad_to_multiple(anatomical, SHALLOW_STRIDE, "replicate"),
        _pad_to_multiple(functional, SHALLOW_STRIDE, "replicate"),
    )
    weight = network.decoder(network.mca(deep), shallow)[..., :height, :width]
    return torch.lerp(functional, anatomical, weight)


def _lywnet_graph(network: LYWNet, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
    """``LYWNet._fuse_one`` on the whole batch, then its clamp; padding without a branch (reflection).

    The extractor sees each pair's two images next to each other (batch index 2k and 2k + 1),
    which a per-pair checkpoint's normalisation groups, and a per-image one normalises apart.
    """
    height, width = anatomical.shape[-2:]
    both = torch.stack([anatomical, functional], dim=1).flatten(0, 1)
    features = network.extractor(_pad_to_multiple(both, 4, "reflect")).unflatten(0, (-1, 2))
    fused = network.reconstructor(network.fusion(features[:, 0], features[:, 1]))
    return fused[..., :height, :width].clamp(0.0, 1.0)


GraphForward = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
# The exported computation per network class; another network is exported through its own forward.
_GRAPHS: dict[type, GraphForward] = {LWNet: _lwnet_graph, LYWNet: _lywnet_graph}


class ExportGraph(nn.Module):
    """What is exported: a network's fusion of a whole batch, as a module of its own.

    Holds the network (its parameters are the graph's weights) and calls the batched
    formulation of ``_GRAPHS`` for its class, else its own ``forward``.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self._forward = _GRAPHS.get(type(network), lambda net, a, b: net(a, b))

    def forward(self, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
        """Fuse (N, 1, H, W) float32 Y tensors in [0, 1]; returns (N, 1, H, W) float32 in [0, 1].

        No input checks (see the module docstring); H and W at least the fuser's ``min_size``.
        """
        return self._forward(self.network, anatomical, functional)


# --- provenance ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsRecord:
    """What a network was built with, for the ONNX metadata and ``--json``.

    Attributes:
        name: the checkpoint's name (``lwnet.functional``) or ``--weights PATH``.
        sha256: the safetensors file's sha256 (hex).
        meta: the file header's metadata (``Checkpoint.meta``'s provenance fields for a shipped
            checkpoint), strings.
    """

    name: str
    sha256: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)


def weights_record(
    spec: FuserSpec, checkpoint: str | None = None, weights: Path | None = None
) -> WeightsRecord:
    """The record of the weights ``create_fuser(spec.name, checkpoint, weights)`` loads.

    A shipped checkpoint's name and pinned sha256, and its file's header (which a test of the
    zoo checks against ``Checkpoint.meta``); for ``--weights PATH``, the file's sha256 and header.

    Raises:
        InputError: as ``create_fuser`` (unknown checkpoint, both given, weights for a rule).
        CheckpointError: the file is missing, corrupt or not safetensors.
    """
    name = check_weights_choice(spec, checkpoint, weights)
    if weights is not None:
        return loaded_record(f"--weights {weights}", read_checkpoint(Path(weights)))
    record = spec.checkpoint(name) if name is not None else spec.checkpoints[0]
    return WeightsRecord(record.name, record.sha256, resolve_checkpoint(record).metadata)


def loaded_record(name: str, loaded: LoadedCheckpoint) -> WeightsRecord:
    """The record of weights read from a file: ``name``, the sha256 of the bytes they were read
    from (not of the path read again, which may hold another file by now), and its header."""
    return WeightsRecord(name, loaded.sha256 or "", loaded.metadata)


def onnx_metadata(
    spec: FuserSpec, record: WeightsRecord, opset: int, options: Mapping[str, object] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` of an exported fuser (string keys and values).

    ``medfuse.*``: version, model, opset, smallest side, inputs, output and fuser options;
    ``checkpoint.name``, ``checkpoint.sha256`` and ``checkpoint.<field>`` for every field of the
    safetensors header (network, format, parameters, data, command, schedule, epochs,
    wall_time_minutes, git_commit, test_metrics as JSON text, ...).
    """
    layout = "float32 (batch, 1, height, width)"
    props = {
        "medfuse.version": __version__,
        "medfuse.model": spec.name,
        "medfuse.opset": str(opset),
        "medfuse.min_size": str(spec.min_size),
        "medfuse.inputs": f"{', '.join(INPUT_NAMES)}: {layout}, luminance (Y) in [0, 1]",
        "medfuse.output": f"{OUTPUT_NAME}: {layout}, fused Y in [0, 1]",
        "checkpoint.name": record.name,
        "checkpoint.sha256": record.sha256,
    }
    if options:
        props["medfuse.options"] = json.dumps(dict(options), sort_keys=True)
    props.update({f"checkpoint.{key}": str(value) for key, value in sorted(record.meta.items())})
    return props


# --- export --------------------------------------------------------------------------------


def _require(*packages: str) -> None:
    """Import the optional packages ONNX export needs, or one line saying how to install them.

    Raises:
        MedfuseError: a package of the ``onnx`` extra is not installed.
    """
    missing = []
    for package in packages:
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise MedfuseError(f"ONNX export needs {', '.join(missing)} (the onnx extra): {_PIP_HINT}")


def check_installed(purpose: str, *packages: str) -> None:
    """Check that the optional ``packages`` can be imported, without importing them (onnxscript
    alone takes a second to import, and a cached export never needs it).

    A package set to None in ``sys.modules`` (how a test hides one) counts as missing.

    Args:
        purpose: what needs them, for the message (``--backend onnxruntime``).

    Raises:
        MedfuseError: one line naming the missing packages and ``pip install 'medfuse[onnx]'``.
    """
    missing = []
    for package in packages:
        if package in sys.modules:
            if sys.modules[package] is None:
                missing.append(package)
        elif importlib.util.find_spec(package) is None:
            missing.append(package)
    if missing:
        raise MedfuseError(f"{purpose} needs {', '.join(missing)} (the onnx extra): {_PIP_HINT}")


def check_opset(opset: int) -> int:
    """``opset`` if torch's exporter writes it (``MIN_OPSET`` to ``MAX_OPSET``).

    Raises:
        InputError: any other value.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(
            f"--opset {opset} is not available: torch {torch.__version__.split('+')[0]}'s ONNX exporter "
            f"writes opsets {MIN_OPSET} to {MAX_OPSET}"
        )
    return opset


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OPERATOR = re.compile(r"target=torch\.ops\.(\w+)\.(\w+)")
_SUMMARY_LINE = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>: (.+)")
_RAISED_AT = re.compile(r'The following call raised this error:\s*File "([^"]+)", line (\d+), in (\w+)')


def export_failure(name: str, exc: BaseException) -> str:
    """One line naming the network and why torch's exporter failed: the operator it could not
    translate (``aten::histc``), the underlying error, and where it was raised when the
    exporter says so (e.g. a data-dependent branch in ``check_fuser_inputs``)."""
    text = _ANSI.sub("", str(exc))
    parts = []
    operator = _OPERATOR.search(text)
    if operator:
        parts.append(f"operator {operator[1]}::{operator[2]}")
    summary = text.split("## Exception summary", 1)[-1] if "## Exception summary" in text else ""
    first = _SUMMARY_LINE.search(summary)
    if first:
        parts.append(f"{first[1]}: {first[2].strip()}")
    else:
        cause = exc.__cause__ or exc
        lines = _ANSI.sub("", str(cause)).strip().splitlines()
        parts.append(f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__)
    raised = _RAISED_AT.search(text)
    if raised:
        parts.append(f"in {raised[3]} ({Path(raised[1]).name}:{raised[2]})")
    reason = "; ".join(parts)
    return f"cannot export {name} to ONNX: {reason[:400]}"


# torch's log handlers hold the original stderr, so only their levels can quiet them.
_EXPORTER_LOGGERS = (
    "torch",
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch.fx",
    "onnxscript",
    "onnx_ir",
)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Keep torch's exporter from printing: its warnings, log lines and prints are captured."""
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
        ):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_module(network: nn.Module, name: str, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export ``network`` (a fuser module in eval mode) to an ONNX model in memory.

    The graph is ``ExportGraph(network)``: inputs ``anatomical`` and ``functional``, output
    ``fused``, each float32 (batch, 1, height, width) with those three axes dynamic; opset
    ``opset`` in the default domain. Weights are inside the model (no external data). Torch's
    debugging annotations (stack traces with file paths, FX node names) are removed, so the
    bytes do not depend on where medfuse is installed.

    Args:
        network: the fuser, as ``create_fuser`` builds it, on any device.
        name: its name, for messages.
        opset: ``MIN_OPSET`` to ``MAX_OPSET``.

    Returns:
        the ``onnx.ModelProto`` (no ``metadata_props`` yet; see ``onnx_metadata``).

    Raises:
        MedfuseError: onnx or onnxscript is not installed.
        InputError: an opset out of range, or the exporter failed (one line: the network, the
            operator it could not translate or the reason, see ``export_failure``).
    """
    _require("onnx", "onnxscript")
    import onnx

    check_opset(opset)
    device = next(network.parameters(), torch.empty(0)).device
    example = torch.rand(_EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    axes = dict(AXES)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                ExportGraph(network).eval(),
                (example, example.flip(-1)),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(axes, axes),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            model = program.model_proto
    except Exception as exc:  # whatever the exporter raises is its reason: one line
        raise InputError(export_failure(name, exc)) from None
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise InputError(f"cannot export {name} to ONNX opset {opset}: the exporter wrote opset {written}")
    _strip_debug_annotations(model)
    onnx.checker.check_model(model)
    return model


def _strip_debug_annotations(model: onnx.ModelProto) -> None:
    """Remove torch's per-node and per-value annotations (stack traces, FX names): debugging
    aids that hold source paths and triple the file."""
    graph = model.graph
    for items in (graph.node, graph.value_info, graph.input, graph.output, graph.initializer):
        for item in items:
            del item.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]


def set_metadata(model: onnx.ModelProto, props: Mapping[str, str], doc: str = "") -> None:
    """Replace ``model.metadata_props`` with ``props`` (in key order); set its ``doc_string``."""
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(sorted(props.items())))
    model.doc_string = doc


def export_with_metadata(
    network: nn.Module,
    spec: FuserSpec,
    record: WeightsRecord,
    opset: int = DEFAULT_OPSET,
    options: Mapping[str, object] | None = None,
) -> onnx.ModelProto:
    """``export_module`` of ``network`` with its provenance (``onnx_metadata``) and a doc string:
    the model ``export_onnx`` writes, not yet checked against torch (``checked_session`` does).

    Raises:
        as ``export_module``.
    """
    proto = export_module(network, spec.name, opset)
    set_metadata(
        proto,
        onnx_metadata(spec, record, opset, options),
        f"medfuse {spec.name} fuser ({record.name}): anatomical and functional Y in [0, 1] -> fused Y",
    )
    return proto


def ort_session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime ``InferenceSession`` on the CPU for ``model`` (serialised bytes or a path).

    Args:
        model: the model's bytes, or a ``.onnx`` file.
        threads: ``intra_op_num_threads`` (threads inside one operator); one thread between
            operators (sequential execution, ONNX Runtime's default).

    Raises:
        MedfuseError: onnxruntime is not installed.
    """
    _require("onnxruntime")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ONNX Runtime warns on stderr otherwise
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def check_against_torch(
    network: nn.Module, session: Any, shapes: tuple[tuple[int, int, int, int], ...] = CHECK_SHAPES
) -> float:
    """The largest |ONNX Runtime − torch| over random inputs of each of ``shapes``.

    Torch runs ``network`` itself (its per-pair path, input checks and all), on its device;
    ONNX Runtime runs ``session`` on the CPU.

    Args:
        network: the fuser that was exported.
        session: an ``InferenceSession`` of its export (``ort_session``).
        shapes: (N, 1, H, W) shapes, H and W at least the fuser's ``min_size``.

    Returns:
        the maximum absolute difference (float, in Y units of [0, 1]).
    """
    device = next(network.parameters(), torch.empty(0)).device
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for shape in shapes:
        anatomical, functional = (torch.rand(shape, generator=generator) for _ in range(2))
        expected = network(anatomical.to(device), functional.to(device)).float().cpu().numpy()
        feeds = {INPUT_NAMES[0]: anatomical.numpy(), INPUT_NAMES[1]: functional.numpy()}
        (got,) = session.run([OUTPUT_NAME], feeds)
        if got.shape != expected.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def checked_session(network: nn.Module, name: str, model: bytes, threads: int = 1) -> tuple[Any, float]:
    """Load an export of ``network`` in ONNX Runtime and check it against torch (``check_against_torch``).

    Args:
        network: the fuser that was exported.
        name: its name, for messages.
        model: the serialised export.
        threads: ``intra_op_num_threads`` of the session (``ort_session``).

    Returns:
        the session and the largest |ONNX Runtime − torch|.

    Raises:
        InputError: the difference exceeds ``CHECK_TOLERANCE`` (or the output's shape is wrong).
        MedfuseError: onnxruntime is not installed.
    """
    session = ort_session(model, threads)
    difference = check_against_torch(network, session)
    if not difference <= CHECK_TOLERANCE:
        raise InputError(
            f"the ONNX export of {name} does not reproduce torch: ONNX Runtime differs by {difference:.3g} "
            f"(tolerance {CHECK_TOLERANCE:g}); fuse with --backend torch"
        )
    return session, difference


def tensor_layout(value: onnx.ValueInfoProto) -> dict:
    """An input's or output's name, element type and shape (axis names for dynamic axes)."""
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return {"name": value.name, "dtype": dtype, "shape": shape}


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote.

    Attributes:
        file: the ``.onnx`` file.
        sha256: the file's sha256 (hex).
        size_bytes: its size.
        model: the fuser's name.
        checkpoint: the weights' record (name, sha256, header metadata).
        opset: the default-domain opset of the graph.
        inputs, outputs: ``tensor_layout`` of each.
        metadata: the model's ``metadata_props``.
        max_abs_diff: the check's largest |ONNX Runtime − torch| (``check_against_torch``).
        seconds: wall time of the whole export.
    """

    file: Path
    sha256: str
    size_bytes: int
    model: str
    checkpoint: WeightsRecord
    opset: int
    inputs: list[dict]
    outputs: list[dict]
    metadata: dict[str, str]
    max_abs_diff: float
    seconds: float

    def to_json(self) -> dict:
        """The summary ``medfuse export --json`` prints."""
        return {
            "file": str(self.file),
            "sha256": self.sha256,
            "bytes": self.size_bytes,
            "model": self.model,
            "checkpoint": self.checkpoint.name,
            "checkpoint_sha256": self.checkpoint.sha256,
            "opset": self.opset,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "metadata": self.metadata,
            "check": {
                "max_abs_diff": self.max_abs_diff,
                "tolerance": CHECK_TOLERANCE,
                "shapes": [list(shape) for shape in CHECK_SHAPES],
            },
            "seconds": round(self.seconds, 3),
        }


def check_output_path(output: Path, overwrite: bool) -> Path:
    """Refuse an output that could never be written, or exists without ``overwrite``, before any work.

    Raises:
        OutputError: not a ``.onnx`` name, a folder that does not exist, or an existing file
            without ``overwrite``.
    """
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise OutputError(f"output must be a .onnx file: {output}")
    if not output.parent.is_dir():
        raise OutputError(f"output folder does not exist: {output.parent}")
    if output.is_dir():
        raise OutputError(f"output is a folder: {output}")
    if output.exists() and not overwrite:
        raise OutputError(f"output exists: {output} (pass --overwrite to replace it)")
    return output


def export_onnx(
    model: str,
    output: Path,
    checkpoint: str | None = None,
    weights: Path | None = None,
    device: torch.device | str = "cpu",
    opset: int = DEFAULT_OPSET,
    options: Mapping[str, object] | None = None,
    overwrite: bool = False,
    on_step: Callable[[str], None] = lambda _: None,
) -> ExportResult:
    """Export a fuser network, as ``create_fuser`` builds it, to a checked ``.onnx`` file.

    Args:
        model: a registered network (``lwnet``, ``lywnet``).
        output: the ``.onnx`` file; written atomically (a temporary file, then published).
        checkpoint: a shipped checkpoint (``lwnet.ct`` or ``ct``); default: the network's first.
        weights: a safetensors file instead of a shipped checkpoint.
        device: where torch traces and checks the network (the ONNX file is the same).
        opset: ONNX opset, ``MIN_OPSET`` to ``MAX_OPSET``.
        options: fuser settings, e.g. ``{"temperature": 30.0}`` for LYWNet (in the metadata).
        overwrite: replace an existing ``output``.
        on_step: called with ``"export"`` then ``"check"`` as each starts (progress).

    Returns:
        the ``ExportResult``. The file's graph: inputs ``anatomical`` and ``functional``,
        output ``fused``, float32 (batch, 1, height, width) in [0, 1]; ``metadata_props`` from
        ``onnx_metadata``.

    Raises:
        InputError: unknown model or checkpoint, a classical rule, both checkpoint and weights,
            an opset out of range, fuser options it does not take, an exporter failure, or an
            export whose output differs from torch's by more than ``CHECK_TOLERANCE`` (nothing
            is written).
        CheckpointError: the weights cannot be loaded.
        OutputError: as ``check_output_path``, or the file cannot be written (nothing is left).
        MedfuseError: a package of the onnx extra is missing.
    """
    started = time.perf_counter()
    spec = get_fuser_spec(model)
    if not spec.needs_weights:
        networks = ", ".join(s.name for s in list_fusers() if s.needs_weights)
        raise InputError(
            f"model '{model}' is a classical rule, not a network: there is nothing to export "
            f"(networks: {networks})"
        )
    options = dict(options or {})
    spec.check_options(options)
    check_opset(opset)
    output = check_output_path(Path(output), overwrite)
    _require("onnx", "onnxscript", "onnxruntime")
    record = weights_record(spec, checkpoint, weights)
    network = create_fuser(model, checkpoint=checkpoint, weights=weights, device=device, **options)
    on_step("export")
    proto = export_with_metadata(network, spec, record, opset, options)
    data = proto.SerializeToString()
    on_step("check")
    _, difference = checked_session(network, model, data)
    try:
        write_atomically(output, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)
    except FileExistsError:
        raise OutputError(f"output exists: {output} (pass --overwrite to replace it)") from None
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    return ExportResult(
        file=output,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        model=model,
        checkpoint=record,
        opset=opset,
        inputs=[tensor_layout(value) for value in proto.graph.input],
        outputs=[tensor_layout(value) for value in proto.graph.output],
        metadata={entry.key: entry.value for entry in proto.metadata_props},
        max_abs_diff=difference,
        seconds=time.perf_counter() - started,
    )
