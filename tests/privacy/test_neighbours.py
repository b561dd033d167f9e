"""Exact nearest neighbours: against brute force in float64, independent of block size; NCC properties."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsynth.privacy.neighbours import band_pass, gaussian_smooth, knn, normalize_rows, pixel_grid, shift_max_ncc
from tests.privacy.conftest import translate


def test_euclidean_knn_equals_float64_brute_force_for_any_block_size():
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(300, 64, generator=g), torch.rand(1000, 64, generator=g)
    d_ref = torch.cdist(q.double(), r.double())
    want_d, want_i = d_ref.topk(5, dim=1, largest=False)
    for block in (7, 128, 4096):
        d, i = knn(q, r, 5, block=block, device="cpu")
        assert torch.equal(i, want_i), block
        torch.testing.assert_close(d, want_d, rtol=1e-6, atol=0)   # differences of float32 centred rows


def test_cosine_knn_and_input_checks():
    g = torch.Generator().manual_seed(1)
    q, r = torch.randn(50, 16, generator=g), torch.randn(80, 16, generator=g)
    s, i = knn(q, r, 3, metric="cosine", block=16)
    ref = F.normalize(q.double(), dim=1) @ F.normalize(r.double(), dim=1).T
    want_s, want_i = ref.topk(3, dim=1)
    assert torch.equal(i, want_i)
    torch.testing.assert_close(s.double(), want_s, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="dimensions"):
        knn(q, torch.randn(5, 8))
    with pytest.raises(ValueError, match="k: expected 1..80"):
        knn(q, r, 81)
    with pytest.raises(ValueError, match="NaN"):
        knn(torch.full((2, 16), float("nan")), r)


def test_ncc_without_shift_is_pearson_correlation_and_ignores_intensity_scaling(cxr_sets):
    a, b = pixel_grid(cxr_sets["novel"][:20], None), pixel_grid(cxr_sets["train"][:30], None)
    s, i, shift = shift_max_ncc(a, b, 0)
    corr = np.corrcoef(a.reshape(20, -1).double().numpy(), b.reshape(30, -1).double().numpy())[:20, 20:]
    assert np.array_equal(i.numpy(), corr.argmax(1))
    np.testing.assert_allclose(s.numpy(), corr.max(1), atol=1e-5)
    assert shift.abs().sum() == 0
    s2, i2, _ = shift_max_ncc(a * 0.5 + 0.3, b, 0)         # affine intensity change: same similarity
    assert torch.equal(i2, i) and torch.allclose(s2, s, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_translated_copies_score_one_at_the_right_shift(ndim):
    g = torch.Generator().manual_seed(2)
    size = (40, 40) if ndim == 2 else (20, 20, 20)
    ref = gaussian_smooth(torch.randn(12, *size, generator=g), 1.5)
    moves = [(2, -1), (-2, 2), (0, 1)] if ndim == 2 else [(1, -1, 0), (-1, 1, 1), (0, 0, -1)]
    q = torch.cat([translate(ref[k:k + 1, None], m)[:, 0] for k, m in zip((3, 7, 10), moves)])
    s, i, shift = shift_max_ncc(q, ref, 2, band=(1.0, 4.0))
    assert i.tolist() == [3, 7, 10]
    assert torch.all(s > 0.9999)
    assert shift.tolist() == [[-v for v in m] for m in moves]
    s0, _, _ = shift_max_ncc(q, ref, 0, band=(1.0, 4.0))     # without the search they are not copies
    assert torch.all(s0 < 0.95)


def test_blur_equals_a_replicate_padded_convolution():
    x = torch.randn(3, 30, 26)
    sigma = 1.5
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[:, None], (r, r, r, r), mode="replicate")
    y = F.conv2d(F.conv2d(y, k.view(1, 1, -1, 1)), k.view(1, 1, 1, -1))[:, 0]
    torch.testing.assert_close(gaussian_smooth(x, sigma), y, atol=1e-5, rtol=0)
    torch.testing.assert_close(band_pass(x, 1.0, 0), gaussian_smooth(x, 1.0))
    assert band_pass(torch.ones(1, 20, 20) * 3, 1.0, 4.0).abs().max() < 1e-5   # flat image: no detail left


def test_pixel_grid_and_constant_rows():
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64)
    g = pixel_grid(x, 32)
    assert g.shape == (2, 32, 32)
    torch.testing.assert_close(g[0, 0, 0], x[0, 0, :2, :2].mean())
    assert pixel_grid(torch.zeros(1, 1, 8, 16, 16), 8).shape == (1, 4, 8, 8)
    assert torch.equal(normalize_rows(torch.ones(2, 5)), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="different sizes"):
        shift_max_ncc(torch.zeros(1, 8, 8), torch.zeros(1, 9, 9))
