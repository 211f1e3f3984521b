"""`medfuse benchmark`: the measuring tools against known calls, allocations and modules; the
plan's rows, threads and checkpoints through the command's JSON.

No wall-clock timing is asserted: the timing tools run on a fake clock whose every reading is
known, and the command's numbers are checked only where they follow from something other than
the code's own formulas (parameter counts, FLOPs across sizes and batches, threads seen inside
the fuser).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch
from torch import nn

from medfuse_cli.bench.measure import TimingBudget, count_flops, summarise, time_calls
from medfuse_cli.fusers import get_fuser_spec
from medfuse_cli.fusers.classical import AverageFusion
from medfuse_cli.fusers.registry import FUNCTIONAL
from medfuse_cli.weights import bundled_path

CPU = torch.device("cpu")
FIELDS = {
    "model": str,
    "batch": int,
    "height": int,
    "width": int,
    "params": int,
    "gflops_per_pair": float,
    "median_ms": float,
    "p90_ms": float,
    "pairs_per_s": float,
    "peak_mem_mb": float,
    "threads": int,
}
FAST = ("--size", "16", "--repeat", "2", "--warmup", "1", "--device", "cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints come from the bundled folder only: tests never touch the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _json(result) -> dict:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _in_fresh_python(script: str) -> str:
    """Run ``script`` in a new interpreter, so no allocator state of earlier tests is inherited."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- the measuring tools --------------------------------------------------------------------


class FakeClock:
    """A clock in seconds that moves only when a fake call says how long it took."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def calls_taking(self, seconds: list[float]) -> Callable[[], None]:
        """A call that takes the next of ``seconds`` each time; one call too many raises."""
        durations = iter(seconds)

        def call() -> None:
            self.now += next(durations)

        return call


def test_time_calls_times_only_the_calls_after_warmup() -> None:
    clock = FakeClock()
    warmups, timed = [0.5, 0.5], [n / 1000 for n in range(1, 11)]  # 1, 2, ..., 10 ms
    call = clock.calls_taking(warmups + timed)
    times = time_calls(call, CPU, TimingBudget(warmup=2, repeat=10, max_seconds=30), clock=clock)
    assert times == pytest.approx(list(range(1, 11)))


def test_time_calls_stops_starting_calls_once_the_budget_is_spent() -> None:
    clock = FakeClock()
    call = clock.calls_taking([1.0] * 8)  # a ninth call would raise StopIteration
    times = time_calls(call, CPU, TimingBudget(warmup=10, repeat=100, max_seconds=3.5), clock=clock)
    # Warm-up calls start at 0, 1, 2 and 3 s into its budget; so do the timed ones into theirs.
    assert times == pytest.approx([1000.0] * 4)
    clock = FakeClock()
    call = clock.calls_taking([1.0] * 3)
    times = time_calls(call, CPU, TimingBudget(warmup=5, repeat=50, max_seconds=0), clock=clock)
    assert len(times) == 2  # no budget: one warm-up and the two timed calls a median needs


def test_median_and_p90_of_known_samples() -> None:
    # numpy's linear p90 of n sorted samples sits at rank 0.9 (n - 1) from 0: for 1..10 ms at
    # 8.1, between 9 and 10 ms, so 9.1 ms; for 10, 20, 40 at 1.8, so 20 + 0.8 * 20 = 36.
    ten = summarise([float(n) for n in range(10, 0, -1)])
    assert (ten.median_ms, ten.p90_ms, ten.calls) == (5.5, pytest.approx(9.1), 10)
    three = summarise([40.0, 10.0, 20.0])  # unsorted, and a mean (23.3) that is not the median
    assert (three.median_ms, three.p90_ms) == (20.0, pytest.approx(36.0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_cpu_peak_memory_sees_a_known_allocation_and_not_an_idle_block() -> None:
    printed = _in_fresh_python(
        """
        import numpy as np, torch
        from medfuse_cli.bench.measure import peak_memory
        earlier = np.ones(300 * 2**20, np.uint8)  # an earlier, higher peak must not count
        del earlier
        with peak_memory(torch.device("cpu")) as idle:
            pass
        with peak_memory(torch.device("cpu")) as busy:
            block = np.ones(200 * 2**20, np.uint8)  # 200 MiB, every page written
            del block
        print(idle.mb, busy.mb)
        """
    )
    idle, busy = map(float, printed.split())
    assert 195 <= busy <= 215  # the array, plus at most a few MiB of the interpreter's own
    assert idle < 5


def test_flops_of_convolutions_and_a_matrix_product_counted_by_hand() -> None:
    # torch.utils.flop_counter (conv_flop_count, mm_flop): 2 FLOPs per multiply-add; a
    # convolution costs out_channels × in_channels × kernel taps per output position, padding
    # included; a linear layer on (..., k) -> (..., n) costs 2 k n per row.
    height, width = 10, 20

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.padded = nn.Conv2d(1, 1, 3, padding=1, bias=False)
            self.valid = nn.Conv2d(2, 4, 3, bias=False)
            self.linear = nn.Linear(width, 3, bias=False)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.padded(a).sum() + self.valid(torch.cat([a, b], 1)).sum() + self.linear(b).sum()

    probe = Probe()
    padded = 2 * 9 * height * width  # every one of the H × W outputs, borders too
    valid = 2 * (2 * 9) * 4 * (height - 2) * (width - 2)
    linear = 2 * height * width * 3
    shape = (1, 1, height, width)
    assert count_flops(probe, shape, shape) == padded + valid + linear
    assert probe.padded.weight.device == CPU  # counted on a copy, the module stays usable


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_kept_heap_memory_spares_a_batch_its_page_faults() -> None:
    # Without keep_heap_memory, glibc hands LWNet's batch-16 activations back to the kernel
    # after every call and faults them in again: 2,700-3,500 minor faults per call on the
    # benchmark machine (batch 1 is too small to show it). With it, freed blocks are reused:
    # 0-100 faults per call there.
    printed = _in_fresh_python(
        """
        import resource, torch
        from medfuse_cli.fusers import create_fuser
        from medfuse_cli.runtime import keep_heap_memory
        if not keep_heap_memory():
            print("not-glibc")
            raise SystemExit
        torch.set_num_threads(1)
        network = create_fuser("lwnet", pretrained=False)
        planes = torch.rand(16, 1, 256, 256)
        with torch.inference_mode():
            for _ in range(3):
                network(planes, planes)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                network(planes, planes)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
        """
    )
    if printed.strip() == "not-glibc":
        pytest.skip("not glibc")
    assert float(printed) < 500


# --- the plan, through the command ----------------------------------------------------------


def test_json_rows_have_every_field_typed_and_per_pair_counts(run_cli) -> None:
    report = _json(
        run_cli("benchmark", "-m", "lwnet", "-m", "average", "--batch", "1,3", *FAST, "--json", "-q")
    )
    assert set(report) == {"device", "results"} and report["device"] == "cpu"
    rows = report["results"]
    order = [(row["model"], row["batch"]) for row in rows]
    assert order == [
        ("lwnet", 1),
        ("lwnet", 3),
        ("lwnet+io", 1),
        ("average", 1),
        ("average", 3),
        ("average+io", 1),
    ]
    for row in rows:
        assert set(row) == {*FIELDS, "checkpoint", "checkpoint_sha256"}
        assert all(type(row[name]) is kind for name, kind in FIELDS.items()), row
        whole_flow = row["model"].endswith("+io")
        assert (row["height"], row["width"]) == ((256, 256) if whole_flow else (16, 16))
        assert row["median_ms"] > 0
    by_name = {(row["model"], row["batch"]): row for row in rows}
    lwnet = get_fuser_spec("lwnet")
    assert by_name["lwnet", 1]["params"] == 6444  # LWNet's parameters, as `medfuse models` says
    assert by_name["lwnet", 1]["checkpoint"] == lwnet.checkpoint_for(FUNCTIONAL).name
    assert by_name["lwnet", 1]["checkpoint_sha256"] == lwnet.checkpoint_for(FUNCTIONAL).sha256
    # FLOPs are per pair: the same at batch 1 and 3; and they follow the pixels, 256² being 256x
    # the pixels of 16² (within the border effects of the strided convolutions).
    assert by_name["lwnet", 3]["gflops_per_pair"] == by_name["lwnet", 1]["gflops_per_pair"] > 0
    ratio = by_name["lwnet+io", 1]["gflops_per_pair"] / by_name["lwnet", 1]["gflops_per_pair"]
    assert 200 < ratio < 300
    for key in (("average", 1), ("average", 3), ("average+io", 1)):
        assert by_name[key]["params"] == 0 and by_name[key]["gflops_per_pair"] == 0
        assert by_name[key]["checkpoint"] is None and by_name[key]["checkpoint_sha256"] is None


@pytest.mark.parametrize("asked", [None, "other"], ids=["fuser-default", "--threads"])
def test_each_row_runs_with_its_threads_and_the_global_count_is_restored(
    asked: str | None, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    wanted = get_fuser_spec("average").cpu_threads if asked is None else other
    seen: list[int] = []
    fuse = AverageFusion.forward

    def probe(self: AverageFusion, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.device.type != "meta":  # FLOPs are counted on meta tensors: shapes, no arithmetic
            seen.append(torch.get_num_threads())
        return fuse(self, a, b)

    monkeypatch.setattr(AverageFusion, "forward", probe)
    threads = () if asked is None else ("--threads", str(other))
    report = _json(run_cli("benchmark", "-m", "average", "--batch", "2", *FAST, *threads, "--json", "-q"))
    assert torch.get_num_threads() == before
    assert seen and set(seen) == {wanted}  # every call, timed or warm-up, fuser or whole flow
    assert [row["threads"] for row in report["results"]] == [wanted, wanted]


def test_table_names_every_row_and_marks_random_weights(run_cli, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr("medfuse_cli.weights.BUNDLED_DIR", tmp_path)  # no checkpoint anywhere
    result = run_cli("benchmark", "-m", "lwnet", "-m", "laplacian", "--batch", "2", *FAST)
    assert result.code == 0, result.stderr
    for name in ("lwnet*", "lwnet+io*", "laplacian", "laplacian+io"):
        assert f" {name} " in result.stdout
    assert "random weights" in result.stderr


def test_checkpoint_and_weights_go_to_the_one_network(run_cli, monkeypatch, tmp_path) -> None:
    rows = _json(
        run_cli(
            "benchmark", "-m", "lwnet", "-m", "average", "--batch", "1", "--checkpoint", "ct", *FAST, "--json"
        )
    )["results"]
    assert [row["checkpoint"] for row in rows] == ["lwnet.ct", "lwnet.ct", None, None]
    weights = bundled_path(get_fuser_spec("lwnet").checkpoint("ct"))
    monkeypatch.setattr("medfuse_cli.weights.BUNDLED_DIR", tmp_path)  # only --weights can load
    result = run_cli("benchmark", "-m", "lwnet", "--batch", "1", "--weights", weights, *FAST, "--json")
    rows = _json(result)["results"]
    assert [row["checkpoint"] for row in rows] == [f"--weights {weights}"] * 2
    assert [row["checkpoint_sha256"] for row in rows] == [
        hashlib.sha256(weights.read_bytes()).hexdigest()
    ] * 2
    assert "random weights" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("-m", "average", "--checkpoint", "lwnet.ct"), "exactly one network model, got 0"),
        (("-m", "lwnet", "-m", "lywnet", "--checkpoint", "ct"), "exactly one network model, got 2"),
        (("--weights", "lwnet.safetensors"), "exactly one network model, got 2"),  # every fuser
        (("-m", "lwnet", "--weights", "missing.safetensors"), "missing.safetensors"),  # not random
        (("-m", "lwnet", "--checkpoint", "nope"), "no checkpoint 'nope'"),
        (("--batch", "1,x"), "--batch"),
        (("--batch", "0"), "--batch"),
        (("-m", "nonesuch"), "unknown model 'nonesuch'"),
    ],
)
def test_bad_arguments_are_one_line_errors(run_cli, args: tuple[str, ...], says: str) -> None:
    result = run_cli("benchmark", *args, *FAST, "-q")
    assert result.code == 1
    assert result.stderr.startswith("error:") and result.stderr.strip().count("\n") == 0
    assert says in result.stderr


def test_cuda_without_gpu_is_one_line(run_cli) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("benchmark", "--device", "cuda", "-q")
    assert result.code == 1
    assert result.stderr.strip().count("\n") == 0 and "CUDA" in result.stderr
