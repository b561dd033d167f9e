"""Sample quality: the default ``resgan`` against the ``dcgan`` baseline (MONAI's tutorial networks
and recipe) on MedNIST chest X-rays at 64x64, at the same number of training images seen.

Both are trained as a user trains them (``medsynth train --config configs/xray-cxr64*.yaml``, same
data, split, batch size 64 and number of steps, so the same images seen), then evaluated with
``medsynth evaluate RUN -n 2000 --fid-method sqrtm``: FID of 2,000 samples of the EMA generator
(resgan) or the generator (dcgan) against the run's training images, with pytorch-fid's exact
operations, plus KID, precision/recall and the FID ratio against the holdout.
Target (issue #3): FID(resgan) <= FID(dcgan) / 2.

    .venv/bin/python benchmarks/bench_quality.py --steps 1500 --json quality.json    # ~1 h on 2 CPU cores

``--resume`` continues the runs already under ``--out`` from their newest checkpoint to ``--steps``
(``medsynth train --resume RUN train.steps=N``) instead of training them afresh, so a longer round
costs only the extra steps. With the shipped configs nothing in training depends on the total number
of steps (constant learning rates: they set no ``train.lr_decay_start``; EMA decay and lazy R1 keyed to
the step), so the continued run sees the same images as a fresh one. It may not be bit-identical:
whether ``train.compile`` is on by default depends on the number of steps (float32 CPU runs of 2,000+),
and compiled kernels round differently.
``train_seconds`` then counts only the continuation.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"dcgan": REPO / "configs" / "xray-cxr64-dcgan.yaml", "resgan": REPO / "configs" / "xray-cxr64.yaml"}


def medsynth(*args) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "medsynth", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"medsynth {' '.join(map(str, args))} failed:\n{p.stderr[-3000:]}")
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-quality"), help="where the two runs are kept")
    ap.add_argument("--models", default="dcgan,resgan")
    ap.add_argument("--json")
    ap.add_argument("--tag", default="", help="suffix of the run folders (for variants); one that starts "
                                              "with a dash needs the = form: --tag=-t16")
    ap.add_argument("--resume", action="store_true",
                    help="continue the runs already under --out to --steps instead of retraining them")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="config overrides for every model, e.g. model.d_regularization=r1 (resgan only)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.resume and args.overrides:
        ap.error("--resume continues each run with its own config.yaml; config overrides cannot be combined with it")
    from bench_data import machine_info  # CPU model, cores, RAM, versions, date

    result = {"machine": machine_info(), "steps": args.steps, "samples": args.samples, "models": {}}
    for name in args.models.split(","):
        run = out / (name + args.tag)
        t = time.perf_counter()
        if args.resume:
            if not (run / "config.yaml").exists():
                raise SystemExit(f"--resume: {run} is not a run directory; train it first (without --resume)")
            p = medsynth("train", "--resume", run, f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}")
            resumed = int(re.search(r"resuming .* at step (\d+)", p.stderr).group(1))
        else:
            p = medsynth("train", "--config", CONFIGS[name], "--run-dir", run, "--overwrite",
                         f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}", *args.overrides)
            resumed = 0
        train_s = time.perf_counter() - t
        ips = float(re.search(r"\(([\d.]+) images/s\)", p.stdout).group(1))
        t = time.perf_counter()
        ev = json.loads(medsynth("evaluate", run, "-n", args.samples, "--fid-method", "sqrtm", "--json").stdout)
        row = {"config": str(CONFIGS[name].relative_to(REPO)), "overrides": args.overrides,
               "images_seen": args.steps * 64, "resumed_from_step": resumed,
               "runtime": ev.get("training_runtime"), "train_seconds": train_s,
               "images_per_s": ips, "evaluate_seconds": time.perf_counter() - t, "fid": ev["fid"],
               "fid_ci": ev.get("fid_ci"), "kid": [ev["kid_mean"], ev["kid_std"]], "precision": ev.get("precision"),
               "recall": ev.get("recall"), "density": ev.get("density"), "coverage": ev.get("coverage"),
               "fid_ratio": ev.get("fid_ratio"), "n_real": ev["n_real"], "n_synthetic": ev["n_synthetic"],
               "ms_ssim": ev.get("diversity")}
        result["models"][name] = row
        print(f"{name}: FID {row['fid']:.1f} after {row['images_seen']} images ({train_s / 60:.1f} min, "
              f"{ips:.0f} img/s on {row['runtime']})", file=sys.stderr, flush=True)
    m = result["models"]
    if "dcgan" in m and "resgan" in m:
        result["fid_ratio_resgan_to_dcgan"] = m["resgan"]["fid"] / m["dcgan"]["fid"]
        result["target_met"] = result["fid_ratio_resgan_to_dcgan"] <= 0.5
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
