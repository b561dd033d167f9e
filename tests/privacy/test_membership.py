"""Membership inference: the AUC and its interval, and the attack on real data with and without leaks."""

import numpy as np
import pytest
import torch

from medsynth.privacy import check_sets
from medsynth.privacy.membership import attack_summary, bootstrap_auc_ci, group_max, roc_auc


def test_auc_is_the_share_of_correctly_ordered_pairs_with_ties_as_half():
    rng = np.random.default_rng(0)
    p, n = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    pairs = (p[:, None] > n[None]).mean() + 0.5 * (p[:, None] == n[None]).mean()
    assert roc_auc(p, n) == pytest.approx(pairs)
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([], [1])


def test_bootstrap_interval_brackets_the_auc_and_shrinks_with_more_data():
    rng = np.random.default_rng(1)
    sp, sn, bp, bn = rng.normal(0.5, 1, 30), rng.normal(0, 1, 30), rng.normal(0.5, 1, 1000), rng.normal(0, 1, 1000)
    small, big = bootstrap_auc_ci(sp, sn, n_boot=300), bootstrap_auc_ci(bp, bn, n_boot=300)
    assert small[0] < roc_auc(sp, sn) < small[1] and big[0] < roc_auc(bp, bn) < big[1]
    assert big[0] - 0.02 < 0.638 < big[1] + 0.02          # true AUC: Phi(0.5 / sqrt 2) = 0.638
    assert big[1] - big[0] < (small[1] - small[0]) / 3


def test_patients_score_their_best_image():
    assert group_max([0.1, 0.9, 0.3, 0.2], ["a", "b", "a", "c"]).tolist() == [0.3, 0.9, 0.2]
    s = attack_summary([0.9, 0.1, 0.8], [0.2, 0.3], train_groups=["p", "p", "q"], holdout_groups=["r", "s"],
                       n_boot=50)
    assert s["unit"] == "patient" and s["n_train"] == 2 and s["auc"] == 1.0


@pytest.mark.slow
def test_distance_attack_on_real_xrays(cxr_sets):
    """Independent real images as the 'synthetic' set: AUC about 0.5. The same set with a third of it
    replaced by copies of training images: clearly higher, the interval above 0.5."""
    train, holdout, novel = cxr_sets["train"], cxr_sets["holdout"], cxr_sets["novel"]
    clean, _ = check_sets(train, holdout, novel, bootstrap=500, progress=False)
    a = clean["membership"]["distance"]["pixel"]
    assert a["ci95"][0] < 0.5 < a["ci95"][1] and abs(a["auc"] - 0.5) < 0.1
    leaky = torch.cat([novel[:75], train[:50]])
    report, _ = check_sets(train, holdout, leaky, bootstrap=500, progress=False)
    b = report["membership"]["distance"]["pixel"]
    assert b["auc"] > 0.62 and b["ci95"][0] > 0.55, b
