"""LYWNet: multi-scale pyramid residual weight network (Li et al., QIMS 2024), as the authors ran it.

The structure follows the paper's figures and, where the paper is vague, the authors' published
code (GitHub 177659/LYWNet, commit a33ed69), read from ``../shared/papers/NOTES.md``::

    Y ─ FeaturePreprocessor ─ x ─ LYWBlock ─ LYWBlock ─ LYWBlock ─(+x)─ features
                                  (one block, the same weights three times)

    features(MRI), features(functional) ─ FDSFusion(T) ─ Reconstructor ─ fused Y

Training is an autoencoder on single Y images (``autoencode``); fusion happens only at test time.

Normalisation. Every ``ImageNorm`` is a BatchNorm whose statistics come from one image: the
authors' checkpoint was saved in training mode and their test never calls ``eval()``, so at
inference each BatchNorm normalised with the statistics of the single image in the batch. We
reproduce that per sample (instance-wise over H, W for each channel, which equals batch-of-one
BatchNorm), so batching images together never changes a result. Running statistics are not an
option for this network: several BatchNorm modules are shared between call sites whose inputs
have different distributions (the preprocessor's one BatchNorm normalises four different
tensors), so one running average would fit none of them. Training (``model.train()``) uses the
statistics of the whole batch, as the authors trained.

Our checkpoints may instead normalise per pair (``PER_PAIR``, written in their metadata): the
statistics of the two images of the pair together, as a BatchNorm whose batch is the pair. FDS
compares the two feature maps element by element; per-image statistics rescale each image's
features to the same mean and spread per channel, so a channel weak in the PET and strong in
the MRI looks equally strong in both, where shared statistics keep the two on one scale. Such
checkpoints are trained with the same per-pair statistics (``train_norm="pair"``).

Input size. The micro pyramid pools twice by 2, so the network needs H and W divisible by 4.
``LYWNet`` reflect-pads the inputs up to the next multiple of 4 and crops the output back, so any
image of at least 5 x 5 pixels works (``MIN_SIZE``).

Checkpoints. The authors ship one checkpoint for every pair kind. We ship two, as for LWNet, and
the pipeline picks one from the inputs (``FuserSpec.checkpoint_for``; ``--checkpoint`` overrides):
``lywnet.harvard``, trained on all three kinds' pairs, for colour SPECT/PET pairs, and
``lywnet.ct``, that file continued on CT-MRI pairs alone, for grayscale CT pairs. Epochs on CT-MRI
alone raise CT-MRI VIF and lower SPECT-MRI SSIM, so one file could not keep both at the authors'
level (weights/MODEL_CARD.md).
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from medfuse_cli.errors import CheckpointError, InputError
from medfuse_cli.fusers.lywnet_authors import AUTHORS_FORMAT, from_authors_names
from medfuse_cli.fusers.registry import (
    CT,
    FUNCTIONAL,
    Checkpoint,
    FuserSpec,
    check_fuser_inputs,
    register_fuser,
)
from medfuse_cli.weights import LoadedCheckpoint, load_state_strict

CHANNELS = 64
# Which images share the normalisation statistics at inference (a checkpoint's ``normalization``).
PER_IMAGE = "per-image"
PER_PAIR = "per-pair"
NORMALIZATIONS = (PER_IMAGE, PER_PAIR)
DEFAULT_TEMPERATURE = 30.0
# Sides are padded to a multiple of 4; the ¼-resolution pyramid level then needs at least 2×2
# pixels for per-image statistics, so 5 (padded to 8) is the smallest side that works.
MIN_SIZE = 5


class ImageNorm(nn.BatchNorm2d):
    """BatchNorm with batch statistics in training and per-image (or per-pair) statistics otherwise.

    No running statistics are kept (see the module docstring); the state is the affine
    ``weight`` and ``bias`` only.
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__(channels, track_running_stats=False)
        # False: training too uses the inference statistics (``train_norm="image"`` or ``"pair"``).
        self.batch_statistics_in_training = True
        # Consecutive images of a batch that share statistics outside batch statistics: 1 (each
        # image its own, ``PER_IMAGE``) or 2 (the two images of a pair, ``PER_PAIR``).
        self.group = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel to zero mean and unit variance, then scale by ``weight``, shift by ``bias``.

        Training (``self.training``): the whole batch's statistics, per channel over N, H and W (BatchNorm),
        unless ``batch_statistics_in_training`` is False: then those of inference. Inference (``eval()``):
        per channel over H and W of each group of ``group`` consecutive images (``group`` 1: instance
        norm), so batching never changes a result. Both use the biased variance plus ``eps``.
        x: (N, C, H, W) float32, N a multiple of ``group``, with more than one value per channel to
        average over; returns the same shape, float32, no fixed range.
        """
        if self.training and self.batch_statistics_in_training:
            return super().forward(x)
        if self.group == 1:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        n, c, h, w = x.shape
        # Lay each group's images side by side in one (C, group*H, W) image: instance norm then
        # averages over all of them, as BatchNorm over a batch of that group would.
        grouped = (
            x.view(n // self.group, self.group, c, h, w).transpose(1, 2).reshape(n // self.group, c, -1, w)
        )
        normed = F.instance_norm(grouped, weight=self.weight, bias=self.bias, eps=self.eps)
        return normed.view(n // self.group, c, self.group, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv(in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> nn.Conv2d:
    """A stride-1 convolution that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)


class FeaturePreprocessor(nn.Module):
    """Fig. 3: 1x1, 3x3 and 5x5 convolutions in sequence, their outputs concatenated, then 1x1.

    Every convolution is followed by the same (shared) BatchNorm and a ReLU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = conv(1, CHANNELS, 1)
        self.conv_b = conv(CHANNELS, CHANNELS, 3)
        self.conv_c = conv(CHANNELS, CHANNELS, 5)
        self.conv_merge = conv(3 * CHANNELS, CHANNELS, 1)
        self.norm = ImageNorm()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Fig. 3: lift a Y image to C features from 1x1, 3x3 and 5x5 convolutions in sequence, merged by 1x1.

        y: (N, 1, H, W) float32 Y in [0, 1], any H, W (LYWNet's are padded to multiples of 4).
        Returns (N, C, H, W) float32, ≥ 0 (a ReLU comes last).
        """
        a = self._cbr(self.conv_a, y)
        b = self._cbr(self.conv_b, a)
        c = self._cbr(self.conv_c, b)
        return self._cbr(self.conv_merge, torch.cat([a, b, c], dim=1))

    def _cbr(self, layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(layer(x)))


class MicroPyramid(nn.Module):
    """Eq. 1: the input plus three pyramid levels (full, 1/2, 1/4 resolution), normalised.

    One 3x3 convolution serves all levels: level k pools k times by 2, applies the convolution
    k + 1 times, then BatchNorm, ReLU and nearest upsampling back. Needs H, W divisible by 4.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv(CHANNELS, CHANNELS, 3)
        self.norm = ImageNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: add the full, 1/2 and 1/4-resolution pyramid levels to x and normalise the sum.

        x: (N, C, H, W) float32, H and W divisible by 4 (the 1/4 level is pooled twice and upsampled
        back; LYWNet pads its inputs so this holds). Returns (N, C, H, W) float32, no fixed range.
        """
        levels = [x]
        for level in range(3):
            y = x
            for _ in range(level):
                y = F.avg_pool2d(y, 2)
            for _ in range(level + 1):
                y = self.conv(y)
            y = F.relu(self.norm(y))
            levels.append(F.interpolate(y, scale_factor=2**level, mode="nearest") if level else y)
        return self.norm(sum(levels))


class BasicBlock(nn.Module):
    """ResNet's basic block at 64 channels: 3x3, BN, ReLU, 3x3, BN, + identity, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv(CHANNELS, CHANNELS, 3, bias=False)
        self.bn1 = ImageNorm()
        self.conv2 = conv(CHANNELS, CHANNELS, 3, bias=False)
        self.bn2 = ImageNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fig. 5's basic block: refine x by two 3x3 convolutions around an identity shortcut.

        x: (N, C, H, W) float32, any H, W. Returns (N, C, H, W) float32, ≥ 0 (ReLU after the sum).
        """
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class Bottleneck(nn.Module):
    """ResNet's bottleneck without expansion: 1x1, 3x3, 1x1 (each BN), + identity, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv(CHANNELS, CHANNELS, 1, bias=False)
        self.bn1 = ImageNorm()
        self.conv2 = conv(CHANNELS, CHANNELS, 3, bias=False)
        self.bn2 = ImageNorm()
        self.conv3 = conv(CHANNELS, CHANNELS, 1, bias=False)
        self.bn3 = ImageNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fig. 5's bottleneck: refine x by 1x1, 3x3 and 1x1 convolutions around an identity shortcut.

        x: (N, C, H, W) float32, any H, W. Returns (N, C, H, W) float32, ≥ 0 (ReLU after the sum).
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(x + self.bn3(self.conv3(out)))


class RepeatedBlock(nn.Module):
    """One block applied ``times`` times in a row with the same weights."""

    def __init__(self, block: nn.Module, times: int) -> None:
        super().__init__()
        self.block = block
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the one block ``times`` times in a row, x ← block(x), with the same weights each time.

        x: (N, C, H, W) float32, any H, W. Returns the same shape, float32; ≥ 0 for the multi basic block
        and the multi bottleneck, whose blocks end in a ReLU.
        """
        for _ in range(self.times):
            x = self.block(x)
        return x


class MultiBasicBlock(RepeatedBlock):
    """Fig. 5's multi basic block: one basic block, three times."""

    def __init__(self) -> None:
        super().__init__(BasicBlock(), times=3)


class MultiBottleneck(RepeatedBlock):
    """Fig. 5's multi bottleneck: one bottleneck, twice."""

    def __init__(self) -> None:
        super().__init__(Bottleneck(), times=2)


class MicroPPM(nn.Module):
    """Fig. 6: a pyramid pooling module reduced to one pooled scale.

    With p the 1x1 projection (one module, used three times as in the authors' code):
    s = up(ReLU(BN(avgpool_5x5_s2(x)))) + p(x); out = p(x) + merge(cat(conv3x3(s), p(x))).
    Needs H, W even.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = conv(CHANNELS, CHANNELS, 1)
        self.norm = ImageNorm()
        self.conv = conv(CHANNELS, CHANNELS, 3)
        self.merge = conv(2 * CHANNELS, CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fig. 6: add context from one pooled scale (5x5 average, stride 2) to the 1x1 projection of x.

        x: (N, C, H, W) float32, H and W even (pooled by 2 and upsampled back; LYWNet's are multiples of 4).
        Returns (N, C, H, W) float32, no fixed range (no activation after the last 1x1).
        """
        pooled = F.avg_pool2d(x, kernel_size=5, stride=2, padding=2)
        scale = F.interpolate(F.relu(self.norm(pooled)), scale_factor=2, mode="nearest") + self.proj(x)
        return self.proj(x) + self.merge(torch.cat([self.conv(scale), self.proj(x)], dim=1))


class BAG(nn.Module):
    """Fig. 7's boundary-attention-guided fusion (PIDNet's Bag without its output convolution).

    The detail branch d decides per element between the pyramid branch p and the context i:
    out = p * sigmoid(d) + i * (1 - sigmoid(d)). It has no parameters.
    """

    def forward(self, p: torch.Tensor, i: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Fig. 7: blend the pyramid branch p and the context i per element, as the detail branch d decides.

        p, i, d: (N, C, H, W) float32 each, any H, W. Returns (N, C, H, W) float32: per element a convex
        mix of p and i, whose weight sigmoid(d) is in [0, 1].
        """
        edge = torch.sigmoid(d)
        return p * edge + i * (1 - edge)


class LYWBlock(nn.Module):
    """Fig. 5: pyramid, basic-block and bottleneck branches, crossed twice, joined by BAG.

    With N the block's shared BatchNorm: P0 = Pyr(x), R0 = Res(x), K0 = Bot(x);
    P1 = Pyr(N(P0 + R0)), R1 = Res(R0), K1 = Bot(N(R0 + K0));
    out = BAG(P1 + R1, PPM(R1), R1 + K1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pyramid = MicroPyramid()
        self.basic = MultiBasicBlock()
        self.bottleneck = MultiBottleneck()
        self.norm = ImageNorm()
        self.ppm = MicroPPM()
        self.bag = BAG()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fig. 5: one LYW block: pyramid, basic-block and bottleneck branches crossed twice, joined by BAG.

        x: (N, C, H, W) float32, H and W divisible by 4 (for the micro pyramid; LYWNet pads its inputs).
        Returns (N, C, H, W) float32, no fixed range.
        """
        p0, r0, k0 = self.pyramid(x), self.basic(x), self.bottleneck(x)
        p1 = self.pyramid(self.norm(p0 + r0))
        r1 = self.basic(r0)
        k1 = self.bottleneck(self.norm(r0 + k0))
        return self.bag(p1 + r1, self.ppm(r1), r1 + k1)


class FeatureExtractor(nn.Module):
    """Fig. 4: preprocessor, then one LYW block applied three times, plus a global residual."""

    def __init__(self, repeats: int = 3) -> None:
        super().__init__()
        self.preprocessor = FeaturePreprocessor()
        self.block = LYWBlock()
        self.repeats = repeats

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Fig. 4: a Y image's features: preprocessor, the shared LYW block ``repeats`` times, + residual.

        y: (N, 1, H, W) float32 Y in [0, 1], H and W divisible by 4 (LYWNet pads its inputs).
        Returns the features, (N, C, H, W) float32, no fixed range.
        """
        x = self.preprocessor(y)
        out = x
        for _ in range(self.repeats):
            out = self.block(out)
        return x + out


class FDSFusion(nn.Module):
    """Eq. 6, the feature distillation strategy: a per-element softmax over the two sources.

    k_a = exp(Fa/T) / (exp(Fa/T) + exp(Fb/T)) is computed as sigmoid((Fa - Fb)/T), the same
    value without overflow; fused = k_a * Fa + (1 - k_a) * Fb.
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise InputError(f"temperature must be a positive number, got {temperature}")
        self.temperature = temperature

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """Eq. 6: fuse the MRI's features fa and the functional's fb per element, softmax weights at T.

        fa, fb: (N, C, H, W) float32 each, any H, W. Returns (N, C, H, W) float32: per element a convex
        mix of fa and fb, whose weight k_a is in [0, 1].
        """
        ka = torch.sigmoid((fa - fb) / self.temperature)
        return ka * fa + (1 - ka) * fb


class Reconstructor(nn.Module):
    """Fig. 2's reconstructor: 3x3 (64), 3x3 (32), 1x1 (1); no normalisation, no activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv(CHANNELS, CHANNELS, 3)
        self.conv2 = conv(CHANNELS, CHANNELS // 2, 3)
        self.conv3 = conv(CHANNELS // 2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fig. 2: map features (fused, or one image's in training) back to a Y image; C → C → C/2 → 1.

        x: (N, C, H, W) float32, any H, W. Returns (N, 1, H, W) float32, not clamped: no fixed range
        (LYWNet clamps the fused Y to [0, 1]).
        """
        return self.conv3(self.conv2(self.conv1(x)))


class LYWNet(nn.Module):
    """The whole network: a fuser for two Y images and an autoencoder for training.

    ``normalization``: ``PER_IMAGE`` (the authors' inference) or ``PER_PAIR`` (see the module
    docstring); with ``PER_PAIR``, ``autoencode`` takes a batch of pairs.

    Raises:
        InputError: an unknown ``normalization`` or temperature.
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, normalization: str = PER_IMAGE) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise InputError(
                f"unknown LYWNet normalisation {normalization!r} (choose {' or '.join(NORMALIZATIONS)})"
            )
        self.normalization = normalization
        self.extractor = FeatureExtractor()
        self.fusion = FDSFusion(temperature)
        self.reconstructor = Reconstructor()
        for norm in self.modules():
            if isinstance(norm, ImageNorm):
                norm.group = 2 if normalization == PER_PAIR else 1

    def forward(self, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
        """Fuse two Y images in [0, 1] of shape (N, 1, H, W); returns the fused Y in [0, 1]."""
        check_fuser_inputs("lywnet", MIN_SIZE, anatomical, functional)
        pairs = zip(anatomical.split(1), functional.split(1), strict=True)
        return torch.cat([self._fuse_one(a, b) for a, b in pairs]).clamp(0.0, 1.0)

    def _fuse_one(self, anatomical: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
        """One pair at a time: convolution kernels may sum in a different order for another
        batch size, so this keeps every output bit independent of what else is in the batch."""
        height, width = anatomical.shape[-2:]
        if self.normalization == PER_PAIR:
            fa, fb = self.extractor(pad_to_multiple(torch.cat([anatomical, functional]))).split(1)
        else:
            fa = self.extractor(pad_to_multiple(anatomical))
            fb = self.extractor(pad_to_multiple(functional))
        return self.reconstructor(self.fusion(fa, fb))[..., :height, :width]

    def autoencode(self, y: torch.Tensor) -> torch.Tensor:
        """Reconstruct Y images (the training task): (N, 1, H, W) -> same; H, W multiples of 4.

        With ``PER_PAIR`` normalisation, images 2k and 2k + 1 are a pair (N even), as in fusion.
        """
        return self.reconstructor(self.extractor(y))


def pad_to_multiple(x: torch.Tensor, multiple: int = 4) -> torch.Tensor:
    """Reflect-pad the bottom and right edges so H and W are multiples of ``multiple``; sides of
    at least ``MIN_SIZE``, which ``LYWNet.forward`` has checked, leave room for the reflection."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")


# --- checkpoints and builder ---------------------------------------------------------------

OWN_FORMAT = "medfuse-lywnet-1"

# Test-split scores written into each file's header by ``finalize_checkpoint`` (MODEL_CARD.md).
_HARVARD_TEST_METRICS = json.dumps(
    {
        "CT-MRI": {
            "mean": {
                "CC": 0.7862,
                "MI": 3.0546,
                "PSNR": 14.8706,
                "Qabf": 0.3989,
                "SSIM": 0.7359,
                "VIF": 0.4742,
            },
            "n": 23,
            "std": {"CC": 0.0303, "MI": 0.1616, "PSNR": 0.5608, "Qabf": 0.0566, "SSIM": 0.0305, "VIF": 0.05},
        },
        "PET-MRI": {
            "mean": {
                "CC": 0.8407,
                "MI": 3.1475,
                "PSNR": 15.1517,
                "Qabf": 0.4148,
                "SSIM": 0.6448,
                "VIF": 0.5976,
            },
            "n": 24,
            "std": {"CC": 0.035, "MI": 0.2404, "PSNR": 0.8461, "Qabf": 0.0468, "SSIM": 0.0507, "VIF": 0.0563},
        },
        "SPECT-MRI": {
            "mean": {
                "CC": 0.8831,
                "MI": 3.2588,
                "PSNR": 16.8242,
                "Qabf": 0.5707,
                "SSIM": 0.7282,
                "VIF": 0.5508,
            },
            "n": 21,
            "std": {"CC": 0.029, "MI": 0.2366, "PSNR": 0.8733, "Qabf": 0.0593, "SSIM": 0.0509, "VIF": 0.0441},
        },
    },
    sort_keys=True,
)
HARVARD_CHECKPOINT = Checkpoint(
    fuser="lywnet",
    tag="harvard",
    filename="lywnet-harvard.safetensors",
    sha256="de558b6ec366eab97ba5d51d1363333673a7ea73b4b16c4ddb7c7e6c12cf4c35",
    applies_to=FUNCTIONAL,
    meta={
        "network": "LYWNet",
        "format": "medfuse-lywnet-1",
        "normalization": "per-pair",
        "parameters": "413505",
        "data": (
            '["../shared/data/harvard/SPECT-MRI/train", "../shared/data/harvard/PET-MRI/train", '
            '"../shared/data/harvard/CT-MRI/train"]'
        ),
        "command": (
            "medfuse train ../shared/data/harvard/SPECT-MRI/train ../shared/data/harvard/PET-MRI/train "
            "../shared/data/harvard/CT-MRI/train --model lywnet --recipe lywnet-cpu -o /work/runs/all128 "
            "--init weights/continue/lywnet-harvard-128px.safetensors --epochs 1 --lr 3e-5 --min-lr 1e-6 "
            "--crop-size 128 --crop-scale whole --train-norm pair --max-minutes 130 --threads 2"
        ),
        "schedule": (
            "autoencoder, 1 of 1 epochs over 1368 Y images, Adam lr 3e-05 (cosine to 1e-06), batch 16, 128 px"
            " crops at whole scale, loss weights (1.0, 25.0, 4.0), pair statistics in training, from "
            "/work/main/weights/continue/lywnet-harvard-128px.safetensors (sha256 "
            "dcf598b4ccb577956c5736756add10b9e0a2aaa7bd93edff61518c0fe6f804a2)"
        ),
        "epochs": "1",
        "wall_time_minutes": "113.4",
        "git_commit": "758edf15f0d378abb65a525b451886eec53c295f",
        "resumed": "[]",
        "test_metrics": _HARVARD_TEST_METRICS,
        "lineage": (
            "49 epochs from scratch on a 2-core CPU, 15.3 h in all: the 46 of the file shipped before (sha256"
            " 9051b5f9...), then 1 on CT-MRI pairs alone, 1 on a kind-balanced mix (every third SPECT-MRI, "
            "every second PET-MRI, every CT-MRI training pair) and 1 on all pairs, all three whole images at "
            "128 px with per-pair statistics; epochs, wall_time_minutes and command are those of the last; "
            "weights/MODEL_CARD.md gives every step's command"
        ),
    },
)
_CT_TEST_METRICS = json.dumps(
    {
        "CT-MRI": {
            "mean": {
                "CC": 0.7872,
                "MI": 3.0637,
                "PSNR": 13.973,
                "Qabf": 0.4539,
                "SSIM": 0.7435,
                "VIF": 0.4858,
            },
            "n": 23,
            "std": {"CC": 0.031, "MI": 0.1451, "PSNR": 0.4688, "Qabf": 0.0534, "SSIM": 0.0282, "VIF": 0.0552},
        }
    },
    sort_keys=True,
)
CT_CHECKPOINT = Checkpoint(
    fuser="lywnet",
    tag="ct",
    filename="lywnet-ct.safetensors",
    sha256="b56e71d1ec002ec952810043f1e474546352f97a9d8172c31ee011ccf1c20efe",
    applies_to=CT,
    meta={
        "network": "LYWNet",
        "format": "medfuse-lywnet-1",
        "normalization": "per-pair",
        "parameters": "413505",
        "data": '["../shared/data/harvard/CT-MRI/train"]',
        "command": (
            "medfuse train ../shared/data/harvard/CT-MRI/train --model lywnet --recipe lywnet-cpu -o "
            "/work/runs/ct2 --init /work/runs/ct1/lywnet.safetensors --epochs 1 --lr 5e-5 --min-lr 1e-6 "
            "--crop-size 160 --batch-size 10 --crop-scale whole --train-norm pair --max-minutes 60 --threads "
            "2"
        ),
        "schedule": (
            "autoencoder, 1 of 1 epochs over 288 Y images, Adam lr 5e-05 (cosine to 1e-06), batch 10, 160 px "
            "crops at whole scale, loss weights (1.0, 25.0, 4.0), pair statistics in training, from "
            "/work/runs/ct1/lywnet.safetensors (sha256 "
            "46ea3ad6c2703f337591132e0363dfc56549b98b0f50ea645cca3838b5ff4350)"
        ),
        "epochs": "1",
        "wall_time_minutes": "39.1",
        "git_commit": "045c3f7411c42e52286321a672826549eb9cbc6f",
        "resumed": "[]",
        "test_metrics": _CT_TEST_METRICS,
        "lineage": (
            "51 epochs from scratch on a 2-core CPU, 16.4 h in all: the 49 of lywnet.harvard (sha256 "
            "de558b6e...), then 2 on CT-MRI pairs alone with per-pair statistics, on whole images at 128 px "
            "(lr 5e-5, 25.7 min), then at 160 px with batch 10 (lr 5e-5, 39.1 min); epochs, wall_time_minutes"
            " and command are those of the last; weights/MODEL_CARD.md gives every step's command"
        ),
    },
)


def checkpoint_normalization(loaded: LoadedCheckpoint) -> str:
    """Which statistics a LYWNet checkpoint infers with, from its metadata: ``PER_IMAGE`` (the
    authors' weights, and ours trained with batch or per-image statistics) or ``PER_PAIR`` (ours
    trained with ``train_norm="pair"``).

    Raises:
        CheckpointError: an unknown format, a missing ``normalization``, or an unknown one (the
            authors' weights: other than per-image).
    """
    fmt = loaded.metadata.get("format")
    if fmt == AUTHORS_FORMAT:
        normalization = loaded.metadata.get("normalization", "").split(":")[0]
        known: tuple[str, ...] = (PER_IMAGE,)
    elif fmt == OWN_FORMAT:
        normalization = loaded.metadata.get("normalization", "")
        known = NORMALIZATIONS
    else:
        found = "no 'format' in its metadata" if fmt is None else f"format {fmt!r}"
        raise CheckpointError(
            f"checkpoint {loaded.source} is not a LYWNet checkpoint ({found}, expected "
            f"{OWN_FORMAT!r} or {AUTHORS_FORMAT!r})"
        )
    if not normalization:
        raise CheckpointError(
            f"checkpoint {loaded.source} has no 'normalization' in its metadata; LYWNet needs it to "
            f"know which statistics it was trained with ({' or '.join(repr(name) for name in known)})"
        )
    if normalization not in known:
        raise CheckpointError(
            f"checkpoint {loaded.source} asks for normalisation {normalization!r}; LYWNet infers "
            f"with {' or '.join(repr(name) for name in known)} statistics only"
        )
    return normalization


def load_lywnet(loaded: LoadedCheckpoint, temperature: float = DEFAULT_TEMPERATURE) -> LYWNet:
    """Build LYWNet from a checkpoint in our format or the authors', chosen by its metadata, with
    the statistics it names (``checkpoint_normalization``).

    Raises:
        CheckpointError: as ``checkpoint_normalization``, or tensors that do not fit the network.
    """
    model = LYWNet(temperature, checkpoint_normalization(loaded))
    authors = loaded.metadata.get("format") == AUTHORS_FORMAT
    tensors = from_authors_names(loaded.tensors, model) if authors else loaded.tensors
    load_state_strict(model, tensors, loaded.source)
    return model.eval()


def build_lywnet(loaded: LoadedCheckpoint | None, temperature: float = DEFAULT_TEMPERATURE) -> nn.Module:
    """The registry's builder; without a checkpoint, an untrained network (sizes and timing)."""
    if loaded is None:
        return LYWNet(float(temperature)).eval()
    return load_lywnet(loaded, float(temperature))


register_fuser(
    FuserSpec(
        name="lywnet",
        kind="network",
        summary="LYWNet (Li et al. 2024): shared-weight pyramid residual extractor, FDS fusion (T=30)",
        reference="Li et al., multi-scale pyramid residual weight network for medical image fusion, "
        "Quant. Imaging Med. Surg. 2024",
        build=build_lywnet,
        min_size=MIN_SIZE,
        cpu_threads=None,  # ~7 s per 256² pair: worth both cores (BENCHMARKS.md)
        in_default_lineup=False,  # minutes per folder on a CPU: run it when asked
        option_names=("temperature",),
        checkpoints=(HARVARD_CHECKPOINT, CT_CHECKPOINT),
    )
)
