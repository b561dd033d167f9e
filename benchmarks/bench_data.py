"""Benchmark: medsynth's data preparation and loading against an idiomatic MONAI pipeline (issue #2).

Run by hand from the repository root::

    .venv/bin/python benchmarks/bench_data.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_data.py --quick    # subsets, for a sanity check
    .venv/bin/python benchmarks/bench_data.py --json bench.json

For every dataset, in one run, it measures items per second of

1. **medsynth cold**: ``prepare_dataset`` with an empty tensor cache (read + transform + write the
   memory-mapped cache) with the default worker count (one process per core, at most 8);
2. **medsynth cached**: ``prepare_dataset`` again (opens the cache; timed separately) and full epochs
   of shuffled batches of 64 through ``PreparedData.batch(idx, mapping)`` (intensity mapping applied,
   (B, 1, *size) tensors produced); as a diagnostic also ``batch(idx)`` without the mapping;
3. **MONAI cold**: building ``monai.data.CacheDataset(cache_rate=1.0, num_workers=<cores>)`` over
   the same files with MONAI transforms doing the same geometry and intensity mapping;
4. **MONAI cached**: epochs of ``monai.data.DataLoader(cache_ds, batch_size=64, shuffle=True)``
   with ``num_workers=0`` and with ``num_workers=<cores>`` (``persistent_workers=True``, so worker
   start-up is paid in the warm-up epoch only); the faster of the two (by mean epoch) is reported.

Cold passes run ``--repeats`` times (default 3), alternating medsynth and MONAI; the median is
reported. Cached epochs: one warm-up epoch per contender, then ``--repeats`` interleaved rounds in which
each contender runs at least one epoch and 0.5 s (``--epochs`` and ``MIN_TIMED_S`` set the totals);
the mean epoch is reported, with the median next to it (shared machines have heavy-tailed stalls).

Both cold passes start with the *source* files in the OS page cache (they are read once beforehand),
so neither pays for disk reads the other one does not. The medsynth tensor cache lives in a
temporary folder (``MEDSYNTH_CACHE_DIR``) that is emptied before every cold run and removed at the end.

Equivalence: after the runs, every item of medsynth's cache (through ``batch`` + the mapping) is
compared with MONAI's cached item for the same file (and slice); the maximum absolute difference is
printed. The MONAI side gets the intensity window medsynth fitted (window mode: the configured window;
percentile mode: the percentiles of the training split), as ``ScaleIntensityRanged(a_min, a_max,
-1, 1, clip=True)``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
BATCH = 64
MIN_TIMED_S = 1.5     # keep timing epochs (beyond --epochs) until this much time is measured
MAX_EPOCHS = 60


# --------------------------------------------------------------------------------------------
# Machine


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    import monai

    import medsynth

    return {
        "cpu": cpu, "cores": cores, "ram_gib": ram_gib,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
        "medsynth": getattr(medsynth, "__version__", "?"), "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# Datasets


@dataclass
class Case:
    name: str
    path: Path
    kind: str                 # "image" (2D files), "volume" (3d mode), "slices" (volumes in 2d mode)
    cfg_kwargs: dict
    limit_quick: int          # records kept with --quick
    unit: str                 # what one item is


def cases() -> list[Case]:
    from medsynth.config import IntensityConfig

    return [
        Case("mednist64 (2D JPEG 64x64)", SHARED / "mednist64", "image",
             {"mode": "2d", "image_size": [64, 64],
              "intensity": IntensityConfig(mode="window", window=[0.0, 255.0])},
             600, "image"),
        Case("IXI T1 3d (64^3 @ 3 mm)", SHARED / "ixi_t1", "volume",
             {"mode": "3d", "image_size": [64, 64, 64], "spacing": [3.0, 3.0, 3.0],
              "intensity": IntensityConfig(mode="percentile")},
             20, "volume"),
        Case("IXI T1 2d (axial slices 64x64)", SHARED / "ixi_t1", "slices",
             {"mode": "2d", "image_size": [64, 64], "slice_axis": "axial",
              "intensity": IntensityConfig(mode="percentile")},
             20, "slice"),
    ]


def subset(records: list, n: int | None) -> list:
    """Every k-th record, so a subset keeps all classes (records are sorted by path)."""
    if n is None or n >= len(records):
        return list(records)
    step = len(records) / n
    return [records[int(i * step)] for i in range(n)]


def warm_source_files(records) -> int:
    total = 0
    for r in records:
        for f in r.files:
            total += len(Path(f).read_bytes())
    return total


# --------------------------------------------------------------------------------------------
# MONAI peer


class AxialSlicesd:
    """Per-volume MONAI transform that emits one dict per kept axial slice (the 2d-mode geometry).

    Input: ``d["image"]`` a (1, X, Y, Z) MetaTensor already in RAS (after ``Orientationd``). Output: a
    list of dicts ``{"image": (1, H, W), "label", "slice"}``. It does what medsynth's 2d mode does with
    volumes, with the same MONAI array transforms: axial slice in the radiological convention
    (rows anterior->posterior, columns right->left), the empty-slice filter (foreground fraction of
    ``> min + 0.1 * (p99 - min)`` below ``min_foreground``), ``SpatialPad`` to square with the slice
    minimum, ``Resize`` (area when shrinking). ``Compose`` maps the following transforms over the list.
    """

    def __init__(self, size, slice_range=(0.0, 1.0), min_foreground=0.05):
        import math

        from monai.transforms import Resize

        self.size = tuple(size)
        self.slice_range = slice_range
        self.min_foreground = min_foreground
        self._floor, self._ceil = math.floor, math.ceil
        self._resize_area = Resize(self.size, mode="area")
        self._resize_lin = Resize(self.size, mode="bilinear")

    def __call__(self, d):
        from monai.transforms import SpatialPad

        vol = np.asarray(d["image"][0], dtype=np.float32)
        n = vol.shape[2]
        start = self._floor(self.slice_range[0] * n)
        stop = max(start + 1, self._ceil(self.slice_range[1] * n))
        lo = float(vol.min())
        threshold = lo + 0.1 * (float(np.percentile(vol, 99)) - lo)
        out = []
        for k in range(start, min(stop, n)):
            img = np.ascontiguousarray(vol[::-1, ::-1, k].T)
            if self.min_foreground > 0 and float((img > threshold).mean()) < self.min_foreground:
                continue
            x = img[None]
            h, w = img.shape
            if (h, w) != self.size:
                if h != w:
                    x = SpatialPad((max(h, w),) * 2, mode="constant", value=float(img.min()))(x)
                shrinking = all(t <= s for t, s in zip(self.size, x.shape[1:]))
                x = (self._resize_area if shrinking else self._resize_lin)(x)
            out.append({"image": torch.as_tensor(x), "label": d["label"], "slice": k})
        return out


def monai_transform(case: Case, cfg, mapping):
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        Resized,
        ResizeWithPadOrCropd,
        ScaleIntensityRanged,
        Spacingd,
    )

    scale = ScaleIntensityRanged("image", a_min=mapping.source_min, a_max=mapping.source_max,
                                 b_min=-1.0, b_max=1.0, clip=True)
    if case.kind == "image":
        # PILReader(reverse_indexing=False): rows x columns, as medsynth (and numpy) index images.
        # The MedNIST files are already 64x64, so Resized is a no-op for both pipelines (medsynth skips
        # it when the size matches, MONAI's Resize returns early on an equal size).
        return Compose([
            LoadImaged("image", reader="PILReader", reverse_indexing=False),
            EnsureChannelFirstd("image"),
            Resized("image", spatial_size=cfg.image_size, mode="area"),
            scale,
        ])
    if case.kind == "volume":
        # medsynth pads with the volume's minimum after resampling; IXI backgrounds are 0, so value=0
        # is the same thing (checked by the equivalence test below).
        return Compose([
            LoadImaged("image", reader="NibabelReader"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=cfg.spacing, mode="bilinear"),
            ResizeWithPadOrCropd("image", spatial_size=cfg.image_size, mode="constant", value=0.0),
            scale,
        ])
    if case.kind == "slices":
        return Compose([
            LoadImaged("image", reader="NibabelReader"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            AxialSlicesd(cfg.image_size, cfg.slice_range, cfg.min_foreground),
            scale,
        ])
    raise ValueError(case.kind)


def monai_cold(case: Case, cfg, mapping, records, labels, workers: int):
    """Build the CacheDataset (its caching pass); for slices, flatten it into a dataset of slices."""
    from monai.data import CacheDataset, Dataset

    lab = {name: i for i, name in enumerate(labels)}
    data = [{"image": r.files[0], "label": lab.get(r.label, -1), "record": r.key} for r in records]
    transform = monai_transform(case, cfg, mapping)
    t0 = time.perf_counter()
    ds = CacheDataset(data=data, transform=transform, cache_rate=1.0, num_workers=workers, progress=False)
    if case.kind == "slices":
        flat = []
        for i, d in enumerate(data):
            for s in ds[i]:
                s["record"] = d["record"]
                flat.append(s)
        ds = Dataset(flat)
    seconds = time.perf_counter() - t0
    return ds, seconds


def monai_epoch_fn(ds, workers: int):
    """An epoch of ``DataLoader(ds, 64, shuffle=True)``; returns (epoch function, loader)."""
    from monai.data import DataLoader

    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)

    def epoch() -> None:
        n = 0
        for batch in loader:
            n += batch["image"].shape[0]
        assert n == len(ds), (n, len(ds))

    return epoch, loader


# --------------------------------------------------------------------------------------------
# medsynth


def medsynth_epoch_fn(prepared, mapping, seed: int = 0):
    """Shuffled batches of 64 through ``PreparedData.batch`` (with ``mapping``), as training draws them."""
    rng = np.random.default_rng(seed)
    n = len(prepared)

    def epoch() -> None:
        perm = rng.permutation(n)
        seen = 0
        for s in range(0, n, BATCH):
            b = prepared.batch(perm[s:s + BATCH], mapping)
            seen += b.shape[0]
        assert seen == n

    return epoch


def medsynth_resident_epoch_fn(resident, seed: int = 0):
    """Shuffled batches of 64 from the resident, already mapped tensor (``PreparedData.tensor``):
    what the training loop does when the training set fits in memory (it always does here)."""
    from medsynth.data.cache import ResidentBatches

    gen = torch.Generator().manual_seed(seed)

    def epoch() -> None:
        seen = 0
        for b, _ in ResidentBatches(resident, None, BATCH, gen, drop_last=False):
            seen += b.shape[0]
        assert seen == len(resident)

    return epoch


def time_rounds(contenders: dict, epochs: int, rounds: int) -> dict:
    """Interleaved timing: a warm-up epoch each, then ``rounds`` rounds in which every contender runs
    epochs until it has at least ``epochs / rounds`` of them and ``MIN_TIMED_S / rounds`` seconds.

    Interleaving spreads slow phases of a shared machine over all contenders instead of one.
    """
    out = {}
    for name, fn in contenders.items():
        t0 = time.perf_counter()
        fn()
        out[name] = {"warmup_s": time.perf_counter() - t0, "epochs_s": []}
    per_round = max(1, -(-epochs // rounds))
    for _ in range(rounds):
        for name, fn in contenders.items():
            times = []
            while len(times) < per_round or (sum(times) < MIN_TIMED_S / rounds
                                             and len(times) < MAX_EPOCHS // rounds):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name]["epochs_s"] += times
    for v in out.values():
        v["mean_s"] = float(np.mean(v["epochs_s"]))
        v["median_s"] = float(np.median(v["epochs_s"]))
        v["min_s"] = float(np.min(v["epochs_s"]))
        v["max_s"] = float(np.max(v["epochs_s"]))
    return out


def fit_mapping(prepared, records, cfg):
    from medsynth.data.sources import split_by_patient
    from medsynth.data.transforms import fit_intensity

    usable = {it["record"] for it in prepared.items}
    split = split_by_patient([r for r in records if r.key in usable], cfg.holdout_fraction, cfg.split_seed)
    return fit_intensity(cfg.intensity, prepared.images, prepared.indices(split.train))


# --------------------------------------------------------------------------------------------
# Equivalence


def compare(prepared, mapping, monai_ds, kind: str) -> dict:
    """Max / mean |medsynth - MONAI| over all items, matched by (record, slice)."""
    by_key = {}
    for j in range(len(monai_ds)):
        d = monai_ds[j]
        by_key[(d["record"], d.get("slice") if kind == "slices" else None)] = j
    ours = {(it["record"], it["slice"] if kind == "slices" else None): i for i, it in enumerate(prepared.items)}
    common = sorted(set(ours) & set(by_key))
    max_abs, sum_abs, n_vox, n_diff = 0.0, 0.0, 0, 0
    worst = None
    for s in range(0, len(common), BATCH):
        keys = common[s:s + BATCH]
        a = prepared.batch([ours[k] for k in keys], mapping)
        b = torch.stack([torch.as_tensor(monai_ds[by_key[k]]["image"]).as_subclass(torch.Tensor)
                         for k in keys]).float()
        if a.shape != b.shape:
            raise AssertionError(f"shape mismatch: medsynth {tuple(a.shape)} vs MONAI {tuple(b.shape)}")
        diff = (a - b).abs()
        per_item = diff.flatten(1).amax(1)
        m = float(per_item.max())
        if m > max_abs:
            max_abs, worst = m, keys[int(per_item.argmax())]
        sum_abs += float(diff.sum())
        n_vox += diff.numel()
        n_diff += int((per_item > 1e-5).sum())
    return {"items_compared": len(common), "only_medsynth": len(set(ours) - set(by_key)),
            "only_monai": len(set(by_key) - set(ours)), "max_abs_diff": max_abs,
            "mean_abs_diff": sum_abs / max(1, n_vox), "items_over_1e-5": n_diff,
            "worst_item": list(worst) if worst else None}


# --------------------------------------------------------------------------------------------
# One dataset


def run_case(case: Case, quick: bool, epochs: int, repeats: int, cache_root: Path, cores: int, log) -> dict:
    from medsynth.config import DataConfig
    from medsynth.data.cache import prepare_dataset
    from medsynth.data.pool import default_workers
    from medsynth.data.sources import discover

    cfg = DataConfig(path=str(case.path), **case.cfg_kwargs)
    t0 = time.perf_counter()
    disc = discover(cfg.path)
    t_discover = time.perf_counter() - t0
    disc.records = subset(disc.records, case.limit_quick if quick else None)
    n_records = len(disc.records)
    warm_source_files(disc.records)
    workers = default_workers(cfg.workers)
    log(f"\n== {case.name}: {n_records} files (discover {t_discover:.2f} s)")

    # cold passes, alternating medsynth / MONAI ``repeats`` times
    cold_ms, cold_monai, opens = [], [], []
    prepared = mapping = monai_ds = None
    t_fit = 0.0
    for rep in range(repeats):
        monai_ds = prepared = None
        gc.collect()
        shutil.rmtree(cache_root, ignore_errors=True)
        cache_root.mkdir(parents=True)
        t0 = time.perf_counter()
        prepared = prepare_dataset(disc, cfg, progress=False)
        cold_ms.append(time.perf_counter() - t0)
        assert not prepared.from_cache
        del prepared
        gc.collect()
        t0 = time.perf_counter()
        prepared = prepare_dataset(disc, cfg, progress=False)     # opens the entry just built
        opens.append(time.perf_counter() - t0)
        assert prepared.from_cache
        if mapping is None:   # MONAI's ScaleIntensityRanged gets the window medsynth fitted
            t0 = time.perf_counter()
            mapping = fit_mapping(prepared, disc.records, cfg)
            t_fit = time.perf_counter() - t0
        gc.collect()
        monai_ds, t = monai_cold(case, cfg, mapping, disc.records, disc.labels, cores)
        cold_monai.append(t)
        log(f"  cold pass {rep + 1}/{repeats}  : medsynth {cold_ms[-1]:.2f} s ({workers} worker processes), "
            f"MONAI {t:.2f} s (CacheDataset, {cores} threads); medsynth open {opens[-1] * 1000:.1f} ms")
    n_items = len(prepared)
    log(f"  items           : medsynth {n_items} {case.unit}s (skipped {len(prepared.skipped)} files), "
        f"MONAI {len(monai_ds)}; window [{mapping.source_min:g}, {mapping.source_max:g}] "
        f"(fit {t_fit * 1000:.0f} ms)")

    # cached epochs, interleaved
    loaders = {w: monai_epoch_fn(monai_ds, w) for w in sorted({0, cores})}
    t0 = time.perf_counter()
    resident = prepared.tensor(np.arange(len(prepared)), mapping)
    t_resident = time.perf_counter() - t0
    contenders = {"medsynth": medsynth_epoch_fn(prepared, mapping),
                  "medsynth_resident": medsynth_resident_epoch_fn(resident),
                  "medsynth_no_mapping": medsynth_epoch_fn(prepared, None)}
    contenders.update({f"monai_w{w}": fn for w, (fn, _) in loaders.items()})
    timing = time_rounds(contenders, epochs, repeats)
    del loaders
    gc.collect()
    for name, v in timing.items():
        log(f"  cached epoch    : {name:20s} mean {v['mean_s'] * 1000:8.1f} ms, median "
            f"{v['median_s'] * 1000:8.1f}, min {v['min_s'] * 1000:8.1f}, max {v['max_s'] * 1000:8.1f} "
            f"({len(v['epochs_s'])} epochs; warm-up {v['warmup_s'] * 1000:.1f} ms)")
    best_w = min((w for w in sorted({0, cores})), key=lambda w: timing[f"monai_w{w}"]["mean_s"])
    best = timing[f"monai_w{best_w}"]

    # equivalence
    t0 = time.perf_counter()
    check = compare(prepared, mapping, monai_ds, case.kind)
    log(f"  equivalence     : {check['items_compared']} items, max |diff| {check['max_abs_diff']:.3g}, "
        f"mean {check['mean_abs_diff']:.3g}, {check['items_over_1e-5']} items > 1e-5 "
        f"(only medsynth {check['only_medsynth']}, only MONAI {check['only_monai']}; "
        f"{time.perf_counter() - t0:.1f} s)")

    ms = timing["medsynth"]
    res = {
        "dataset": case.name, "path": str(case.path), "kind": case.kind, "unit": case.unit,
        "config": {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in case.cfg_kwargs.items()},
        "files": n_records, "items": n_items, "monai_items": len(monai_ds), "discover_s": t_discover,
        "medsynth_workers": workers, "monai_cache_threads": cores,
        "medsynth_cold_s": cold_ms, "monai_cold_s": cold_monai,
        "medsynth_cold_ips": n_items / float(np.median(cold_ms)),
        "monai_cold_ips": len(monai_ds) / float(np.median(cold_monai)),
        "medsynth_open_s": opens, "medsynth_open_median_s": float(np.median(opens)),
        "medsynth_fit_mapping_s": t_fit,
        "cached": timing, "monai_best_workers": best_w,
        "medsynth_cached_ips": n_items / ms["mean_s"], "monai_cached_ips": len(monai_ds) / best["mean_s"],
        "medsynth_cached_ips_median": n_items / ms["median_s"],
        "monai_cached_ips_median": len(monai_ds) / best["median_s"],
        "medsynth_no_mapping_ips": n_items / timing["medsynth_no_mapping"]["mean_s"],
        "medsynth_resident_load_s": t_resident,
        "medsynth_resident_ips": n_items / timing["medsynth_resident"]["mean_s"],
        "mapping": mapping.to_dict(), "equivalence": check,
    }
    res["ratio_cached"] = res["medsynth_cached_ips"] / res["monai_cached_ips"]
    res["ratio_cached_median"] = res["medsynth_cached_ips_median"] / res["monai_cached_ips_median"]
    res["ratio_cold"] = res["medsynth_cold_ips"] / res["monai_cold_ips"]
    res["ratio_resident"] = res["medsynth_resident_ips"] / res["monai_cached_ips"]
    del monai_ds, prepared, resident
    gc.collect()
    shutil.rmtree(cache_root, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------
# Output


def table(results: list[dict]) -> str:
    head = ["dataset", "items", "medsynth cold", "MONAI cold", "cold ratio", "medsynth open",
            "medsynth cached (memmap)", "MONAI cached", "cached ratio", "medsynth resident", "resident ratio",
            "max |diff|"]
    rows = []
    for r in results:
        rows.append([
            r["dataset"], f"{r['items']:,} {r['unit']}s",
            f"{r['medsynth_cold_ips']:,.0f}/s", f"{r['monai_cold_ips']:,.0f}/s", f"{r['ratio_cold']:.2f}x",
            f"{r['medsynth_open_median_s'] * 1000:.0f} ms",
            f"{r['medsynth_cached_ips']:,.0f}/s ({r['medsynth_cached_ips_median']:,.0f}/s)",
            f"{r['monai_cached_ips']:,.0f}/s ({r['monai_cached_ips_median']:,.0f}/s) w={r['monai_best_workers']}",
            f"{r['ratio_cached']:.2f}x ({r['ratio_cached_median']:.2f}x)",
            f"{r['medsynth_resident_ips']:,.0f}/s", f"{r['ratio_resident']:.2f}x",
            f"{r['equivalence']['max_abs_diff']:.2g}",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="subsets: 600 MedNIST images, 20 IXI volumes")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--epochs", type=int, default=3,
                    help="at least this many timed epochs after the warm-up epoch (default 3; more are "
                         f"timed until {MIN_TIMED_S:g} s is measured, at most {MAX_EPOCHS})")
    ap.add_argument("--repeats", type=int, default=None,
                    help="cold passes per pipeline, and rounds of interleaved cached epochs "
                         "(default 3, 1 with --quick)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads(N) before measuring (default: leave torch's default)")
    ap.add_argument("--only", choices=["mednist", "ixi3d", "ixi2d"], action="append",
                    help="run only these datasets (repeatable)")
    args = ap.parse_args(argv)
    # MONAI's deprecation notes and the missing (GPU-only) nvImageCodec plugin are noise here
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    repeats = args.repeats or (1 if args.quick else 3)

    for p in (SHARED / "mednist64", SHARED / "ixi_t1"):
        if not p.is_dir():
            print(f"missing dataset folder {p}", file=sys.stderr)
            return 2

    info = machine_info()
    log = partial(print, flush=True)
    log(f"machine : {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM")
    log(f"date    : {info['date']}")
    log(f"versions: python {info['python']}, torch {info['torch']}, monai {info['monai']}, "
        f"medsynth {info['medsynth']}, numpy {info['numpy']} (torch threads {info['torch_threads']})")
    log(f"mode    : {'quick (subsets)' if args.quick else 'full'}, batch {BATCH}, "
        f"{repeats} cold pass(es) per pipeline, >= {args.epochs} timed epochs (>= {MIN_TIMED_S:g} s) "
        f"after 1 warm-up, in {repeats} interleaved round(s)")

    names = {"mednist": 0, "ixi3d": 1, "ixi2d": 2}
    selected = cases()
    if args.only:
        selected = [selected[names[o]] for o in dict.fromkeys(args.only)]

    tmp = Path(tempfile.mkdtemp(prefix="medsynth-bench-"))
    old_env = os.environ.get("MEDSYNTH_CACHE_DIR")
    os.environ["MEDSYNTH_CACHE_DIR"] = str(tmp / "cache")
    results = []
    try:
        for case in selected:
            results.append(run_case(case, args.quick, args.epochs, repeats, tmp / "cache", info["cores"], log))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old_env is None:
            os.environ.pop("MEDSYNTH_CACHE_DIR", None)
        else:
            os.environ["MEDSYNTH_CACHE_DIR"] = old_env

    log("\nitems/s (IXI 2d counts slices). cold: median of the cold passes. cached: mean epoch (median "
        "epoch);\nratios are medsynth / MONAI; target: cached ratio >= 5x. w = DataLoader num_workers used")
    log(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "quick": args.quick, "batch_size": BATCH,
                                               "epochs": args.epochs, "repeats": repeats,
                                               "results": results}, indent=1))
        log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
