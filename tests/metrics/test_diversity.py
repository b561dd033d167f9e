"""MS-SSIM diversity on real MedNIST images: settings per size, copies vs a varied set."""

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.metrics.diversity import ms_ssim_diversity, ms_ssim_setting
from tests.conftest import MEDNIST


def _load(label, n):
    files = sorted((MEDNIST / label).iterdir())[:n]
    x = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files]) / 127.5 - 1
    return torch.from_numpy(x)[:, None]


def test_settings_fit_the_image_size():
    assert ms_ssim_setting((256, 256))["kernel_size"] == 11 and ms_ssim_setting((256, 256))["scales"] == 5
    s64 = ms_ssim_setting((64, 64))
    assert (s64["kernel_size"], s64["scales"]) == (7, 4) and sum(s64["weights"]) == pytest.approx(1)
    assert ms_ssim_setting((32, 32))["scales"] == 3
    assert ms_ssim_setting((16, 16, 16))["scales"] == 2
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_setting((6, 6))


def test_copies_score_one_and_real_sets_are_diverse(shared_data):
    cxr = _load("CXR", 60)
    copies = cxr[:1].repeat(20, 1, 1, 1)
    assert ms_ssim_diversity(copies, pairs=50)["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    real = ms_ssim_diversity(cxr, pairs=300, seed=1)
    assert real["pairs"] == 300 and 0.05 < real["ms_ssim"] < 0.9
    # a mode-collapsed set: 3 images with small noise, repeated
    collapsed = cxr[:3].repeat(20, 1, 1, 1) + 0.02 * torch.randn(60, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert ms_ssim_diversity(collapsed.clamp(-1, 1), pairs=300, seed=1)["ms_ssim"] > real["ms_ssim"] + 0.1
    # seeded, and the pair count is capped at N(N-1)/2
    assert ms_ssim_diversity(cxr, pairs=300, seed=1) == real
    assert ms_ssim_diversity(cxr[:5], pairs=1000)["pairs"] == 10
