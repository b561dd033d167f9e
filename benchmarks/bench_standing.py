"""FID of a trained run's generator sampled with different batch-norm statistics.

The EMA generator has no running statistics of its own: during training they are the training
generator's, gathered under other weights. This compares, on one checkpoint, the FID (the training
loop's fast FID hook, ``train.fid_samples`` images against the run's training images) of

* the EMA generator with the statistics stored in the checkpoint (since 2026-12-04, the loop stores
  the standing statistics; older checkpoints hold the training generator's),
* the EMA generator with its standing statistics recomputed (:func:`medsynth.training.loop.standing_stats`),
* the EMA generator in training mode (each batch normalised with its own statistics),
* the raw training generator.

    .venv/bin/python benchmarks/bench_standing.py runs/bench-quality2/resgan --samples 2000   # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a resgan run directory")
    ap.add_argument("--samples", type=int, default=2000)
    args = ap.parse_args(argv)

    import torch

    from medsynth.config import resolve_config
    from medsynth.runs import prepare_run_data
    from medsynth.sampling import load_generator
    from medsynth.training.loop import FidHook, standing_stats

    run = Path(args.run)
    cfg = resolve_config(str(run / "config.yaml"), [f"train.fid_samples={args.samples}"])
    bundle = prepare_run_data(cfg, run, progress=False, write=False)
    ema = load_generator(run, device="cpu")
    n_classes = len(ema.labels) if ema.conditional else 0
    hook = FidHook(cfg, bundle, "cpu", n_classes)

    class TrainMode(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.g, self.latent_dim = g, g.latent_dim

        def forward(self, z, y=None):
            self.g.train()
            return self.g(z, y)

    standing = copy.deepcopy(ema.generator)
    standing_stats(standing, n_classes, cfg.train.batch_size, torch.device("cpu"), cfg.seed + 777)
    rows = {"ema, statistics as stored": hook(ema.generator),
            "ema, standing statistics recomputed": hook(standing),
            "ema, batch statistics (train mode)": hook(TrainMode(copy.deepcopy(ema.generator))),
            "training generator": hook(load_generator(run, device="cpu", use_ema=False).generator)}
    print(json.dumps({"run": str(run), "samples": args.samples, "fid": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
