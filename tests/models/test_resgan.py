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
    # its output does not change when the image's contrast is scaled (the skip path does)
    x = torch.randn(3, 1, 32, 32)
    block = normed.blocks[0]
    branch = lambda t: block.n2(block.c2(torch.relu(block.n1(block.c1(t)))))  # noqa: E731
    with torch.no_grad():
        assert torch.allclose(branch(x), branch(2.5 * x), atol=1e-4)
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
