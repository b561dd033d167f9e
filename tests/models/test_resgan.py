"""resgan's builder: the discriminator's width and normalisation are its own options."""

import pytest

from medsynth.config import ConfigError, resolve_config
from medsynth.models import build_model


def _first_conv_channels(net):
    import torch

    return next(m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def _params(net):
    return sum(p.numel() for p in net.parameters())


def test_d_width_widens_only_the_discriminator():
    base = build_model(resolve_config(None, {"data.path": "unused", "model.width": 16}).model, (1, 64, 64))
    wide = build_model(resolve_config(None, {"data.path": "unused", "model.width": 16, "model.d_width": 32}).model, (1, 64, 64))
    assert _first_conv_channels(base.discriminator) == 16 and _first_conv_channels(wide.discriminator) == 32
    assert _params(wide.generator) == _params(base.generator)
    assert _params(wide.discriminator) > 1.5 * _params(base.discriminator)
    # the widest stage may exceed 256 when asked: 8 x d_width
    widest = build_model(resolve_config(None, {"data.path": "unused", "model.d_width": 64}).model, (1, 64, 64)).discriminator
    assert widest.linear.in_features == 512


def test_d_width_is_validated():
    with pytest.raises(ConfigError, match="model.d_width"):
        resolve_config(None, {"data.path": "unused", "model.d_width": 2})


def _d(norm: str, width: int = 8):
    over = {"data.path": "unused", "model.width": width, "model.d_regularization": "r1", "model.d_norm": norm}
    return build_model(resolve_config(None, over).model, (1, 32, 32)).discriminator


def test_d_norm_instance_normalises_every_discriminator_convolution():
    import torch

    plain, normed = _d("none"), _d("instance")
    norms = [m for m in normed.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 2 * len(normed.blocks) and all(n.affine for n in norms)
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in plain.modules())
    # without the option the state dict is what it was before the option existed: old checkpoints load
    assert not any(".n1." in k or ".n2." in k for k in plain.state_dict())
    assert any(".n1." in k for k in normed.state_dict())
    # the residual branch of the first block sees the image only through a normalised convolution, so
    # its output does not change when the image's contrast is scaled (the skip path does). Checked in
    # float64 with the norms' eps removed: eps / variance otherwise leaves a ~1e-4 difference that
    # depends on the random input and on the CPU's kernels (a CI run failed on it).
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    normed, plain = normed.double(), plain.double()
    for n in norms:
        n.eps = 0.0
    block = normed.blocks[0]
    branch = lambda t: block.n2(block.c2(torch.relu(block.n1(block.c1(t)))))  # noqa: E731
    with torch.no_grad():
        assert torch.allclose(branch(x), branch(2.5 * x), atol=1e-9)
        assert not torch.allclose(plain.blocks[0].c1(x), plain.blocks[0].c1(2.5 * x), atol=1e-2)


def test_d_norm_instance_judges_each_image_on_its_own():
    """The training loop scores real and generated images in one concatenated batch and takes R1 per
    image: that is right only if an image's score does not depend on the rest of its batch."""
    import torch

    d = _d("instance").train()
    torch.manual_seed(0)
    x = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        together = d(x)
        alone = torch.cat([d(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_d_norm_is_validated_and_refused_for_the_patch_discriminator():
    with pytest.raises(ConfigError, match="model.d_norm"):
        resolve_config(None, {"data.path": "unused", "model.d_norm": "batch"})
    cfg = resolve_config(None, {"data.path": "unused", "model.discriminator": "patch", "model.d_norm": "instance"})
    with pytest.raises(ValueError, match="d_norm applies to model.discriminator=resnet"):
        build_model(cfg.model, (1, 32, 32))


def _resgan(size=(1, 32, 32), **over):
    base = {"data.path": "unused", "model.width": 8, "model.d_regularization": "r1", "model.d_norm": "instance"}
    return build_model(resolve_config(None, {**base, **over}).model, size)


def test_minibatch_std_appends_the_deviation_of_consecutive_groups():
    import torch

    from medsynth.models.resgan import MinibatchStd

    x = torch.tensor([0.0, 3.0, 0.0, 1.0, 1.0, 1.0]).view(6, 1, 1, 1).expand(6, 1, 2, 2)
    out = MinibatchStd(4)(x)          # 6 images: the group shrinks to 3, the largest divisor of 6 up to 4
    assert out.shape == (6, 2, 2, 2) and torch.equal(out[:, :1], x)
    assert torch.allclose(out[:3, 1], torch.full((3, 2, 2), 2 ** 0.5))       # (0, 3, 0): variance 2
    assert torch.allclose(out[3:, 1], torch.zeros(3, 2, 2), atol=1e-3)        # identical images: ~0
    assert torch.allclose(MinibatchStd(4)(x[:1])[:, 1], torch.zeros(1, 2, 2), atol=1e-3)   # a lone image


def test_d_mbstd_scores_images_with_their_group_only():
    import torch

    from medsynth.models.resgan import MinibatchStd

    model = _resgan(**{"model.d_mbstd": 2})
    d = model.discriminator.train()
    assert sum(isinstance(m, MinibatchStd) for m in d.modules()) == 1
    assert model.d_per_sample is False          # the loop scores real and generated images in separate passes
    torch.manual_seed(0)
    x = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        full = d(x)
        assert torch.allclose(full, torch.cat([d(x[:4]), d(x[4:])]), atol=1e-5)   # groups never span halves
        assert not torch.allclose(full[:2], torch.cat([d(x[:1]), d(x[1:2])]), atol=1e-3)  # group-mates matter
        y = x.clone()
        y[5] = torch.randn(1, 32, 32)
        moved = (d(y) - full).abs() > 1e-5
    assert moved.tolist() == [False, False, False, False, True, True, False, False]


def test_g_upsample_linear_changes_only_the_interpolation():
    import torch

    near, lin = _resgan(), _resgan(**{"model.g_upsample": "linear"})
    modes = {b.up.mode for b in lin.generator.blocks}
    assert modes == {"bilinear"} and {b.up.mode for b in near.generator.blocks} == {"nearest"}
    assert near.generator.state_dict().keys() == lin.generator.state_dict().keys()   # old checkpoints load
    lin.generator.load_state_dict(near.generator.state_dict())
    z = torch.randn(4, 64)
    with torch.no_grad():
        a, b = near.generator.eval()(z), lin.generator.eval()(z)
    assert a.shape == b.shape == (4, 1, 32, 32) and not torch.allclose(a, b, atol=1e-4)
    vol = _resgan((1, 16, 16, 16), **{"model.g_upsample": "linear"}).generator.eval()
    assert {b.up.mode for b in vol.blocks} == {"trilinear"}
    with torch.no_grad():
        assert vol(torch.randn(1, 64)).shape == (1, 1, 16, 16, 16)


def test_g_upsample_and_d_mbstd_are_validated():
    with pytest.raises(ConfigError, match="model.g_upsample"):
        resolve_config(None, {"data.path": "unused", "model.g_upsample": "cubic"})
    with pytest.raises(ConfigError, match="model.d_mbstd"):
        resolve_config(None, {"data.path": "unused", "model.d_mbstd": -1})
    cfg = resolve_config(None, {"data.path": "unused", "model.discriminator": "patch", "model.d_mbstd": 4})
    with pytest.raises(ValueError, match="d_mbstd applies to model.discriminator=resnet"):
        build_model(cfg.model, (1, 32, 32))


def test_dcgan_names_the_resgan_only_settings_it_ignores():
    from medsynth.models.dcgan import resgan_only_settings

    assert resgan_only_settings(resolve_config(None, {"data.path": "unused", "model.name": "dcgan",
                                                      "model.latent_dim": 32}).model) == []
    cfg = resolve_config(None, {"data.path": "unused", "model.name": "dcgan", "model.r1_gamma": 0.1,
                                "model.augment": [], "model.d_norm": "instance"}).model
    assert resgan_only_settings(cfg) == ["d_norm", "r1_gamma", "augment"]
    model = build_model(cfg, (1, 64, 64))
    assert model.loss == "bce"      # still builds: the training loop warns
    assert list(model.ignored) == ["d_norm", "r1_gamma", "augment"]
    assert set(model.ignored.values()) == {"resgan-only settings (dcgan is MONAI's tutorial networks)"}


@pytest.mark.parametrize("over, ignored", [
    ({}, []),                                                                   # the defaults use everything
    ({"model.r1_gamma": 0.1}, ["r1_gamma"]),                                    # spectral norm: no R1 penalty
    ({"model.d_regularization": "r1", "model.r1_gamma": 0.1}, []),
    ({"model.ada_images": 5000}, ["ada_images"]),                               # fixed augment_p
    ({"model.ada_target": 0.6, "model.ada_images": 5000}, []),
    ({"model.ada_target": 0.6, "model.augment_p": 0.5}, ["augment_p"]),         # ADA sets p itself
    ({"model.augment": [], "model.augment_p": 0.5, "model.ada_target": 0.6}, ["augment_p", "ada_target"]),
    ({"model.augment": ["cutout"], "model.augment_p": 0.5}, []),
    ({"model.augment": ["cutout"], "model.augment_translation": 0.0625}, ["augment_translation"]),
    ({"model.augment": ["cutout"], "model.ada_images": 5000}, ["ada_images"]),
    ({"model.augment_translation": 0.0625}, []),
])
def test_resgan_names_the_settings_its_configuration_does_not_use(over, ignored):
    cfg = resolve_config(None, {"data.path": "unused", "model.width": 8, **over}).model
    model = build_model(cfg, (1, 32, 32))
    assert list(model.ignored) == ignored
    if "r1_gamma" in ignored:
        assert model.ignored["r1_gamma"] == "used only with model.d_regularization: r1" and model.r1_gamma == 0.0


def test_a_zero_translation_is_refused_while_translation_is_on():
    # the augmentation shifts by at least one pixel, so 0 would silently still translate
    cfg = resolve_config(None, {"data.path": "unused", "model.augment_translation": 0.0})
    with pytest.raises(ValueError, match="leave it out of model.augment"):
        build_model(cfg.model, (1, 32, 32))
    off = resolve_config(None, {"data.path": "unused", "model.augment_translation": 0.0,
                                "model.augment": ["cutout", "intensity"]})
    assert "translation" not in build_model(off.model, (1, 32, 32)).augment


def test_d_class_init_zero_starts_the_projection_discriminator_unconditional_and_it_learns_the_class_term():
    import torch

    over = {"data.path": "unused", "model.width": 8, "model.conditional": True, "model.d_regularization": "r1"}
    default = build_model(resolve_config(None, over).model, (1, 32, 32), num_classes=3).discriminator
    assert torch.count_nonzero(default.embed.weight) == default.embed.weight.numel()     # N(0, 1), as before
    over["model.d_class_init"] = "zero"
    model = build_model(resolve_config(None, over).model, (1, 32, 32), num_classes=3)
    d = model.discriminator
    assert torch.count_nonzero(d.embed.weight) == 0 and not model.ignored
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(d(x, torch.zeros(4, dtype=torch.long)), d(x, torch.full((4,), 2)))   # same score per class
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    (d(x, torch.zeros(4, dtype=torch.long)).mean() - d(x, torch.full((4,), 2)).mean()).backward()
    opt.step()
    assert torch.count_nonzero(d.embed.weight[0]) > 0 and torch.count_nonzero(d.embed.weight[1]) == 0
    with torch.no_grad():
        assert not torch.allclose(d(x, torch.zeros(4, dtype=torch.long)), d(x, torch.full((4,), 2)))


def test_d_class_init_zero_is_refused_with_spectral_norm_and_named_unused_without_classes():
    over = {"data.path": "unused", "model.width": 8, "model.conditional": True, "model.d_class_init": "zero"}
    with pytest.raises(ValueError, match="d_class_init=zero needs model.d_regularization=r1"):
        build_model(resolve_config(None, over).model, (1, 32, 32), num_classes=3)
    over.update({"model.conditional": False, "model.d_regularization": "r1"})
    model = build_model(resolve_config(None, over).model, (1, 32, 32))
    assert model.ignored == {"d_class_init": "used only by conditional models"}
    with pytest.raises(ConfigError, match="model.d_class_init"):
        resolve_config(None, {"data.path": "unused", "model.d_class_init": "ones"})
