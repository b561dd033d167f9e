"""Differentiable augmentation with a probability per image, and ADA's adaptive probability."""

import pytest
import torch

from medsynth.training.augment import KINDS, AdaptiveP, augment
from tests.training.conftest import tiny_config


def _images(n=64):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 32, 32, generator=g) * 2 - 1


def test_p_one_is_the_always_on_augmentation():
    x = _images()
    a = augment(x, KINDS, torch.Generator().manual_seed(0))
    b = augment(x, KINDS, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_p_zero_is_the_identity_and_draws_nothing():
    x = _images()
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    assert augment(x, KINDS, g, p=0.0) is x
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize("kind", KINDS)
def test_each_image_is_augmented_with_probability_p(kind):
    x = _images(400)
    out = augment(x, (kind,), torch.Generator().manual_seed(1), p=0.3)
    changed = (out != x).flatten(1).any(1)
    assert 0.2 < changed.float().mean().item() < 0.4          # 120 expected of 400; binomial sd 9
    assert torch.equal(out[~changed], x[~changed])             # the others are untouched, bit for bit
    again = augment(x, (kind,), torch.Generator().manual_seed(1), p=0.3)
    assert torch.equal(out, again)                              # the generator decides everything


@pytest.mark.parametrize("ratio, largest", [(0.125, 4), (0.0625, 2), (0.0, 1)])
def test_translation_shifts_by_at_most_its_ratio_of_each_side(ratio, largest):
    x = -torch.ones(400, 1, 32, 32)
    x[:, :, 16, 16] = 1.0                                       # one bright pixel on the background
    out = augment(x, ("translation",), torch.Generator().manual_seed(0), translation_ratio=ratio)
    assert out.max(dim=-1).values.max(dim=-1).values.eq(1).all()   # the pixel is never shifted out
    at = (out[:, 0] == 1).flatten(1).float().argmax(1)
    dy, dx = at // 32 - 16, at % 32 - 16
    for d in (dy, dx):                                          # every shift from -largest to +largest
        assert sorted(set(d.tolist())) == list(range(-largest, largest + 1))


def test_training_passes_the_configured_translation_to_the_augmentation(tmp_path, mednist_small, monkeypatch):
    import medsynth.training.loop as loop

    seen = []

    def spy(x, kinds, generator, part=None, p=1.0, translation_ratio=0.125):
        seen.append(translation_ratio)
        return augment(x, kinds, generator, part, p, translation_ratio)

    monkeypatch.setattr(loop, "augment", spy)
    loop.train(tiny_config(mednist_small, **{"model.name": "resgan", "model.augment_translation": 0.0625,
                                            "train.steps": 2}), tmp_path / "r", progress=False)
    assert seen and set(seen) == {0.0625}


def test_adaptive_p_follows_the_overfitting_heuristic():
    ada = AdaptiveP(target=0.6, speed_images=1000, batch=50, interval=4)   # a notch is 50 * 4 / 1000 = 0.2
    assert ada.p == 0.0
    for expect in (0.2, 0.4, 0.6, 0.8, 1.0, 1.0):              # D calls all training images real: r_t = 1
        ada.observe(torch.ones(50))
        assert ada.local_rt() == 1.0
        assert ada.adjust(ada.local_rt()) == pytest.approx(expect)
    ada.observe(torch.tensor([1.0, -1.0, -1.0, 1.0]))           # r_t = 0 < 0.6: back down
    assert ada.adjust(ada.local_rt()) == pytest.approx(0.8) and ada.rt == 0.0
    assert ada.count == 0 and not ada.due(8)                    # nothing observed since
    ada.observe(torch.ones(3))
    assert ada.due(8) and not ada.due(9)
    other = AdaptiveP(target=0.6, speed_images=1000, batch=50)
    other.load_state(ada.state())
    assert other.state() == ada.state()
    for _ in range(10):
        ada.observe(-torch.ones(50))
        ada.adjust(ada.local_rt())
    assert ada.p == 0.0                                          # clamped at 0


def _weights(path):
    from medsynth.training.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    return {k: state[k] for k in ("generator", "discriminator", "ema")}, state["ada"]


def test_training_with_ada_logs_p_and_resumes_exactly(tmp_path, mednist_small):
    import json

    from medsynth.training.loop import resume_config, train

    # notch = 8 * 4 / 64 = 0.5: p visits 0, 0.5 and 1 within a few steps
    over = {"model.name": "resgan", "model.ada_target": 0.6, "model.ada_images": 64, "train.steps": 20}
    straight = train(tiny_config(mednist_small, **over), tmp_path / "a", progress=False)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["augment_p"] in (0.0, 0.5, 1.0) and -1 <= r["ada_rt"] <= 1 for r in log)
    w_straight, ada_straight = _weights(straight.checkpoint)
    assert ada_straight["p"] == log[-1]["augment_p"]
    train(tiny_config(mednist_small, **{**over, "train.steps": 10}), tmp_path / "b", progress=False)
    resumed = train(resume_config(tmp_path / "b", ["train.steps=20"]), tmp_path / "b", resume=True, progress=False)
    w_resumed, ada_resumed = _weights(resumed.checkpoint)
    assert ada_resumed == ada_straight
    for net in w_straight:
        for k, v in w_straight[net].items():
            assert torch.equal(v, w_resumed[net][k]), f"{net}.{k}"
