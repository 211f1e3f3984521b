"""Fusion rules with no weights: baselines, and SPI's candidate labels.

Each rule is a parameter-free ``nn.Module`` with the fuser interface (two (N, 1, H, W) Y tensors
in [0, 1] in, the fused Y out), so it runs batched on any device like the networks do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfuse_cli.fusers.registry import FuserSpec, register_fuser


class AverageFusion(nn.Module):
    """F = (A + B) / 2: keeps structure from both sources, halves the contrast of each."""

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        return (anatomical + functional) / 2


class MaximumFusion(nn.Module):
    """F = max(A, B) per pixel: keeps the brighter source, often over-bright."""

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        return torch.maximum(anatomical, functional)


def _choose_max_abs(first: Tensor, second: Tensor) -> Tensor:
    """Per coefficient, the one with the larger magnitude (ties go to ``first``)."""
    return torch.where(second.abs() > first.abs(), second, first)


def _pad_symmetric(image: Tensor, width: int) -> Tensor:
    """Pad the last two axes by mirroring with the edge pixel repeated (needs sides >= width)."""
    rows = torch.cat([image[..., :width, :].flip(-2), image, image[..., -width:, :].flip(-2)], dim=-2)
    return torch.cat([rows[..., :width].flip(-1), rows, rows[..., -width:].flip(-1)], dim=-1)


def _pyramid_levels(height: int, width: int, wanted: int, smallest: int) -> int:
    """How many times an image can be halved while its sides stay at least ``smallest``."""
    levels = 0
    while levels < wanted and min(height, width) >> (levels + 1) >= smallest:
        levels += 1
    return levels


class LaplacianPyramidFusion(nn.Module):
    """Burt–Adelson Laplacian pyramid: max-abs detail coefficients, averaged base.

    Burt & Adelson, "The Laplacian pyramid as a compact image code", IEEE Trans. Commun. 1983,
    doi:10.1109/TCOM.1983.1095851. Generating kernel: the 5×5 binomial outer([1,4,6,4,1])/256,
    symmetric borders (the edge pixel repeated, as scipy's "reflect" and MATLAB's "symmetric"). REDUCE blurs and keeps every
    second pixel; EXPAND inserts zeros and blurs with 4× the kernel. Four detail levels (fewer
    for images too small to halve four times, so any H×W works).
    """

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels
        taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
        self.register_buffer("kernel", torch.outer(taps, taps)[None, None], persistent=False)

    def _blur(self, image: Tensor, gain: float = 1.0) -> Tensor:
        return F.conv2d(_pad_symmetric(image, 2), self.kernel.to(image.dtype) * gain)

    def _reduce(self, image: Tensor) -> Tensor:
        return self._blur(image)[..., ::2, ::2]

    def _expand(self, image: Tensor, size: torch.Size) -> Tensor:
        upsampled = image.new_zeros(*image.shape[:-2], size[-2], size[-1])
        upsampled[..., ::2, ::2] = image
        return self._blur(upsampled, gain=4.0)

    def _decompose(self, image: Tensor, levels: int) -> list[Tensor]:
        pyramid = []
        for _ in range(levels):
            smaller = self._reduce(image)
            pyramid.append(image - self._expand(smaller, image.shape))
            image = smaller
        pyramid.append(image)
        return pyramid

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        levels = _pyramid_levels(*anatomical.shape[-2:], wanted=self.levels, smallest=2)
        pyramid_a = self._decompose(anatomical, levels)
        pyramid_b = self._decompose(functional, levels)
        fused = (pyramid_a[-1] + pyramid_b[-1]) / 2
        for detail_a, detail_b in zip(reversed(pyramid_a[:-1]), reversed(pyramid_b[:-1]), strict=True):
            fused = self._expand(fused, detail_a.shape) + _choose_max_abs(detail_a, detail_b)
        return fused.clamp(0.0, 1.0)


class HaarWaveletFusion(nn.Module):
    """Multi-level Haar DWT: max-abs detail sub-bands, averaged approximation.

    The classic wavelet fusion rule of Li, Manjunath & Mitra, "Multisensor image fusion using
    the wavelet transform", Graphical Models and Image Processing 1995,
    doi:10.1006/gmip.1995.1022, with the orthonormal Haar filters (our choice: exact, cheap and
    free of ringing). Odd sides are padded by edge replication and cropped back.
    """

    def __init__(self, levels: int = 3) -> None:
        super().__init__()
        self.levels = levels
        low = torch.tensor([1.0, 1.0]) / 2**0.5
        high = torch.tensor([1.0, -1.0]) / 2**0.5
        filters = [torch.outer(row, col) for row in (low, high) for col in (low, high)]
        self.register_buffer("filters", torch.stack(filters)[:, None], persistent=False)

    def _analyse(self, image: Tensor) -> tuple[Tensor, Tensor]:
        bands = F.conv2d(image, self.filters.to(image.dtype), stride=2)
        return bands[:, :1], bands[:, 1:]

    def _synthesise(self, approximation: Tensor, details: Tensor) -> Tensor:
        bands = torch.cat([approximation, details], dim=1)
        return F.conv_transpose2d(bands, self.filters.to(bands.dtype), stride=2)

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        height, width = anatomical.shape[-2:]
        levels = _pyramid_levels(height, width, wanted=self.levels, smallest=1)
        multiple = 2**levels
        pad = (0, -width % multiple, 0, -height % multiple)
        approx_a = F.pad(anatomical, pad, mode="replicate")
        approx_b = F.pad(functional, pad, mode="replicate")
        fused_details = []
        for _ in range(levels):
            approx_a, details_a = self._analyse(approx_a)
            approx_b, details_b = self._analyse(approx_b)
            fused_details.append(_choose_max_abs(details_a, details_b))
        fused = (approx_a + approx_b) / 2
        for details in reversed(fused_details):
            fused = self._synthesise(fused, details)
        return fused[..., :height, :width].clamp(0.0, 1.0)


def _rule(name: str, summary: str, module: type[nn.Module]) -> None:
    register_fuser(FuserSpec(name=name, kind="classical", summary=summary, build=lambda _, __: module()))


_rule("average", "pixel-wise mean of the two Y images", AverageFusion)
_rule("maximum", "pixel-wise maximum of the two Y images", MaximumFusion)
_rule("laplacian", "Laplacian pyramid (Burt-Adelson), max-abs details, averaged base", LaplacianPyramidFusion)
_rule("wavelet", "3-level Haar wavelet, max-abs details, averaged approximation", HaarWaveletFusion)
