"""How low can FID go on a small dataset? FID between disjoint random sets of real images.

FID is biased upwards for finite sample sizes, and the bias is linear in 1/N1 + 1/N2 (Chong & Forsyth,
"Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020). With 320 training
images this bias is large, so a generator's FID must be read against the FID a perfect sampler of the
data distribution would get. This script pools the config's training and holdout images, draws disjoint
random subsets of several sizes, computes FID between them (pytorch-fid's operations,
``medsynth.metrics.fid.fid_from_features``), fits FID = a + c * (1/N1 + 1/N2), and predicts the FID of
``--samples`` perfect samples against the training set.

    .venv/bin/python benchmarks/bench_fid_floor.py --json floor.json   # ~3 min on 2 cores (CXR, 400 images)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SIZES = [(80, 320), (200, 200), (100, 300), (80, 80), (160, 240), (40, 360)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/xray-cxr64.yaml")
    ap.add_argument("--draws", type=int, default=5, help="random draws per pair of sizes (default 5)")
    ap.add_argument("--samples", type=int, default=2000,
                    help="sample count to predict the floor for, against the training images (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import numpy as np
    from bench_data import machine_info  # the same machine description as the other benchmarks

    from medsynth.config import resolve_config
    from medsynth.data import build_dataset
    from medsynth.metrics.features import FeatureExtractor
    from medsynth.metrics.fid import fid_from_features

    cfg = resolve_config(args.config, [])
    bundle = build_dataset(cfg.data, progress=False)
    ext = FeatureExtractor(device="cpu")
    train = ext.features(bundle.prepared.batch(bundle.train_indices, bundle.mapping))
    holdout = ext.features(bundle.prepared.batch(bundle.holdout_indices, bundle.mapping))
    pool = np.concatenate([train, holdout])
    n_train = len(train)
    too_big = [s for s in SIZES if sum(s) > len(pool)]
    if too_big:
        print(f"error: {args.config} has {len(pool)} images, fewer than the pairs {too_big} need",
              file=sys.stderr)
        return 2
    rows = [{"sets": "holdout vs train", "n1": len(holdout), "n2": n_train,
             "fid": fid_from_features(holdout, train)}]
    print(rows[0], flush=True)
    rng = np.random.default_rng(args.seed)
    for n1, n2 in SIZES:
        values = []
        for _ in range(args.draws):
            p = rng.permutation(len(pool))
            values.append(fid_from_features(pool[p[:n1]], pool[p[n1:n1 + n2]]))
        rows.append({"sets": "random disjoint", "n1": n1, "n2": n2,
                     "fid": float(np.mean(values)), "sd": float(np.std(values))})
        print(rows[-1], flush=True)
    x = np.array([1 / r["n1"] + 1 / r["n2"] for r in rows[1:]])
    y = np.array([r["fid"] for r in rows[1:]])
    slope, intercept = np.polyfit(x, y, 1)
    out = {"machine": machine_info(),          # CPU model, cores, RAM, library versions and the date
           "config": args.config, "images": len(pool), "train": n_train, "draws": args.draws, "rows": rows,
           "fit": {"intercept": float(intercept), "slope": float(slope)},
           f"predicted_{args.samples}_vs_train": float(intercept + slope * (1 / args.samples + 1 / n_train))}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
