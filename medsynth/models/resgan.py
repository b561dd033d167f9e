"""``resgan``: the default model, a residual, spectrally normalised, class-conditional GAN.

Built from MONAI layer factories so one ``spatial_dims`` gives 2D and 3D:

* generator: latent (+ learned class embedding) -> linear -> 4^d feature map -> residual up-blocks
  (nearest or linear upsample, 3x3 convs, batch norm, ReLU, 1x1 skip) -> conv -> tanh; any
  power-of-two size from 32 to 256 (3D: 16 to 128);
* discriminator: residual down-blocks with spectral normalisation on every weight (Miyato et al.
  2018) or an R1 penalty, optional instance norm and minibatch standard deviation, average-pool
  downsampling, global sum pooling, and a projection head for the class (Miyato & Koyama 2018);
* recipe: hinge loss, Adam 2e-4 / (0.0, 0.99), generator EMA, differentiable augmentation for small
  datasets (Zhao et al. 2020: translation, cutout, brightness/contrast; no flips, anatomy has a
  left and a right).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.utils.checkpoint import checkpoint

from medsynth.config import TRANSLATION_RATIO
from medsynth.models import GanModel, changed_settings, register


def _layers(dims: int):
    from monai.networks.layers import Conv, Norm, Pool

    return Conv[Conv.CONV, dims], Norm[Norm.BATCH, dims], Pool[Pool.AVG, dims]


class GenNorm(nn.Module):
    """The generator's normalisation followed by a gain and bias: per channel for unconditional
    generators, per class and channel for conditional ones (conditional batch norm, as in BigGAN;
    zero-initialised offsets, so gain 1 and bias 0 at the start).

    ``kind="batch"``: batch norm (statistics over the batch while training, running ones in eval).
    ``kind="pixel"``: each position's feature vector scaled to unit RMS (Karras et al. 2018, ProGAN):
    a sample never depends on the rest of its batch and no running statistics go stale under the
    EMA weights, at the price of more mode collapse in our tests."""

    def __init__(self, kind: str, dims: int, channels: int, num_classes: int = 0):
        super().__init__()
        self.kind = kind
        self.bn = _layers(dims)[1](channels, affine=False) if kind == "batch" else None
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)
        else:
            self.gain = nn.Parameter(torch.zeros(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, labels=None):
        x = self.bn(x) if self.bn is not None else x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)
        view = (-1, x.shape[1]) + (1,) * (x.dim() - 2)
        if isinstance(self.gain, nn.Embedding):
            gain, bias = self.gain(labels), self.bias(labels)
        else:
            gain, bias = self.gain, self.bias
        return x * (1 + gain.view(view)) + bias.view(view)


def _g_norm(kind: str, dims: int, channels: int, num_classes: int):
    return GenNorm(kind, dims, channels, num_classes)


UPSAMPLE = {"nearest": {2: "nearest", 3: "nearest"}, "linear": {2: "bilinear", 3: "trilinear"}}


class UpBlock(nn.Module):
    def __init__(self, dims: int, cin: int, cout: int, norm: str = "batch", num_classes: int = 0,
                 upsample: str = "nearest"):
        super().__init__()
        conv, _, _ = _layers(dims)
        self.n1, self.c1 = _g_norm(norm, dims, cin, num_classes), conv(cin, cout, 3, padding=1)
        self.n2, self.c2 = _g_norm(norm, dims, cout, num_classes), conv(cout, cout, 3, padding=1)
        self.skip = conv(cin, cout, 1)
        mode = UPSAMPLE[upsample][dims]
        self.up = nn.Upsample(scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))

    def forward(self, x, labels=None):
        h = self.c1(self.up(torch.relu(self.n1(x, labels))))
        h = self.c2(torch.relu(self.n2(h, labels)))
        return h + self.skip(self.up(x))


def _identity(m):
    return m


def _d_norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "instance":
        from monai.networks.layers import Norm

        return Norm[Norm.INSTANCE, dims](channels, affine=True)
    return nn.Identity()


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018, ProGAN; as in StyleGAN2): one feature map
    holding the mean over channels and positions of the features' standard deviation across a group
    of ``group`` images, appended to the features. A generator that draws the same image every time
    gives groups of fakes a near-zero deviation, which the discriminator can see and penalise.

    Groups are consecutive images (0..g-1, g..2g-1, ...), so a batch made of equal parts (real,
    then generated) never mixes the two in a group when each part's size is a multiple of the group;
    the group shrinks to the largest divisor of the batch size not above ``group``."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x):
        n = x.shape[0]
        g = min(self.group, n)
        while n % g:
            g -= 1
        y = x.float().reshape(n // g, g, -1)
        std = (y.var(1, unbiased=False) + 1e-8).sqrt().mean(1)          # (n // g,)
        std = std.repeat_interleave(g).to(x.dtype).view(n, 1, *([1] * (x.dim() - 2)))
        return torch.cat([x, std.expand(n, 1, *x.shape[2:])], 1)


class DownBlock(nn.Module):
    def __init__(self, dims: int, cin: int, cout: int, first: bool = False, down: bool = True, sn: bool = True,
                 norm_kind: str = "none"):
        super().__init__()
        conv, _, pool = _layers(dims)
        norm = spectral_norm if sn else _identity
        self.first, self.down = first, down
        self.c1 = norm(conv(cin, cout, 3, padding=1))
        self.c2 = norm(conv(cout, cout, 3, padding=1))
        self.n1, self.n2 = _d_norm(norm_kind, dims, cout), _d_norm(norm_kind, dims, cout)
        self.skip = norm(conv(cin, cout, 1))
        self.pool = pool(2) if down else nn.Identity()

    def forward(self, x):
        h = x if self.first else torch.relu(x)
        h = self.pool(self.n2(self.c2(torch.relu(self.n1(self.c1(h))))))
        s = self.skip(self.pool(x)) if self.first else self.pool(self.skip(x))
        return h + s


def _widths(base: int, steps: int, cap: int) -> list[int]:
    return [min(cap, base * 2 ** i) for i in range(steps + 1)]


class ResGenerator(nn.Module):
    def __init__(self, image_shape, latent_dim: int = 128, num_classes: int = 0, width: int = 32, cap: int = 256,
                 norm: str = "batch", checkpointing: bool = False, upsample: str = "nearest"):
        super().__init__()
        self.checkpointing = checkpointing
        channels, *spatial = image_shape
        self.dims, self.latent_dim, self.num_classes = len(spatial), latent_dim, num_classes
        start = 4
        steps = int(math.log2(spatial[0] // start))
        widths = _widths(width, steps, cap)[::-1]            # wide at 4^d, narrow at full size
        self.start_shape = (widths[0], *([start] * self.dims))
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.fc = nn.Linear(latent_dim * (2 if num_classes else 1), int(math.prod(self.start_shape)))
        self.blocks = nn.ModuleList([UpBlock(self.dims, widths[i], widths[i + 1], norm, num_classes, upsample)
                                     for i in range(steps)])
        conv = _layers(self.dims)[0]
        self.out_norm = _g_norm(norm, self.dims, widths[-1], num_classes)
        self.out = nn.Sequential(nn.ReLU(), conv(widths[-1], channels, 3, padding=1), nn.Tanh())

    def forward(self, z, labels=None):
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], 1)
        h = self.fc(z).view(z.shape[0], *self.start_shape)
        for block in self.blocks:
            h = _run(block, self.checkpointing, h, labels)
        return self.out(self.out_norm(h, labels))


def _run(block, checkpointing: bool, *args):
    """``block(*args)``; with gradient checkpointing, its activations are recomputed in the backward
    pass instead of kept (less memory for 3D volumes, about a third more compute)."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class ResDiscriminator(nn.Module):
    def __init__(self, image_shape, num_classes: int = 0, width: int = 32, cap: int = 256, sn: bool = True,
                 recon: bool = False, norm_kind: str = "none", mbstd: int = 0, class_init: str = "normal"):
        super().__init__()
        if class_init == "zero" and sn:
            raise ValueError("model.d_class_init=zero needs model.d_regularization=r1 (a zero matrix has no spectral "
                             "norm)")
        channels, *spatial = image_shape
        dims = len(spatial)
        steps = int(math.log2(spatial[0] // 4))
        widths = _widths(width, steps, cap)
        norm = spectral_norm if sn else _identity
        blocks = [DownBlock(dims, channels, widths[0], first=True, sn=sn, norm_kind=norm_kind)]
        blocks += [DownBlock(dims, widths[i], widths[i + 1], sn=sn, norm_kind=norm_kind) for i in range(steps - 1)]
        # minibatch std before the last block (at 4^d), as in StyleGAN2: one more input channel there
        if mbstd:
            blocks.append(MinibatchStd(mbstd))
        blocks += [DownBlock(dims, widths[steps - 1] + (1 if mbstd else 0), widths[steps], down=False, sn=sn,
                             norm_kind=norm_kind)]
        self.blocks = nn.Sequential(*blocks)
        self.linear = norm(nn.Linear(widths[steps], 1))
        self.embed = None
        if num_classes:
            embed = nn.Embedding(num_classes, widths[steps])
            if class_init == "zero":
                # the default N(0, 1) embedding makes the projection term about sqrt(3 C) times the size of the
                # unconditional head's at the start (28 times at C = 256 features); without spectral
                # normalisation, with R1 and instance norm, the losses then ran away (docs/benchmarks.md,
                # twenty-first round). From zero the discriminator starts unconditional and learns the class term.
                nn.init.zeros_(embed.weight)
            self.embed = norm(embed)
        self.checkpointing = False
        # self-supervised reconstruction (FastGAN, Liu et al. 2021): a small decoder from the features
        # at 8^d back to a 32^d image, trained on real images only
        self.recon_at = steps - 2 if recon else None          # index of the block whose output is 8^d
        self.decoder = _decoder(dims, widths[steps - 2], channels) if recon else None

    def forward(self, x, labels=None, reconstruct: bool = False):
        h, rec = x, None
        for i, block in enumerate(self.blocks):
            # spectral norm advances its power iteration in every forward pass, so a recomputed block
            # would not be the same function: only unnormalised (R1) discriminators are checkpointed
            h = _run(block, self.checkpointing, h)
            if reconstruct and i == self.recon_at:
                rec = self.decoder(h)
        h = torch.relu(h).flatten(2).sum(2)
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels")
            out = out + (self.embed(labels) * h).sum(1)
        if reconstruct:
            if rec is None:
                raise ValueError("this discriminator has no reconstruction head (model.d_recon is 0)")
            return out, rec
        return out


def _decoder(dims: int, cin: int, channels: int) -> nn.Module:
    """8^d features -> a 32^d image (compared with the real image area-downsampled to 32^d): two
    (upsample, 3x3 conv) stages, then a 3x3 conv to the image channels and tanh."""
    conv = _layers(dims)[0]
    mid = max(8, cin // 2)
    return nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"), conv(cin, mid, 3, padding=1),
                         nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"), conv(mid, mid // 2, 3, padding=1),
                         nn.ReLU(), conv(mid // 2, channels, 3, padding=1), nn.Tanh())


class PatchGanDiscriminator(nn.Module):
    """MONAI's ``PatchDiscriminator`` (PatchGAN: a logit per overlapping patch of the image; Isola et
    al. 2017), scored by the mean over patches. Instance norm instead of its default batch norm, so
    each image is judged on its own; spectral normalisation of every convolution with the hinge loss,
    or none with R1. Unconditional. For 3D, where a patch critic sees local anatomy at a fraction of
    a full discriminator's memory."""

    def __init__(self, image_shape, width: int = 32, sn: bool = True):
        from monai.networks.nets import PatchDiscriminator

        super().__init__()
        channels, *spatial = image_shape
        layers = max(1, min(3, int(math.log2(spatial[0])) - 3))   # 3 from 64 px; fewer keep patches > 1 px
        self.net = PatchDiscriminator(spatial_dims=len(spatial), channels=width, in_channels=channels,
                                      out_channels=1, num_layers_d=layers, norm="INSTANCE")
        if sn:
            for m in self.net.modules():
                if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                    spectral_norm(m)
        self.checkpointing = False

    def forward(self, x, labels=None):
        return self.net(x)[-1].flatten(1).mean(1)


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
    d_width = getattr(cfg, "d_width", None) or width
    d_recon = float(getattr(cfg, "d_recon", 0.0))
    d_norm = getattr(cfg, "d_norm", "none")
    d_mbstd = int(getattr(cfg, "d_mbstd", 0))
    r1 = getattr(cfg, "d_regularization", "spectral_norm") == "r1"
    ckpt = bool(getattr(cfg, "checkpointing", False))
    g = ResGenerator(image_shape, cfg.latent_dim, num_classes, width=width, norm=getattr(cfg, "g_norm", "batch"),
                     checkpointing=ckpt, upsample=getattr(cfg, "g_upsample", "nearest"))
    if getattr(cfg, "discriminator", "resnet") == "patch":
        if num_classes:
            raise ValueError("model.discriminator=patch is unconditional; use model.discriminator=resnet for a "
                             "conditional model")
        if d_recon > 0:
            raise ValueError("model.d_recon needs model.discriminator=resnet (the patch discriminator has no "
                             "reconstruction head)")
        if d_norm != "none":
            raise ValueError("model.d_norm applies to model.discriminator=resnet (the patch discriminator always "
                             "uses instance norm)")
        if d_mbstd:
            raise ValueError("model.d_mbstd applies to model.discriminator=resnet")
        d = PatchGanDiscriminator(image_shape, width=d_width, sn=not r1)
    else:
        d = ResDiscriminator(image_shape, num_classes, width=d_width, cap=max(256, 8 * d_width), sn=not r1,
                             recon=d_recon > 0, norm_kind=d_norm, mbstd=d_mbstd,
                             class_init=getattr(cfg, "d_class_init", "normal") if num_classes else "normal")
    d.checkpointing = ckpt and r1
    # two time-scale learning rates (Heusel et al. 2017) as BigGAN (Brock et al. 2019): with equal ones,
    # the batch-normalised generator moved faster than the discriminator could follow (its real/fake
    # scores stayed equal, samples collapsed); G 5e-5 / D 2e-4 halved the FID on MedNIST chest X-rays
    from medsynth.training.augment import KINDS

    augment = getattr(cfg, "augment", None)
    augment = KINDS if augment is None else tuple(augment)     # default: all of them
    ada = getattr(cfg, "ada_target", None)
    unused = {"r1_gamma": "used only with model.d_regularization: r1"} if not r1 else {}
    if not num_classes or getattr(cfg, "discriminator", "resnet") == "patch":
        unused["d_class_init"] = "used only by conditional models"
    if not augment:
        unused.update(dict.fromkeys(("augment_p", "ada_target", "ada_images"), "model.augment is empty"))
    elif ada is not None:
        unused["augment_p"] = "model.ada_target adapts the augmentation probability"
    else:
        unused["ada_images"] = "used only with model.ada_target"
    translation = float(getattr(cfg, "augment_translation", TRANSLATION_RATIO))
    if "translation" not in augment:
        unused["augment_translation"] = "model.augment has no translation"
    elif translation <= 0:
        # the augmentation shifts by at least one pixel, so 0 would not mean "no translation"
        raise ValueError("model.augment_translation must be above 0 while model.augment includes translation (the "
                         "shift is at least one pixel); to train without translation, leave it out of "
                         "model.augment, e.g. model.augment=[cutout,intensity]")
    return GanModel(g, d, loss="nonsaturating" if r1 else "hinge", lr_g=5e-5, lr_d=2e-4, betas=(0.0, 0.99),
                    # minibatch std scores images by group: real and generated ones go through D apart
                    ema=True, d_per_sample=not d_mbstd, augment=augment,
                    augment_translation=translation,
                    augment_p=float(getattr(cfg, "augment_p", 1.0)), ada_target=ada,
                    ada_images=int(getattr(cfg, "ada_images", 100_000)),
                    r1_gamma=float(getattr(cfg, "r1_gamma", 1.0)) if r1 else 0.0,
                    d_recon=d_recon, lecam=float(getattr(cfg, "lecam_weight", 0.0)),
                    ignored={k: unused[k] for k in changed_settings(cfg, unused)})
