"""``medsynth export``: synthetic images + provenance -> DICOM / NIfTI / PNG files and a manifest.

:func:`export_run` takes a run directory and either generates ``n`` new samples (into ``OUT/samples/``,
16-bit PNGs or .npy volumes as ``medsynth generate`` writes them, then privacy-checked with
``medsynth.privacy.check_run``) or reads samples already generated (``from_samples``). Only samples the
privacy gate passes are exported (``medsynth.export.gate``), unless ``skip_privacy_check``.

Modality (DICOM IOD; recorded in the manifest for every format) is decided per label, in this order:

1. ``modality=`` / ``--modality DX|MR|SC`` (``--secondary-capture`` is ``SC``) for every image;
2. a 3D run, or a 2D run trained on slices of volumes (the checkpoint records their plane): ``MR``
   (volumes are read from NIfTI or DICOM MR/CT series; only the MR IOD is written - use ``--modality SC``
   for CT-derived runs);
3. a 2D label naming another modality as a word part (``MR``/``MRI``, ``CT``, e.g. MedNIST's ``MRBrain``,
   ``HeadCT``): ``SC`` with Modality MR or CT, because a JPEG slice has no geometry an MR image needs;
4. any other 2D image (``CXR``, ``Hand``, unlabelled): ``DX``.

Files are written under temporary names and renamed. ``OUT/.export-incomplete`` exists while an export
runs; a folder holding it (an interrupted export) is cleared and re-exported without ``--overwrite``.
``--overwrite`` first moves the previous export aside (to the hidden sibling ``.OUT.previous-export``) and
deletes it only once the new export is complete; a failed or interrupted export puts it back, and so does
the next export into the same folder when the process was killed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth import __version__
from medsynth.export.gate import FAILED, PASSED, PrivacyGateError, apply_gate, sha256_bytes
from medsynth.export.manifest import write_file as _write
from medsynth.runs import put_back, remove_path

__all__ = ["ExportError", "PrivacyGateError", "export_run", "decide_modality", "FORMATS", "KINDS"]

FORMATS = ("dicom", "nifti", "png")
KINDS = ("DX", "MR", "SC")
INCOMPLETE = ".export-incomplete"
_EXPORT_MARKERS = ("manifest.csv", "provenance.json", INCOMPLETE)
MIN_WINDOW_UNITS = 64      # integer output needs at least this many source units across the window


class ExportError(ValueError):
    """Bad input to an export (options, run, samples folder, output folder); the CLI exits 2."""


@dataclass
class Sample:
    name: str            # file name in the samples folder
    path: Path
    index: int
    seed: int
    label: str
    checkpoint_sha256: str


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# modality and geometry


def decide_modality(state: dict, label: str, override: str | None = None) -> tuple[str, str]:
    """(IOD kind DX/MR/SC, DICOM Modality value) for images of ``label``; the rule is in the module doc."""
    if override:
        if override not in KINDS:
            raise ExportError(f"--modality must be one of {', '.join(KINDS)}, got {override!r}")
        if override == "SC":
            return "SC", _named_modality(label) or "OT"
        if override == "DX" and state["geometry"]["mode"] == "3d":
            raise ExportError("--modality DX is for 2D images; this run generates 3D volumes (use MR or SC)")
        return override, override
    geo = state["geometry"]
    if geo["mode"] == "3d" or geo.get("slice_iop"):
        return "MR", "MR"
    named = _named_modality(label)
    if named:
        return "SC", named
    return "DX", "DX"


def _named_modality(label: str) -> str | None:
    """MR or CT when the label names it as a word part: MRBrain, BreastMRI, HeadCT, ct_chest; else None."""
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z]+|[a-z]+|\d+", label or "")
    upper = {p.upper() for p in parts}
    if upper & {"MR", "MRI"}:
        return "MR"
    if "CT" in upper:
        return "CT"
    return None


def _plane_geometry(state: dict, kind: str, shape):
    """2D: (PlaneGeometry, spacing_nominal, orientation_nominal)."""
    from medsynth.export.dicom import NOMINAL_SPACING_MM
    from medsynth.export.geometry import AXIAL_IOP, CORONAL_IOP, PlaneGeometry

    geo = state["geometry"]
    spacing = geo.get("spacing")
    nominal_spacing = not spacing or len(spacing) != 2
    sp = (NOMINAL_SPACING_MM, NOMINAL_SPACING_MM) if nominal_spacing else (float(spacing[0]), float(spacing[1]))
    iop = geo.get("slice_iop")
    nominal_orientation = iop is None
    if iop is None:
        iop = AXIAL_IOP if kind == "MR" else CORONAL_IOP
    return PlaneGeometry(int(shape[0]), int(shape[1]), sp, tuple(float(v) for v in iop), NOMINAL_SPACING_MM), \
        nominal_spacing, nominal_orientation


def _volume_spacing(state: dict):
    from medsynth.export.dicom import NOMINAL_SPACING_MM

    spacing = state["geometry"].get("spacing")
    if not spacing or len(spacing) != 3:
        return (NOMINAL_SPACING_MM,) * 3, True
    return tuple(float(v) for v in spacing), False


def stored_values(images_m1p1: np.ndarray, mapping, signed_ok: bool) -> tuple[np.ndarray, bool]:
    """[-1, 1] -> rounded source units as uint16 (or int16 when the window goes below 0); (array, signed)."""
    lo, hi = mapping.source_min, mapping.source_max
    if hi - lo < MIN_WINDOW_UNITS:
        raise ExportError(f"the run's intensity window [{lo:.4g}, {hi:.4g}] spans fewer than {MIN_WINDOW_UNITS} "
                          "source units: integer DICOM/NIfTI values would flatten the image (use "
                          "--format nifti --float, or --format png)")
    values = np.rint(mapping.inverse(images_m1p1.astype(np.float64)))
    if np.floor(lo) >= 0:
        if np.ceil(hi) > 65535:
            raise ExportError(f"the run's intensity window [{lo:.4g}, {hi:.4g}] does not fit 16-bit pixels")
        return values.astype(np.uint16), False
    if not signed_ok:
        raise ExportError(f"the run's intensity window [{lo:.4g}, {hi:.4g}] goes below 0, which DX pixels cannot "
                          "hold (RescaleIntercept must be 0); use --secondary-capture or --modality MR")
    if np.floor(lo) < -32768 or np.ceil(hi) > 32767:
        raise ExportError(f"the run's intensity window [{lo:.4g}, {hi:.4g}] does not fit signed 16-bit pixels")
    return values.astype(np.int16), True


# --------------------------------------------------------------------------------------------
# output folder and samples


def _aside(out: Path) -> Path:
    """Where ``--overwrite`` keeps the previous export until the new one is complete."""
    out = out.resolve()
    return out.parent / f".{out.name}.previous-export"


def _complete(out: Path) -> bool:
    return (out / "provenance.json").is_file() and not (out / INCOMPLETE).exists()


def _recover(out: Path) -> None:
    """A previous export left aside by an --overwrite that was killed: put it back unless the new export
    finished (then the aside is only waiting to be deleted)."""
    aside = _aside(out)
    if not aside.is_dir():
        return
    if out.is_dir() and _complete(out):
        shutil.rmtree(aside)
        return
    _log(f"{out}: an earlier --overwrite export did not finish; putting the previous export back")
    put_back(aside, out)


@contextmanager
def _replacing(out: Path, aside: Path | None):
    """The export into ``out`` runs in this block. ``aside``: the previous export, moved there by
    :func:`_prepare_out`. If the block fails or is interrupted, the new, partial export goes and the previous
    one comes back; if it completes, the previous one is deleted."""
    try:
        yield
    except BaseException:
        if aside is not None and aside.is_dir():
            put_back(aside, out)
            _log(f"{out}: the export did not finish; the previous export is back in place")
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _prepare_out(out: Path, overwrite: bool, protect: list[Path]) -> Path | None:
    """Check ``out`` and make it an empty folder holding the in-progress marker. Returns where a previous
    export replaced by ``--overwrite`` now is (for :func:`_replacing`), or None when nothing was kept."""
    out_r = out.resolve()
    for p in protect:
        p = p.resolve()
        if out_r == p or p.is_relative_to(out_r):
            raise ExportError(f"--out {out} would overwrite {p}; choose another output folder")
    _recover(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    aside = None
    if out.is_dir() and any(out.iterdir()):
        looks_like_export = any((out / m).exists() for m in _EXPORT_MARKERS)
        if (out / INCOMPLETE).exists():
            _log(f"{out}: clearing an interrupted export")
        elif not overwrite:
            raise ExportError(f"output folder {out} is not empty; pass --overwrite to replace a previous export "
                              "there, or choose another --out")
        elif not looks_like_export:
            raise ExportError(f"output folder {out} is not empty and holds no medsynth export (no manifest.csv "
                              "or provenance.json); --overwrite only replaces a previous export")
        elif Path.cwd().resolve().is_relative_to(out_r):   # renaming it would move our working folder too
            _log(f"{out}: cannot move the previous export aside (it holds the working folder); replacing it in "
                 "place")
        else:
            try:
                out.rename(_aside(out))
                aside = _aside(out)
            except OSError as e:      # e.g. a mount point, or a parent folder we may not write to
                _log(f"{out}: cannot move the previous export aside ({e.strerror}); replacing it in place")
        if aside is None:
            for child in out.iterdir():
                remove_path(child)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("medsynth export in progress; re-run the export to redo it\n")
    return aside


def read_samples(samples_dir: Path) -> list[Sample]:
    """The samples listed in a ``medsynth generate`` folder's manifest.csv."""
    from medsynth.export.manifest import read_manifest

    man = samples_dir / "manifest.csv"
    if not samples_dir.is_dir():
        raise ExportError(f"--from-samples {samples_dir}: no such folder")
    if not man.is_file():
        raise ExportError(f"{samples_dir}: no manifest.csv; expected a folder written by 'medsynth generate'")
    rows = read_manifest(man)
    need = {"file", "index", "seed", "label", "checkpoint_sha256"}
    if not rows or not need <= set(rows[0]):
        raise ExportError(f"{man}: expected columns {', '.join(sorted(need))} and at least one row")
    out = []
    for r in rows:
        path = samples_dir / r["file"]
        if Path(r["file"]).name != r["file"] or not path.is_file():
            raise ExportError(f"{man}: lists {r['file']!r}, which is not a file in {samples_dir}")
        try:
            out.append(Sample(r["file"], path, int(r["index"]), int(r["seed"]), r["label"], r["checkpoint_sha256"]))
        except ValueError:
            raise ExportError(f"{man}: row for {r['file']} has a non-integer index or seed") from None
    return out


def _checkpoint_for(run_dir: Path, sha: str):
    """The checkpoint in RUN/checkpoints whose SHA-256 is ``sha``."""
    from medsynth.training.checkpoint import file_sha256

    folder = run_dir / "checkpoints"
    for p in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        if file_sha256(p) == sha:
            return p
    raise ExportError(f"the samples were generated by a checkpoint with sha256 {sha[:16]}..., which is not in "
                      f"{folder}; export them with the run that made them")


# --------------------------------------------------------------------------------------------
# the export


def _fine_tuned_from(state: dict) -> dict | None:
    """The checkpoint a fine-tuned model started from (``medsynth train --init-from``): its SHA-256, step and
    data fingerprint, so that a reader of the export knows the model saw other data first; None for a
    model trained from random weights. The source's label names and path are not copied."""
    src = state.get("init_from")
    if not src:
        return None
    return {"checkpoint_sha256": src.get("sha256"), "training_step": src.get("step"),
            "data_fingerprint": src.get("data_fingerprint")}


def export_run(run_dir, fmt: str, *, n: int | None = None, from_samples=None, out=None, overwrite: bool = False,
               skip_privacy_check: bool = False, modality: str | None = None, secondary_capture: bool = False,
               bids: bool = False, bids_suffix: str | None = None, bits: int = 16, seed: int = 0,
               label: str | None = None, deterministic_uids: bool = False, nifti_float: bool = False,
               batch_size: int = 64) -> dict:
    """Export a run's synthetic images; returns the summary (also in OUT/provenance.json)."""
    from medsynth.sampling import load_generator, read_sample, write_samples
    from medsynth.training.checkpoint import CheckpointError

    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if (n is None) == (from_samples is None):
        raise ExportError("give either -n N (generate new samples) or --from-samples DIR, not both or neither")
    if n is not None and n < 1:
        raise ExportError(f"-n must be at least 1, got {n}")
    if bits not in (8, 16):
        raise ExportError(f"--bits must be 8 or 16, got {bits}")
    if bits != 16 and fmt != "png":
        raise ExportError("--bits applies to --format png only")
    if (bids or bids_suffix) and fmt != "nifti":
        raise ExportError("--bids applies to --format nifti only")
    if nifti_float and fmt != "nifti":
        raise ExportError("--float applies to --format nifti only")
    if secondary_capture:
        if modality and modality != "SC":
            raise ExportError(f"--secondary-capture and --modality {modality} contradict each other")
        modality = "SC"
    if modality and modality not in KINDS:
        raise ExportError(f"--modality must be one of {', '.join(KINDS)}, got {modality!r}")
    if bids_suffix is not None and not re.fullmatch(r"[A-Za-z0-9]+", bids_suffix):
        raise ExportError(f"--bids-suffix must be alphanumeric, got {bids_suffix!r}")
    if not (run_dir / "checkpoints").is_dir():
        raise ExportError(f"{run_dir}: not a run directory with checkpoints/ (train one with 'medsynth train')")

    samples_dir = Path(from_samples) if from_samples is not None else None
    samples = read_samples(samples_dir) if samples_dir is not None else None
    try:
        if samples is not None:
            shas = {s.checkpoint_sha256 for s in samples}
            if len(shas) != 1:
                raise ExportError(f"{samples_dir}: samples from {len(shas)} different checkpoints; "
                                  "export one at a time")
            loaded = load_generator(_checkpoint_for(run_dir, shas.pop()), device="cpu")
        else:
            loaded = load_generator(run_dir, device="cpu")
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    volumes = len(loaded.image_shape) == 4
    if fmt == "png" and volumes:
        raise ExportError("PNG export is for 2D images; this run generates 3D volumes (use --format dicom or nifti)")

    if samples is None:     # a mistyped --label is refused before anything in --out is touched
        try:
            loaded.label_indices(n, label)
        except ValueError as e:
            raise ExportError(f"--label: {e}") from None

    out = Path(out) if out is not None else run_dir / "export"
    protect = [run_dir / "checkpoints", *([samples_dir] if samples_dir is not None else [])]
    aside = _prepare_out(out, overwrite, protect)
    with _replacing(out, aside):
        state = loaded.state
        t0 = time.perf_counter()

        # samples: generate (and privacy-check) or read
        if samples is None:
            samples_dir = out / "samples"
            _log(f"generating {n} samples (seed {seed}) into {samples_dir}")
            try:
                write_samples(loaded, samples_dir, n, labels=label, seed=seed, batch_size=batch_size)
            except ValueError as e:
                raise ExportError(str(e)) from None
            samples = read_samples(samples_dir)
            if not skip_privacy_check:
                _run_privacy_check(run_dir, samples_dir)
        digests = {s.name: sha256_bytes(s.path.read_bytes()) for s in samples}
        gate = apply_gate(run_dir, samples_dir, digests, skip_privacy_check)
        chosen = [s for s in samples if s.name in set(gate.export)]
        if gate.left_out:
            _log(f"privacy: {len(gate.left_out)} flagged sample(s) left out")
        if skip_privacy_check:
            c = gate.counts()
            _log(f"privacy check skipped: exporting {len(chosen)} sample(s) ({c[PASSED]} passed, {c[FAILED]} failed, "
                 f"{c['unchecked']} unchecked)")

        writer = _Writer(loaded, state, fmt, out, modality=modality, bids=bids, bids_suffix=bids_suffix, bits=bits,
                         deterministic_uids=deterministic_uids, nifti_float=nifti_float)
        rows = []
        for s in chosen:
            try:
                image = read_sample(s.path)
            except (OSError, ValueError) as e:
                raise ExportError(f"{s.path}: not readable as a medsynth sample ({e})") from None
            want = tuple(loaded.image_shape[1:])
            if image.shape != want:
                raise ExportError(f"{s.path}: shape {image.shape}, but the run generates {want}")
            for row in writer.write(s, image):
                row.update({"sample_file": s.name, "sample_sha256": digests[s.name], "privacy": gate.status[s.name]})
                rows.append(row)
        if fmt == "nifti" and bids:
            from medsynth.export.nifti import dataset_description

            _write(out / "dataset_description.json",
                   dataset_description(state["model_name"], loaded.checkpoint_sha256, run_dir.name).encode())

        from medsynth.export.manifest import metrics_summary, write_manifest, write_provenance

        seconds = time.perf_counter() - t0
        provenance = {
            "schema": "medsynth-export/1", "medsynth_version": __version__,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_dir": str(run_dir.resolve()), "checkpoint": str(loaded.checkpoint),
            "checkpoint_sha256": loaded.checkpoint_sha256, "model_name": state.get("model_name"),
            "training_step": state.get("step"), "data_fingerprint": state.get("data_fingerprint"),
            "fine_tuned_from": _fine_tuned_from(state), "jpeg_output": state.get("jpeg_output"),
            "format": fmt, "files": len(rows), "samples": len(chosen), "samples_dir": str(samples_dir.resolve()),
            "options": {"n": n, "from_samples": str(from_samples) if from_samples is not None else None, "seed": seed,
                        "label": label, "modality": modality, "bids": bids, "bids_suffix": bids_suffix, "bits": bits,
                        "deterministic_uids": deterministic_uids, "float": nifti_float,
                        "skip_privacy_check": skip_privacy_check},
            "modality": writer.modalities, "geometry": writer.geometry_record(),
            "intensity": {**loaded.mapping.to_dict(), "stored": writer.stored_note()},
            "privacy": {**gate.to_dict(), "per_file": {r["file"]: r["privacy"] for r in rows}},
            "metrics": metrics_summary(run_dir), "seconds": round(seconds, 3),
        }
        write_manifest(out / "manifest.csv", rows)
        write_provenance(out / "provenance.json", provenance)
        (out / INCOMPLETE).unlink()
        return {"out": str(out), "format": fmt, "files": len(rows), "samples": len(chosen),
                "left_out_failed": len(gate.left_out), "privacy": gate.to_dict(), "modality": writer.modalities,
                "manifest": str(out / "manifest.csv"), "provenance": str(out / "provenance.json"),
                "seconds": round(seconds, 3)}


def _run_privacy_check(run_dir: Path, samples_dir: Path) -> None:
    try:
        from medsynth.privacy import PrivacyError, check_run
    except ImportError as e:
        raise PrivacyGateError(f"the privacy check is not available in this installation (medsynth.privacy "
                               f"cannot be imported: {e}); pass --skip-privacy-check to export unchecked "
                               "samples (recorded in provenance.json)") from None
    _log(f"privacy: checking {samples_dir} against the run's training images")
    try:
        check_run(run_dir, samples_dir)
    except PrivacyError as e:
        raise PrivacyGateError(f"the privacy check could not run: {e}; pass --skip-privacy-check to export "
                               "unchecked samples") from None


class _Writer:
    """Writes one sample in the chosen format; keeps per-label DICOM encoders."""

    def __init__(self, loaded, state, fmt, out: Path, *, modality, bids, bids_suffix, bits, deterministic_uids,
                 nifti_float):
        self.loaded, self.state, self.fmt, self.out = loaded, state, fmt, out
        self.override, self.bids, self.bids_suffix, self.bits = modality, bids, bids_suffix, bits
        self.deterministic, self.nifti_float = deterministic_uids, nifti_float
        self.volumes = len(loaded.image_shape) == 4
        self.modalities: dict[str, str] = {}
        self._encoders: dict = {}
        self._geom: dict = {}
        self._signed = False

    # ---- bookkeeping
    def _kind(self, label: str) -> tuple[str, str]:
        kind, value = decide_modality(self.state, label, self.override)
        self.modalities[label or ""] = kind if kind != "SC" else f"SC ({value})"
        return kind, value

    def geometry_record(self) -> dict:
        return {"mode": self.state["geometry"]["mode"], "training": self.state["geometry"], **self._geom}

    def stored_note(self) -> str:
        if self.fmt == "png":
            return f"linear map of the window to 0..{2 ** self.bits - 1}"
        if self.fmt == "nifti" and self.nifti_float:
            return "float32 source units"
        return f"{'int16' if self._signed else 'uint16'} rounded source units"

    def _values(self, image, kind):
        vals, signed = stored_values(image, self.loaded.mapping, signed_ok=kind != "DX")
        self._signed = self._signed or signed
        return vals, signed

    # ---- per sample
    def write(self, s: Sample, image: np.ndarray) -> list[dict]:
        kind, value = self._kind(s.label)
        stem = Path(s.name).stem
        base = {"format": self.fmt, "modality": kind if kind != "SC" else f"SC/{value}", "label": s.label,
                "seed": s.seed, "index": s.index, "checkpoint_sha256": self.loaded.checkpoint_sha256}
        if self.fmt == "png":
            from medsynth.export.png import encode_png

            name = f"{stem}.png"
            _write(self.out / name, encode_png(image, self.bits, model_name=self.state["model_name"],
                                               checkpoint_sha256=self.loaded.checkpoint_sha256, seed=s.seed))
            return [{**base, "file": name}]
        if self.fmt == "nifti":
            return [self._nifti(s, image, kind, stem, base)]
        return self._dicom(s, image, kind, value, stem, base)

    def _nifti(self, s, image, kind, stem, base) -> dict:
        from medsynth.export.geometry import volume_affine
        from medsynth.export.nifti import bids_stem, encode_nifti, sidecar

        if self.volumes:
            spacing, nominal = _volume_spacing(self.state)
            affine = volume_affine(image.shape, spacing)
            data_m1p1 = image
            code, nominal_orientation = 1, False
            self._geom.update(spacing=list(spacing), spacing_nominal=nominal)
        else:
            plane, nominal, nominal_orientation = _plane_geometry(self.state, kind, image.shape)
            affine = plane.affine_ras()
            data_m1p1 = image.T[:, :, None]
            code = 2 if nominal_orientation else 1
            self._geom.update(spacing=list(plane.spacing), spacing_nominal=nominal, orientation=list(plane.iop),
                              orientation_nominal=nominal_orientation)
        if self.nifti_float:
            data = self.loaded.mapping.inverse(data_m1p1.astype(np.float32)).astype(np.float32)
        else:
            vals, _ = self._values(data_m1p1, kind)
            data = vals.astype(np.int16) if vals.dtype == np.uint16 and int(vals.max(initial=0)) <= 32767 else vals
        blob = encode_nifti(data, affine, code=code, model_name=self.state["model_name"], seed=s.seed)
        if self.bids:
            suffix = self.bids_suffix or ("T1w" if kind == "MR" else kind.lower())
            rel = bids_stem(s.seed, s.index, suffix)
            name = rel + ".nii.gz"
            _write(self.out / (rel + ".json"), sidecar(
                model_name=self.state["model_name"], checkpoint_sha256=self.loaded.checkpoint_sha256, seed=s.seed,
                index=s.index, label=s.label, modality=kind, spacing_nominal=nominal).encode())
        else:
            name = f"{stem}.nii.gz"
        _write(self.out / name, blob)
        return {**base, "file": name}

    def _dicom(self, s, image, kind, value, stem, base) -> list[dict]:
        from medsynth.export.dicom import DicomEncoder, DicomItem, DicomSpec, make_uid, synthetic_identity
        from medsynth.export.geometry import volume_affine, volume_slices

        sha = self.loaded.checkpoint_sha256
        name, pid = synthetic_identity(sha, s.seed, s.index)

        def uid(role):
            return make_uid(self.deterministic, sha, s.seed, s.index, role)

        study, series, frame = uid("study"), uid("series"), uid("frame")
        vals, signed = self._values(image, kind)
        m = self.loaded.mapping
        window = ((m.source_min + m.source_max) / 2, m.source_max - m.source_min)
        if self.volumes:
            spacing, nominal = _volume_spacing(self.state)
            pixels, positions, plane = volume_slices(vals, volume_affine(vals.shape, spacing))
            self._geom.update(spacing=list(spacing), spacing_nominal=nominal, dicom_orientation=list(plane.iop))
            items = [(k, pixels[k], tuple(float(v) for v in positions[k])) for k in range(len(pixels))]
            thickness, acquisition = plane.thickness, "3D"
        else:
            plane, nominal, nominal_orientation = _plane_geometry(self.state, kind, vals.shape)
            self._geom.update(spacing=list(plane.spacing), spacing_nominal=nominal, orientation=list(plane.iop),
                              orientation_nominal=nominal_orientation)
            items = [(0, vals, tuple(float(v) for v in plane.position()))]
            thickness, acquisition = None, "2D"
        key = (kind, value, s.label, signed)
        normal = plane.normal
        rows = []
        for k, px, pos in items:
            item = DicomItem(pixels=px, patient_name=name, patient_id=pid, study_uid=study, series_uid=series,
                             instance_uid=uid(f"instance{k}"), frame_of_reference_uid=frame, seed=s.seed,
                             index=s.index, instance_number=k + 1, series_number=1, position=pos,
                             slice_location=float(np.dot(pos, normal)))
            if key not in self._encoders:
                spec = DicomSpec(kind=kind, rows=px.shape[0], columns=px.shape[1], pixel_spacing=plane.spacing,
                                 nominal_spacing=nominal, signed=signed, window=window,
                                 model_name=self.state["model_name"], checkpoint_sha256=sha, modality=value,
                                 orientation=plane.iop, slice_thickness=thickness, acquisition=acquisition,
                                 label=s.label, lossy_jpeg_ratio=(self.state.get("jpeg_output") or {}).get("ratio"))
                self._encoders[key] = DicomEncoder(spec, item)
            rel = f"{stem}/slice_{k:04d}.dcm" if self.volumes else f"{stem}.dcm"
            _write(self.out / rel, self._encoders[key].encode(item))
            rows.append({**base, "file": rel, "patient_id": pid, "series_uid": series})
        return rows


def export_summary_text(summary: dict) -> str:
    lines = [f"exported {summary['files']} {summary['format']} file(s) from {summary['samples']} sample(s) "
             f"into {summary['out']} in {summary['seconds']:.1f} s"]
    mods = ", ".join(f"{k or '(unlabelled)'}: {v}" for k, v in summary["modality"].items())
    if mods:
        lines.append(f"  modality: {mods}")
    p = summary["privacy"]
    if p["skip_privacy_check"]:
        c = p["counts"]
        lines.append(f"  privacy check SKIPPED (--skip-privacy-check): {c['passed']} passed, {c['failed']} failed, "
                     f"{c['unchecked']} unchecked; recorded in provenance.json and manifest.csv")
    else:
        lines.append(f"  privacy: verdict {p['verdict']}; {p['counts']['passed']} passed"
                     + (f", {summary['left_out_failed']} flagged sample(s) left out" if summary["left_out_failed"]
                        else ""))
    lines.append(f"  wrote {summary['manifest']} and {summary['provenance']}")
    return "\n".join(lines)


def _json_default(o):   # pragma: no cover - numpy scalars in summaries
    return o.item() if hasattr(o, "item") else str(o)


def dumps(summary: dict) -> str:
    return json.dumps(summary, default=_json_default)
