"""YCbCr conversion and the classical fusion rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfuse_cli.color import merge_luma, rgb_to_ycbcr, split_luma
from medfuse_cli.fusers import create_fuser, list_fusers

CLASSICAL = [spec.name for spec in list_fusers() if spec.kind == "classical"]


def test_ycbcr_round_trip_and_bt601_luma() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.random((7, 9, 3)).astype(np.float32)
    y, chroma = split_luma(rgb)
    np.testing.assert_allclose(y, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    np.testing.assert_allclose(merge_luma(y, chroma), rgb, atol=1e-5)


def test_gray_has_neutral_chroma() -> None:
    ycbcr = rgb_to_ycbcr(np.full((2, 2, 3), 0.3, dtype=np.float32))
    np.testing.assert_allclose(ycbcr[..., 1:], 0.5, atol=1e-6)


def test_grayscale_passes_through() -> None:
    gray = np.random.default_rng(2).random((5, 5)).astype(np.float32)
    y, chroma = split_luma(gray)
    assert chroma is None and merge_luma(y, None) is y


def test_at_least_four_classical_rules() -> None:
    assert {"average", "maximum", "laplacian"} <= set(CLASSICAL) and len(CLASSICAL) >= 4


@pytest.mark.parametrize("name", CLASSICAL)
@pytest.mark.parametrize("size", [(64, 64), (37, 53), (5, 3)])
def test_rules_keep_identical_inputs(name: str, size: tuple[int, int]) -> None:
    fuser = create_fuser(name)
    image = torch.rand(2, 1, *size, dtype=torch.float64)
    torch.testing.assert_close(fuser(image, image), image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", CLASSICAL)
def test_rules_batch_like_single_images(name: str) -> None:
    fuser = create_fuser(name)
    a, b = torch.rand(3, 1, 40, 48), torch.rand(3, 1, 40, 48)
    batched = fuser(a, b)
    assert batched.shape == a.shape and batched.min() >= 0 and batched.max() <= 1
    for i in range(3):
        torch.testing.assert_close(fuser(a[i : i + 1], b[i : i + 1]), batched[i : i + 1])


def test_rules_do_what_they_say() -> None:
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(create_fuser("average")(a, b), (a + b) / 2)
    torch.testing.assert_close(create_fuser("maximum")(a, b), torch.maximum(a, b))


@pytest.mark.parametrize("name", ["laplacian", "wavelet"])
def test_transform_rules_keep_the_stronger_edge(name: str) -> None:
    """A step edge present in one source only keeps its full local contrast, unlike averaging."""
    a = torch.zeros(1, 1, 64, 64)
    a[..., 35:] = 1.0  # off the Haar block grid: an edge on it lands in the approximation only
    b = torch.full_like(a, 0.5)
    fused = create_fuser(name)(a, b)
    jump = (fused[..., 35] - fused[..., 34]).mean().item()
    assert jump > 0.8
