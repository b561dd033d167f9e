"""FID speed: ``medsynth evaluate`` against ``python -m pytorch_fid`` on the same folders, in one run.

Both run as the user runs them (a fresh process each, on CPU), on the same real MedNIST folders,
with the same Inception weights (medsynth's offline weights are written to a temporary torch hub
folder under pytorch-fid's file name and torchvision key names, so pytorch-fid finds them without
downloading). Three scenarios:

1. one-off: FID of two image folders (pytorch-fid: ``pytorch_fid A B``; medsynth: ``evaluate --real A
   --synthetic B``, which also computes KID, precision/recall/density/coverage and MS-SSIM);
2. one-off, FID only (medsynth's library: folders -> features -> FID), to separate the FID cost;
3. repeated evaluation against saved real statistics (both tools' ``--save-stats``, then the
   ``.npz`` in place of the real folder): the common case while comparing checkpoints.

Also: feature extraction images/s for both tools (pytorch-fid's ``get_activations`` on files vs
medsynth's ``FeatureExtractor.features_from_files``), and the FID values side by side.

    .venv/bin/python benchmarks/bench_metrics.py --json metrics.json     # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MEDNIST = REPO.parent / "shared" / "data" / "mednist64"
PY = sys.executable


def torchvision_named_weights(dest: Path) -> None:
    """medsynth's FID Inception weights under pytorch-fid's file name and torchvision key names."""
    from medsynth.metrics.features import _BLOCK_OF, _read_state, find_fid_weights

    found, _ = find_fid_weights(allow_download=False)
    state = found if isinstance(found, dict) else _read_state(Path(found))
    if any(k.startswith("blocks.") for k in state):
        inverse = {v: k for k, v in _BLOCK_OF.items()}
        state = {".".join([inverse[".".join(k.split(".")[:3])], *k.split(".")[3:]]): v for k, v in state.items()}
        state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, out.stdout


def pytorch_fid_value(stdout: str) -> float:
    return float(stdout.strip().split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", default="CXR", help="MedNIST class folder used as the real set")
    ap.add_argument("--synthetic", default="MRBreast", help="MedNIST class folder standing in for the synthetic set")
    ap.add_argument("--synthetic2", default="MRBrain", help="second 'synthetic' set for the repeated scenario")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    try:
        env = dict(os.environ, TORCH_HOME=str(tmp / "torch"), MEDSYNTH_CACHE_DIR=str(tmp / "cache"))
        os.environ.update(MEDSYNTH_CACHE_DIR=env["MEDSYNTH_CACHE_DIR"])
        torchvision_named_weights(tmp / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
        a, b, c = (str(MEDNIST / n) for n in (args.real, args.synthetic, args.synthetic2))
        n = {k: len(os.listdir(p)) for k, p in (("real", a), ("synthetic", b), ("synthetic2", c))}
        workers = str(min(os.cpu_count() or 1, 8))
        from bench_data import machine_info  # CPU model, cores, RAM, versions, date

        res: dict = {"machine": machine_info(), "images": n}

        # 1. one-off FID of two folders
        t_pf, out = timed([PY, "-m", "pytorch_fid", a, b, "--device", "cpu", "--num-workers", workers], env)
        res["pytorch_fid_two_folders"] = {"seconds": t_pf, "fid": pytorch_fid_value(out)}
        t_ms, out = timed([PY, "-m", "medsynth", "evaluate", "--real", a, "--synthetic", b, "--bootstrap", "0",
                           "--json"], env)
        res["medsynth_two_folders_all_metrics"] = {"seconds": t_ms, "fid": json.loads(out)["fid"]}
        t_ex, out = timed([PY, "-m", "medsynth", "evaluate", "--real", a, "--synthetic", b, "--bootstrap", "0",
                           "--fid-method", "sqrtm", "--json"], env)
        res["medsynth_two_folders_all_metrics_sqrtm"] = {"seconds": t_ex, "fid": json.loads(out)["fid"]}

        # 2. FID only, in process (features of both folders + the distance)
        from medsynth.metrics.evaluate import _features_by_shape, load_image_folder
        from medsynth.metrics.features import FeatureExtractor
        from medsynth.metrics.fid import fid_from_features_fast

        t = time.perf_counter()
        ext = FeatureExtractor(device="cpu", allow_download=False)
        fr = _features_by_shape(ext, load_image_folder(a)[0])
        fs = _features_by_shape(ext, load_image_folder(b)[0])
        t_feat = time.perf_counter() - t
        fid_fast = fid_from_features_fast(fr, fs)
        res["medsynth_fid_only_in_process"] = {"seconds": time.perf_counter() - t, "fid": fid_fast,
                                               "feature_seconds": t_feat}

        # feature extraction speed, files -> features, both tools, same files
        from pytorch_fid.fid_score import get_activations

        files = sorted(str(p) for p in Path(a).iterdir())
        t = time.perf_counter()
        get_activations(files, ext.model, batch_size=50, dims=2048, device="cpu", num_workers=int(workers))
        pf_ips = len(files) / (time.perf_counter() - t)
        t = time.perf_counter()
        ext.features_from_files(files)
        ms_ips = len(files) / (time.perf_counter() - t)
        res["feature_images_per_s"] = {"pytorch_fid": pf_ips, "medsynth": ms_ips, "ratio": ms_ips / pf_ips}

        # 3. repeated: saved real statistics, then two synthetic sets against them
        pf_npz, ms_npz = tmp / "pf_real.npz", tmp / "ms_real.npz"
        t_pf_save, _ = timed([PY, "-m", "pytorch_fid", "--save-stats", a, str(pf_npz), "--device", "cpu",
                              "--num-workers", workers], env)
        t_ms_save, _ = timed([PY, "-m", "medsynth", "evaluate", "--real", a, "--synthetic", b, "--save-stats",
                              str(ms_npz), "--bootstrap", "0", "--json"], env)
        rep = {"pytorch_fid_save_stats_seconds": t_pf_save, "medsynth_save_stats_seconds_incl_first_eval": t_ms_save}
        for name, path in (("synthetic", b), ("synthetic2", c)):
            t1, out1 = timed([PY, "-m", "pytorch_fid", str(pf_npz), path, "--device", "cpu", "--num-workers", workers],
                             env)
            t2, out2 = timed([PY, "-m", "medsynth", "evaluate", "--real", str(ms_npz), "--synthetic", path, "--json"],
                             env)
            rep[name] = {"pytorch_fid_seconds": t1, "pytorch_fid": pytorch_fid_value(out1),
                         "medsynth_seconds": t2, "medsynth": json.loads(out2)["fid"], "ratio": t1 / t2}
        res["against_saved_stats"] = rep
        res["ratios"] = {
            "two_folders_all_metrics": t_pf / t_ms,
            "two_folders_fid_only_in_process": t_pf / res["medsynth_fid_only_in_process"]["seconds"],
            "against_saved_stats": [rep[k]["ratio"] for k in ("synthetic", "synthetic2")],
        }
        res["fid_relative_difference"] = abs(res["medsynth_two_folders_all_metrics"]["fid"] - res[
            "pytorch_fid_two_folders"]["fid"]) / res["pytorch_fid_two_folders"]["fid"]
        print(json.dumps(res, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
