"""`medfuse benchmark`: output structure, consistent positive numbers, and the measuring tools.

No timing is asserted: only that every number is measured, positive where it must be, and
consistent with the others.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np
import pytest
import torch
from torch import nn

from medfuse_cli.bench import BenchSettings, count_flops, peak_memory, time_calls
from medfuse_cli.runtime import keep_heap_memory

FIELDS = {
    "model",
    "batch",
    "height",
    "width",
    "params",
    "gflops_per_pair",
    "median_ms",
    "p90_ms",
    "pairs_per_s",
    "peak_mem_mb",
}
FAST = ("--size", "16", "--repeat", "2", "--warmup", "1", "--threads", "1", "--device", "cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints come from the bundled folder only: tests never touch the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_json_rows_are_complete_positive_and_consistent(run_cli) -> None:
    result = run_cli("benchmark", "-m", "lwnet", "-m", "average", "--batch", "1,3", *FAST, "--json", "-q")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"device", "threads", "results"}
    assert report["device"] == "cpu" and report["threads"] == 1
    rows = report["results"]
    expected = [
        ("lwnet", 1),
        ("lwnet", 3),
        ("lwnet+io", 1),
        ("average", 1),
        ("average", 3),
        ("average+io", 1),
    ]
    assert [(row["model"], row["batch"]) for row in rows] == expected
    for row in rows:
        assert set(row) == FIELDS
        whole_flow = row["model"].endswith("+io")
        assert (row["height"], row["width"]) == ((256, 256) if whole_flow else (16, 16))
        assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
        assert row["pairs_per_s"] == pytest.approx(row["batch"] * 1000 / row["median_ms"])
        assert row["peak_mem_mb"] >= 0  # resident-set growth: 0 when a tiny call fits in freed pages
    network = {row["model"]: row for row in rows if row["model"].startswith("lwnet")}
    assert network["lwnet"]["params"] > 0 and network["lwnet"]["gflops_per_pair"] > 0
    # FLOPs scale with the pixels: 256² is 256x the pixels of 16², within border effects.
    ratio = network["lwnet+io"]["gflops_per_pair"] / network["lwnet"]["gflops_per_pair"]
    assert 200 < ratio < 300
    assert all(row["params"] == 0 for row in rows if row["model"].startswith("average"))


def test_table_names_every_row_and_marks_random_weights(run_cli, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr("medfuse_cli.weights.BUNDLED_DIR", tmp_path)  # no checkpoint anywhere
    result = run_cli("benchmark", "-m", "lwnet", "-m", "laplacian", "--batch", "2", *FAST)
    assert result.code == 0, result.stderr
    for name in ("lwnet*", "lwnet+io*", "laplacian", "laplacian+io"):
        assert f" {name} " in result.stdout
    assert "random weights" in result.stderr


def test_cuda_without_gpu_is_one_line(run_cli) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("benchmark", "--device", "cuda", "-q")
    assert result.code == 1
    assert result.stderr.strip().count("\n") == 0 and "CUDA" in result.stderr


@pytest.mark.parametrize("args", [("--batch", "1,x"), ("--batch", "0"), ("-m", "nonesuch")])
def test_bad_arguments_are_one_line_errors(run_cli, args) -> None:
    result = run_cli("benchmark", *args, *FAST, "-q")
    assert result.code == 1
    assert result.stderr.startswith("error:") and result.stderr.strip().count("\n") == 0


def test_warmup_is_not_timed_and_budget_keeps_two_calls() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), torch.device("cpu"), BenchSettings(warmup=3, repeat=5))
    assert len(calls) == 8 and len(times) == 5 and all(t > 0 for t in times)
    calls.clear()
    times = time_calls(lambda: calls.append(1), torch.device("cpu"), BenchSettings(3, 50, max_seconds=0))
    assert len(calls) == 3 and len(times) == 2


def test_cpu_peak_memory_sees_an_allocation() -> None:
    with peak_memory(torch.device("cpu")) as peak:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page touched
        del block
    assert 60 <= peak() <= 80


def test_flops_of_a_known_convolution() -> None:
    class OneConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.cat([a, b], dim=1))

    assert count_flops(OneConv(), 10, 20) == 2 * (2 * 9) * 4 * 10 * 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_tensors_are_reused_without_new_page_faults() -> None:
    if not keep_heap_memory():
        pytest.skip("not glibc")
    torch.ones(2**21)  # 8 MiB: the first allocation may fault its pages in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(2**21)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 2048  # an unmapped-and-remapped 8 MiB block costs 2048 faults each time
