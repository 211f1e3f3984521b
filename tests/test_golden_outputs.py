"""The fused bytes of the bundled examples, pinned: a refactoring must not change a pixel.

``tests/data/golden_fused_sha256.txt`` holds the sha256 of ``medfuse fuse`` outputs recorded
before the renovation of issue 11 (``<model>-<KIND>-<name>.png <sha256>``). A change that is
meant to alter outputs (new weights, a new rule) updates the file in the same commit and says why:
the ``lywnet`` rows are re-recorded each time a LYWNet checkpoint replaces a shipped one (the
model card's learning curve lists them; the SPECT row, added with the CT-MRI checkpoint, pins the
file that fuses colour pairs), the ``lwnet`` rows were when the balanced checkpoints
of issue 15 replaced the issue-6 ones; the renovation itself left every row unchanged.

Threads are pinned to what the CLI picks by default on the 2-core machine that recorded the rows:
LYWNet's convolutions sum in another order on one thread (its bytes differ), so a CI runner with a
different core count would otherwise fail a row without any code change.

The networks' bytes also depend on the CPU's kernels: on a later 2-core AMD EPYC (AVX2) machine,
with the same torch, two of the seven network rows came out different (float rounding of a few
pixels). Each network row therefore has its fused image in ``tests/data/golden/`` as well: an
output whose sha256 is not the pinned one must still be that image to within one level per
pixel on at most 0.5 % of the pixels. Classical rules are exact on every machine and pinned by
bytes alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GOLDEN = Path(__file__).parent / "data" / "golden_fused_sha256.txt"
ROWS = [line.split() for line in GOLDEN.read_text().splitlines() if line.strip()]
REFERENCE_IMAGES = Path(__file__).parent / "data" / "golden"  # the networks' rows as images
RECORDED_THREADS = {"lywnet": "2"}  # every other model's default is 1 thread


@pytest.mark.parametrize(("file_name", "sha256"), ROWS, ids=[row[0] for row in ROWS])
def test_fused_bytes_are_unchanged(
    file_name: str, sha256: str, examples: Path, tmp_path: Path, run_cli
) -> None:
    model, kind, name = file_name.removesuffix(".png").split("-")
    folder = examples / f"{kind}-MRI"
    output = tmp_path / file_name
    sources = (folder / "MRI" / f"{name}.png", folder / kind / f"{name}.png")
    threads = RECORDED_THREADS.get(model, "1")
    result = run_cli("fuse", *sources, "-o", output, "-m", model, "-q", "--threads", threads)
    assert result.code == 0, result.stderr
    if hashlib.sha256(output.read_bytes()).hexdigest() == sha256:
        return
    reference = REFERENCE_IMAGES / file_name
    assert reference.is_file(), f"{file_name}: bytes changed, and a classical rule has no CPU excuse"
    fused = np.asarray(Image.open(output), dtype=np.int16)
    recorded = np.asarray(Image.open(reference), dtype=np.int16)
    assert fused.shape == recorded.shape
    difference = np.abs(fused - recorded)
    assert difference.max() <= 1 and (difference > 0).mean() <= 0.005, (
        f"{file_name}: up to {difference.max()} levels on {(difference > 0).mean():.2%} of the values"
    )
