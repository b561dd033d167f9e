"""``model.jpeg_output``: a generator that ends in the JPEG compression that stored its training images.

Many image sets are stored as lossy JPEG (MedNIST at quality 75; CheXpert and MIMIC-CXR-JPG too), and the
stored pixels carry the codec's 8x8-block artefacts. A generator of smooth images cannot match them, and an
Inception network sees the difference: JPEG-compressing resgan's samples with the training files' own
quantisation table lowers their FID against the training images by about a fifth (docs/benchmarks.md,
twenty-third round). With this option the generator's output goes through the same compression, written
in differentiable torch operations, during training and sampling alike: the discriminator compares stored
images with stored images, and the network learns the image under the compression (the measurement model of
AmbientGAN, Bora et al. 2018, "AmbientGAN: generative models from lossy measurements", here a known codec).

The round trip is baseline JPEG of one 8-bit channel: source units (the training files' own pixel values,
through the run's intensity mapping) rounded to integers, level shift by 128, orthonormal 8x8 DCT-II,
division by the quantisation table and rounding, multiplication, inverse DCT, rounding and clipping to
0..255. Rounding passes gradients straight through (Shin & Song 2017, "JPEG-resistant adversarial
images"). Against Pillow's libjpeg encoder and decoder it differs by about 0.2 grey levels on average: libjpeg's
integer DCT rounds a coefficient that lies near a rounding boundary the other way now and then, which moves a
few percent of pixels by more than one grey level (tested).
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F


@lru_cache(maxsize=None)
def _dct_matrix(device: torch.device) -> torch.Tensor:
    """The orthonormal 8x8 DCT-II matrix on ``device``, built once per device (the round trip runs every step)."""
    c = torch.zeros(8, 8, dtype=torch.float64)
    for k in range(8):
        for n in range(8):
            c[k, n] = math.cos(math.pi * (2 * n + 1) * k / 16) * (math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8))
    return c.float().to(device)


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def jpeg_round_trip(pixels: torch.Tensor, table: torch.Tensor, max_value: float = 255.0) -> torch.Tensor:
    """Baseline JPEG compression and decompression of (B, 1, H, W) pixel values in 0..``max_value`` with the
    8x8 quantisation ``table`` (natural order), as float32; differentiable (rounding is straight-through)."""
    if pixels.dim() != 4:
        raise ValueError(f"JPEG round trip needs (B, C, H, W) images, got shape {tuple(pixels.shape)}")
    x = _round(pixels.float().clamp(0, max_value))
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="replicate") - 128.0    # libjpeg repeats the edge pixels
    b, c, hp, wp = x.shape
    blocks = x.reshape(b, c, hp // 8, 8, wp // 8, 8).transpose(3, 4)      # (B, C, h, w, 8, 8)
    d = _dct_matrix(x.device)
    q = table.to(x.device, torch.float32)
    coef = _round(d @ blocks @ d.T / q) * q
    out = (d.T @ coef @ d).transpose(3, 4).reshape(b, c, hp, wp)[..., :h, :w] + 128.0
    return _round(out).clamp(0, max_value)


class JpegOutput(nn.Module):
    """``net(z, labels)`` followed by the training files' JPEG round trip, in the [-1, 1] units of the run's
    intensity mapping. The quantisation table and the mapping's window are buffers, so checkpoints carry
    them; :meth:`set_codec` fills them when a run starts. ``compress=False`` gives the image before the
    codec (what the network draws). ``in_training=False`` (``model.jpeg_in_training: false``) skips the
    codec while the module is in training mode, so the discriminator sees the network's own images and
    only what the run draws in eval mode (grids, FID, sampling) is compressed."""

    def __init__(self, net: nn.Module, in_training: bool = True):
        super().__init__()
        self.in_training = bool(in_training)
        self.net = net
        self.latent_dim, self.num_classes = net.latent_dim, net.num_classes
        self.register_buffer("jpeg_table", torch.zeros(8, 8))
        self.register_buffer("jpeg_window", torch.tensor([0.0, 255.0]))    # source units of -1 and +1
        self.compress = True
        self._checked = False

    def set_codec(self, table, window: tuple[float, float]) -> None:
        t = torch.as_tensor(table, dtype=torch.float32).reshape(8, 8)
        if not bool((t >= 1).all()):
            raise ValueError("a JPEG quantisation table needs 64 entries of at least 1")
        self.jpeg_table.copy_(t)
        self.jpeg_window.copy_(torch.tensor([float(window[0]), float(window[1])]))

    def forward(self, z, labels=None):
        y = self.net(z, labels)
        if not self.compress or (self.training and not self.in_training):
            return y
        if not self._checked:      # once, not per call: a data-dependent branch would stall a GPU every step
            if not bool((self.jpeg_table >= 1).all()):
                raise RuntimeError("JpegOutput has no quantisation table: set_codec() was not called")
            self._checked = True
        lo, hi = self.jpeg_window[0], self.jpeg_window[1]
        with torch.autocast(y.device.type, enabled=False):
            v = (y.float() + 1) * 0.5 * (hi - lo) + lo
            v = jpeg_round_trip(v, self.jpeg_table)
            return ((v - lo) * (2 / (hi - lo)) - 1).clamp(-1, 1)


def training_jpeg_table(files, image_size) -> dict:
    """The quantisation table shared by the training ``files``, which must all be 8-bit grayscale JPEGs
    stored at ``image_size`` (a resized file's blocks would not be 8x8 pixels any more). Returns
    ``{"table": 64 ints in natural order, "files": count, "ratio": median of pixel bytes / file bytes}``;
    raises ValueError saying which file does not fit."""
    import os

    from PIL import Image

    tables: Counter = Counter()
    ratios = []
    n = 0
    want = tuple(int(s) for s in image_size)
    for path in files:
        try:
            with Image.open(path) as im:
                fmt, mode, size, q = im.format, im.mode, im.size, getattr(im, "quantization", None)
        except OSError as e:
            raise ValueError(f"{path}: cannot read it as an image ({e})") from None
        if fmt != "JPEG":
            raise ValueError(f"{path} is {fmt or 'not an image Pillow reads'}, not JPEG: model.jpeg_output needs "
                             "every training image stored as JPEG")
        if mode != "L" or not q or len(q) != 1:
            raise ValueError(f"{path} is a {mode} JPEG with {len(q or {})} quantisation table(s); "
                             "model.jpeg_output needs 8-bit grayscale JPEGs (one table)")
        if (size[1], size[0]) != want:
            raise ValueError(f"{path} is {size[0]}x{size[1]} pixels and is resized to the training size "
                             f"{want[1]}x{want[0]}; model.jpeg_output needs files stored at data.image_size")
        tables[tuple(int(v) for v in next(iter(q.values())))] += 1
        ratios.append(size[0] * size[1] / os.path.getsize(path))
        n += 1
    if not n:
        raise ValueError("no training files to read a JPEG quantisation table from")
    if len(tables) > 1:
        k = tables.most_common(1)[0][1]
        raise ValueError(f"the training JPEGs use {len(tables)} different quantisation tables ({k} of {n} files "
                         "share the most common one); model.jpeg_output needs one")
    return {"table": list(next(iter(tables))), "files": n, "ratio": round(float(sorted(ratios)[n // 2]), 2)}
