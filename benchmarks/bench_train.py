"""Training throughput: medsynth's loop against a faithful copy of MONAI's MedNIST GAN tutorial loop.

Both train the same ``dcgan`` networks (MONAI Generator/Discriminator as in the tutorial) with the
same recipe: batch 300, Adam 2e-4 (0.5, 0.999), BCE, one generator update followed by five
discriminator updates on the same real and generated batch, fp32. The tutorial side keeps its data
pipeline: ``CacheDataset`` over the JPEG files with LoadImage, channel-first, ScaleIntensity, then
per-item RandRotate / RandFlip / RandZoom in ``DataLoader`` workers (``num_workers`` = cores, the
tutorial's 10 being more than this machine has). medsynth reads its memory-mapped tensor cache,
keeps the training set on the device, passes real and generated images through the discriminator as
one batch, and (what ``train.compile`` auto-enables for long runs) compiles both networks; it is
measured both eager and compiled. The compile time is paid in the warm-up run, not measured.

Throughput = real images consumed by generator updates per second, measured over whole steps after
a warm-up. Run by hand:  .venv/bin/python benchmarks/bench_train.py [--steps 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MEDNIST = REPO.parent / "shared" / "data" / "mednist64"


def machine() -> str:
    from bench_data import machine_info  # the same description as the data benchmark

    m = machine_info()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, {gpu}, torch {m['torch']}, MONAI {m['monai']}"


def tutorial_loop(files, steps: int, warmup: int, device, workers: int) -> float:
    """The tutorial's loop (modules/mednist_GAN_tutorial.ipynb), with its transforms and schedule."""
    from monai.data import CacheDataset
    from monai.networks import normal_init
    from monai.networks.nets import Discriminator, Generator
    from monai.transforms import (
        Compose,
        EnsureChannelFirst,
        LoadImage,
        RandFlip,
        RandRotate,
        RandZoom,
        ScaleIntensity,
        ToTensor,
    )

    torch.manual_seed(0)
    batch_size, latent_size, disc_train_steps = 300, 64, 5
    transforms = Compose([LoadImage(image_only=True), EnsureChannelFirst(channel_dim="no_channel"), ScaleIntensity(),
                          RandRotate(range_x=np.pi / 12, prob=0.5, keep_size=True),
                          RandFlip(spatial_axis=0, prob=0.5), RandZoom(min_zoom=0.9, max_zoom=1.1, prob=0.5),
                          ToTensor()])
    ds = CacheDataset(files, transforms, progress=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
    disc_net = Discriminator(in_shape=(1, 64, 64), channels=(8, 16, 32, 64, 1), strides=(2, 2, 2, 2, 1),
                             num_res_units=1, kernel_size=5).to(device)
    gen_net = Generator(latent_shape=latent_size, start_shape=(64, 8, 8), channels=[32, 16, 8, 1],
                        strides=[2, 2, 2, 1])
    disc_net.apply(normal_init)
    gen_net.apply(normal_init)
    gen_net.conv.add_module("activation", torch.nn.Sigmoid())
    gen_net = gen_net.to(device)
    disc_loss, gen_loss = torch.nn.BCELoss(), torch.nn.BCELoss()
    disc_opt = torch.optim.Adam(disc_net.parameters(), 2e-4, betas=(0.5, 0.999))
    gen_opt = torch.optim.Adam(gen_net.parameters(), 2e-4, betas=(0.5, 0.999))

    def discriminator_loss(gen_images, real_images):
        real = real_images.new_full((real_images.shape[0], 1), 1)
        gen = gen_images.new_full((gen_images.shape[0], 1), 0)
        return (disc_loss(disc_net(real_images), real) + disc_loss(disc_net(gen_images.detach()), gen)) / 2

    def generator_loss(inp):
        output = disc_net(inp)
        return gen_loss(output, output.new_full(output.shape, 1))

    step, images, t0 = 0, 0, None
    while step < warmup + steps:
        for batch_data in loader:
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, images = time.perf_counter(), 0
            real_images = batch_data.to(device)
            latent = torch.randn(real_images.shape[0], latent_size).to(device)
            gen_opt.zero_grad()
            gen_images = gen_net(latent)
            loss = generator_loss(gen_images)
            loss.backward()
            gen_opt.step()
            loss.item()
            for _ in range(disc_train_steps):
                disc_opt.zero_grad()
                dloss = discriminator_loss(gen_images, real_images)
                dloss.backward()
                disc_opt.step()
                dloss.item()
            images += real_images.shape[0]
            step += 1
            if step >= warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def medsynth_loop(model: str, steps: int, warmup: int, batch_size: int, cache_dir: str, compile: bool) -> float:
    from medsynth.config import resolve_config
    from medsynth.training.loop import train

    over = {"data.path": str(MEDNIST), "data.image_size": [64, 64], "data.cache_dir": cache_dir,
            "data.intensity.mode": "window", "data.intensity.window": [0, 255], "model.name": model,
            "train.batch_size": batch_size, "train.grid_every": 10**6, "train.checkpoint_every": 10**6,
            "data.holdout_fraction": 0.0, "train.compile": compile}
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up run (builds the tensor cache, first-call allocations), then the measured run
        train(resolve_config(None, {**over, "train.steps": max(1, warmup)}), Path(tmp) / "warm", progress=False)
        res = train(resolve_config(None, {**over, "train.steps": steps}), Path(tmp) / "run", progress=False)
    return res.images_per_second


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--order", default="tutorial,eager,compiled,resgan",
                    help="which loops to measure, in this order (comma-separated)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = min(os.cpu_count() or 1, 10)
    files = sorted(str(p) for p in MEDNIST.rglob("*.jpg"))
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}\ndata: {len(files)} MedNIST 64x64 images, "
          f"batch 300, {args.steps} steps after {args.warmup} warm-up")
    rows = {}

    def record(name, value):
        # printed and saved as soon as measured: a run stopped by a time limit keeps what it has
        rows[name] = value
        print(f"{name:55s} {value:10.2f}  ({time.strftime('%H:%M:%S')})", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), **rows}, indent=1))

    order = args.order.split(",")
    with tempfile.TemporaryDirectory() as cache:
        for part in order:
            if part == "tutorial":
                record("MONAI tutorial loop, dcgan (images/s)", tutorial_loop(files, args.steps, args.warmup, device,
                                                                               workers))
            elif part == "eager":
                record("medsynth dcgan, eager (images/s)",
                       medsynth_loop("dcgan", args.steps, args.warmup, 300, cache, compile=False))
            elif part == "compiled":
                record("medsynth dcgan, compiled (images/s)",
                       medsynth_loop("dcgan", args.steps, args.warmup, 300, cache, compile=True))
            elif part == "resgan":
                record("medsynth resgan 64x64, batch 64, compiled (images/s)",
                       medsynth_loop("resgan", args.steps, args.warmup, 64, cache, compile=True))
            else:
                ap.error(f"--order: unknown part {part!r}")
    ref = rows.get("MONAI tutorial loop, dcgan (images/s)")
    for kind in ("eager", "compiled"):
        ours = rows.get(f"medsynth dcgan, {kind} (images/s)")
        if ref and ours:
            record(f"ratio {kind} / tutorial", ours / ref)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
