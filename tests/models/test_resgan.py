"""resgan's builder: the discriminator's width is its own option."""

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
