"""Distributed training throughput: 1 rank against N gloo ranks started by torchrun, in one run.

Weak scaling, as data-parallel training is used: every rank keeps the same per-rank batch and gets
one CPU thread (``OMP_NUM_THREADS=1``), so N ranks have N times the resources of one rank; ideal
linear scaling is N times the single-rank images/s. Reported: images/s of each configuration (all
ranks' images, timed by the training loop over the steps after its warm-up), and the scaling
efficiency ``ips(N ranks) / (N * ips(1 rank))``. For reference, one process using all N threads.

    .venv/bin/python benchmarks/bench_distributed.py --ranks 2 --steps 60 --json dist.json

The same command on a GPU machine (``--device cuda``) measures per-GPU throughput with NCCL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDNIST = REPO.parent / "shared" / "data" / "mednist64"


def config(tmp: Path, device: str, size: int, batch: int, steps: int) -> Path:
    text = f"""name: bench-dist
data: {{path: {MEDNIST}, labels: [CXR, MRBrain], image_size: [{size}, {size}], workers: 1,
        intensity: {{mode: window, window: [0, 255]}}, holdout_fraction: 0.0}}
model: {{name: resgan, conditional: true, latent_dim: 64, width: 16}}
train: {{batch_size: {batch}, steps: {steps}, checkpoint_every: {steps}, grid_every: {steps * 10},
         device: {device}, compile: false}}
"""
    path = tmp / "bench.yaml"
    path.write_text(text)
    return path


def run(cfg: Path, run_dir: Path, ranks: int, threads: int, launcher: bool) -> float:
    """Train and return the loop's images/s (all ranks) from its last log line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MEDSYNTH_CACHE_DIR": str(run_dir.parent / "cache")}
    env.pop("WORLD_SIZE", None)
    args = ["train", "--config", str(cfg), "--run-dir", str(run_dir), "--overwrite"]
    if launcher:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "medsynth", *args]
    else:
        cmd = [sys.executable, "-m", "medsynth", *args]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    m = re.search(r"trained \d+ steps \(([\d.]+) images/s\)", p.stdout)
    print(f"  {ranks} rank(s) x {threads} thread(s){' (torchrun)' if launcher else ''}: "
          f"{m.group(1)} images/s ({time.perf_counter() - t:.0f} s with start-up)", file=sys.stderr)
    return float(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32, help="per-rank batch")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = config(tmp, args.device, args.size, args.batch, args.steps)
        run(cfg, tmp / "warm", 1, 1, False)          # builds the tensor cache; not measured
        one, many, threads = [], [], []
        for _ in range(args.repeats):                 # interleaved, so slow phases of the machine hit all
            one.append(run(cfg, tmp / "one", 1, 1, False))
            many.append(run(cfg, tmp / "many", args.ranks, 1, True))
            threads.append(run(cfg, tmp / "threads", 1, args.ranks, False))
    best = {"1 rank": max(one), f"{args.ranks} ranks": max(many), f"1 process, {args.ranks} threads": max(threads)}
    from bench_data import machine_info  # CPU model, cores, RAM, versions, date

    result = {"machine": machine_info(), "settings": vars(args),
              "images_per_s": best, "runs": {"1 rank": one, f"{args.ranks} ranks": many, "threads": threads},
              "scaling_efficiency": best[f"{args.ranks} ranks"] / (args.ranks * best["1 rank"])}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
