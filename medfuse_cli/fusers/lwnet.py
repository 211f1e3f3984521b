"""LWNet: a lightweight fusion network with adaptive channel attention and multi-scale cross attention.

Reimplemented from the description of Wang et al.'s LWNet ("A lightweight medical image fusion
network by structural similarity pseudo labels iteration"); no code, weights or equations are
public, so every choice here is *our reading* (see ``../shared/papers/NOTES.md``):

    MRI Y ──Encoder──▶ Fa ─┐                         ┌─────────┐
                            ├──MCA(Fa, Fb)──▶ M ──▶ │ Decoder │──▶ m (sigmoid) ──▶ m·MRI + (1−m)·func
    func Y ─Encoder──▶ Fb ─┘   Fa, Fb (skip) ──────▶ └─────────┘

- each encoder is two 3×3 convolutions followed by ACA (ECA-style channel attention);
- MCA filters each modality's features with depthwise convolutions of three kernel sizes and
  lets every scale attend across modalities in both directions, with attention over channels
  (a C×C map, Restormer's transposed attention), so the cost stays linear in the pixel count
  and any H×W works without padding;
- the decoder sees the cross-attended features and both encoders' features (a skip that keeps
  the edges of either source) and ends in a sigmoid: a per-pixel weight between the two
  sources (our choice, see ``LWNet``), so the output is a Y image in [0, 1].

No normalisation layers: nothing depends on batch statistics, so batching never changes a
pixel, and inference is a handful of small convolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medfuse_cli.fusers.registry import CheckpointSpec, FuserSpec, LoadedCheckpoint, register_fuser

CHANNELS = 8
MCA_KERNELS = (3, 5, 7)


class AdaptiveChannelAttention(nn.Module):
    """ACA, our reading: ECA-Net channel attention (Wang et al., CVPR 2020).

    Global average pooling gives one number per channel; a 1-D convolution across neighbouring
    channels (kernel size k = odd(|log2(C)/2 + 1/2|), at least 3) and a sigmoid turn them into
    weights that favour information-rich channels. Costs k parameters.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = int(abs(math.log2(channels) / 2 + 0.5))
        k = max(3, k if k % 2 else k + 1)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = x.mean(dim=(2, 3)).unsqueeze(1)  # (N, 1, C)
        weights = torch.sigmoid(self.conv(weights)).transpose(1, 2).unsqueeze(-1)  # (N, C, 1, 1)
        return x * weights


class Encoder(nn.Module):
    """One light encoder per modality, our reading.

    A 3×3 conv keeps full-resolution "shallow" features for the decoder (the edges), a strided
    3×3 conv halves the resolution for the attention stage (4× cheaper, wider context), then ACA
    re-weights the channels. Returns (shallow, deep).
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.shallow = nn.Conv2d(1, channels, 3, padding=1)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.aca = AdaptiveChannelAttention(channels)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shallow = F.leaky_relu(self.shallow(y), 0.1)
        deep = F.leaky_relu(self.down(shallow), 0.1)
        return shallow, self.aca(deep)


class ChannelCrossAttention(nn.Module):
    """Cross attention over channels: queries from one modality, keys from the other.

    Our reading of "cross-attention computation ... global feature dependencies": the rows of
    Q and K (one per channel) are L2-normalised over the image and the C×C map
    softmax(Q Kᵀ · τ), τ learnt as in Restormer, says how each query channel mixes the other
    modality's channels. Every output pixel then depends on the whole other image, at a cost
    linear in H×W. Returns the (N, C, C) map; the caller applies it to the values.
    """

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = F.normalize(query.flatten(2), dim=-1)
        k = F.normalize(context.flatten(2), dim=-1)
        return torch.softmax(q @ k.transpose(1, 2) * self.temperature, dim=-1)


class MultiScaleCrossAttention(nn.Module):
    """MCA, our reading: decompose each modality by depthwise kernels of several sizes, let each
    scale attend to the other modality in both directions, reassemble by concat and a 1×1 conv.

    For each kernel size k, ``Fa_k = dwconv_k(Fa)`` and ``Fb_k = dwconv_k(Fb)``; the parts
    ``attn(Fa_k, Fb_k) · Fb_k`` (MRI asks, functional answers) and ``attn(Fb_k, Fa_k) · Fa_k``
    over all scales are concatenated and mixed back to C channels by ``reassemble`` (1×1).
    Because that 1×1 conv is linear, it is applied as Σ_j (W_j · attn_j) · V_j, folding each
    C×C block W_j of its weight into the C×C attention map: the same function without ever
    materialising the 2·K·C-channel concatenation.
    """

    def __init__(self, channels: int = CHANNELS, kernels: tuple[int, ...] = MCA_KERNELS) -> None:
        super().__init__()
        self.split_a = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in kernels
        )
        self.split_b = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in kernels
        )
        self.a_from_b = nn.ModuleList(ChannelCrossAttention() for _ in kernels)
        self.b_from_a = nn.ModuleList(ChannelCrossAttention() for _ in kernels)
        self.reassemble = nn.Conv2d(2 * len(kernels) * channels, channels, 1)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        n, c, h, w = fa.shape
        blocks = self.reassemble.weight.flatten(1).split(c, dim=1)  # W_j, each (C, C)
        mixed = self.reassemble.bias.view(1, c, 1).expand(n, c, h * w)
        parts = zip(self.split_a, self.split_b, self.a_from_b, self.b_from_a, strict=True)
        for j, (split_a, split_b, a_from_b, b_from_a) in enumerate(parts):
            fa_k, fb_k = split_a(fa), split_b(fb)
            mixed = mixed + (blocks[2 * j] @ a_from_b(fa_k, fb_k)) @ fb_k.flatten(2)
            mixed = mixed + (blocks[2 * j + 1] @ b_from_a(fb_k, fa_k)) @ fa_k.flatten(2)
        return mixed.reshape(n, c, h, w)


class Decoder(nn.Module):
    """Small decoder, our reading: upsample the MCA output to full size, concat it with both
    encoders' shallow features, 1×1 conv to mix, 3×3 conv, 1×1 conv to one channel, sigmoid.

    The sigmoid gives a per-pixel weight m in [0, 1] rather than the fused intensity itself
    (see ``LWNet``).
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3 * channels, channels, 1)
        self.refine = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, mixed: torch.Tensor, shallow_a: torch.Tensor, shallow_b: torch.Tensor) -> torch.Tensor:
        h, w = shallow_a.shape[-2:]
        up = F.interpolate(mixed, scale_factor=2.0, mode="bilinear", align_corners=False)[..., :h, :w]
        x = F.leaky_relu(self.mix(torch.cat([up, shallow_a, shallow_b], dim=1)), 0.1)
        x = F.leaky_relu(self.refine(x), 0.1)
        return torch.sigmoid(self.out(x))


class LWNet(nn.Module):
    """Two encoders with ACA, MCA between the modalities at half resolution, a small decoder.

    Our choice where the paper is silent: the decoder's sigmoid output is a per-pixel weight m
    and the fused Y is m·MRI + (1 − m)·functional. Every fused pixel is then a convex mix of
    the sources, so it stays in [0, 1] and keeps their contrast instead of re-synthesising
    intensities through a few thousand weights (an intensity-regressing decoder of this size
    trained to blurred, low-VIF outputs in our first runs); a fresh network starts as the
    average rule (m ≈ 0.5) and learns where to lean toward either source.
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.encoder_a = Encoder(channels)
        self.encoder_b = Encoder(channels)
        self.mca = MultiScaleCrossAttention(channels)
        self.decoder = Decoder(channels)

    def forward(self, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
        shallow_a, deep_a = self.encoder_a(anatomical)
        shallow_b, deep_b = self.encoder_b(functional)
        weight = self.decoder(self.mca(deep_a, deep_b), shallow_a, shallow_b)
        return weight * anatomical + (1 - weight) * functional


def build_lwnet(loaded: LoadedCheckpoint | None, options: dict) -> nn.Module:
    """LWNet with a checkpoint's weights; without one, an untrained network to inspect its size.

    The fusion pipeline always resolves a checkpoint for a network, so an untrained LWNet only
    reaches ``medfuse models`` (parameter counts) and speed measurements, never a fused image.
    """
    from medfuse_cli.weights import load_state_strict

    net = LWNet()
    if loaded is None:
        return net.eval()
    load_state_strict(net, loaded.tensors, loaded.source)
    return net.eval()


register_fuser(
    FuserSpec(
        name="lwnet",
        kind="network",
        summary="LWNet (our reimplementation): ACA + multi-scale cross attention, trained with SPI",
        build=build_lwnet,
        checkpoints=(
            CheckpointSpec(
                name="functional",
                filename="lwnet-functional.safetensors",
                sha256="ccc4260a40bcac2ca085c705e1217c2284fc3a88e73a8b4488bf30797ee07185",
                provenance="trained by medfuse with SPI on Harvard SPECT-MRI train patches",
                applies_to="functional",
            ),
            CheckpointSpec(
                name="ct",
                filename="lwnet-ct.safetensors",
                sha256="d7ac12ea564bfe3fb0d9838982f4db5b0e7c68111646e33313652554934a7aec",
                provenance="trained by medfuse with SPI on Harvard CT-MRI train patches",
                applies_to="ct",
            ),
        ),
    )
)
