"""Differentiable augmentation for GANs on small datasets (Zhao et al. 2020, "DiffAugment").

Applied to every image the discriminator sees, real and generated, so the generator is not pushed
towards the augmented distribution. All randomness comes from the ``generator`` argument, which
makes training reproducible and resumable. No flips: anatomy has a left and a right. Works for
(B, C, H, W) and (B, C, D, H, W).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from medsynth.config import TRANSLATION_RATIO

KINDS = ("translation", "cutout", "intensity")


def _rand(shape, generator, device, part=None):
    """Uniform draws for a batch; with ``part = (start, total)`` the draws are made for a global batch
    of ``total`` images and rows ``start:start + B`` returned, so that every rank of a distributed run
    draws the same numbers (its generator stays in step) and gets its own images' share of them."""
    if part is None:
        return torch.rand(shape, generator=generator).to(device)
    start, total = part
    full = torch.rand((total, *shape[1:]), generator=generator)
    return full[start:start + shape[0]].to(device)


def intensity(x, generator, part=None):
    """Random brightness shift (+-0.25) and contrast scale (0.75..1.25) about each image's mean."""
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    shift = (_rand(view, generator, x.device, part) - 0.5) * 0.5
    scale = _rand(view, generator, x.device, part) * 0.5 + 0.75
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return (x - mean) * scale + mean + shift


def translation(x, generator, part=None, ratio: float = TRANSLATION_RATIO):
    """Shift by up to ``ratio`` of the size along each spatial axis, padding with the background (-1)."""
    spatial = x.shape[2:]
    pads = [max(1, int(s * ratio + 0.5)) for s in spatial]
    padded = F.pad(x, [p for p in reversed(pads) for _ in (0, 1)], value=-1.0)
    out = torch.empty_like(x)
    offsets = [(_rand((x.shape[0],), generator, "cpu", part) * (2 * p + 1)).long() for p in pads]
    for i in range(x.shape[0]):
        sl = [slice(None)] + [slice(int(o[i]), int(o[i]) + s) for o, s in zip(offsets, spatial)]
        out[i] = padded[i][tuple(sl)]
    return out


def cutout(x, generator, part=None, ratio: float = 0.5):
    """Blank one random box of ``ratio`` of each side per image (to the background value -1)."""
    spatial = x.shape[2:]
    size = [max(1, int(s * ratio + 0.5)) for s in spatial]
    mask = torch.ones_like(x[:, :1])
    starts = [(_rand((x.shape[0],), generator, "cpu", part) * (s - c + 1)).long() for s, c in zip(spatial, size)]
    for i in range(x.shape[0]):
        sl = [0] + [slice(int(o[i]), int(o[i]) + c) for o, c in zip(starts, size)]
        mask[i][tuple(sl)] = 0
    return x * mask + (mask - 1)


def check_kinds(kinds) -> None:
    """Raise ValueError naming the first of ``kinds`` that is not one of :data:`KINDS`."""
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown augmentation {kind!r}; choose from {', '.join(KINDS)}")


def augment(x, kinds, generator, part=None, p: float = 1.0, translation_ratio: float = TRANSLATION_RATIO):
    """Apply ``kinds`` in order. ``part = (start, total)``: ``x`` is rows ``start:start + B`` of a
    global batch of ``total`` split over ranks (see :func:`_rand`).

    ``p`` < 1: each kind is applied to each image with probability ``p`` (drawn per image and kind, as
    in ADA, Karras et al. 2020); ``p`` <= 0 returns ``x`` unchanged and draws nothing.
    ``translation_ratio``: the largest shift, as a fraction of each side (see :func:`translation`)."""
    check_kinds(kinds)
    if p <= 0:
        return x
    view = (x.shape[0],) + (1,) * (x.dim() - 1)
    ops = {"translation": partial(translation, ratio=translation_ratio), "cutout": cutout, "intensity": intensity}
    for kind in kinds:
        out = ops[kind](x, generator, part)
        x = out if p >= 1 else torch.where(_rand(view, generator, x.device, part) < p, out, x)
    return x


class AdaptiveP:
    """ADA's controller (Karras et al. 2020, "Training generative adversarial networks with limited
    data"): the overfitting heuristic r_t = E[sign(D(real))] over the last ``interval`` steps; p goes
    up when r_t is above ``target`` (the discriminator is too sure of the training images) and down
    when below, by ``batch * interval / speed_images`` per adjustment, within [0, 1]. p starts at 0, so
    a discriminator that is still learning sees clean images; the paper's speed is 500k images, ours
    defaults to 100k because runs here are shorter."""

    def __init__(self, target: float, speed_images: int, batch: int, interval: int = 4, p: float = 0.0):
        self.target, self.speed, self.batch, self.interval = float(target), int(speed_images), batch, interval
        self.p, self.signs, self.count, self.rt = float(p), 0.0, 0, None

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate the signs of the discriminator's logits for (augmented) training images."""
        self.signs += float(torch.sign(real_logits.detach().float()).sum())
        self.count += int(real_logits.numel())

    def due(self, step: int) -> bool:
        return step % self.interval == 0 and self.count > 0

    def adjust(self, rt: float) -> float:
        """Move p by one notch given this interval's (rank-averaged) r_t; returns the new p."""
        self.rt = rt
        notch = self.batch * self.interval / self.speed
        self.p = min(1.0, max(0.0, self.p + (notch if rt > self.target else -notch)))
        self.signs, self.count = 0.0, 0
        return self.p

    def local_rt(self) -> float:
        return self.signs / max(1, self.count)

    def state(self) -> dict:
        return {"p": self.p, "signs": self.signs, "count": self.count, "rt": self.rt}

    def load_state(self, state: dict) -> None:
        self.p, self.signs, self.count, self.rt = (float(state["p"]), float(state["signs"]), int(state["count"]),
                                                   state.get("rt"))
