"""``medsynth evaluate`` end to end: folders (8-bit and medsynth's 16-bit PNGs), runs, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.cli import main
from medsynth.metrics.evaluate import (
    EvaluationError,
    compare_features,
    evaluate_folders,
    evaluate_run,
    load_image_folder,
    render_text,
)
from medsynth.metrics.fid import fid_from_features, load_stats

MEDNIST = __import__("tests.conftest", fromlist=["MEDNIST"]).MEDNIST


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    from medsynth.metrics.features import FeatureExtractor

    return FeatureExtractor(device="cpu", cache_dir=tmp_path_factory.mktemp("fid"), allow_download=False)


def _copy(dst, label, n, start=0):
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted((MEDNIST / label).iterdir())[start:start + n]:
        shutil.copy(f, dst / f.name)
    return dst


def test_folder_fid_equals_feature_fid_and_16bit_pngs_read_right(tmp_path, extractor):
    real = _copy(tmp_path / "real", "CXR", 6)
    # the same images as medsynth generate writes them: 16-bit PNG, [-1, 1] -> 0..65535
    syn = tmp_path / "syn16"
    syn.mkdir()
    for f in sorted(real.iterdir()):
        x = np.asarray(Image.open(f), dtype=np.float64) / 255 * 2 - 1
        Image.fromarray(((x + 1) * 32767.5).round().astype(np.uint16)).save(syn / (f.stem + ".png"))
    imgs, _, _, _ = load_image_folder(syn)
    ref, _, _, _ = load_image_folder(real)
    assert max(float((a - b).abs().max()) for a, b in zip(imgs, ref)) < 1e-4
    res = evaluate_folders(real, syn, extractor=extractor, save_stats_path=tmp_path / "real.npz")
    assert res["n_real"] == res["n_synthetic"] == 6 and res["real_sizes"] == {"64x64": 6}
    assert abs(res["fid"]) < 1e-3          # identical images after 8-bit quantisation
    assert res["warnings"] and "fewer than 2048" in res["warnings"][0]
    mu, sigma = load_stats(tmp_path / "real.npz")
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    other = _copy(tmp_path / "mr", "MRBrain", 6)
    res2 = evaluate_folders(real, other, extractor=extractor)
    fr = extractor.features_from_files(sorted(real.iterdir()))
    fo = extractor.features_from_files(sorted(other.iterdir()))
    want = fid_from_features(fr, fo)       # pytorch-fid's file path and its 2048x2048 sqrtm (slow: once)
    assert res2["fid"] == pytest.approx(want, rel=1e-6)
    exact = evaluate_folders(real, other, extractor=extractor, bootstrap=0, fid_method="sqrtm")
    assert exact["fid"] == want and exact["fid_method"] == "sqrtm"   # bit-identical
    assert res2["fid"] > 100 and res2["kid_mean"] > 0.05
    # precision/recall/density/coverage and intervals, diversity per set
    assert res["precision"] == res["recall"] == res["coverage"] == 1.0      # identical sets
    assert res2["precision"] == res2["density"] == 0.0   # no brain MRI lies among the chest X-rays
    lo, hi = res2["fid_ci"]
    assert lo < res2["fid"] < hi
    assert 0 < res2["diversity"]["real"]["ms_ssim"] < 1 and res2["diversity"]["synthetic"]["pairs"] == 15
    # saved statistics stand in for the real folder (FID only), and a stats file from elsewhere is refused
    res3 = evaluate_folders(tmp_path / "real.npz", other, extractor=extractor)
    assert res3["fid"] == pytest.approx(res2["fid"], rel=1e-6) and res3["n_real"] == 6 and "kid_mean" not in res3
    from medsynth.metrics.fid import save_stats
    save_stats(tmp_path / "other.npz", mu, sigma, features_id="another network")
    with pytest.raises(EvaluationError, match="other features"):
        evaluate_folders(tmp_path / "other.npz", other, extractor=extractor)


def test_precision_to_coverage_compare_equal_set_sizes():
    """2,000 synthetic against 320 real features: the four numbers are the mean over six disjoint parts
    of 320 synthetic (prdc_matched), and the output says so."""
    from medsynth.metrics.prdc import prdc_matched

    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(320, 32)), rng.normal(size=(2000, 32)) + 0.1
    res = compare_features(real, syn, bootstrap=0, seed=3)
    want = prdc_matched(real, syn, seed=3)
    assert res["prdc_sets"] == {"n_per_set": 320, "parts": 6}
    assert all(res[k] == want[k] for k in ("precision", "recall", "density", "coverage"))
    assert "320 vs 320 images, mean of 6 disjoint parts" in render_text(res)


def test_too_few_images_and_conflicting_options(tmp_path, capsys):
    one = _copy(tmp_path / "one", "CXR", 1)
    two = _copy(tmp_path / "two", "CXR", 2)
    with pytest.raises(EvaluationError, match="1 usable image"):
        load_image_folder(one)
    assert main(["evaluate", "--real", str(one), "--synthetic", str(two)]) == 2
    assert "need at least 2" in capsys.readouterr().err
    assert main(["evaluate", "runs/x", "--real", str(two)]) == 2
    assert "either RUN or --real" in capsys.readouterr().err
    assert main(["evaluate"]) == 2


@pytest.mark.slow
def test_evaluate_a_conditional_run_per_class_and_metrics_jsonl(tmp_path, extractor, monkeypatch):
    from medsynth.training.loop import train
    from tests.training.conftest import tiny_config

    data = tmp_path / "data"
    _copy(data / "CXR", "CXR", 12)
    _copy(data / "MRBrain", "MRBrain", 12)
    run = tmp_path / "run"
    train(tiny_config(data, **{"model.name": "resgan", "model.conditional": True, "train.steps": 2,
                               "data.holdout_fraction": 0.25}), run, progress=False)
    res = evaluate_run(run, n=8, extractor=extractor)
    assert res["n_real"] == 18 and res["n_synthetic"] == 8 and res["step"] == 2
    from medsynth.training.loop import select_precision
    assert res["training_runtime"] == {"device": "cpu", "precision": select_precision("auto", torch.device("cpu")),
                                       "compiled": False}
    assert set(res["per_class"]) == {"CXR", "MRBrain"}
    assert res["per_class"]["CXR"]["n_real"] == 9 and res["per_class"]["CXR"]["n_synthetic"] == 4
    # FID ratio against the holdout (6 images) at equal sizes; diversity of both sets
    ratio = res["fid_ratio"]
    assert ratio["n_holdout"] == 6 and ratio["n"] == 8 and ratio["fid_ratio"] == pytest.approx(
        ratio["fid_synthetic_holdout"] / ratio["fid_train_holdout"])
    assert ratio["fid_ratio"] > 1          # a 2-step generator is far from real data
    assert res["diversity"]["synthetic"]["kernel_size"] == 7 and "precision" in res
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["fid"] == res["fid"]
    assert np.isfinite(res["fid"]) and res["fid"] > 0
    assert torch.isfinite(torch.tensor(res["kid_mean"]))
    # n_real: a class-proportional subset of the training (and holdout) split, the same on every call
    capped = evaluate_run(run, n=8, extractor=extractor, n_real=6, bootstrap=0, write=False)
    assert capped["n_real"] == 6 and capped["per_class"]["CXR"]["n_real"] == 3
    assert capped["fid_ratio"]["n_holdout"] == 6
    assert evaluate_run(run, n=8, extractor=extractor, n_real=6, bootstrap=0, write=False)["fid"] == capped["fid"]


def test_subset_keeps_class_proportions_and_is_seeded():
    from medsynth.metrics.evaluate import _subset

    idx = np.arange(100, 200)
    labels = np.zeros(300, dtype=int)
    labels[170:200] = 1                                      # 70 of class 0, 30 of class 1 among idx
    sub = _subset(idx, labels, 10, seed=3)
    assert len(sub) == 10 and (labels[sub] == 0).sum() == 7 and set(sub) <= set(idx)
    assert np.array_equal(sub, _subset(idx, labels, 10, seed=3))
    assert not np.array_equal(sub, _subset(idx, labels, 10, seed=4))
    assert np.array_equal(_subset(idx, labels, None, 0), idx) and np.array_equal(_subset(idx, labels, 500, 0), idx)
    odd = _subset(idx, labels, 7, seed=0)                     # 4.9 and 2.1: the larger remainder rounds up
    assert len(odd) == 7 and (labels[odd] == 0).sum() == 5


@pytest.mark.slow
def test_evaluate_a_3d_run_uses_25d_features(tmp_path, extractor):
    from medsynth.training.loop import train
    from tests.training.conftest import tiny_config

    run = tmp_path / "run3d"
    train(tiny_config("sample:ixi", **{"data.mode": "3d", "data.image_size": [16, 16, 16], "data.spacing": [8, 8, 8],
                                       "data.intensity.mode": "percentile", "train.batch_size": 2,
                                       "train.steps": 2, "data.holdout_fraction": 0.25}), run, progress=False)
    res = evaluate_run(run, n=6, extractor=extractor, bootstrap=10)
    assert set(res["planes"]) == {"sagittal", "coronal", "axial"}
    assert res["fid"] == pytest.approx(np.mean([p["fid"] for p in res["planes"].values()]))
    assert res["n_synthetic"] == 6 and res["planes"]["axial"]["n_synthetic"] == 6
    assert "fid_ratio" in res and res["diversity"]["synthetic"]["scales"] == 2
