"""LWNet: shape contract, size, batching invariance, and loading through the registry."""

from __future__ import annotations

import pytest
import torch

from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers import get_fuser_spec
from medfuse_cli.fusers.lwnet import AdaptiveChannelAttention, LWNet
from medfuse_cli.fusers.registry import CT, FUNCTIONAL
from medfuse_cli.weights import LoadedCheckpoint


@pytest.fixture
def net() -> LWNet:
    torch.manual_seed(0)
    return LWNet().eval()


def test_parameter_count_is_the_documented_one(net: LWNet) -> None:
    assert sum(p.numel() for p in net.parameters()) == 6444  # README, MODEL_CARD, `medfuse models`


@pytest.mark.parametrize("size", [(256, 256), (37, 53), (120, 121), (1, 1)])
def test_any_size_gives_y_in_unit_range(net: LWNet, size: tuple[int, int]) -> None:
    a, b = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    with torch.inference_mode():
        fused = net(a, b)
    assert fused.shape == a.shape
    assert fused.min() >= 0.0 and fused.max() <= 1.0


def test_batching_never_changes_a_pixel(net: LWNet) -> None:
    """Seed 1, 8 pairs of 128²: inputs where oneDNN's batched kernels round differently from
    batch 1 (found by search: the whole-batch computation differs there by ~1e-7)."""
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(8, 1, 128, 128, generator=generator), torch.rand(8, 1, 128, 128, generator=generator)
    with torch.inference_mode():
        together = net(a, b)
        alone = torch.cat([net(a[i : i + 1], b[i : i + 1]) for i in range(8)])
    assert torch.equal(together, alone)  # bit for bit: a pair's output never depends on its batch


def test_modalities_are_not_interchangeable(net: LWNet) -> None:
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        assert not torch.allclose(net(a, b), net(b, a))


def test_aca_kernel_adapts_to_channels() -> None:
    assert AdaptiveChannelAttention(8).conv.kernel_size == (3,)
    assert AdaptiveChannelAttention(256).conv.kernel_size == (5,)


def test_registry_builds_from_checkpoint_strictly(net: LWNet) -> None:
    spec = get_fuser_spec("lwnet")
    assert spec.kind == "network"
    assert spec.checkpoint_for(FUNCTIONAL).filename == "lwnet-functional.safetensors"
    assert spec.checkpoint_for(CT).filename == "lwnet-ct.safetensors"
    loaded = LoadedCheckpoint(tensors=dict(net.state_dict()), metadata={}, source="memory")
    built = spec.build(loaded)
    a, b = torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24)
    with torch.inference_mode():
        torch.testing.assert_close(built(a, b), net(a, b), rtol=0, atol=0)
    untrained = spec.build(None)  # for parameter counts only; fusion always loads weights
    assert sum(p.numel() for p in untrained.parameters()) == sum(p.numel() for p in net.parameters())
    broken = dict(net.state_dict())
    broken.pop("decoder.out.bias")
    with pytest.raises(MedfuseError, match="missing"):
        spec.build(LoadedCheckpoint(tensors=broken, metadata={}, source="memory"))


def test_checkpoint_of_another_lwnet_format_is_refused(net: LWNet) -> None:
    spec = get_fuser_spec("lwnet")
    old = LoadedCheckpoint(
        tensors=dict(net.state_dict()), metadata={"format": "medfuse-lwnet-1"}, source="old.st"
    )
    with pytest.raises(MedfuseError, match=r"format 'medfuse-lwnet-1'.*\(retrain with"):
        spec.build(old)
    lywnet = LoadedCheckpoint(tensors={}, metadata={"format": "medfuse-lywnet-1"}, source="lywnet.st")
    with pytest.raises(MedfuseError, match=r"\(it holds LYWNet weights: fuse with -m lywnet\)"):
        spec.build(lywnet)
