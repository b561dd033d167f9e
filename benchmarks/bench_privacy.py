"""Nearest-neighbour search for the privacy check: medsynth's blocked k-NN against scikit-learn.

Question: how fast is ``medsynth.privacy.neighbours.knn`` (exact Euclidean k-NN: blocked float32
matrix products, then the candidates re-ranked in float64) compared with scikit-learn's
``NearestNeighbors(algorithm="brute")`` (float64), on 10,000 query and 10,000 reference 2048-d
features, as the Inception-space check needs? Target: >= 3x faster, the same neighbours.

The features are synthetic but shaped like Inception pool3 features (non-negative, low-rank
structure plus noise); the time of a brute-force search does not depend on the values. Both run in
the same process, interleaved, ``--repeats`` times; the median is reported. scikit-learn is needed
for this benchmark only (``pip install -e ".[bench]"``).

    .venv/bin/python benchmarks/bench_privacy.py                 # 10k x 10k x 2048, k=5
    .venv/bin/python benchmarks/bench_privacy.py --n 2000 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch


def features(n: int, d: int, rng) -> np.ndarray:
    basis = rng.gamma(1.0, 1.0, size=(64, d))
    w = rng.gamma(0.5, 1.0, size=(n, 64))
    return np.maximum(w @ basis / 16 + rng.normal(0, 0.3, size=(n, d)), 0).astype(np.float32)


def main() -> None:
    from sklearn.neighbors import NearestNeighbors

    from medsynth.privacy.neighbours import knn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="query and reference rows (default 10000)")
    ap.add_argument("--dims", type=int, default=2048)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="device for medsynth (default cpu; cuda where present)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    ref, query = features(args.n, args.dims, rng), features(args.n, args.dims, rng)
    qt, rt = torch.from_numpy(query), torch.from_numpy(ref)
    ours, theirs = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        d_m, i_m = knn(qt, rt, args.k, device=args.device)
        exhaustive = knn.last_exhaustive
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute").fit(ref.astype(np.float64))
        d_s, i_s = nn.kneighbors(query.astype(np.float64))
        theirs.append(time.perf_counter() - t0)
    same = float((i_m.numpy() == i_s).mean())
    same_first = float((i_m.numpy()[:, 0] == i_s[:, 0]).mean())
    max_diff = float(np.abs(d_m.numpy() - d_s).max())
    result = {"n_query": args.n, "n_ref": args.n, "dims": args.dims, "k": args.k, "device": args.device,
              "medsynth_s": statistics.median(ours), "sklearn_s": statistics.median(theirs),
              "speedup": statistics.median(theirs) / statistics.median(ours),
              "same_neighbours": same, "same_nearest": same_first, "exhaustive_queries": exhaustive,
              "max_distance_difference": max_diff,
              "runs_medsynth": ours, "runs_sklearn": theirs, "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    import sklearn

    result["sklearn"] = sklearn.__version__
    print(f"k-NN {args.n} x {args.n}, {args.dims}-d, k={args.k}: medsynth {result['medsynth_s']:.2f} s "
          f"({args.device}), scikit-learn brute {result['sklearn_s']:.2f} s -> {result['speedup']:.1f}x; "
          f"same neighbours {same:.4%} (nearest {same_first:.4%}), max |distance difference| {max_diff:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
