"""`medfuse export` and `medfuse benchmark --backend onnxruntime`: the ONNX graph computes what the
torch module computes, at every batch and size, and says what it was built from.

Every number is ONNX Runtime's output against torch's own per-pair path (``create_fuser``'s
module in eval mode, input checks and all), on the bundled example pairs resized to each size:
batch 1 and 3 (the exported graph fuses a batch in one pass, torch pair by pair), square and
not, and sides that are not multiples of 4 (the networks pad them). LYWNet (~7 s per 256² pair
on a CPU, ~1 min to export) is checked at small sizes only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

onnx = pytest.importorskip("onnx")  # the onnx extra, part of the test extra
onnxruntime = pytest.importorskip("onnxruntime")

from medfuse_cli import __version__  # noqa: E402
from medfuse_cli.bench.plan import EXAMPLE_PAIRS, example_paths  # noqa: E402
from medfuse_cli.export import ExportResult, export_onnx  # noqa: E402
from medfuse_cli.fusers import create_fuser, get_fuser_spec  # noqa: E402
from medfuse_cli.fusers.registry import PROVENANCE_FIELDS  # noqa: E402
from medfuse_cli.pipeline import load_pair  # noqa: E402

TOLERANCE = 1e-5
LAYOUT = ["batch", 1, "height", "width"]
FAST = ("--size", "32", "--repeat", "2", "--warmup", "1", "--device", "cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints come from the bundled folder only: tests never touch the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lwnet_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """LWNet with its default checkpoint (lwnet.functional), exported once for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return export_onnx("lwnet", tmp_path_factory.mktemp("onnx") / "lwnet.onnx", device="cpu")


def example_planes(height: int, width: int, batch: int, kind: str = "any") -> tuple[np.ndarray, np.ndarray]:
    """The bundled pairs' Y planes (``kind``: ``ct`` for the CT-MRI pairs only), resized to
    height×width (bicubic, clipped to [0, 1]) and cycled to ``batch``: float32 (batch, 1, H, W)."""
    chosen = [p for p in EXAMPLE_PAIRS if kind == "any" or (p[1] == "CT") == (kind == "ct")]
    pairs = [load_pair(pair[2], *example_paths(pair)) for pair in chosen]

    def resized(plane: np.ndarray) -> np.ndarray:
        image = Image.fromarray(plane, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        return np.clip(np.asarray(image), 0.0, 1.0)

    picked = [pairs[i % len(pairs)] for i in range(batch)]
    anatomical = np.stack([resized(p.anatomical_y) for p in picked])[:, None].astype(np.float32)
    functional = np.stack([resized(p.functional_y) for p in picked])[:, None].astype(np.float32)
    return anatomical, functional


def largest_difference(path: Path, network: torch.nn.Module, planes: tuple[np.ndarray, np.ndarray]) -> float:
    """max |ONNX Runtime(file) − torch(network)| on ``planes``, after checking the output's shape."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (fused,) = session.run(["fused"], {"anatomical": planes[0], "functional": planes[1]})
    with torch.inference_mode():
        expected = network(*(torch.from_numpy(p) for p in planes)).numpy()
    assert fused.shape == expected.shape == planes[0].shape and fused.dtype == np.float32
    return float(np.abs(fused - expected).max())


def one_line_error(result) -> str:
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    return result.stderr


# --- LWNet: the numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "height", "width"),
    [(1, 256, 256), (3, 256, 256), (1, 120, 200), (3, 120, 200), (3, 30, 45), (2, 1, 1)],
    ids=["1x256x256", "3x256x256", "1x120x200", "3x120x200", "3x30x45-not-multiples-of-4", "2x1x1"],
)
def test_lwnet_onnx_equals_torch_on_the_examples(lwnet_export: ExportResult, batch, height, width) -> None:
    network = create_fuser("lwnet")  # lwnet.functional, as exported
    planes = example_planes(height, width, batch)
    assert largest_difference(lwnet_export.file, network, planes) <= TOLERANCE


def test_lwnet_file_says_what_it_holds(lwnet_export: ExportResult) -> None:
    data = lwnet_export.file.read_bytes()
    assert hashlib.sha256(data).hexdigest() == lwnet_export.sha256 and len(data) == lwnet_export.size_bytes
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [20]
    layouts = {value.name: value for value in (*model.graph.input, *model.graph.output)}
    assert [v.name for v in model.graph.input] == ["anatomical", "functional"]
    assert [v.name for v in model.graph.output] == ["fused"]
    for value in layouts.values():
        tensor = value.type.tensor_type
        assert tensor.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in tensor.shape.dim] == LAYOUT
    props = {entry.key: entry.value for entry in model.metadata_props}
    record = get_fuser_spec("lwnet").checkpoint("functional")
    assert props["checkpoint.name"] == "lwnet.functional"
    assert props["checkpoint.sha256"] == record.sha256
    for key in PROVENANCE_FIELDS:  # what `medfuse models` shows, from the file's own header
        assert props[f"checkpoint.{key}"] == record.meta[key], key
    assert json.loads(props["checkpoint.test_metrics"]) == record.test_metrics
    medfuse = {key: props[f"medfuse.{key}"] for key in ("version", "model", "opset", "min_size")}
    assert medfuse == {"version": __version__, "model": "lwnet", "opset": "20", "min_size": "1"}
    # torch's debugging annotations (stack traces with this machine's paths) are not shipped
    assert b"stack_trace" not in data and str(Path(__file__).parents[1]).encode() not in data


# --- the command ------------------------------------------------------------------------------


def test_command_exports_the_ct_checkpoint_with_json_and_refuses_to_overwrite(run_cli, tmp_path) -> None:
    output = tmp_path / "lwnet-ct.onnx"
    args = ("export", "lwnet", "-o", output, "--checkpoint", "ct", "--opset", "18", "--device", "cpu")
    result = run_cli(*args, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["file"] == str(output) and summary["model"] == "lwnet"
    assert summary["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert summary["checkpoint"] == "lwnet.ct"
    assert summary["checkpoint_sha256"] == get_fuser_spec("lwnet").checkpoint("ct").sha256
    assert summary["opset"] == 18 and summary["check"]["max_abs_diff"] <= TOLERANCE
    assert summary["inputs"] == [
        {"name": "anatomical", "dtype": "float32", "shape": LAYOUT},
        {"name": "functional", "dtype": "float32", "shape": LAYOUT},
    ]
    assert summary["outputs"] == [{"name": "fused", "dtype": "float32", "shape": LAYOUT}]
    assert summary["metadata"]["checkpoint.name"] == "lwnet.ct"
    model = onnx.load(str(output))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    ct = create_fuser("lwnet", checkpoint="ct")
    assert largest_difference(output, ct, example_planes(120, 200, 3, kind="ct")) <= TOLERANCE

    before = output.read_bytes()
    assert "output exists" in one_line_error(run_cli(*args))
    assert output.read_bytes() == before
    again = run_cli(*args, "--overwrite", "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["sha256"] == summary["sha256"]  # the same export, the same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lwnet-ct.onnx"]  # no temporary file left


def test_quiet_prints_nothing_and_the_default_prints_one_summary_line(run_cli, tmp_path) -> None:
    quiet = run_cli("export", "lwnet", "-o", tmp_path / "q.onnx", "--device", "cpu", "-q")
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", "")
    plain = run_cli("export", "lwnet", "-o", tmp_path / "p.onnx", "--device", "cpu")
    assert plain.code == 0 and plain.stdout == ""
    summary = plain.stderr.strip().splitlines()[-1]
    assert summary.startswith("exported lwnet (lwnet.functional) to ") and "opset 20" in summary


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("average",), "'average' is a classical rule, not a network"),
        (("nonesuch",), "unknown model 'nonesuch'"),
        (("lwnet", "--checkpoint", "nope"), "no checkpoint 'nope'"),
        (("lwnet", "--checkpoint", "ct", "--weights", "w.safetensors"), "not both"),
        (("lwnet", "--weights", "missing.safetensors"), "missing.safetensors"),
        (("lwnet", "--opset", "17"), "--opset 17 is not available"),
        (("lwnet", "--opset", "24"), "--opset 24 is not available"),
        (("lwnet", "--temperature", "3"), "takes no temperature"),
        (("lwnet", "-o", "lwnet.png"), "must be a .onnx file"),
        (("lwnet", "-o", "no/such/folder/lwnet.onnx"), "output folder does not exist"),
    ],
)
def test_bad_arguments_are_one_line_errors_and_write_nothing(
    run_cli, tmp_path, monkeypatch, args, says
) -> None:
    monkeypatch.chdir(tmp_path)
    output = () if "-o" in args else ("-o", "out.onnx")
    assert says in one_line_error(run_cli("export", *args, *output, "--device", "cpu"))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_onnx_package_says_how_to_install_it(run_cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    message = one_line_error(run_cli("export", "lwnet", "-o", tmp_path / "x.onnx", "--device", "cpu"))
    assert "onnxscript" in message and "pip install 'medfuse[onnx]'" in message


def test_exporter_failures_and_wrong_exports_are_one_line_and_write_nothing(
    run_cli, tmp_path, monkeypatch
) -> None:
    from medfuse_cli import export
    from medfuse_cli.fusers.lwnet import LWNet

    # LWNet's own forward checks its inputs' values: a data-dependent branch torch.export refuses.
    monkeypatch.delitem(export._GRAPHS, LWNet)
    message = one_line_error(run_cli("export", "lwnet", "-o", tmp_path / "a.onnx", "--device", "cpu"))
    assert message.startswith("error: cannot export lwnet to ONNX: ")
    assert "check_fuser_inputs" in message
    # An operator that has no ONNX translation for these arguments.
    monkeypatch.setitem(export._GRAPHS, LWNet, lambda net, a, b: a * torch.histc(b, 10).sum())
    message = one_line_error(run_cli("export", "lwnet", "-o", tmp_path / "b.onnx", "--device", "cpu"))
    assert message.startswith("error: cannot export lwnet to ONNX: operator aten::histc")
    # A graph that exports but computes something else (here the average rule) is never written.
    monkeypatch.setitem(export._GRAPHS, LWNet, lambda net, a, b: (a + b) / 2)
    # (-q: the export step is done by then, and a log gets its progress line before the error)
    message = one_line_error(run_cli("export", "lwnet", "-o", tmp_path / "c.onnx", "--device", "cpu", "-q"))
    assert "the ONNX export of lwnet does not reproduce torch" in message
    assert list(tmp_path.iterdir()) == []


# --- LYWNet -----------------------------------------------------------------------------------


def test_lywnet_exports_and_equals_torch_at_small_sizes(tmp_path) -> None:
    result = export_onnx("lywnet", tmp_path / "lywnet.onnx", device="cpu")
    assert result.checkpoint.name == "lywnet.harvard" and result.metadata["medfuse.min_size"] == "5"
    network = create_fuser("lywnet")
    for batch, height, width in ((1, 32, 32), (3, 40, 36), (1, 21, 23)):
        planes = example_planes(height, width, batch)
        assert largest_difference(result.file, network, planes) <= TOLERANCE, (batch, height, width)


def test_a_per_image_lywnet_exports_with_each_images_own_statistics(tmp_path) -> None:
    """The shipped checkpoint normalises per pair (the test above); one that normalises per image
    (the authors' way) must keep each image's statistics apart in the batched graph."""
    from medfuse_cli.fusers.lywnet import OWN_FORMAT, PER_IMAGE, PER_PAIR, LYWNet
    from medfuse_cli.weights import write_checkpoint

    shipped = create_fuser("lywnet")
    assert shipped.normalization == PER_PAIR
    path = tmp_path / "per-image.safetensors"
    write_checkpoint(path, shipped.state_dict(), {"format": OWN_FORMAT, "normalization": PER_IMAGE})
    result = export_onnx("lywnet", tmp_path / "lywnet.onnx", weights=path, device="cpu")
    network = create_fuser("lywnet", weights=path)
    assert isinstance(network, LYWNet) and network.normalization == PER_IMAGE
    planes = example_planes(24, 28, 3)
    assert largest_difference(result.file, network, planes) <= TOLERANCE
    assert largest_difference(result.file, shipped, planes) > 100 * TOLERANCE  # not per pair


# --- benchmark --backend onnxruntime ----------------------------------------------------------


def test_benchmark_times_the_export_with_the_rows_threads(run_cli, monkeypatch) -> None:
    from medfuse_cli import export

    threads_asked: list[int] = []
    session = export.ort_session

    def recording(model, threads: int = 1):
        threads_asked.append(threads)
        return session(model, threads)

    monkeypatch.setattr(export, "ort_session", recording)
    args = ("benchmark", "-m", "lwnet", "--backend", "onnxruntime", "--batch", "1,2", *FAST, "--json", "-q")
    rows = json.loads(run_cli(*args, "--threads", "2").stdout)["results"]
    assert [(row["model"], row["batch"], row["threads"]) for row in rows] == [
        ("lwnet+onnxruntime", 1, 2),
        ("lwnet+onnxruntime", 2, 2),
    ]
    assert threads_asked == [2]  # one session, intra_op_num_threads = the rows' threads
    assert rows[0]["params"] == 6444 and rows[0]["checkpoint"] == "lwnet.functional"
    assert all(row["median_ms"] > 0 and row["gflops_per_pair"] > 0 for row in rows)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("-m", "lwnet", "-m", "average"), "average is a classical rule"),
        (("-m", "lwnet", "--volume-slices", "2"), "--volume-slices"),
        (("-m", "lwnet", "--backend", "tensorrt"), "--backend takes torch or onnxruntime"),
    ],
)
def test_benchmark_backend_refusals_are_one_line(run_cli, args, says) -> None:
    backend = () if "--backend" in args else ("--backend", "onnxruntime")
    assert says in one_line_error(run_cli("benchmark", *args, *backend, *FAST, "-q"))
