"""``dcgan``: MONAI's Generator/Discriminator set up exactly as MONAI's MedNIST GAN tutorial does.

The tutorial (MONAI tutorials, ``modules/mednist_GAN_workflow_dict.ipynb``): latent 64, generator
start shape (64, 8, 8), channels [32, 16, 8, 1], strides [2, 2, 2, 1] plus a Sigmoid; discriminator
channels (8, 16, 32, 64, 1), strides (2, 2, 2, 2, 1), one residual unit, kernel 5; both initialised
with N(0, 0.02) conv weights and N(1, 0.02) norm weights; BCE averaged over real and generated;
Adam 2e-4, betas (0.5, 0.999); five discriminator updates per generator update on the same real and
generated batch. The tutorial's discriminator ends in a Sigmoid followed by BCELoss; here it returns
the logit and the loss is BCE-with-logits, the same function computed stably. Its random rotation,
flip and zoom are not copied: medsynth feeds every model the same data pipeline. It
works on [0, 1] images, so this wrapper maps from and to medsynth's [-1, 1]. It is the honest
baseline: nothing here is tuned. The start shape scales with the image (size / 8) so the same
recipe runs at other sizes, and ``spatial_dims=3`` gives its 3D twin.
"""

from __future__ import annotations

from monai.networks.utils import normal_init  # the tutorial's initialiser
from torch import nn

from medsynth.models import GanModel, changed_settings, register


class TutorialGenerator(nn.Module):
    def __init__(self, image_shape, latent_dim: int = 64):
        from monai.networks.nets import Generator

        super().__init__()
        spatial = image_shape[1:]
        if any(s % 8 for s in spatial):
            raise ValueError(f"dcgan needs image sizes divisible by 8, got {list(spatial)}")
        self.latent_dim, self.num_classes = latent_dim, 0
        self.net = Generator(latent_shape=(latent_dim,), start_shape=(latent_dim, *[s // 8 for s in spatial]),
                             channels=[32, 16, 8, image_shape[0]], strides=[2, 2, 2, 1])
        self.net.apply(normal_init)
        self.net.conv.add_module("activation", nn.Sigmoid())

    def forward(self, z, labels=None):
        return self.net(z) * 2.0 - 1.0


class TutorialDiscriminator(nn.Module):
    def __init__(self, image_shape):
        from monai.networks.nets import Discriminator

        super().__init__()
        self.net = Discriminator(in_shape=tuple(image_shape), channels=(8, 16, 32, 64, 1), strides=(2, 2, 2, 2, 1),
                                 num_res_units=1, kernel_size=5, last_act=None)
        self.net.apply(normal_init)

    def forward(self, x, labels=None):
        return self.net((x + 1.0) * 0.5).reshape(x.shape[0], -1).mean(1)


DCGAN_SETTINGS = ("name", "latent_dim", "conditional", "jpeg_output", "jpeg_in_training")   # every model (build_model)


def resgan_only_settings(cfg) -> list[str]:
    """The model settings that differ from their defaults and that dcgan ignores (all but
    ``DCGAN_SETTINGS``), so a baseline trained from a resgan config with ``model.name=dcgan`` does not
    silently differ from what the config says (``GanModel.ignored``; the training loop warns)."""
    import dataclasses

    return changed_settings(cfg, [f.name for f in dataclasses.fields(cfg) if f.name not in DCGAN_SETTINGS])


@register("dcgan")
def build(cfg, image_shape, num_classes) -> GanModel:
    if num_classes:
        raise ValueError("dcgan is unconditional; set model.conditional: false or use model.name: resgan")
    g = TutorialGenerator(image_shape, cfg.latent_dim)
    d = TutorialDiscriminator(image_shape)
    return GanModel(g, d, loss="bce", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), d_steps=5,
                    ignored={k: "resgan-only settings (dcgan is MONAI's tutorial networks)"
                             for k in resgan_only_settings(cfg)})


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


