"""Independent cross-checks of our metrics against well-kept libraries (test extras only)."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse_cli.metrics import structural

skimage_metrics = pytest.importorskip("skimage.metrics")


def test_ssim_equals_scikit_image_with_wang_defaults() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (64, 80)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).round()
    f = np.clip((a + b) / 2 + rng.normal(0, 5, a.shape), 0, 255).round()

    def reference(x: np.ndarray, y: np.ndarray) -> float:
        return skimage_metrics.structural_similarity(
            x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )

    expected = (reference(a, f) + reference(b, f)) / 2
    assert structural.ssim(a, b, f) == pytest.approx(expected, rel=1e-9)
