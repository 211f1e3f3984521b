"""LWNet: a lightweight fusion network with adaptive channel attention and multi-scale cross attention.

Reimplemented from the description of Wang et al.'s LWNet ("A lightweight medical image fusion
network by structural similarity pseudo labels iteration"); no code, weights or equations are
public, so every choice here is *our reading* (see ``../shared/papers/NOTES.md``):

    MRI Y ─┐              shallow (¼) ──────────────────────┐
           ├─ Encoders ─▶                                    ├─▶ Decoder ─▶ m ─▶ m·MRI + (1−m)·func
    func Y ┘              deep (⅛, ACA) ──▶ MCA ──▶ mixed ───┘

- one encoder per modality: a 6×6 convolution with stride 4 (the "shallow" features, kept as
  the decoder's skip), a strided 3×3 convolution, then ACA (ECA-style channel attention);
- MCA filters each modality's deep features with depthwise convolutions of three kernel sizes
  and lets every scale attend across modalities in both directions, with attention over
  channels (a C×C map, Restormer's transposed attention), so the cost stays linear in the pixel
  count and any H×W works;
- the decoder upsamples the cross-attended features to the skips' resolution, mixes them with
  both encoders' shallow features, and predicts 16 sub-pixel values per ¼-resolution position,
  rearranged to full resolution (pixel shuffle, ESPCN) and squashed by a sigmoid: a per-pixel
  weight m between the sources (our choice, see ``LWNet``).

Why ¼ and ⅛ resolution (our choice, for speed): the network only decides *how much* of each
source a pixel takes; the fused image itself is formed from the full-resolution sources, so
their edges are kept whatever resolution the weight is computed at. Our first LWNet kept
full-resolution features and cost 0.227 GFLOP and ~15 ms per 256×256 pair on a 2-core CPU;
this one costs 0.035 GFLOP (see BENCHMARKS.md for its time). Past the first layer, both modalities run through one
grouped convolution (group 0 = MRI, group 1 = functional; no weight or channel is shared): the
same function as two separate encoders in half the calls, which is what a batch-1 CPU run pays
for.

No normalisation layers: nothing depends on batch statistics, so batching never changes a
pixel. Weights are kept channels-last, where oneDNN's small convolutions run fastest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medfuse_cli.errors import CheckpointError
from medfuse_cli.fusers.registry import (
    CT,
    FUNCTIONAL,
    Checkpoint,
    FuserSpec,
    check_fuser_inputs,
    register_fuser,
)
from medfuse_cli.weights import LoadedCheckpoint, load_state_strict

CHANNELS = 8
MCA_KERNELS = (3, 5, 7)
SHALLOW_STRIDE = 4  # shallow features at ¼ resolution; inputs are padded to a multiple of this
MODALITIES = 2  # MRI (group 0) and the functional or CT image (group 1)
CHECKPOINT_FORMAT = "medfuse-lwnet-2"
MIN_SIZE = 1  # any H×W: inputs are padded to a multiple of 4 (tests/test_fuser_sizes.py)


class AdaptiveChannelAttention(nn.Module):
    """ACA, our reading: ECA-Net channel attention (Wang et al., CVPR 2020), one per modality.

    Global average pooling gives one number per channel; a 1-D convolution across neighbouring
    channels (kernel size k = odd(|log2(C)/2 + 1/2|), at least 3) and a sigmoid turn them into
    weights that favour information-rich channels. With ``groups`` modalities stacked along the
    channels, each has its own kernel and never sees the other's channels. Costs k parameters
    per group.
    """

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        k = int(abs(math.log2(channels) / 2 + 0.5))
        k = max(3, k if k % 2 else k + 1)
        self.groups = groups
        self.conv = nn.Conv1d(groups, groups, k, padding=k // 2, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight each channel by ECA's attention: a weight in [0, 1] from its own modality's channel means.

        x: (N, groups·C, h, w) float32, each modality's C channels in turn; in LWNet, groups = 2 and x is
        the deep features, (N, 2C, ⌈H/8⌉, ⌈W/8⌉). Returns x times the weights: same shape, float32.
        """
        n = x.shape[0]
        pooled = x.mean(dim=(2, 3)).view(n, self.groups, -1)  # (N, groups, C)
        weights = torch.sigmoid(self.conv(pooled)).view(n, -1, 1, 1)  # (N, groups·C, 1, 1)
        return x * weights


class Encoders(nn.Module):
    """The two light encoders, one per modality.

    Shallow: a 6×6 conv with stride 4 per modality (a ¼-resolution view of each 4×4 block and
    its border, kept for the decoder). Deep: a strided 3×3 conv to ⅛ resolution for the
    attention stage, then ACA; both modalities' deep layers run as one grouped convolution
    (group 0 = MRI, group 1 = functional; no weight or channel is shared between them). Returns
    (shallow, deep), each with the MRI's channels first.
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.shallow = nn.ModuleList(
            nn.Conv2d(1, channels, SHALLOW_STRIDE + 2, stride=SHALLOW_STRIDE, padding=1)
            for _ in range(MODALITIES)
        )
        both = MODALITIES * channels
        self.down = nn.Conv2d(both, both, 3, stride=2, padding=1, groups=MODALITIES)
        self.aca = AdaptiveChannelAttention(channels, groups=MODALITIES)

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode MRI and functional Y: shallow ¼-resolution features (the decoder's skip) and deep ⅛ ones.

        images: the MRI Y, then the functional Y, each (N, 1, H, W) float32 in [0, 1], H and W multiples
        of 4 (LWNet pads them). Returns (shallow, deep), float32, MRI channels first, no fixed range:
        shallow (N, 2C, H/4, W/4) after LeakyReLU; deep (N, 2C, ⌈H/8⌉, ⌈W/8⌉) after LeakyReLU and ACA.
        """
        shallow = F.leaky_relu(
            torch.cat([conv(y) for conv, y in zip(self.shallow, images, strict=True)], 1), 0.1
        )
        deep = F.leaky_relu(self.down(shallow), 0.1)
        return shallow, self.aca(deep)


class MultiScaleCrossAttention(nn.Module):
    """MCA, our reading: decompose each modality by depthwise kernels of several sizes, let each
    scale attend to the other modality in both directions, reassemble by concat and a 1×1 conv.

    For each kernel size k, ``Fa_k = dwconv_k(Fa)`` and ``Fb_k = dwconv_k(Fb)``. Cross attention
    is over channels: the rows of Fa_k and Fb_k (one per channel) are L2-normalised over the
    image, and ``softmax(Qa Kbᵀ · τ)`` (MRI asks, functional answers) mixes Fb_k's channels,
    ``softmax(Kb Qaᵀ · τ')`` mixes Fa_k's; every output pixel depends on the whole other image at
    a cost linear in H×W. The 2·K attended parts are concatenated and mixed back to C channels
    by ``reassemble`` (1×1). Because that conv is linear, each of its C×C blocks is folded into
    its attention map, and the result is one matrix product over the pixels: the same function
    without materialising the 2·K·C-channel concatenation.
    """

    def __init__(self, channels: int = CHANNELS, kernels: tuple[int, ...] = MCA_KERNELS) -> None:
        super().__init__()
        both = MODALITIES * channels
        self.split = nn.ModuleList(nn.Conv2d(both, both, k, padding=k // 2, groups=both) for k in kernels)
        self.temperature = nn.Parameter(torch.ones(2, len(kernels), 1, 1))  # (direction, scale)
        self.reassemble = nn.Conv2d(2 * len(kernels) * channels, channels, 1)

    def forward(self, deep: torch.Tensor) -> torch.Tensor:
        """Split both modalities' deep features into K depthwise scales, cross-attend both ways, reassemble.

        deep: (N, 2C, h, w) float32, the MRI's channels (Fa) then the functional's (Fb); in LWNet
        h, w = ⌈H/8⌉, ⌈W/8⌉ of the padded input, but any h×w works. Returns the mixed features
        (N, C, h, w), float32, no fixed range (the 1×1 ``reassemble`` output, no activation).
        """
        n, _, h, w = deep.shape
        c, k = self.reassemble.out_channels, len(self.split)
        # Every scale of both modalities as pixel rows: (N, H·W, K, [Fa_k | Fb_k]).
        scales = torch.stack([split(deep).permute(0, 2, 3, 1) for split in self.split], dim=3)
        scales = scales.reshape(n, h * w, k, 2 * c)
        fa, fb = scales[..., :c], scales[..., c:]
        similarity = torch.einsum("npki,npkj->nkij", F.normalize(fa, dim=1), F.normalize(fb, dim=1))
        a_from_b = torch.softmax(similarity * self.temperature[0], dim=-1)
        b_from_a = torch.softmax(similarity.transpose(-1, -2) * self.temperature[1], dim=-1)
        blocks = self.reassemble.weight.view(c, k, 2, c)  # (out, scale, direction, in)
        weight_b = torch.einsum("oki,nkij->nkoj", blocks[:, :, 0], a_from_b)  # applied to Fb_k
        weight_a = torch.einsum("oki,nkij->nkoj", blocks[:, :, 1], b_from_a)  # applied to Fa_k
        weight = torch.stack([weight_a, weight_b], dim=2).permute(0, 3, 1, 2, 4).reshape(n, c, -1)
        bias = self.reassemble.bias.view(1, 1, c)
        mixed = torch.baddbmm(bias, scales.reshape(n, h * w, -1), weight.transpose(1, 2))
        return mixed.view(n, h, w, c).permute(0, 3, 1, 2)


class Decoder(nn.Module):
    """Small decoder, our reading: upsample the MCA output to the skips' ¼ resolution, concat it
    with both encoders' shallow features, 3×3 conv to mix, 3×3 conv to 16 sub-pixel values,
    pixel shuffle to full resolution, sigmoid.

    The sigmoid gives a per-pixel weight m in [0, 1] rather than the fused intensity itself
    (see ``LWNet``).
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.mix = nn.Conv2d((1 + MODALITIES) * channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, SHALLOW_STRIDE**2, 3, padding=1)

    def forward(self, mixed: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        """Predict m, the MRI's per-pixel weight, from the cross-attended features and both shallow skips.

        mixed: (N, C, h, w) from MCA (⌈H/8⌉×⌈W/8⌉ in LWNet; resized to the skips, so any h×w works);
        shallow: (N, 2C, H/4, W/4) from the encoders, H and W the padded input size (multiples of 4).
        Returns m: (N, 1, H, W) float32 in [0, 1] (a sigmoid, which float32 rounds to 0 or 1 far out).
        """
        up = F.interpolate(mixed, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.mix(torch.cat([up, shallow], dim=1)), 0.1)
        return torch.sigmoid(F.pixel_shuffle(self.out(x), SHALLOW_STRIDE))


class LWNet(nn.Module):
    """Two encoders with ACA, MCA between the modalities at ⅛ resolution, a small decoder.

    Our choice where the paper is silent: the decoder's sigmoid output is a per-pixel weight m
    and the fused Y is m·MRI + (1 − m)·functional. Every fused pixel is then a convex mix of
    the sources, so it stays in [0, 1] and keeps their contrast and edges instead of
    re-synthesising intensities through a few thousand weights (an intensity-regressing
    decoder of this size trained to blurred, low-VIF outputs in our first runs); a fresh
    network starts near the average rule (m ≈ 0.5) and learns where to lean toward either
    source. Inputs of any H×W are padded (edge replication) to a multiple of 4 and the weight
    is cropped back.
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.encoders = Encoders(channels)
        self.mca = MultiScaleCrossAttention(channels)
        self.decoder = Decoder(channels)
        self.to(memory_format=torch.channels_last)

    def forward(self, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
        """Fuse (N, 1, H, W) float32 Y tensors in [0, 1]; returns the fused Y, same shape, in [0, 1].

        At inference each pair is computed on its own: oneDNN picks convolution kernels by batch
        size, whose sums round differently (~1e-7), which moved one 8-bit level in ~1 % of pairs
        between a folder run and a single fusion. A batch of one costs about what a batch of 16
        does per pair on a CPU (BENCHMARKS.md, entry 17); training keeps whole batches.
        """
        check_fuser_inputs("lwnet", MIN_SIZE, anatomical, functional)
        if self.training or anatomical.shape[0] == 1:
            return self._fuse(anatomical, functional)
        pairs = zip(anatomical.split(1), functional.split(1), strict=True)
        return torch.cat([self._fuse(a, b) for a, b in pairs])

    def _fuse(self, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
        h, w = anatomical.shape[-2:]
        shallow, deep = self.encoders(_pad_to_multiple(anatomical), _pad_to_multiple(functional))
        weight = self.decoder(self.mca(deep), shallow)[..., :h, :w]
        return torch.lerp(functional, anatomical, weight)


def _pad_to_multiple(x: torch.Tensor, multiple: int = SHALLOW_STRIDE) -> torch.Tensor:
    """Replicate the last row and column until H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


# --- checkpoints and builder ---------------------------------------------------------------

FUNCTIONAL_CHECKPOINT = Checkpoint(
    fuser="lwnet",
    tag="functional",
    filename="lwnet-functional.safetensors",
    sha256="fd8c3b4f4863359ff76033cedc5c833f32d73992859973573cfb526003af8f37",
    applies_to=FUNCTIONAL,
    meta={
        "network": "LWNet",
        "format": CHECKPOINT_FORMAT,
        "parameters": "6444",
        "data": '["../shared/data/harvard/SPECT-MRI/train"]',
        "command": "medfuse train ../shared/data/harvard/SPECT-MRI/train --recipe lwnet-functional "
        "-o runs/lwnet-functional -q",
        "schedule": "5 SPI iterations x 3 epochs, Adam lr 0.001, batch 8, patches 120 stride 68, "
        "thresholds displace 1.1 admit 1.0, loss weights gradient 0.0 intensity 2.0 balance 0.0 peak 0.5, "
        "label score detail 0.1",
        "epochs": "15",
        "wall_time_minutes": "4.1",
        "git_commit": "97e3acea8fda420e4264b6219e7c2c82fe8bc289",
        "resumed": "[]",
        "test_metrics": '{"PET-MRI": {"PeakRetention": 0.9998, "Qabf": 0.7219, "SSIM": 0.6915, '
        '"SSIM_min": 0.5294, "VIF": 0.8051, "n": 24}, "SPECT-MRI": {"PeakRetention": 0.9292, '
        '"Qabf": 0.6658, "SSIM": 0.7343, "SSIM_min": 0.5721, "VIF": 0.681, "n": 21}}',
    },
)
CT_CHECKPOINT = Checkpoint(
    fuser="lwnet",
    tag="ct",
    filename="lwnet-ct.safetensors",
    sha256="7a3f289247aa892755f4b5c3aaa8b13d805dc8cd5119baa864ff106ace464237",
    applies_to=CT,
    meta={
        "network": "LWNet",
        "format": CHECKPOINT_FORMAT,
        "parameters": "6444",
        "data": '["../shared/data/harvard/CT-MRI/train"]',
        "command": "medfuse train ../shared/data/harvard/CT-MRI/train --recipe lwnet-ct -o runs/lwnet-ct -q",
        "schedule": "4 SPI iterations x 3 epochs, Adam lr 0.001, batch 8, patches 120 stride 68, "
        "thresholds displace 1.1 admit 1.0, loss weights gradient 0.5 intensity 0.0 balance 1.0 peak 1.0, "
        "label score detail 0.1",
        "epochs": "12",
        "wall_time_minutes": "3.5",
        "git_commit": "97e3acea8fda420e4264b6219e7c2c82fe8bc289",
        "resumed": "[]",
        "test_metrics": '{"CT-MRI": {"PeakRetention": 0.9977, "Qabf": 0.5805, "SSIM": 0.7457, '
        '"SSIM_min": 0.7205, "VIF": 0.6948, "n": 23}}',
    },
)


def build_lwnet(loaded: LoadedCheckpoint | None) -> nn.Module:
    """LWNet with a checkpoint's weights; without one, an untrained network (sizes and timing).

    Raises:
        CheckpointError: the checkpoint is of another format or does not fit the network.
    """
    net = LWNet()
    if loaded is None:
        return net.eval()
    fmt = loaded.metadata.get("format", CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        advice = (
            "it holds LYWNet weights: fuse with -m lywnet"
            if "lywnet" in str(fmt)
            else "retrain with `medfuse train --model lwnet` or use the bundled weights"
        )
        raise CheckpointError(
            f"checkpoint {loaded.source} has format {fmt!r}; this LWNet reads {CHECKPOINT_FORMAT!r} ({advice})"
        )
    load_state_strict(net, loaded.tensors, loaded.source)
    return net.eval()


register_fuser(
    FuserSpec(
        name="lwnet",
        kind="network",
        summary="LWNet (our reimplementation): ACA + multi-scale cross attention, trained with SPI",
        reference="Wang et al., a lightweight medical image fusion network by structural similarity "
        "pseudo labels iteration (our reading of its description; no public code)",
        build=build_lwnet,
        min_size=MIN_SIZE,
        cpu_threads=1,
        checkpoints=(FUNCTIONAL_CHECKPOINT, CT_CHECKPOINT),
    )
)
