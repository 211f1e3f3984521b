"""Fusion rules with no weights: baselines, and SPI's candidate labels.

Each rule is a parameter-free ``nn.Module`` with the fuser interface (two (N, 1, H, W) Y tensors
in [0, 1] in, the fused Y out), so it runs batched on any device like the networks do. Each
declares ``min_size``, the smallest height and width it takes; all four take every H×W from
1×1 up, square or not, and refuse an empty side or two tensors of different shapes with an
``InputError`` (a ``MedfuseError``).

The two transform rules are written with element-wise torch operations only: additions,
comparisons and weights that are powers of two. One-channel convolutions are slow on CPU
(oneDNN vectorises over channels, and there is one), and this way the arithmetic done for a pixel
does not depend on what else is in the batch, so batching never changes a bit of the result.
A power-of-two weight makes a product exact, so ``torch.add(a, b, alpha=4)`` rounds once, the
same in torch's vectorised loop (a fused multiply-add) and in its scalar loop; no other fused
multiply-add is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfuse_cli.fusers.registry import FuserSpec, check_fuser_inputs, register_fuser


class AverageFusion(nn.Module):
    """Pixel-wise mean F = (A + B) / 2: keeps structure from both sources, halves the contrast of each.

    Input: two float tensors (N, 1, H, W) of one shape (float32 in the fuser interface; any
    floating dtype works), values in [0, 1], on any device, H and W at least ``min_size``.
    Output: same shape, dtype and device, values in [0, 1]. No paper: the usual baseline.

    Raises:
        InputError: inputs outside the fuser contract (``registry.check_fuser_inputs``).
    """

    min_size = 1

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        """Fuse by the pixel-wise mean F = (A + B) / 2.

        anatomical, functional: (N, 1, H, W) Y in [0, 1], one shape, H and W ≥ ``min_size``, float32
        (any floating dtype works). Returns the fused Y: (N, 1, H, W), same dtype and device,
        in [0, 1].
        """
        check_fuser_inputs("average", self.min_size, anatomical, functional)
        return (anatomical + functional) / 2


class MaximumFusion(nn.Module):
    """Pixel-wise maximum F = max(A, B): keeps the brighter source, often over-bright.

    Input: two float tensors (N, 1, H, W) of one shape (float32 in the fuser interface; any
    floating dtype works), values in [0, 1], on any device, H and W at least ``min_size``.
    Output: same shape, dtype and device, values in [0, 1]. No paper: the usual baseline.

    Raises:
        InputError: inputs outside the fuser contract (``registry.check_fuser_inputs``).
    """

    min_size = 1

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        """Fuse by the pixel-wise maximum F = max(A, B).

        anatomical, functional: (N, 1, H, W) Y in [0, 1], one shape, H and W ≥ ``min_size``, float32
        (any floating dtype works). Returns the fused Y: (N, 1, H, W), same dtype and device,
        in [0, 1].
        """
        check_fuser_inputs("maximum", self.min_size, anatomical, functional)
        return torch.maximum(anatomical, functional)


def _choose_max_abs(first: Tensor, second: Tensor, out: Tensor | None = None) -> Tensor:
    """Per coefficient, the one with the larger magnitude (ties go to ``first``).

    Branch-free and exact: the weight |second| > |first| is 0 or 1, and ``lerp`` with those
    weights returns its ends unchanged. (``torch.where`` runs a branching loop on CPU, 4–20×
    slower on coefficients whose choice flips from pixel to pixel.)
    """
    weight = second.abs()
    torch.gt(weight, first.abs(), out=weight)
    return torch.lerp(first, second, weight, out=out)


def _pyramid_levels(height: int, width: int, wanted: int, smallest: int) -> int:
    """How many times an image can be halved while its sides stay at least ``smallest``."""
    levels = 0
    while levels < wanted and min(height, width) >> (levels + 1) >= smallest:
        levels += 1
    return levels


def _along(dim: int, start: int | None = None, stop: int | None = None, step: int | None = None) -> tuple:
    """The index that takes ``start:stop:step`` along ``dim`` (-1 or -2) and all of every other axis."""
    return (Ellipsis, slice(start, stop, step)) + (slice(None),) * (-1 - dim)


def _binomial(taps: Sequence[Tensor], out: Tensor | None = None) -> Tensor:
    """a + 4b + 6c + 4d + e of five views of one shape: the binomial filter [1, 4, 6, 4, 1], unnormalised.

    Every weight is a power-of-two ``alpha`` (6c = 4c + 2c), so each step rounds once.
    """
    a, b, c, d, e = taps
    total = torch.add(a, e, out=out)
    return total.add_(b, alpha=4.0).add_(d, alpha=4.0).add_(c, alpha=4.0).add_(c, alpha=2.0)


def _reduce(image: Tensor, out: Tensor) -> Tensor:
    """Burt–Adelson REDUCE of an image with sides ≥ 4 into ``out`` (sides halved, rounded up).

    Blurs with outer([1, 4, 6, 4, 1]) / 256 over symmetric borders with the edge pixel repeated
    (x[-1] = x[0], x[-2] = x[1]) and keeps every second row and column, separably: the rows
    filtered at the kept rows only, then the columns at every column (contiguous reads are
    faster than strided ones) and every second one copied out, scaled.
    """
    padded = F.pad(image, (2, 2, 2, 2), mode="replicate")  # x[-2] = x[0] so far: fix both ends
    height, width = padded.shape[-2:]
    padded[..., :, 0 :: width - 1] = padded[..., :, 3 : width - 3 : width - 7]
    padded[..., 0 :: height - 1, :] = padded[..., 3 : height - 3 : height - 7, :]
    rows = _binomial(padded.unfold(-2, 5, 2).unbind(-1))
    columns = _binomial(rows.unfold(-1, 5, 1).unbind(-1))
    return torch.mul(columns[..., ::2], 1.0 / 256, out=out)


def _expand_axis(low: Tensor, dim: int, out: Tensor) -> Tensor:
    """Burt–Adelson EXPAND along one axis, times 8: ``out`` (n ≥ 4 long on ``dim``) from ``low`` (⌈n/2⌉).

    The definition inserts zeros between the samples of x = ``low``, pads that by symmetric
    reflection (edge repeated) and filters with 2·[1, 4, 6, 4, 1] / 16. Polyphase, without the
    zeros: even outputs x[m-1] + 6x[m] + x[m+1], odd outputs 4(x[m] + x[m+1]) (zero beyond the
    ends), from the pair sums q[m] = x[m-1] + x[m]. Reflecting the zero-inserted signal puts x[0]
    once more before the start and x[last] once more past the end; those terms are added at the
    two ends. (They give EXPAND a border gain other than 1: part of the definition kept here.)
    """
    size, length = low.shape[dim], out.shape[dim]
    half = length // 2
    padded = F.pad(low, (1, 1) if dim == -1 else (0, 0, 1, 1))
    pairs = padded[_along(dim, None, -1)] + padded[_along(dim, 1, None)]
    even = pairs[_along(dim, None, -1)] + pairs[_along(dim, 1, None)]
    torch.add(even, low, alpha=4.0, out=out[_along(dim, 0, None, 2)])
    torch.mul(pairs[_along(dim, 1, half + 1)], 4.0, out=out[_along(dim, 1, None, 2)])
    first, last = low[_along(dim, 0, 1)], low[_along(dim, size - 1, size)]
    out[_along(dim, 0, 1)].add_(first, alpha=4.0)
    out[_along(dim, 1, 2)].add_(first)
    out[_along(dim, 2 * half - 1, 2 * half)].add_(last)
    if length % 2:
        out[_along(dim, length - 1, length)].add_(last, alpha=4.0)
    return out


def _expand(low: Tensor, height: int, width: int) -> Tensor:
    """Burt–Adelson EXPAND of ``low`` to height × width (sides ≥ 4), times 64."""
    columns = _expand_axis(low, -1, low.new_empty(*low.shape[:-1], width))
    return _expand_axis(columns, -2, low.new_empty(*low.shape[:-2], height, width))


class LaplacianPyramidFusion(nn.Module):
    """Laplacian pyramid fusion: Burt & Adelson, IEEE Trans. Commun. 1983, doi:10.1109/TCOM.1983.1095851.

    "The Laplacian pyramid as a compact image code", IEEE Trans. Commun. 31(4), 1983: max-abs
    details, averaged base. Generating kernel: the 5×5 binomial outer([1, 4, 6, 4, 1]) / 256, symmetric borders
    (the edge pixel repeated, as scipy's "reflect" and MATLAB's "symmetric"). REDUCE blurs and
    keeps every second pixel; EXPAND inserts zeros, pads, and blurs with 4× the kernel; each
    detail level is an image minus the EXPAND of its REDUCE. The fused pyramid takes, per
    coefficient, the detail of larger magnitude (ties: the anatomical one) and the mean of the
    two bases, and is collapsed by EXPAND-and-add. Four detail levels, fewer for images too small
    to halve four times with sides of at least 2 (below 4×4: the plain mean). Computed
    separably and polyphase with element-wise operations (module docstring); it agrees with the
    direct 5×5-convolution form to float round-off.

    Shapes and ranges: see ``forward``; any device, and a pair's result does not depend on the
    rest of the batch, bit for bit.

    Raises:
        InputError: inputs outside the fuser contract (``registry.check_fuser_inputs``).
    """

    min_size = 1

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        """Fuse the Laplacian pyramids: max-abs details, mean base, collapsed by EXPAND-and-add.

        anatomical, functional: (N, 1, H, W) Y in [0, 1], one shape, H and W ≥ ``min_size``, float32
        (any floating dtype works). Returns the fused Y: (N, 1, H, W), same dtype and device,
        clamped to [0, 1].
        """
        check_fuser_inputs("laplacian", self.min_size, anatomical, functional)
        levels = _pyramid_levels(*anatomical.shape[-2:], wanted=self.levels, smallest=2)
        if levels == 0:
            return ((anatomical + functional) / 2).clamp(0.0, 1.0)
        n = anatomical.shape[0]
        # Gaussian levels of both images stacked on the batch axis; every coarser level has room
        # for a third image, the fused one, so one EXPAND per level serves all three.
        gaussian = [torch.cat([anatomical, functional])]
        lows = []
        for _ in range(levels):
            image = gaussian[-1]
            height, width = image.shape[-2:]
            low = image.new_empty(3 * n, *image.shape[1:-2], (height + 1) // 2, (width + 1) // 2)
            _reduce(image, out=low[: 2 * n])
            lows.append(low)
            gaussian.append(low[: 2 * n])
        base = lows[-1]
        torch.add(base[:n], base[n : 2 * n], out=base[2 * n :]).div_(2)
        fused = torch.empty_like(anatomical)
        for level in reversed(range(levels)):
            image = gaussian[level]
            target = lows[level - 1][2 * n :] if level else fused
            expanded = _expand(lows[level], *image.shape[-2:])  # times 64
            details = torch.sub(image, expanded[: 2 * n], alpha=1.0 / 64)
            _choose_max_abs(details[:n], details[n:], out=target)
            target.add_(expanded[2 * n :], alpha=1.0 / 64)
        return fused.clamp_(0.0, 1.0)


def _neighbour_sums(samples: Tensor, dim: int, count: int, right: bool) -> Tensor:
    """``count`` sums of adjacent lifting samples along ``dim``, mirrored at the borders.

    right=True: t[i] = s[i] + s[i+1], the neighbours of odd sample i among the even samples
    ``s``; right=False: t[i] = d[i-1] + d[i], the neighbours of even sample i among the odd
    samples ``d``. A neighbour past an end is the sample before it (s[len] = s[len-1],
    d[-1] = d[0], d[len] = d[len-1]): what whole-sample symmetric extension of the signal gives.
    """
    length = samples.shape[dim]
    shape = list(samples.shape)
    shape[dim] = count
    sums = samples.new_empty(shape)
    start = 0 if right else 1
    if length > 1:
        torch.add(
            samples[_along(dim, 0, length - 1)],
            samples[_along(dim, 1, None)],
            out=sums[_along(dim, start, start + length - 1)],
        )
    if not right:
        first = samples[_along(dim, 0, 1)]
        torch.add(first, first, out=sums[_along(dim, 0, 1)])
    if count > start + length - 1:
        last = samples[_along(dim, length - 1, None)]
        torch.add(last, last, out=sums[_along(dim, count - 1, None)])
    return sums


def _analyse(signal: Tensor, out: Tensor, dim: int) -> None:
    """One level of the CDF 5/3 DWT along ``dim`` (length ≥ 2), by lifting.

    ``out`` receives the ⌈n/2⌉ approximation coefficients, then the ⌊n/2⌋ details:
    d = odd - (left + right) / 2, then s = even + (left d + right d) / 4, with whole-sample
    symmetric borders. Unnormalised: PyWavelets' "bior2.2" bands are √2·s and -d/√2.
    """
    length = signal.shape[dim]
    half = (length + 1) // 2
    even, odd = signal[_along(dim, 0, None, 2)], signal[_along(dim, 1, None, 2)]
    low, high = out[_along(dim, 0, half)], out[_along(dim, half, None)]
    torch.add(odd, _neighbour_sums(even, dim, length // 2, right=True), alpha=-0.5, out=high)
    torch.add(even, _neighbour_sums(high, dim, half, right=False), alpha=0.25, out=low)


def _synthesise(coefficients: Tensor, out: Tensor, dim: int) -> None:
    """Inverse of ``_analyse``: the lifting steps undone in reverse order, samples interleaved."""
    length = coefficients.shape[dim]
    half = (length + 1) // 2
    low, high = coefficients[_along(dim, 0, half)], coefficients[_along(dim, half, None)]
    even, odd = out[_along(dim, 0, None, 2)], out[_along(dim, 1, None, 2)]
    torch.add(low, _neighbour_sums(high, dim, half, right=False), alpha=-0.25, out=even)
    torch.add(high, _neighbour_sums(even, dim, length // 2, right=True), alpha=0.5, out=odd)


class WaveletFusion(nn.Module):
    """DWT fusion, CDF 5/3 wavelet: Li, Manjunath & Mitra, Graph. Models Image Process. 1995, doi:10.1006/gmip.1995.1022.

    Li, Manjunath & Mitra, "Multisensor image fusion using the wavelet transform", Graphical
    Models and Image Processing 57(3), 1995: decompose both images with the separable 2-D DWT,
    take per detail coefficient the one of larger magnitude (ties: the anatomical one), average
    the approximations, invert. Three levels, fewer for images too small to halve three times
    (below 2×2: the plain mean).

    The wavelet is the biorthogonal CDF 5/3 (Cohen, Daubechies & Feauveau, Commun. Pure Appl.
    Math. 1992, doi:10.1002/cpa.3160450502; Le Gall & Tabatabai, ICASSP 1988,
    doi:10.1109/ICASSP.1988.196696; PyWavelets "bior2.2"), the reversible wavelet of JPEG 2000
    (ISO/IEC 15444-1, Annex F), computed by lifting (Sweldens, Appl. Comput. Harmon. Anal. 1996,
    doi:10.1006/acha.1996.0015) with whole-sample symmetric borders, which fit any length, odd or
    even. Why this one: it is symmetric, so borders are symmetric and edges stay in place, and its
    synthesis functions are continuous hat functions, so swapping coefficients between the images
    cannot leave steps along the dyadic grid the way Haar's boxes leave 8×8 blocks; its lifting
    weights (1/2, 1/4) are exact in floating point, which keeps it cheaper than LWNet. The longer
    CDF 9/7 (JPEG 2000's lossy wavelet) was measured too: it costs as much as LWNet, not less.

    Shapes and ranges: see ``forward``; any device, and a pair's result does not depend on the
    rest of the batch, bit for bit.

    Raises:
        InputError: inputs outside the fuser contract (``registry.check_fuser_inputs``).
    """

    min_size = 1

    def __init__(self, levels: int = 3) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, anatomical: Tensor, functional: Tensor) -> Tensor:
        """Fuse in the CDF 5/3 DWT domain: max-abs details, mean approximation, inverse transform.

        anatomical, functional: (N, 1, H, W) Y in [0, 1], one shape, H and W ≥ ``min_size``, float32
        (any floating dtype works). Returns the fused Y: (N, 1, H, W), same dtype and device,
        clamped to [0, 1].
        """
        check_fuser_inputs("wavelet", self.min_size, anatomical, functional)
        height, width = anatomical.shape[-2:]
        levels = _pyramid_levels(height, width, wanted=self.levels, smallest=1)
        if levels == 0:
            return ((anatomical + functional) / 2).clamp(0.0, 1.0)
        n = anatomical.shape[0]
        # Both images' coefficients stacked on the batch axis, in the Mallat layout: each level
        # transforms the top-left block (the previous approximation), rows then columns.
        coefficients = anatomical.new_empty(2 * n, *anatomical.shape[1:])
        scratch = torch.empty_like(coefficients)
        _analyse(anatomical, scratch[:n], -2)
        _analyse(functional, scratch[n:], -2)
        _analyse(scratch, coefficients, -1)
        blocks = [(height, width)]
        for _ in range(1, levels):
            height, width = (height + 1) // 2, (width + 1) // 2
            blocks.append((height, width))
            block = (Ellipsis, slice(0, height), slice(0, width))
            _analyse(coefficients[block], scratch[block], -2)
            _analyse(scratch[block], coefficients[block], -1)
        # Everything outside the top-left block of approximation coefficients is a detail.
        fused = _choose_max_abs(coefficients[:n], coefficients[n:])
        top = (Ellipsis, slice(0, (height + 1) // 2), slice(0, (width + 1) // 2))
        torch.add(coefficients[:n][top], coefficients[n:][top], out=fused[top]).div_(2)
        result = torch.empty_like(anatomical)
        scratch = scratch[:n]
        for level in reversed(range(levels)):
            block = (Ellipsis, slice(0, blocks[level][0]), slice(0, blocks[level][1]))
            _synthesise(fused[block], scratch[block], -1)
            _synthesise(scratch[block], (fused if level else result)[block], -2)
        return result.clamp_(0.0, 1.0)


def _rule(name: str, summary: str, reference: str, module: type[nn.Module]) -> None:
    """Register a rule: no weights, any device, one CPU thread (a few ms of work per pair,
    which a second OpenMP thread on a shared core slows down; BENCHMARKS.md)."""
    register_fuser(
        FuserSpec(
            name=name,
            kind="classical",
            summary=summary,
            reference=reference,
            build=lambda loaded, **options: module(),
            min_size=module.min_size,
            cpu_threads=1,
        )
    )


_rule("average", "pixel-wise mean of the two Y images", "the field's baseline pixel rule", AverageFusion)
_rule("maximum", "pixel-wise maximum of the two Y images", "the field's baseline pixel rule", MaximumFusion)
_rule(
    "laplacian",
    "Laplacian pyramid (Burt-Adelson), max-abs details, averaged base",
    "Burt & Adelson, IEEE Trans. Commun. 1983, doi:10.1109/TCOM.1983.1095851",
    LaplacianPyramidFusion,
)
_rule(
    "wavelet",
    "3-level CDF 5/3 (bior2.2) DWT, max-abs details, averaged approximation",
    "Li, Manjunath & Mitra, Graph. Models Image Process. 1995, doi:10.1006/gmip.1995.1022",
    WaveletFusion,
)
