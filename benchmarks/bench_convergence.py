"""Longer training on a GPU: the default ``resgan`` (configs/xray-cxr64.yaml) for a wall-clock budget,
then ``dcgan`` (configs/xray-cxr64-dcgan.yaml) for the same number of steps (same images seen), with
snapshots along the way, FID-scored afterwards on any machine.

Two halves, because the GPU machine this ran on could not hold the FID Inception weights:

    # on the GPU machine: train both, write slim runs (generator weights only) as tar files into OUT
    python benchmarks/bench_convergence.py train --budget-s 240 --snapshot-every 1000 --out OUT
    # anywhere: unpack into runs/convergence/ and score every snapshot with medsynth evaluate
    python benchmarks/bench_convergence.py evaluate OUT --json convergence.json

``train`` stops the resgan run with SIGINT when the budget is spent (what Ctrl-C does: a checkpoint at
the current step, exit 130). Snapshots keep the (EMA) generator and the run's metadata; the last one
in float32, earlier resgan ones in float16 (halves their size; noted in the output). ``evaluate``
scores each snapshot with ``medsynth evaluate CKPT -n 2000`` (fast FID, equal to pytorch-fid's within
1e-6 relative) and the last of each model also with ``--fid-method sqrtm``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from bench_data import machine_info  # CPU model, cores, RAM, library versions and the date
from bench_quality import CONFIGS, REPO, medsynth  # the same two configs and subprocess runner

DROP = ("discriminator", "opt_g", "opt_d", "rng", "batches")
PART_BYTES = 15 * 2**20          # the GPU machine returns files of at most 16 MiB
RUN_FILES = ("config.yaml", "split.json", "train_log.jsonl", "metrics.jsonl")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _train(name: str, run: Path, steps: int, every: int, budget_s: float | None, hard_s: float) -> dict:
    cmd = [sys.executable, "-m", "medsynth", "train", "--config", str(CONFIGS[name]), "--run-dir", str(run),
           "--overwrite", f"train.steps={steps}", f"train.checkpoint_every={every}", f"train.grid_every={every}",
           "train.keep_last=1000"]
    log(" ".join(cmd[2:]))
    t = time.perf_counter()
    out = open(run.parent / f"{name}.log", "w")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    limit = budget_s if budget_s is not None else hard_s
    try:
        p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        log(f"{name}: {limit:.0f} s spent, SIGINT (saves a checkpoint at the current step)")
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    out.close()
    wall = time.perf_counter() - t
    text = (run.parent / f"{name}.log").read_text(errors="replace")
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    if p.returncode not in (0, 130) or not ckpts:
        raise SystemExit(f"{name} training failed (exit {p.returncode}):\n{text[-4000:]}")
    lines = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    step = int(re.search(r"step_(\d+)\.pt", ckpts[-1].name).group(1))
    head = re.search(r"training \S+ on (\S+) \(([^)]*)\)", text)
    return {"steps": step, "images_seen": step * 64, "wall_s": wall, "images_per_s": lines[-1]["images_per_s"],
            "exit": p.returncode, "device": head.group(1) if head else None,
            "mode": head.group(2) if head else None, "snapshots": [int(re.search(r"(\d+)", c.name).group(1))
                                                                   for c in ckpts]}


def _slim(src: Path, dst: Path, half: bool) -> None:
    state = torch.load(src, map_location="cpu", weights_only=True)
    for k in DROP:
        state.pop(k, None)
    if state.get("ema") is not None:
        state.pop("generator", None)
        key = "ema"
    else:
        key = "generator"
    if half:
        state[key] = {k: v.half() if v.is_floating_point() else v for k, v in state[key].items()}
        state["snapshot_float16"] = True
    torch.save(state, dst)


def _pack(name: str, run: Path, out: Path, max_snapshots: int) -> list[str]:
    """The run's small files and its slim snapshots, in tar parts of at most PART_BYTES."""
    slim = run.parent / f"{name}-slim"
    shutil.rmtree(slim, ignore_errors=True)
    (slim / "checkpoints").mkdir(parents=True)
    for f in RUN_FILES:
        if (run / f).is_file():
            shutil.copy(run / f, slim / f)
    grids = sorted((run / "samples").glob("grid_*.png"))
    if grids:
        (slim / "samples").mkdir()
        shutil.copy(grids[-1], slim / "samples" / grids[-1].name)
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    if len(ckpts) > max_snapshots:      # evenly spaced, the last always kept
        keep = {round(i * (len(ckpts) - 1) / (max_snapshots - 1)) for i in range(max_snapshots)}
        ckpts = [c for i, c in enumerate(ckpts) if i in keep]
    for c in ckpts:
        _slim(c, slim / "checkpoints" / c.name, half=(name == "resgan" and c != ckpts[-1]))
    files = sorted(p for p in slim.rglob("*") if p.is_file())
    parts, cur, size = [], [], 0
    for f in files:
        n = f.stat().st_size
        if cur and size + n > PART_BYTES:
            parts.append(cur)
            cur, size = [], 0
        cur.append(f)
        size += n
    parts.append(cur)
    names = []
    for i, part in enumerate(parts):
        tar = out / f"{name}-{i}.tar"
        with tarfile.open(tar, "w") as tf:
            for f in part:
                tf.add(f, arcname=f"{name}/{f.relative_to(slim)}")
        names.append(tar.name)
    return names


def cmd_train(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    result = {"machine": {**machine_info(), "gpu": gpu}, "budget_s": args.budget_s, "models": {}}
    t0 = time.perf_counter()
    res = _train("resgan", work / "resgan", 10**7, args.snapshot_every, args.budget_s, args.budget_s)
    result["models"]["resgan"] = res
    log(f"resgan: {res['steps']} steps in {res['wall_s']:.0f} s ({res['images_per_s']:.0f} img/s)")
    (out / "convergence-train.json").write_text(json.dumps(result, indent=1))
    left = args.total_s - (time.perf_counter() - t0) - 40
    dc = _train("dcgan", work / "dcgan", res["steps"], args.snapshot_every, None, max(30.0, left))
    result["models"]["dcgan"] = dc
    log(f"dcgan: {dc['steps']} steps in {dc['wall_s']:.0f} s ({dc['images_per_s']:.0f} img/s)")
    (out / "convergence-train.json").write_text(json.dumps(result, indent=1))
    for name in ("resgan", "dcgan"):
        result["models"][name]["parts"] = _pack(name, work / name, out, args.max_snapshots)
    (out / "convergence-train.json").write_text(json.dumps(result, indent=1))
    (out / "train.log").write_text("".join(f"==== {name}\n" + (work / f"{name}.log").read_text(errors="replace")
                                           for name in ("resgan", "dcgan")))
    log(f"packed: {sorted(p.name for p in out.iterdir())}")
    return 0


def _evaluate(target: Path, n: int, method: str) -> dict:
    return json.loads(medsynth("evaluate", target, "-n", n, "--fid-method", method, "--json").stdout)


def cmd_evaluate(args) -> int:
    src = Path(args.src)
    dest = Path(args.runs)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for tar in sorted(src.glob("*.tar")):
        with tarfile.open(tar) as tf:
            tf.extractall(dest, filter="data")
    result = json.loads((src / "convergence-train.json").read_text())
    result["evaluated_on"] = machine_info()   # FID runs here, usually not on the training machine
    for name in ("resgan", "dcgan"):
        run = dest / name
        ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
        for c in ckpts:           # float16 snapshots back to float32 (the generator's own dtype)
            state = torch.load(c, map_location="cpu", weights_only=True)
            if state.pop("snapshot_float16", False):
                key = "ema" if state.get("ema") is not None else "generator"
                state[key] = {k: v.float() if v.is_floating_point() else v for k, v in state[key].items()}
                torch.save(state, c)
        curve = []
        for c in ckpts:
            t = time.perf_counter()
            ev = _evaluate(c, args.samples, "fast")
            row = {"step": ev["step"], "images_seen": ev["step"] * 64, "fid": ev["fid"], "fid_ci": ev.get("fid_ci"),
                   "precision": ev.get("precision"), "recall": ev.get("recall"), "fid_ratio": ev.get("fid_ratio"),
                   "float16_snapshot": c != ckpts[-1] and name == "resgan"}
            curve.append(row)
            log(f"{name} step {row['step']}: FID {row['fid']:.1f} ({time.perf_counter() - t:.0f} s)")
        result["models"][name]["curve"] = curve
        last = _evaluate(ckpts[-1], args.samples, "sqrtm")
        result["models"][name]["final"] = {k: last.get(k) for k in ("step", "fid", "fid_ci", "kid_mean", "kid_std",
                                                                    "precision", "recall", "density", "coverage",
                                                                    "fid_ratio", "n_real", "n_synthetic")}
        log(f"{name} final (sqrtm): FID {last['fid']:.1f}")
    m = result["models"]
    result["fid_ratio_resgan_to_dcgan"] = m["resgan"]["final"]["fid"] / m["dcgan"]["final"]["fid"]
    result["target_met"] = result["fid_ratio_resgan_to_dcgan"] <= 0.5
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train both models (on the GPU machine)")
    t.add_argument("--budget-s", type=float, default=240, help="wall-clock seconds for the resgan run")
    t.add_argument("--total-s", type=float, default=480, help="wall-clock seconds for everything")
    t.add_argument("--snapshot-every", type=int, default=1000)
    t.add_argument("--max-snapshots", type=int, default=5, help="per model, evenly spaced (the GPU machine returns "
                   "at most 8 files)")
    t.add_argument("--out", required=True)
    t.add_argument("--work", default=str(REPO / "runs" / "convergence-work"))
    e = sub.add_parser("evaluate", help="unpack and FID-score the snapshots")
    e.add_argument("src")
    e.add_argument("--runs", default=str(REPO / "runs" / "convergence"))
    e.add_argument("--samples", type=int, default=2000)
    e.add_argument("--json")
    args = ap.parse_args(argv)
    return cmd_train(args) if args.cmd == "train" else cmd_evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
