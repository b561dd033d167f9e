"""Generator/discriminator pairs, registered by name; every model takes ``spatial_dims`` (2 or 3).

A model module registers a builder with :func:`register`. The builder receives the model config, the
image shape and the number of classes and returns a :class:`GanModel`: the two networks and the
training recipe that belongs to them (loss, optimiser settings, EMA, augmentation, R1). Both
networks follow one interface so the training loop and sampling never special-case a model:

* ``generator(z, labels=None) -> images in [-1, 1]``, with attributes ``latent_dim`` and ``num_classes``
* ``discriminator(images, labels=None) -> logits of shape (B,)``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from medsynth.config import TRANSLATION_RATIO

_REGISTRY: dict[str, Callable] = {}


@dataclass
class GanModel:
    generator: torch.nn.Module
    discriminator: torch.nn.Module
    loss: str                      # "bce" | "hinge" | "nonsaturating"
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    ema: bool = False              # keep an exponential moving average of the generator
    augment: tuple[str, ...] = ()  # differentiable augmentations applied to D's inputs
    augment_translation: float = TRANSLATION_RATIO  # largest translation, as a fraction of each side
    augment_p: float = 1.0         # probability per image and augmentation (fixed)
    ada_target: float | None = None  # adaptive p (ADA) towards this E[sign D(real)]; None: fixed augment_p
    ada_images: int = 100_000      # images over which the adaptive p can move from 0 to 1
    r1_gamma: float = 0.0
    d_recon: float = 0.0           # weight of D's self-supervised reconstruction loss on real images
    lecam: float = 0.0             # weight of the LeCam regulariser on D's scores (Tseng et al. 2021)
    d_steps: int = 1               # discriminator updates per generator update (on the same batch)
    d_per_sample: bool = True      # D treats samples independently (no batch norm): real and fake
                                   # may go through it as one concatenated batch
    # model settings set away from their defaults that this model (as configured) does not use, with the
    # reason: the training loop warns about them, so a run never silently differs from what its config says
    ignored: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_model(cfg, image_shape: tuple[int, ...], num_classes: int = 0) -> GanModel:
    """``image_shape`` is (C, *spatial); ``num_classes`` > 0 only for conditional models."""
    _load_builtin()
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown model {cfg.name!r}; available: {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[cfg.name](cfg, tuple(image_shape), num_classes)
    if getattr(cfg, "jpeg_output", False):
        if len(image_shape) != 3:
            raise ValueError("model.jpeg_output is for 2D images (JPEG stores 2D pictures)")
        from medsynth.models.jpeg import JpegOutput

        model.generator = JpegOutput(model.generator, in_training=getattr(cfg, "jpeg_in_training", True))
    return model


def changed_settings(cfg, names=None) -> list[str]:
    """The model settings among ``names`` (default: all) whose value differs from the default, in field order."""
    import dataclasses

    default = type(cfg)()
    return [f.name for f in dataclasses.fields(cfg)
            if (names is None or f.name in names) and getattr(cfg, f.name) != getattr(default, f.name)]


def _load_builtin():
    from medsynth.models import dcgan, resgan  # noqa: F401  (registration side effects)
