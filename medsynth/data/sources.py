"""Find a dataset's images, group DICOM series, attach labels and patient IDs, split by patient.

Layouts
-------
* ``class-folders``: every top-level folder is a label (MedNIST style); files may sit deeper.
* ``flat``: every image below the folder, no labels.
* ``manifest``: a CSV with columns ``path,label,patient_id[,split]``; paths relative to the CSV.
* ``auto`` (default): class folders when the top level holds folders and no image files, else flat.

Patient IDs, in order of precedence: ``data.patient_pattern`` (a regex on the relative path), the
manifest's ``patient_id``, DICOM PatientID, IXI-style file names (``IXI012-HH-1211_T1`` -> ``IXI012``),
and otherwise one patient per file (stated in ``data inspect`` so nobody mistakes it for real IDs).

Nothing here decodes pixels except to tell a DICOM series from a single image (headers only), and
nothing writes into the dataset folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medsynth.data.readers import UnreadableFile, detect_format, read_dicom_header

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SAMPLE_NAMES = {"mednist": "mednist", "ixi": "ixi"}
VOLUME_MODALITIES = {"MR", "CT", "PT", "NM"}
IXI_PATTERN = re.compile(r"^(IXI\d{3})-")
SPLITS = ("train", "holdout")


class DataError(ValueError):
    """The dataset as a whole cannot be used (empty, nothing readable, bad manifest...)."""


@dataclass(frozen=True)
class Record:
    """One training unit before preprocessing: a 2D image, a NIfTI volume or a DICOM series."""

    key: str                    # stable ID: path relative to the root (series: 'series:<first file>')
    files: tuple[str, ...]      # absolute paths; several for a DICOM series
    kind: str                   # 'image' | 'volume' | 'series'
    format: str                 # 'png' | 'jpeg' | 'dicom' | 'nifti'
    label: str | None
    patient_id: str
    patient_source: str         # 'pattern' | 'manifest' | 'dicom' | 'filename' | 'file'
    split: str | None = None    # fixed by the manifest, else None


@dataclass
class Discovery:
    root: str
    layout: str
    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (relative path, reason)
    ignored: int = 0            # hidden files and non-image files (.csv, .txt, ...)

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label is not None})

    def skip_counts(self) -> Counter:
        return Counter(reason for _, reason in self.skipped)


def resolve_data_path(path: str | os.PathLike) -> Path:
    """``sample:mednist`` / ``sample:ixi`` name the bundled sample; anything else is a folder."""
    text = str(path)
    if text.startswith("sample:"):
        name = text.split(":", 1)[1]
        if name not in SAMPLE_NAMES:
            raise DataError(f"unknown bundled sample {name!r}; choose one of: "
                            + ", ".join(f"sample:{n}" for n in SAMPLE_NAMES))
        return SAMPLES_DIR / SAMPLE_NAMES[name]
    return Path(text).expanduser()


# --------------------------------------------------------------------------------------------
# Discovery


def discover(path, *, manifest=None, layout: str = "auto", labels=None, patient_pattern=None) -> Discovery:
    """Scan ``path`` (or a manifest) into records; unreadable files become counted skips."""
    root = resolve_data_path(path)
    if manifest is None and layout == "manifest":
        raise DataError("layout 'manifest' needs a manifest file")
    if manifest is not None:
        return _discover_manifest(Path(manifest).expanduser(), labels, patient_pattern)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if root.is_file():
        raise DataError(f"{root}: is a file; give the folder that holds the images (or --manifest for a CSV)")
    files, ignored = _walk(root)
    if not files and not ignored:
        raise DataError(f"{root}: the folder is empty")
    if layout == "auto":
        top_files = [f for f in files if f.parent == root]
        top_dirs = {f.relative_to(root).parts[0] for f in files if f.parent != root}
        layout = "class-folders" if top_dirs and not top_files else "flat"
    entries = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        label = rel.split("/", 1)[0] if layout == "class-folders" else None
        entries.append((f, rel, label, None, None))
    disc = _group(root, layout, entries, patient_pattern)
    disc.ignored = ignored
    return _finish(disc, labels)


def _walk(root: Path) -> tuple[list[Path], int]:
    files, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.lower().endswith((".csv", ".txt", ".json", ".md", ".tsv", ".xml")):
                ignored += 1
                continue
            files.append(Path(dirpath) / name)
    return files, ignored


def _discover_manifest(manifest: Path, labels, patient_pattern) -> Discovery:
    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest file not found")
    base = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in reader.fieldnames or []]
            if "path" not in cols:
                raise DataError(f"{manifest}: manifest needs a 'path' column (columns: path,label,patient_id[,split]);"
                                f" found {cols or 'no header'}")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except UnicodeDecodeError:
        raise DataError(f"{manifest}: manifest is not UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"{manifest}: not a valid CSV file: {e}") from None
    if not rows:
        raise DataError(f"{manifest}: the manifest lists no files")
    entries, skipped = [], []
    for line_no, row in enumerate(rows, start=2):
        p = row.get("path", "")
        if not p:
            skipped.append((f"{manifest.name}:{line_no}", "manifest row without a path"))
            continue
        f = (base / p) if not os.path.isabs(p) else Path(p)
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{manifest}:{line_no}: split must be one of {', '.join(SPLITS)}; got {split!r}")
        if not f.is_file():
            skipped.append((p, "listed in the manifest but missing"))
            continue
        entries.append((f, p, row.get("label") or None, row.get("patient_id") or None, split))
    disc = _group(base, "manifest", entries, patient_pattern)
    disc.skipped = skipped + disc.skipped
    return _finish(disc, labels)


def _group(root: Path, layout: str, entries, patient_pattern) -> Discovery:
    """Classify files, drop duplicates, group DICOM series, and assign patient IDs."""
    pattern = re.compile(patient_pattern) if patient_pattern else None
    skipped: list[tuple[str, str]] = []
    dupes = _duplicates([(e[0], e[1]) for e in entries])
    singles = []
    series: dict[tuple, list] = defaultdict(list)
    for f, rel, label, pid, split in entries:
        if rel in dupes:
            skipped.append((rel, f"duplicate of {dupes[rel]}"))
            continue
        fmt = detect_format(f)
        if fmt is None:
            skipped.append((rel, "not an image file"))
            continue
        if fmt == "dicom":
            try:
                ds = read_dicom_header(f)
            except UnreadableFile as e:
                skipped.append((rel, e.reason))
                continue
            if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
                sop = getattr(getattr(ds, "SOPClassUID", None), "name", None) or "unknown SOP class"
                skipped.append((rel, f"DICOM without pixel data ({sop})"))
                continue
            dicom_pid = str(getattr(ds, "PatientID", "") or "").strip() or None
            modality = str(getattr(ds, "Modality", "") or "")
            uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            if modality in VOLUME_MODALITIES and uid and frames == 1 and "ImagePositionPatient" in ds:
                series[(uid, label, split)].append((f, rel, pid or dicom_pid, "manifest" if pid else "dicom"))
                continue
            singles.append((f, rel, "image", fmt, label, pid or dicom_pid, "manifest" if pid else "dicom", split))
            continue
        kind = "volume" if fmt == "nifti" else "image"
        singles.append((f, rel, kind, fmt, label, pid, "manifest", split))

    records = []
    for f, rel, kind, fmt, label, pid, src, split in singles:
        pid, src = _patient(rel, pid, src, pattern)
        records.append(Record(rel, (str(f),), kind, fmt, label, pid, src, split))
    for (_uid, label, split), members in series.items():
        members.sort(key=lambda m: m[1])
        if len(members) == 1:   # a lone slice is a 2D image
            f, rel, pid, src = members[0]
            pid, src = _patient(rel, pid, src, pattern)
            records.append(Record(rel, (str(f),), "image", "dicom", label, pid, src, split))
            continue
        _, rel0, pid, src = members[0]
        pid, src = _patient(rel0, pid, src, pattern)
        records.append(Record(f"series:{rel0}", tuple(str(m[0]) for m in members), "series", "dicom",
                              label, pid, src, split))
    records.sort(key=lambda r: r.key)
    return Discovery(str(root), layout, records, skipped)


def _patient(rel: str, pid: str | None, src: str, pattern) -> tuple[str, str]:
    if pattern is not None:
        m = pattern.search(rel)
        if m and m.group(1):
            return m.group(1), "pattern"
    if pid:
        return pid, src
    m = IXI_PATTERN.match(Path(rel).name)
    if m:
        return m.group(1), "filename"
    return rel, "file"


def _duplicates(files: list[tuple[Path, str]]) -> dict[str, str]:
    """Byte-identical files: {duplicate rel path: first rel path}. Only size collisions are hashed."""
    by_size: dict[int, list[tuple[Path, str]]] = defaultdict(list)
    for f, rel in files:
        try:
            by_size[f.stat().st_size].append((f, rel))
        except OSError:
            continue
    out: dict[str, str] = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        seen: dict[str, str] = {}
        for f, rel in sorted(group, key=lambda e: e[1]):
            try:
                digest = hashlib.sha1(f.read_bytes()).hexdigest()
            except OSError:
                continue
            if digest in seen:
                out[rel] = seen[digest]
            else:
                seen[digest] = rel
    return out


def _finish(disc: Discovery, labels) -> Discovery:
    if labels:
        have = set(disc.labels)
        missing = [lab for lab in labels if lab not in have]
        if missing:
            raise DataError(f"{disc.root}: label(s) {', '.join(missing)} not found; the dataset has "
                            f"{', '.join(sorted(have)) or 'no labels'}")
        disc.records = [r for r in disc.records if r.label in set(labels)]
    # the same patient must not carry two fixed splits
    fixed: dict[str, str] = {}
    for r in disc.records:
        if r.split is None:
            continue
        if fixed.setdefault(r.patient_id, r.split) != r.split:
            raise DataError(f"{disc.root}: patient {r.patient_id!r} is listed in both train and holdout "
                            "in the manifest's split column")
    return disc


def require_usable(disc: Discovery) -> None:
    """Raise DataError when nothing in the dataset can be used, with the skip reasons."""
    if disc.records:
        return
    if not disc.skipped:
        raise DataError(f"{disc.root}: no image files found (looked for PNG, JPEG, DICOM and NIfTI)")
    counts = ", ".join(f"{n} {reason}" for reason, n in disc.skip_counts().most_common(5))
    raise DataError(f"{disc.root}: no readable image: {len(disc.skipped)} file(s) skipped ({counts})")


# --------------------------------------------------------------------------------------------
# Patient-level split


@dataclass
class Split:
    seed: int
    holdout_fraction: float
    train: list[str]                # record keys
    holdout: list[str]
    train_patients: list[str]       # salted hashes of patient IDs, never the IDs themselves
    holdout_patients: list[str]

    def to_json(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, indent=1)

    def save(self, path) -> None:
        from medsynth.runs import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path) -> Split:
        try:
            raw = json.loads(Path(path).read_text())
            raw.pop("version", None)
            return cls(**raw)
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"{path}: not a valid split file: {e}") from None

    def subset(self, records: list[Record], which: str) -> list[Record]:
        keys = set(self.train if which == "train" else self.holdout)
        return [r for r in records if r.key in keys]


def patient_hash(pid: str) -> str:
    return hashlib.sha256(f"medsynth-patient:{pid}".encode()).hexdigest()[:16]


def split_by_patient(records: list[Record], holdout_fraction: float, seed: int = 0) -> Split:
    """Deterministic patient-level split, stratified by each patient's most common label.

    Patients are ordered by a seeded hash of their ID, so the split depends neither on file order
    nor on the machine, and adding patients leaves most existing assignments alone. Splits fixed by
    a manifest are honoured.
    """
    by_patient: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_patient[r.patient_id].append(r)
    fixed = {p: next((r.split for r in rs if r.split), None) for p, rs in by_patient.items()}
    strata: dict[str, list[str]] = defaultdict(list)
    for p, rs in by_patient.items():
        if fixed[p] is None:
            label = Counter(r.label or "" for r in rs).most_common(1)[0][0]
            strata[label].append(p)
    holdout_p = {p for p, s in fixed.items() if s == "holdout"}
    for _label, patients in sorted(strata.items()):
        order = sorted(patients, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
        k = round(holdout_fraction * len(order))
        if holdout_fraction > 0 and k == 0 and len(order) >= 2:
            k = 1
        holdout_p.update(order[:k])
    train = sorted(r.key for r in records if r.patient_id not in holdout_p)
    holdout = sorted(r.key for r in records if r.patient_id in holdout_p)
    return Split(seed, holdout_fraction, train, holdout,
                 sorted(patient_hash(p) for p in by_patient if p not in holdout_p),
                 sorted(patient_hash(p) for p in holdout_p))
