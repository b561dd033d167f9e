"""Precision/recall/density/coverage: a hand-computed case, the reference algorithm, blocking, intervals."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from medsynth.metrics.prdc import kth_neighbour_distances, prdc, prdc_bootstrap, prdc_matched


def test_hand_computed_case():
    real = np.array([[0.0], [1.0], [3.0]])
    fake = np.array([[0.5], [10.0]])
    # k = 1: real radii 1, 1, 2; synthetic radii 9.5, 9.5
    np.testing.assert_allclose(kth_neighbour_distances(real, 1), [1, 1, 2])
    r = prdc(real, fake, k=1)
    assert r["precision"] == 0.5          # 0.5 lies in the balls of 0 and 1; 10 in none
    assert r["recall"] == 1.0             # every real point lies in the ball of 0.5 (radius 9.5)
    assert r["density"] == 1.0            # (2 + 0) / (1 * 2)
    assert r["coverage"] == pytest.approx(2 / 3)   # 3's nearest synthetic (2.5 away) is outside its radius 2


def _reference(real, fake, k):
    """The authors' algorithm (clovaai/prdc compute_prdc) with full distance matrices."""
    def radii(x):
        d = cdist(x, x)
        return np.partition(d, k, axis=1)[:, k]
    rr, fr = radii(real), radii(fake)
    d = cdist(real, fake)
    return {"precision": (d < rr[:, None]).any(axis=0).mean(), "recall": (d < fr[None, :]).any(axis=1).mean(),
            "density": (1 / k) * (d < rr[:, None]).sum(axis=0).mean(), "coverage": (d.min(axis=1) < rr).mean()}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_the_reference_algorithm_and_does_not_depend_on_block_size(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(300, 32))
    fake = rng.normal(size=(250, 32)) * 1.3 + 0.2
    ref = _reference(real, fake, k)
    for block in (7, 64, 4096):
        got = prdc(real, fake, k=k, block=block)
        for name, value in ref.items():
            assert got[name] == pytest.approx(value, abs=1e-12), (name, block)


def test_identical_distributions_score_high_and_disjoint_ones_zero():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 16)), rng.normal(size=(500, 16))
    same = prdc(a, b)
    assert same["precision"] > 0.7 and same["recall"] > 0.7 and 0.7 < same["density"] < 1.3 and same["coverage"] > 0.8
    far = prdc(a, b + 100)
    assert far["precision"] == far["recall"] == far["density"] == far["coverage"] == 0


def test_bootstrap_intervals_hold_the_estimate_and_are_seeded():
    rng = np.random.default_rng(1)
    r = prdc(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 0.5)
    ci = prdc_bootstrap(r["per_point"], draws=500, seed=3)
    for name in ("precision", "recall", "density", "coverage"):
        lo, hi = ci[name]
        assert lo <= r[name] <= hi and hi - lo > 0
    assert ci == prdc_bootstrap(r["per_point"], draws=500, seed=3)


def test_bad_input():
    with pytest.raises(ValueError, match="more than k=3"):
        prdc(np.zeros((3, 4)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="dimensions differ"):
        prdc(np.zeros((10, 4)), np.zeros((10, 5)))
    with pytest.raises(ValueError, match="NaN"):
        prdc(np.full((10, 4), np.nan), np.zeros((10, 4)))


def test_matched_sizes_equal_sizes_is_plain_prdc():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(120, 16)), rng.normal(size=(120, 16)) + 0.3
    got, want = prdc_matched(real, fake), prdc(real, fake)
    assert (got["n_per_set"], got["parts"]) == (120, 1)
    for name in ("precision", "recall", "density", "coverage"):
        assert got[name] == want[name]


@pytest.mark.parametrize("synthetic_larger", [True, False])
def test_matched_sizes_is_the_mean_over_disjoint_parts_of_the_larger_set(synthetic_larger):
    rng = np.random.default_rng(5)
    small, large = rng.normal(size=(40, 8)), rng.normal(size=(130, 8)) * 1.2   # 3 parts of 40, 10 left over
    real, fake = (small, large) if synthetic_larger else (large, small)
    got = prdc_matched(real, fake, seed=7)
    order = np.random.default_rng(7).permutation(130)
    parts = [order[i * 40:(i + 1) * 40] for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == sorted(set(order[:120].tolist()))   # disjoint, 120 used
    each = [prdc(small, large[p]) if synthetic_larger else prdc(large[p], small) for p in parts]
    assert (got["n_per_set"], got["parts"]) == (40, 3)
    for name in ("precision", "recall", "density", "coverage"):
        assert got[name] == pytest.approx(np.mean([e[name] for e in each]), abs=1e-12)
        assert got[name] == pytest.approx(np.mean(got["per_point"][name]), abs=1e-12)
    cut = ("precision", "density") if synthetic_larger else ("recall", "coverage")
    assert all(len(got["per_point"][n]) == 120 for n in cut)
    assert all(len(got["per_point"][n]) == 40 for n in {"precision", "recall", "density", "coverage"} - set(cut))
    assert prdc_matched(real, fake, seed=7)["recall"] == got["recall"]           # seeded


def test_matched_sizes_remove_the_set_size_bias():
    """One distribution, 200 real and 2,000 synthetic points: plain recall drops and coverage rises with
    the larger synthetic set; at matched sizes both stay at their equal-size values."""
    rng = np.random.default_rng(6)
    basis = rng.normal(size=(64, 256))

    def draw(n):
        return rng.normal(size=(n, 64)) @ basis

    real = draw(200)
    equal = [prdc(real, draw(200)) for _ in range(5)]
    eq = {n: np.mean([e[n] for e in equal]) for n in ("recall", "coverage")}
    big = draw(2000)
    plain, matched = prdc(real, big), prdc_matched(real, big)
    assert plain["recall"] < eq["recall"] - 0.02 and plain["coverage"] > eq["coverage"] + 0.08
    assert abs(matched["recall"] - eq["recall"]) < 0.03 and abs(matched["coverage"] - eq["coverage"]) < 0.06
