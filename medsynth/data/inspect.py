"""``medsynth data inspect``: what is in a dataset folder, what will be skipped, how it splits."""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial

from medsynth.data.pool import map_records
from medsynth.data.sources import Discovery, require_usable, split_by_patient
from medsynth.data.transforms import read_record


def _describe(record, volume_index):
    """Decode one record fully (so truncated pixel data is caught) and keep only its description."""
    from medsynth.config import DataConfig

    array, meta = read_record(record, DataConfig(path="", volume_index=volume_index))
    return {"shape": list(array.shape), "spacing": list(meta.spacing) if meta.spacing else None,
            "modality": meta.modality, "format": meta.format, "bit_depth": meta.bit_depth,
            "notes": list(meta.notes)}


def _fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape)


def _fmt_spacing(sp) -> str:
    return "x".join(f"{s:.3g}" for s in sp) + " mm" if sp else "unknown"


def inspect_dataset(disc: Discovery, *, holdout_fraction: float = 0.2, split_seed: int = 0,
                    volume_index: int | None = None, workers: int = 0, progress: bool | None = None) -> dict:
    """Read every record of ``disc`` and summarise it; raises DataError when nothing is usable."""
    require_usable(disc)
    usable, skipped = [], list(disc.skipped)
    per_label: dict[str, dict] = defaultdict(lambda: {"records": 0, "patients": set(), "modality": Counter(),
                                                      "format": Counter(), "size": Counter(),
                                                      "spacing": Counter(), "kind": Counter()})
    notes: Counter = Counter()
    for record, info, reason in map_records(partial(_describe, volume_index=volume_index), disc.records,
                                            workers, desc="inspecting", progress=progress):
        if reason is not None:
            skipped.append((record.key.removeprefix("series:"), reason))
            continue
        usable.append(record)
        s = per_label[record.label if record.label is not None else "(none)"]
        s["records"] += 1
        s["patients"].add(record.patient_id)
        s["modality"][info["modality"] or "-"] += 1
        s["format"][info["format"]] += 1
        s["size"][_fmt_shape(info["shape"])] += 1
        s["spacing"][_fmt_spacing(info["spacing"])] += 1
        s["kind"][record.kind] += 1
        notes.update(info["notes"])
    disc_usable = Discovery(disc.root, disc.layout, usable, skipped, disc.ignored)
    require_usable(disc_usable)
    split = split_by_patient(usable, holdout_fraction, split_seed)
    by_key = {r.key: r for r in usable}
    reasons = Counter(reason for _, reason in skipped)
    return {
        "root": disc.root,
        "layout": disc.layout,
        "records": len(usable),
        "kinds": dict(Counter(r.kind for r in usable)),
        "labels": {name: {"records": s["records"], "patients": len(s["patients"]),
                          "modality": dict(s["modality"]), "format": dict(s["format"]),
                          "size": dict(s["size"]), "spacing": dict(s["spacing"]), "kind": dict(s["kind"])}
                   for name, s in sorted(per_label.items())},
        "patients": len({r.patient_id for r in usable}),
        "patient_id_source": dict(Counter(r.patient_source for r in usable)),
        "notes": dict(notes),
        "ignored_files": disc.ignored,
        "skipped": {"count": len(skipped), "by_reason": dict(reasons.most_common()),
                    "files": [{"path": p, "reason": r} for p, r in skipped]},
        "split": {"holdout_fraction": holdout_fraction, "seed": split_seed,
                  "train": {"records": len(split.train), "patients": len(split.train_patients)},
                  "holdout": {"records": len(split.holdout), "patients": len(split.holdout_patients)},
                  "holdout_labels": dict(Counter(by_key[k].label or "(none)" for k in split.holdout))},
    }


PATIENT_SOURCE_TEXT = {
    "manifest": "from the manifest", "dicom": "from DICOM PatientID", "filename": "from IXI-style file names",
    "pattern": "from data.patient_pattern", "file": "none found: one patient per file",
}


def _top(counter: dict, n: int = 2) -> str:
    items = sorted(counter.items(), key=lambda kv: -kv[1])
    text = ", ".join(k if len(items) == 1 else f"{k} ({v})" for k, v in items[:n])
    return text + (f", +{len(items) - n} more" if len(items) > n else "")


def render_text(report: dict) -> str:
    lines = [f"Dataset   {report['root']}",
             f"Layout    {report['layout']}",
             "Usable    " + ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in report["kinds"].items())]
    rows = [("label", "records", "patients", "modality", "size", "spacing")]
    for name, s in report["labels"].items():
        rows.append((name, str(s["records"]), str(s["patients"]), _top(s["modality"]), _top(s["size"]),
                     _top(s["spacing"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("")
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i in (0, 3, 4, 5) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    lines.append("")
    src = ", ".join(f"{PATIENT_SOURCE_TEXT.get(k, k)} ({v})" for k, v in report["patient_id_source"].items())
    lines.append(f"Patients  {report['patients']}  (IDs {src})")
    sp = report["split"]
    lines.append(f"Split     holdout {sp['holdout_fraction']:.0%} of patients, seed {sp['seed']}: "
                 f"train {sp['train']['records']} records / {sp['train']['patients']} patients, "
                 f"holdout {sp['holdout']['records']} / {sp['holdout']['patients']}")
    for note, n in report["notes"].items():
        lines.append(f"Note      {note}: {n}")
    sk = report["skipped"]
    if report["ignored_files"]:
        lines.append(f"Ignored   {report['ignored_files']} non-image or hidden file(s) (.csv, .txt, ...)")
    if sk["count"]:
        lines.append(f"Skipped   {sk['count']} file(s):")
        for reason, n in sk["by_reason"].items():
            example = next(f["path"] for f in sk["files"] if f["reason"] == reason)
            lines.append(f"  {n:>5}  {reason}   e.g. {example}")
    else:
        lines.append("Skipped   none")
    return "\n".join(lines)
