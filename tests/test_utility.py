"""medsynth.utility and ``medsynth utility``: downstream classifier on real MedNIST runs, tested on the real holdout."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from medsynth.data.sources import Split
from medsynth.training.loop import train
from medsynth.utility import UtilityError, macro_auc, seed_summary, stratified_subset, utility_run
from tests.test_cli import run as cli
from tests.training.conftest import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory, mednist_small):
    """A conditional resgan trained 4 steps at 32x32 on 48 real CXR and 48 real MRBrain images: its samples are
    far from real images, its real split is not."""
    out = tmp_path_factory.mktemp("runs") / "cond"
    train(tiny_config(mednist_small, **{"model.conditional": True}), out, progress=False)
    return out


# ------------------------------------------------------------------------------------------------
# the numbers, by hand


def test_macro_auc_matches_a_hand_computed_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    s = np.array([[0.9, 0.05, 0.05],
                  [0.4, 0.5, 0.1],
                  [0.3, 0.6, 0.1],
                  [0.5, 0.2, 0.3],
                  [0.2, 0.2, 0.6],
                  [0.1, 0.3, 0.6]])
    # class 0: positives 0.9, 0.4 vs negatives 0.3, 0.5, 0.2, 0.1 -> (4 + 3) / 8
    # class 1: positives 0.6, 0.2 vs negatives 0.05, 0.5, 0.2, 0.3 -> (4 + (1 + 0.5)) / 8 (a tie counts 1/2)
    # class 2: positives 0.6, 0.6 vs negatives 0.05, 0.1, 0.1, 0.3 -> 8 / 8
    macro, per = macro_auc(s, y)
    assert per == {0: 7 / 8, 1: 5.5 / 8, 2: 1.0}
    assert macro == pytest.approx((7 / 8 + 5.5 / 8 + 1) / 3, abs=1e-12)
    assert macro_auc(s, y, classes=[0, 2])[0] == pytest.approx((7 / 8 + 1) / 2)
    with pytest.raises(UtilityError, match="at least two classes"):
        macro_auc(s[:2], np.array([0, 0]))


def test_seed_summary_mean_std_and_student_t_interval():
    r = seed_summary([0.8, 0.9, 1.0])
    half = 4.302652729749464 * 0.1 / math.sqrt(3)                # t(0.975, 2) * std / sqrt(K)
    assert r["mean"] == pytest.approx(0.9) and r["std"] == pytest.approx(0.1)
    assert r["ci95"] == [pytest.approx(0.9 - half, abs=1e-6), 1.0]  # clipped at 1
    one = seed_summary([0.7])
    assert one == {"mean": 0.7, "std": None, "ci95": None, "values": [0.7]}


def test_real_fraction_is_a_seeded_stratified_subset():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 30)
    sub = stratified_subset(labels, 0.5, seed=0)
    assert np.bincount(labels[sub]).tolist() == [5, 2, 15]
    assert np.array_equal(sub, stratified_subset(labels, 0.5, seed=0))
    assert not np.array_equal(sub, stratified_subset(labels, 0.5, seed=1))
    assert np.bincount(labels[stratified_subset(labels, 0.1, seed=0)]).tolist() == [1, 1, 3]   # at least 1 each
    assert len(stratified_subset(labels, 1.0, seed=3)) == 44


# ------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_cli_end_to_end_on_the_real_holdout(run):
    code, out, err = cli("utility", run, "--json", "--seeds", "2", "--epochs", "4")
    assert code == 0, err
    result = json.loads(out)                                     # stdout: exactly one JSON object
    assert "utility: seed 2/2 synthetic" in err                  # progress on stderr
    split = Split.load(run / "split.json")
    assert result["holdout"]["n"] == len(split.holdout) and set(result["holdout"]["per_class"]) == {"CXR", "MRBrain"}
    assert result["n_real_train_available"] == len(split.train)
    real, mixed, syn = (result["arms"][a] for a in ("real", "real+synthetic", "synthetic"))
    # chest X-rays and brain MRI slices are trivially separable: trained on the real split, the
    # classifier gets (nearly) every real holdout image right
    assert real["accuracy"]["mean"] >= 0.9 and real["auc"]["mean"] >= 0.95
    assert len(real["accuracy"]["values"]) == 2 and real["accuracy"]["std"] is not None
    lo, hi = real["accuracy"]["ci95"]
    assert lo <= real["accuracy"]["mean"] <= hi
    # a 4-step generator: synthetic-only is reported per seed, whatever it scores
    assert len(syn["accuracy"]["values"]) == 2 and all(0 <= v <= 1 for v in syn["auc"]["values"] + syn["accuracy"]["values"])
    assert real["n_train"] == {"real": len(split.train), "synthetic": 0}
    assert mixed["n_train"] == {"real": len(split.train), "synthetic": len(split.train)}   # ratio 0.5
    assert syn["n_train"] == {"real": 0, "synthetic": len(split.train)}
    assert result["chance"]["accuracy_majority"] == pytest.approx(
        max(result["holdout"]["per_class"].values()) / result["holdout"]["n"])
    doc = json.loads((run / "utility.json").read_text())
    assert doc["schema"] == "medsynth-utility/1" and len(doc["results"]) == 1
    assert doc["results"][0]["arms"] == result["arms"]

    code, out, err = cli("utility", run, "--real-fraction", "0.25", "--seeds", "1", "--epochs", "2")
    assert code == 0, err
    assert "real+synthetic" in out and "ROC AUC" in out and "appended to" in out
    doc = json.loads((run / "utility.json").read_text())
    assert len(doc["results"]) == 2                              # appended
    small = doc["results"][1]
    per_class_train = [math.floor(0.25 * sum(lab in k for k in split.train) + 0.5) for lab in ("CXR", "MRBrain")]
    assert small["arms"]["real"]["n_train"]["real"] == sum(per_class_train)
    assert small["settings"]["real_fraction"] == 0.25 and small["arms"]["real"]["accuracy"]["std"] is None


def test_same_settings_same_numbers(run):
    a = utility_run(run, seeds=1, epochs=1, real_fraction=0.3, write=False, progress=False, device="cpu")
    b = utility_run(run, seeds=1, epochs=1, real_fraction=0.3, write=False, progress=False, device="cpu")
    assert a["arms"] == b["arms"]
    assert not (run / "utility.json").exists() or all(
        r["settings"]["real_fraction"] != 0.3 for r in json.loads((run / "utility.json").read_text())["results"])


# ------------------------------------------------------------------------------------------------
# bad input: one clear error, exit 2


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory, mednist_small):
    out = tmp_path_factory.mktemp("runs") / "uncond"
    train(tiny_config(mednist_small, **{"train.steps": 1}), out, progress=False)
    return out


@pytest.fixture(scope="module")
def one_class_holdout(run, tmp_path_factory):
    """The conditional run with every MRBrain holdout image moved to the training split."""
    out = tmp_path_factory.mktemp("runs") / "one_class"
    shutil.copytree(run / "checkpoints", out / "checkpoints")
    shutil.copy(run / "config.yaml", out / "config.yaml")
    split = json.loads((run / "split.json").read_text())
    moved = [k for k in split["holdout"] if "MRBrain" in k]
    assert moved and len(moved) < len(split["holdout"])
    split["holdout"] = [k for k in split["holdout"] if k not in moved]
    split["train"] += moved
    (out / "split.json").write_text(json.dumps(split))
    return out


def test_bad_input_is_one_clear_error(run, uncond_run, one_class_holdout, tmp_path, capsys):
    from medsynth.cli import main

    (tmp_path / "empty").mkdir()
    cases = [
        ((tmp_path / "nowhere",), "no such run directory"),
        ((tmp_path / "empty",), "not a run directory (no checkpoints/"),
        ((uncond_run,), "needs a conditional generator of at least 2 labels"),
        ((one_class_holdout,), "of 1 class(es) (CXR)"),
        ((run, "--real-fraction", "0"), "--real-fraction must be in (0, 1]"),
        ((run, "--ratio", "1"), "--ratio (the synthetic share of real+synthetic) must be in (0, 1)"),
        ((run, "--seeds", "0"), "--seeds must be at least 1"),
        ((run, "--device", "tpu:7"), "--device 'tpu:7': not a device"),
    ]
    for argv, message in cases:
        code = main(["utility", *map(str, argv), "--json"])
        out, err = capsys.readouterr()
        assert code == 2, (argv, err)
        assert out == "" and err.startswith("medsynth: error: ") and message in err, (argv, err)
        assert "Traceback" not in err


def test_utility_json_that_is_not_ours_is_not_overwritten(run, tmp_path):
    from medsynth.utility import append_result

    path = tmp_path / "utility.json"
    path.write_text("[1, 2]")
    with pytest.raises(UtilityError, match="not a medsynth-utility/1 file"):
        append_result(path, {"x": 1})
    assert path.read_text() == "[1, 2]"
