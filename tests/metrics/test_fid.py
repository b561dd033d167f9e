"""medsynth/metrics/fid.py: the same statistics and the same FID as pytorch-fid."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from medsynth.metrics.fid import feature_stats, fid_from_features, frechet_distance, load_stats, save_stats

# scipy.linalg.sqrtm of the full 2048x2048 product takes ~20-70 s on 2 CPU cores, so the default
# comparisons of FID values use the leading DIMS features (sub-blocks of the same statistics); one
# full 2048-d pair always runs, MEDSYNTH_TEST_FULL_FID=1 adds the second (a few minutes).
DIMS = 256
FULL = os.environ.get("MEDSYNTH_TEST_FULL_FID") == "1"


def _pytorch_fid_distance(*args):
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(*args))


def _ours(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return frechet_distance(*args)


def test_feature_stats_are_pytorch_fids():
    rng = np.random.default_rng(0)
    act = rng.standard_normal((40, 7)).astype(np.float32)
    mu, sigma = feature_stats(act)
    a64 = act.astype(np.float64)  # pytorch-fid's activations are float64
    assert mu.dtype == sigma.dtype == np.float64
    assert np.array_equal(mu, np.mean(a64, axis=0)) and np.array_equal(sigma, np.cov(a64, rowvar=False))
    with pytest.raises(ValueError, match="2 samples"):
        feature_stats(act[:1])
    with pytest.raises(ValueError, match="2D"):
        feature_stats(act[0])


@pytest.mark.parametrize("n, d", [(200, 16), (10, 32)])  # full-rank and singular covariance products
def test_frechet_distance_is_pytorch_fids(n, d):
    rng = np.random.default_rng(n + d)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d)) * 1.3 + 0.2
    s = feature_stats(a) + feature_stats(b)
    assert _ours(*s) == _pytorch_fid_distance(*s)  # the same operations: bit-identical
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fid_from_features(a, b) == _ours(*s)


def test_frechet_distance_equals_the_closed_form_for_known_gaussians():
    """Fréchet distance of N(m1, S1) and N(m2, S2) is |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).
    With S1 = I and S2 = Q diag(lam) Q^T (Q a random rotation) the square root is S2^(1/2), so the value
    is |m1 - m2|^2 + sum(1 + lam - 2 sqrt(lam)), computed here without any matrix square root."""
    rng = np.random.default_rng(7)
    d = 24
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    lam = rng.uniform(0.1, 4.0, size=d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s2 = (q * lam) @ q.T
    expected = float(((m1 - m2) ** 2).sum() + (1 + lam - 2 * np.sqrt(lam)).sum())
    assert _ours(m1, np.eye(d), m2, s2) == pytest.approx(expected, rel=1e-9)
    # commuting diagonal covariances: sum((sqrt(a) - sqrt(b))^2)
    a, b = rng.uniform(0.5, 2.0, size=d), rng.uniform(0.5, 2.0, size=d)
    assert _ours(m1, np.diag(a), m1, np.diag(b)) == pytest.approx(float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()),
                                                                  rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, 32))
    assert abs(fid_from_features(a, a)) <= 1e-9  # full-rank covariance: exact up to rounding
    # fewer samples than dimensions: sqrtm of a singular matrix is only accurate to ~1e-7 of the
    # traces (pytorch-fid has the same error); here |FID| ~ 1e-5 with traces ~ 64
    few = rng.standard_normal((10, 32))
    tr = 2 * np.trace(np.cov(few, rowvar=False))
    assert abs(_ours(*feature_stats(few), *feature_stats(few))) <= 1e-6 * tr


def test_real_image_fid_is_pytorch_fids(pytorch_fid_results, our_features):
    """pytorch-fid's own code path (calculate_activation_statistics: its dataset, ToTensor,
    DataLoader, its InceptionV3 with the same weights) vs medsynth's features and statistics."""
    theirs = {name: (r["mu"], r["sigma"]) for name, r in pytorch_fid_results.items()}
    ours = {name: feature_stats(f) for name, f in our_features.items()}
    for name in theirs:
        assert np.array_equal(ours[name][0], theirs[name][0]) and np.array_equal(ours[name][1], theirs[name][1])

    def sub(stats):
        mu, sigma = stats
        return mu[:DIMS], sigma[:DIMS, :DIMS]

    values = {}
    for a, b in [("cxr_a", "mrbrain"), ("cxr_a", "cxr_b")]:
        ref = _pytorch_fid_distance(*sub(theirs[a]), *sub(theirs[b]))
        got = _ours(*sub(ours[a]), *sub(ours[b]))
        assert got == pytest.approx(ref, rel=1e-6)
        values[a, b] = got
    assert values["cxr_a", "mrbrain"] > 2 * values["cxr_a", "cxr_b"] > 0  # X-ray vs MRI is further apart
    # a set with itself: 0 up to sqrtm's error on the singular product (measured -3.2e-6, traces ~ 220)
    self_fid = _ours(*sub(ours["cxr_a"]), *sub(ours["cxr_a"]))
    assert abs(self_fid) <= 1e-6 * 2 * np.trace(sub(ours["cxr_a"])[1])


@pytest.mark.slow
def test_real_image_fid_is_pytorch_fids_2048d(pytorch_fid_results, our_features):
    # one pair always (two 2048-d sqrtm: about a minute on 2 cores); both with MEDSYNTH_TEST_FULL_FID=1
    pairs = [("cxr_a", "mrbrain")] + ([("cxr_a", "cxr_b")] if FULL else [])
    for a, b in pairs:
        ra, rb = pytorch_fid_results[a], pytorch_fid_results[b]
        ref = _pytorch_fid_distance(ra["mu"], ra["sigma"], rb["mu"], rb["sigma"])
        got = fid_from_features(our_features[a], our_features[b])
        print(f"FID {a} vs {b}: pytorch-fid {ref!r}, medsynth {got!r}")
        assert got == pytest.approx(ref, rel=1e-6)


def test_stats_npz_round_trip_and_pytorch_fid_reads_it(tmp_path):
    from pytorch_fid.fid_score import compute_statistics_of_path

    rng = np.random.default_rng(2)
    mu, sigma = feature_stats(rng.standard_normal((20, 6)))
    path = tmp_path / "real_stats.npz"
    save_stats(path, mu, sigma)
    got = load_stats(path)
    assert np.array_equal(got[0], mu) and np.array_equal(got[1], sigma)
    assert sorted(os.listdir(tmp_path)) == ["real_stats.npz"]
    with np.load(path) as f:
        assert {"mu", "sigma"} <= set(f.files) and np.array_equal(f["mu"], mu)
    m, s = compute_statistics_of_path(str(path), None, 50, 6, "cpu")  # pytorch-fid's loader
    assert np.array_equal(m, mu) and np.array_equal(s, sigma)
    # and a file written the way pytorch-fid's save_fid_stats writes it
    np.savez_compressed(tmp_path / "theirs.npz", mu=mu * 2, sigma=sigma)
    assert np.array_equal(load_stats(tmp_path / "theirs.npz")[0], mu * 2)


def test_bad_stats_are_refused(tmp_path):
    np.savez(tmp_path / "x.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="different shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="expected mu"):
        save_stats(tmp_path / "y.npz", np.zeros(3), np.eye(2))


def test_stats_of_another_extractor_or_a_newer_version_are_refused(tmp_path):
    from medsynth.metrics.fid import STATS_VERSION, read_stats

    rng = np.random.default_rng(0)
    mu, sigma = feature_stats(rng.standard_normal((30, 2048)))
    save_stats(tmp_path / "ours.npz", mu, sigma, n=30)
    m, _, meta = read_stats(tmp_path / "ours.npz")
    assert np.array_equal(m, mu) and meta["n"] == 30 and meta["origin"] == "medsynth"
    save_stats(tmp_path / "clip.npz", mu, sigma, features_id="CLIP ViT-B/32")
    with pytest.raises(ValueError, match="statistics of other features"):
        read_stats(tmp_path / "clip.npz")
    np.savez(tmp_path / "future.npz", mu=mu, sigma=sigma, medsynth_features=np.array(
        "pytorch-fid InceptionV3 pool3 2048-d (FID weights), 8-bit input"), medsynth_stats_version=STATS_VERSION + 1)
    with pytest.raises(ValueError, match="newer than this medsynth"):
        read_stats(tmp_path / "future.npz")
    np.savez(tmp_path / "small.npz", mu=mu[:64], sigma=sigma[:64, :64])
    with pytest.raises(ValueError, match="64-d statistics"):
        read_stats(tmp_path / "small.npz")
    np.savez(tmp_path / "theirs.npz", mu=mu, sigma=sigma)      # pytorch-fid's own file: accepted
    assert "pytorch-fid" in read_stats(tmp_path / "theirs.npz")[2]["origin"]
