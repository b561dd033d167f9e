"""``resgan``: the default model, a residual, spectrally normalised, class-conditional GAN.

Built from MONAI layer factories so one ``spatial_dims`` gives 2D and 3D:

* generator: latent (+ learned class embedding) -> linear -> 4^d feature map -> residual up-blocks
  (nearest upsample, 3x3 convs, batch norm, ReLU, 1x1 skip) -> conv -> tanh; any power-of-two size
  from 32 to 256 (3D: 16 to 128);
* discriminator: residual down-blocks with spectral normalisation on every weight (Miyato et al.
  2018), average-pool downsampling, global sum pooling, and a projection head for the class
  (Miyato & Koyama 2018);
* recipe: hinge loss, Adam 2e-4 / (0.0, 0.99), generator EMA, differentiable augmentation for small
  datasets (Zhao et al. 2020: translation, cutout, brightness/contrast; no flips, anatomy has a
  left and a right).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medsynth.models import GanModel, register


def _layers(dims: int):
    from monai.networks.layers import Conv, Norm, Pool

    return Conv[Conv.CONV, dims], Norm[Norm.BATCH, dims], Pool[Pool.AVG, dims]


class UpBlock(nn.Module):
    def __init__(self, dims: int, cin: int, cout: int):
        super().__init__()
        conv, norm, _ = _layers(dims)
        self.n1, self.c1 = norm(cin), conv(cin, cout, 3, padding=1)
        self.n2, self.c2 = norm(cout), conv(cout, cout, 3, padding=1)
        self.skip = conv(cin, cout, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        h = self.c1(self.up(torch.relu(self.n1(x))))
        h = self.c2(torch.relu(self.n2(h)))
        return h + self.skip(self.up(x))


class DownBlock(nn.Module):
    def __init__(self, dims: int, cin: int, cout: int, first: bool = False, down: bool = True):
        super().__init__()
        conv, _, pool = _layers(dims)
        self.first, self.down = first, down
        self.c1 = spectral_norm(conv(cin, cout, 3, padding=1))
        self.c2 = spectral_norm(conv(cout, cout, 3, padding=1))
        self.skip = spectral_norm(conv(cin, cout, 1))
        self.pool = pool(2) if down else nn.Identity()

    def forward(self, x):
        h = x if self.first else torch.relu(x)
        h = self.pool(self.c2(torch.relu(self.c1(h))))
        s = self.skip(self.pool(x)) if self.first else self.pool(self.skip(x))
        return h + s


def _widths(base: int, steps: int, cap: int) -> list[int]:
    return [min(cap, base * 2 ** i) for i in range(steps + 1)]


class ResGenerator(nn.Module):
    def __init__(self, image_shape, latent_dim: int = 128, num_classes: int = 0, width: int = 32, cap: int = 256):
        super().__init__()
        channels, *spatial = image_shape
        self.dims, self.latent_dim, self.num_classes = len(spatial), latent_dim, num_classes
        start = 4
        steps = int(math.log2(spatial[0] // start))
        widths = _widths(width, steps, cap)[::-1]            # wide at 4^d, narrow at full size
        self.start_shape = (widths[0], *([start] * self.dims))
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.fc = nn.Linear(latent_dim * (2 if num_classes else 1), int(math.prod(self.start_shape)))
        self.blocks = nn.Sequential(*[UpBlock(self.dims, widths[i], widths[i + 1]) for i in range(steps)])
        conv, norm, _ = _layers(self.dims)
        self.out = nn.Sequential(norm(widths[-1]), nn.ReLU(), conv(widths[-1], channels, 3, padding=1), nn.Tanh())

    def forward(self, z, labels=None):
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], 1)
        h = self.fc(z).view(z.shape[0], *self.start_shape)
        return self.out(self.blocks(h))


class ResDiscriminator(nn.Module):
    def __init__(self, image_shape, num_classes: int = 0, width: int = 32, cap: int = 256):
        super().__init__()
        channels, *spatial = image_shape
        dims = len(spatial)
        steps = int(math.log2(spatial[0] // 4))
        widths = _widths(width, steps, cap)
        blocks = [DownBlock(dims, channels, widths[0], first=True)]
        blocks += [DownBlock(dims, widths[i], widths[i + 1]) for i in range(steps - 1)]
        blocks += [DownBlock(dims, widths[steps - 1], widths[steps], down=False)]
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(nn.Linear(widths[steps], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, widths[steps])) if num_classes else None

    def forward(self, x, labels=None):
        h = torch.relu(self.blocks(x)).flatten(2).sum(2)
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels")
            out = out + (self.embed(labels) * h).sum(1)
        return out


SIZES = {2: (32, 256), 3: (16, 128)}


@register("resgan")
def build(cfg, image_shape, num_classes) -> GanModel:
    spatial = image_shape[1:]
    lo, hi = SIZES[len(spatial)]
    s = spatial[0]
    if len(set(spatial)) != 1 or s & (s - 1) or not lo <= s <= hi:
        raise ValueError(f"resgan needs a square (cubic) power-of-two image size from {lo} to {hi} in "
                         f"{len(spatial)}D, got {list(spatial)}")
    width = getattr(cfg, "width", 32)
    g = ResGenerator(image_shape, cfg.latent_dim, num_classes, width=width)
    d = ResDiscriminator(image_shape, num_classes, width=width)
    return GanModel(g, d, loss="hinge", lr_g=2e-4, lr_d=2e-4, betas=(0.0, 0.99), ema=True, d_per_sample=True,
                    augment=("translation", "cutout", "intensity"))
