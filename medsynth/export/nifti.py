"""Synthetic images -> NIfTI-1 (nibabel), optionally in a BIDS-derivative layout.

The affine comes from the stored spacing and orientation (``medsynth.export.geometry``); qform and sform
carry it with code 1 (scanner) for MRI-derived geometry and 2 (aligned) for the nominal plane of 2D
images without one; ``xyzt_units`` is mm; data are integers in source units with scl_slope 1 and
scl_inter 0 (no hidden scaling) unless float32 output is asked for; ``descrip`` says SYNTHETIC.
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np

from medsynth import __version__

BIDS_VERSION = "1.9.0"


def descrip(model_name: str, seed: int) -> bytes:
    """The header's 80-byte description: marks the file synthetic."""
    text = f"SYNTHETIC medsynth {__version__} {model_name} seed {seed}".encode("ascii", "replace")
    return text[:80]


def encode_nifti(data: np.ndarray, affine: np.ndarray, *, code: int, model_name: str, seed: int) -> bytes:
    """A .nii.gz file's bytes (gzip with mtime 0, so the same image gives the same bytes)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    hdr.set_xyzt_units(xyz="mm", t="sec")
    hdr["descrip"] = descrip(model_name, seed)
    hdr.set_slope_inter(1.0, 0.0)       # stored values are the values: no hidden scaling
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return buf.getvalue()


def dataset_description(model_name: str, checkpoint_sha256: str, run_name: str) -> str:
    return json.dumps({
        "Name": f"medsynth synthetic images ({run_name})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "medsynth", "Version": __version__,
                         "Description": f"synthetic images from model {model_name}, checkpoint sha256 "
                                        f"{checkpoint_sha256}; no patient data"}],
        "SyntheticData": True,
    }, indent=2) + "\n"


def sidecar(*, model_name: str, checkpoint_sha256: str, seed: int, index: int, label: str, modality: str,
            spacing_nominal: bool) -> str:
    return json.dumps({"SyntheticData": True, "GeneratedBy": "medsynth", "Version": __version__,
                       "Model": model_name, "CheckpointSHA256": checkpoint_sha256, "Seed": seed, "Index": index,
                       "Label": label, "Modality": modality, "SpacingNominal": spacing_nominal}, indent=2) + "\n"


def bids_stem(seed: int, index: int, suffix: str) -> str:
    """``sub-s<seed>i<index>/anat/sub-s<seed>i<index>_desc-synthetic_<suffix>`` (BIDS labels are alphanumeric)."""
    sub = f"sub-s{seed}i{index:06d}"
    return f"{sub}/anat/{sub}_desc-synthetic_{suffix}"
