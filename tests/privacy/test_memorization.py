"""Memorization: threshold calibration, summaries, the figure, and planted copies in real 2D and 3D data."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.privacy import check_sets
from medsynth.privacy.memorization import (
    calibrate_threshold,
    closest_pairs_png,
    memorization_summary,
    reliable_holdout_size,
)
from tests.privacy.conftest import ALTERATIONS, plant


def test_threshold_is_the_holdout_quantile_and_flags_what_exceeds_it():
    holdout = np.linspace(0, 1, 201)                      # 0.000, 0.005, ..., 1.000
    assert calibrate_threshold(holdout, 0.995) == pytest.approx(0.995)
    syn = np.array([0.2, 0.99, 0.996, 1.0])
    summary, flags = memorization_summary(syn, holdout, syn_holdout=np.array([0.1, 0.99, 0.5, 1.0]),
                                          syn_train_equal=np.array([0.2, 0.99, 0.996, 1.0]), quantile=0.995)
    assert flags.tolist() == [False, False, True, True]
    assert summary["memorized"] == 2 and summary["memorized_share"] == 0.5
    assert summary["closer_to_train_share"] == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)   # ties count half
    assert summary["dcr"]["min"] == pytest.approx(0.0) and summary["dcr"]["max"] == pytest.approx(0.8)
    assert reliable_holdout_size(0.995) == 400 and reliable_holdout_size(0.9) == 100
    with pytest.raises(ValueError, match="between 0 and 1"):
        calibrate_threshold(holdout, 1.0)


def test_figure_shows_the_closest_pairs_first():
    syn = torch.zeros(5, 1, 8, 8)
    syn[3] = 1.0
    train = torch.linspace(-1, 1, 3 * 64).reshape(3, 1, 8, 8)
    png = closest_pairs_png(syn, train, [0.1, 0.2, 0.3, 0.9, 0.5], [0, 1, 2, 1, 0], k=2, threshold=0.8, px=16)
    im = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert im.shape[0] == 2 * 16 + 3 * 4 + 2 * 14
    # first column: sample 3 (constant -> black) above train image 1 (a ramp)
    top = im[14 + 4:14 + 4 + 16, 4:20]
    bottom = im[14 + 8 + 16:14 + 8 + 32, 4:20]
    assert top.max() == 0 and bottom.min() == 0 and bottom.max() == 255


def _planted_rates(sets, max_translation):
    planted = plant(sets["train"], max_translation=max_translation)
    novel = sets["novel"]
    syn = torch.cat([novel] + [planted[k] for k in ALTERATIONS])
    report, details = check_sets(sets["train"], sets["holdout"], syn, bootstrap=100, progress=False)
    flags = details.memorized
    n_novel, n_train = novel.shape[0], sets["train"].shape[0]
    per = {k: float(flags[n_novel + j * n_train:n_novel + (j + 1) * n_train].mean()) for j, k in enumerate(ALTERATIONS)}
    sim = details.nn_similarity["pixel"]
    return report, per, float(flags[n_novel:].mean()), int(flags[:n_novel].sum()), sim[n_novel:].min(), sim[:n_novel].max()


@pytest.mark.slow
def test_planted_copies_in_mednist_chest_xrays_are_found_and_novel_images_are_not(cxr_sets):
    """150 training X-rays, 125 holdout, 125 novel; 750 planted copies (each training image exact,
    shifted 1-2 px, noisy, intensity-changed and blurred)."""
    report, per, detection, false_flags, planted_min, novel_max = _planted_rates(cxr_sets, 2)
    assert detection >= 0.99 and min(per.values()) >= 0.99, per
    assert false_flags / 125 <= 0.01, false_flags
    assert planted_min > novel_max + 0.05          # the two groups do not even overlap
    m = report["memorization"]["spaces"]["pixel"]
    assert report["memorization"]["memorized"] == round(detection * 750) + false_flags
    assert m["holdout_nn_similarity"]["max"] < 0.95 and m["threshold"] < planted_min


@pytest.mark.slow
def test_planted_copies_in_ixi_volumes_are_found_and_novel_volumes_are_not(ixi_sets):
    """3D: 50 training T1 volumes (32^3), 60 holdout, 40 novel subjects; 250 planted copies (shift 1 voxel
    = 7.5 mm per axis at this size)."""
    report, per, detection, false_flags, planted_min, novel_max = _planted_rates(ixi_sets, 1)
    assert detection >= 0.99 and min(per.values()) >= 0.99, per
    assert false_flags == 0
    assert planted_min > novel_max
    assert any("only 60 holdout images" in w for w in report["warnings"])


def test_feature_spaces_flag_copies_too(cxr_sets):
    """A second embedding (here 8x8 average-pooled pixels, compared by centred cosine similarity) next to
    the pixel space: copies are flagged in both, and a sample counts as memorized if either flags it."""
    import torch.nn.functional as F

    def pooled(images):
        return F.adaptive_avg_pool2d(images, 8).flatten(1).numpy()

    train, holdout, novel = cxr_sets["train"], cxr_sets["holdout"], cxr_sets["novel"]
    syn = torch.cat([novel[:40], train[:10]])
    report, details = check_sets(train, holdout, syn, embeddings={"pooled": pooled}, bootstrap=50, progress=False)
    assert report["spaces"] == ["pixel", "pooled"]
    assert details.flags["pooled"][40:].all() and details.flags["pixel"][40:].all()
    assert np.array_equal(details.memorized, details.flags["pixel"] | details.flags["pooled"])
    assert report["membership"]["distance"]["pooled"]["auc"] > 0.5
