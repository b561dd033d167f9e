"""Short training runs of one config with one change at a time: fast FID and the discriminator's loss.

Each ``--variant "KEY=VALUE ..."`` trains the config with those overrides (plus ``train.steps``) into
``OUT/vN``, then samples ``--samples`` images from the EMA generator (the generator for dcgan) with a
fixed latent seed and computes FID against the run's training images with the training loop's FID
hook (:class:`medsynth.training.loop.FidHook`: fast FID, equal to pytorch-fid's within 1e-6 relative).
It also reports the discriminator's loss averaged over six stretches of the run (chance for the
non-saturating loss: 2 ln 2 = 1.39; for the hinge loss: 2.0), which says whether the discriminator is
learning at all. Used to find what holds the default model back (docs/benchmarks.md, issue #3).

    .venv/bin/python benchmarks/bench_ablation.py --steps 400 \\
        --variant "model.d_regularization=r1 model.r1_gamma=0.1" \\
        --variant "model.d_regularization=r1 model.r1_gamma=0.1 train.d_steps=4"     # ~8-12 min per variant

With few samples FID is biased upwards and noisy (500 samples: differences under ~40 are not
significant here); use it to rank settings, and ``bench_quality.py`` for the reported comparison.
Run one benchmark at a time: two training processes on two cores slow each other several-fold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "xray-cxr64.yaml"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--variant", action="append", default=[], metavar="'KEY=VALUE ...'",
                    help="overrides of one run (repeat for more runs; '' for the config as it is)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-ablation"))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not args.variant:
        ap.error("give at least one --variant")

    import numpy as np
    from bench_data import machine_info  # CPU model, cores, RAM, versions, date

    from medsynth.config import resolve_config
    from medsynth.runs import prepare_run_data
    from medsynth.training.loop import FidHook, train

    result = {"machine": machine_info(), "config": args.config,
              "steps": args.steps, "samples": args.samples, "runs": []}
    for i, variant in enumerate(args.variant):
        overrides = variant.split() + [f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}",
                                       f"train.fid_samples={args.samples}"]
        cfg = resolve_config(args.config, overrides)
        run = Path(args.out) / f"v{i}"
        t = time.perf_counter()
        res = train(cfg, run, overwrite=True, progress=False)
        train_s = time.perf_counter() - t
        # the training loop's FID hook, per variant: a variant may change the data, the split or conditioning
        bundle = prepare_run_data(cfg, run, progress=False, write=False)
        hook = FidHook(cfg, bundle, "cpu", len(bundle.labels) if cfg.model.conditional else 0)
        losses = [json.loads(line)["loss_d"] for line in (run / "train_log.jsonl").read_text().splitlines()]
        k = max(1, len(losses) // 6)
        stretches = [round(float(np.mean(losses[j:j + k])), 3) for j in range(0, len(losses), k)]
        fid = hook((res.ema if res.ema is not None else res.model.generator).float().cpu())
        row = {"variant": variant, "fid": fid, "loss_d_stretches": stretches, "train_seconds": train_s,
               "images_per_s": res.images_per_second}
        result["runs"].append(row)
        print(f"[{variant or 'config as is'}] FID {fid:.1f}, D loss {stretches}, {res.images_per_second:.0f} img/s",
              file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
