"""The classical rules: every size from the declared minimum, batch invariance bit for bit, the
Laplacian pyramid against its direct definition, the wavelet against PyWavelets, no block artefacts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F
from torch import Tensor

from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.classical import (
    AverageFusion,
    LaplacianPyramidFusion,
    MaximumFusion,
    WaveletFusion,
    _analyse,
    _synthesise,
)

RULES = [AverageFusion, MaximumFusion, LaplacianPyramidFusion, WaveletFusion]
SIZES = [(side, side) for side in range(1, 41)] + [
    (1, 7),
    (7, 1),
    (3, 40),
    (40, 5),
    (17, 33),
    (64, 9),
    (2, 31),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_every_size_from_the_minimum(rule: type[torch.nn.Module]) -> None:
    fuser = rule()
    assert isinstance(rule.min_size, int) and rule.min_size >= 1
    generator = torch.Generator().manual_seed(0)
    for height, width in SIZES:
        if min(height, width) < rule.min_size:
            continue
        a = torch.rand(2, 1, height, width, generator=generator)
        b = torch.rand(2, 1, height, width, generator=generator)
        fused = fuser(a, b)
        assert fused.shape == a.shape and fused.dtype == torch.float32, (height, width)
        assert torch.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1, (height, width)
        # the same image twice comes back unchanged: the transforms invert exactly at every size
        image = a.double()
        torch.testing.assert_close(fuser(image, image), image, atol=1e-9, rtol=0)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_below_the_minimum_or_mismatched_is_refused_in_one_line(rule: type[torch.nn.Module]) -> None:
    fuser = rule()
    small = rule.min_size - 1
    for a, b in [
        (torch.rand(1, 1, small, 5), torch.rand(1, 1, small, 5)),
        (torch.rand(1, 1, 5, small), torch.rand(1, 1, 5, small)),
        (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)),
        (torch.rand(8, 8), torch.rand(8, 8)),
    ]:
        with pytest.raises(MedfuseError) as raised:
            fuser(a, b)
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
@pytest.mark.parametrize("size", [(256, 256), (37, 53), (5, 3), (1, 9), (40, 1), (64, 33)])
def test_batching_never_changes_a_pixel(rule: type[torch.nn.Module], size: tuple[int, int]) -> None:
    fuser = rule()
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(7, 1, *size, generator=generator)
    b = torch.rand(7, 1, *size, generator=generator)
    with torch.inference_mode():
        batched = fuser(a, b)
        for i in range(7):
            alone = fuser(a[i : i + 1], b[i : i + 1])
            assert torch.equal(alone, batched[i : i + 1]), (rule.__name__, size, i)
        assert torch.equal(fuser(a[2:5], b[2:5]), batched[2:5])


def _reference_laplacian(anatomical: Tensor, functional: Tensor, wanted: int = 4) -> Tensor:
    """The definition written directly: 5×5 convolutions, zero insertion, padding by torch.cat."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=anatomical.dtype) / 16
    kernel = torch.outer(taps, taps)[None, None]

    def pad(image: Tensor) -> Tensor:
        rows = torch.cat([image[..., :2, :].flip(-2), image, image[..., -2:, :].flip(-2)], dim=-2)
        return torch.cat([rows[..., :2].flip(-1), rows, rows[..., -2:].flip(-1)], dim=-1)

    def reduce(image: Tensor) -> Tensor:
        return F.conv2d(pad(image), kernel)[..., ::2, ::2]

    def expand(image: Tensor, size: torch.Size) -> Tensor:
        upsampled = image.new_zeros(*image.shape[:-2], *size[-2:])
        upsampled[..., ::2, ::2] = image
        return F.conv2d(pad(upsampled), kernel * 4)

    levels = 0
    while levels < wanted and min(anatomical.shape[-2:]) >> (levels + 1) >= 2:
        levels += 1
    pyramids = []
    for image in (anatomical, functional):
        pyramid = []
        for _ in range(levels):
            smaller = reduce(image)
            pyramid.append(image - expand(smaller, image.shape))
            image = smaller
        pyramids.append([*pyramid, image])
    fused = (pyramids[0][-1] + pyramids[1][-1]) / 2
    for detail_a, detail_b in zip(reversed(pyramids[0][:-1]), reversed(pyramids[1][:-1]), strict=True):
        chosen = torch.where(detail_b.abs() > detail_a.abs(), detail_b, detail_a)
        fused = expand(fused, detail_a.shape) + chosen
    return fused.clamp(0.0, 1.0)


def test_laplacian_is_the_burt_adelson_definition() -> None:
    """Same pyramid as the direct 5×5-convolution form, to round-off, at every size."""
    fuser = LaplacianPyramidFusion()
    generator = torch.Generator().manual_seed(2)
    for height, width in [*SIZES, (256, 256), (255, 130)]:
        a = torch.rand(2, 1, height, width, generator=generator, dtype=torch.float64)
        b = torch.rand(2, 1, height, width, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(fuser(a, b), _reference_laplacian(a, b), atol=1e-12, rtol=0)


@pytest.mark.parametrize("length", range(2, 40))
def test_wavelet_is_pywavelets_bior22_with_symmetric_borders(length: int) -> None:
    """One level along either axis equals ``pywt.dwt(x, "bior2.2", mode="reflect")`` (whole-sample
    symmetric), borders included, up to its per-band factors; and inverts exactly."""
    signal = np.random.default_rng(length).random(length)
    row = torch.tensor(signal).view(1, 1, 1, length)
    coefficients = torch.empty_like(row)
    _analyse(row, coefficients, -1)
    half = (length + 1) // 2
    approximation, detail = pywt.dwt(signal, "bior2.2", mode="reflect")
    np.testing.assert_allclose(
        approximation[1 : 1 + half], math.sqrt(2) * coefficients[0, 0, 0, :half], atol=1e-12
    )
    np.testing.assert_allclose(
        detail[1 : 1 + length // 2], -coefficients[0, 0, 0, half:] / math.sqrt(2), atol=1e-12
    )
    column = row.transpose(-1, -2).contiguous()
    by_rows = torch.empty_like(column)
    _analyse(column, by_rows, -2)
    torch.testing.assert_close(by_rows.transpose(-1, -2), coefficients, atol=0, rtol=0)
    restored = torch.empty_like(row)
    _synthesise(coefficients, restored, -1)
    torch.testing.assert_close(restored, row, atol=1e-12, rtol=0)


def _haar_fusion(anatomical: Tensor, functional: Tensor, levels: int = 3) -> Tensor:
    """The rule ``wavelet`` replaced: orthonormal Haar DWT, max-abs details, averaged approximation."""
    low, high = torch.tensor([1.0, 1.0]) / 2**0.5, torch.tensor([1.0, -1.0]) / 2**0.5
    filters = torch.stack([torch.outer(r, c) for r in (low, high) for c in (low, high)])[:, None]
    filters = filters.to(anatomical.dtype)
    approx_a, approx_b, fused_details = anatomical, functional, []
    for _ in range(levels):
        bands_a, bands_b = F.conv2d(approx_a, filters, stride=2), F.conv2d(approx_b, filters, stride=2)
        approx_a, approx_b = bands_a[:, :1], bands_b[:, :1]
        details_a, details_b = bands_a[:, 1:], bands_b[:, 1:]
        fused_details.append(torch.where(details_b.abs() > details_a.abs(), details_b, details_a))
    fused = (approx_a + approx_b) / 2
    for details in reversed(fused_details):
        fused = F.conv_transpose2d(torch.cat([fused, details], dim=1), filters, stride=2)
    return fused.clamp(0.0, 1.0)


def _block_grid_ratio(fuse) -> float:
    """Mean jump between neighbouring pixels across the 8-pixel dyadic grid lines, over the mean
    jump elsewhere, for a diagonal step edge (present in one image only) fused with a smooth image.

    The edge crosses every column and row phase alike, so a rule free of block artefacts scores
    about 1; a 3-level Haar DWT leaves steps on the grid lines beside the edge."""
    size = 128
    rows = torch.arange(size, dtype=torch.float64).view(-1, 1)
    cols = torch.arange(size, dtype=torch.float64).view(1, -1)
    edge = 0.1 + 0.8 * (cols > 0.45 * rows + 20.3).to(torch.float64)
    smooth = 0.35 + 0.1 * torch.sin(rows / 9) * torch.cos(cols / 13)
    fused = fuse(edge.view(1, 1, size, size), smooth.view(1, 1, size, size))[0, 0]
    jumps = torch.cat([(fused[:, 1:] - fused[:, :-1]).abs(), (fused[1:, :] - fused[:-1, :]).abs().T])
    on_grid = (torch.arange(1, size) % 8) == 0  # the jump into column (row) j, j a multiple of 8
    return (jumps[:, on_grid].mean() / jumps[:, ~on_grid].mean()).item()


def test_wavelet_leaves_no_blocks_on_the_dyadic_grid() -> None:
    assert _block_grid_ratio(_haar_fusion) > 2.5  # the measure sees the old rule's 8×8 blocks
    assert _block_grid_ratio(WaveletFusion()) < 1.3
