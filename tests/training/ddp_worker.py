"""Started by torchrun in tests/training/test_distributed.py: one rank of ``medsynth train``.

Runs the real command line (``medsynth.cli.main``) and, when training returns, saves this rank's
generator, discriminator and EMA weights to ``OUT/rank<RANK>.pt`` so the test can compare ranks.

    torchrun --nproc_per_node=2 tests/training/ddp_worker.py OUT train --config ... key=value ...
"""

import os
import sys
from pathlib import Path

import torch

import medsynth.training.loop as loop
from medsynth.cli import main

out = Path(sys.argv[1])
real_train = loop.train


def train_and_save(*args, **kwargs):
    result = real_train(*args, **kwargs)
    torch.save({"generator": result.model.generator.state_dict(),
                "discriminator": result.model.discriminator.state_dict(),
                "ema": result.ema.state_dict(), "step": result.step},
               out / f"rank{os.environ.get('RANK', '0')}.pt")
    return result


loop.train = train_and_save
sys.exit(main(sys.argv[2:]))
