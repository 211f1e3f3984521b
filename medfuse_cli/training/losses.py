"""Differentiable, batched scores and losses for training fusion networks on Y patches in [0, 1].

``ssim`` follows Wang et al. 2004 with its defaults (11×11 Gaussian window, σ = 1.5, K1 = 0.01,
K2 = 0.03, mean over the 'valid' map), the same variant the project's metrics report, but in
torch, per sample and differentiable: training needs it inside the loss and on thousands of
patches at once, which the numpy metrics are not for. Gradients use the Sobel operator with
replicate padding so borders do not read as edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medfuse_cli.metrics.balance import PEAK_PERCENTILE

_C1 = 0.01**2
_C2 = 0.03**2


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return taps / taps.sum()


_GAUSS = _gaussian_taps()
_SOBEL_SMOOTH = torch.tensor([1.0, 2.0, 1.0])
_SOBEL_DIFF = torch.tensor([-1.0, 0.0, 1.0])


def _separable(x: Tensor, vertical: Tensor, horizontal: Tensor) -> Tensor:
    """Correlate every (H, W) plane of ``x`` with outer(vertical, horizontal), 'valid' region.

    Written as two depthwise 1-D convolutions over all planes at once: on a CPU this is tens of
    times faster (forward and backward) than one single-channel 2-D convolution per map.
    """
    n, c, h, w = x.shape
    planes = x.reshape(1, n * c, h, w)
    rows = horizontal.to(x).view(1, 1, 1, -1).expand(n * c, 1, 1, -1)
    cols = vertical.to(x).view(1, 1, -1, 1).expand(n * c, 1, -1, 1)
    out = F.conv2d(F.conv2d(planes, rows, groups=n * c), cols, groups=n * c)
    return out.reshape(n, c, out.shape[-2], out.shape[-1])


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample SSIM of (N, 1, H, W) images in [0, 1]: a tensor of N values."""
    stats = _separable(torch.cat([x, y, x * x, y * y, x * y], dim=1), _GAUSS, _GAUSS)
    mu_x, mu_y, xx, yy, xy = stats.unbind(dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1)
    structure = (2 * cov + _C2) / (var_x + var_y + _C2)
    return (luminance * structure).mean(dim=(1, 2))


def gradient_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of (N, 1, H, W) images, same shape."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = _separable(padded, _SOBEL_SMOOTH, _SOBEL_DIFF)
    gy = _separable(padded, _SOBEL_DIFF, _SOBEL_SMOOTH)
    return torch.sqrt(gx**2 + gy**2 + 1e-12)


def structural_score(fused: Tensor, anatomical: Tensor, functional: Tensor) -> Tensor:
    """SPI's label score s(F) = SSIM(F, MRI) + SSIM(F, functional), per sample (range up to 2)."""
    return ssim(fused, anatomical) + ssim(fused, functional)


def detail_score(fused: Tensor, anatomical: Tensor, functional: Tensor) -> Tensor:
    """How much of the stronger source edge survives, per sample, in [0, 1].

    Σ min(|∇F|, g) / Σ g with g = max(|∇MRI|, |∇functional|): 1 when every edge is at least
    as strong as the stronger source's, lower as edges are averaged away. A cheap stand-in for
    edge-transfer metrics (Qabf) that rewards keeping detail without rewarding noise beyond g.
    """
    strongest = torch.maximum(gradient_magnitude(anatomical), gradient_magnitude(functional))
    kept = torch.minimum(gradient_magnitude(fused), strongest)
    return kept.sum(dim=(1, 2, 3)) / strongest.sum(dim=(1, 2, 3)).clamp_min(1e-6)


def label_score(fused: Tensor, anatomical: Tensor, functional: Tensor, detail_weight: float) -> Tensor:
    """The score SPI ranks candidate labels by: s(F) + detail_weight · detail(F)."""
    score = structural_score(fused, anatomical, functional)
    if detail_weight:
        score = score + detail_weight * detail_score(fused, anatomical, functional)
    return score


def fusion_loss(
    output: Tensor,
    label: Tensor,
    anatomical: Tensor,
    functional: Tensor,
    gradient_weight: float,
    intensity_weight: float = 0.0,
    balance_weight: float = 0.0,
    peak_weight: float = 0.0,
) -> Tensor:
    """Supervised SPI loss: L1 + (1 − SSIM) toward the label, plus detail, intensity and balance terms.

    Args:
        output, label, anatomical, functional: (N, 1, S, S) float32 Y patches in [0, 1].
        gradient_weight, intensity_weight, balance_weight, peak_weight: the terms' weights
            (0: off), see below.

    Returns:
        The batch's mean loss, a scalar tensor (unitless, >= 0).

    The detail term, L1 between |∇output| and max(|∇MRI|, |∇functional|), pulls edges toward
    the stronger source: labels chosen by structural similarity alone are smooth (averaging
    wins), and a network fitted to them alone inherits their weak edges. But the MRI has the
    stronger gradient almost everywhere, so on its own the detail term drives a weight-map
    network to copy the MRI and drop the functional signal. The intensity term, L1 toward
    max(MRI, functional), holds it back: where the functional image is the brighter source
    (a tracer's uptake), the output must keep it.

    The two balance terms ask directly for what ``medfuse evaluate --metrics balance`` scores
    (issue 15): ``balance_weight`` × (1 − min(SSIM(output, MRI), SSIM(output, functional))), so
    neither source's structure may be given up for the other's, and ``peak_weight`` × the share
    of the functional peaks' excess the output loses (``peak_loss``).
    """
    loss = F.l1_loss(output, label) + (1 - ssim(output, label)).mean()
    if gradient_weight:
        strongest = torch.maximum(gradient_magnitude(anatomical), gradient_magnitude(functional))
        loss = loss + gradient_weight * F.l1_loss(gradient_magnitude(output), strongest)
    if intensity_weight:
        loss = loss + intensity_weight * F.l1_loss(output, torch.maximum(anatomical, functional))
    if balance_weight:
        worse = torch.minimum(ssim(output, anatomical), ssim(output, functional))
        loss = loss + balance_weight * (1 - worse).mean()
    if peak_weight:
        loss = loss + peak_weight * peak_loss(output, anatomical, functional).mean()
    return loss


def peak_mask(anatomical: Tensor, functional: Tensor, percentile: float) -> Tensor:
    """The peak set of ``metrics.balance.peak_retention``, per sample: (N, 1, S, S) bool.

    The pixels where E = functional − MRI > 0 and E is at least the ``percentile``-th percentile
    (linear interpolation, as numpy's) of E over that sample's positive pixels; all False for a
    sample where the functional image is nowhere brighter.
    """
    excess = functional - anatomical
    masks = []
    for e in excess:
        positive = e[e > 0]
        if positive.numel() == 0:
            masks.append(torch.zeros_like(e, dtype=torch.bool))
            continue
        threshold = torch.quantile(positive, percentile / 100)
        masks.append((e > 0) & (e >= threshold))
    return torch.stack(masks)


def peak_loss(output: Tensor, anatomical: Tensor, functional: Tensor) -> Tensor:
    """1 − PeakRetention per sample (``metrics.balance.peak_retention``), differentiable in ``output``.

    Args:
        output, anatomical, functional: (N, 1, S, S) float32 Y in [0, 1].

    Returns:
        (N,) float32 in [0, 1]: the share of the excess E = functional − MRI on the peak set
        (``peak_mask`` at ``PEAK_PERCENTILE``) that the output does not keep,
        Σ_P (E − clip(output − MRI, 0, E)) / Σ_P E; 0 for a sample without peaks.
    """
    mask = peak_mask(anatomical, functional, PEAK_PERCENTILE).to(output.dtype)
    excess = (functional - anatomical).clamp_min(0) * mask
    kept = torch.minimum((output - anatomical).clamp_min(0), excess)
    lost = (excess - kept).sum(dim=(1, 2, 3))
    return lost / excess.sum(dim=(1, 2, 3)).clamp_min(1e-6)
