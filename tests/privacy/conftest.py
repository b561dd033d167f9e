"""Real data for the privacy tests: MedNIST chest X-rays and IXI T1 volumes split into train, holdout and
novel sets, and planted copies of training images (exact, shifted, noisy, intensity-changed, blurred).

MedNIST's CXR class is used for the 2D tests because its 400 files are 400 different radiographs: its
CT and MR classes hold neighbouring slices of the same scans under separate file names and no patient
IDs, so any file-level split puts near-duplicates on both sides (see docs/privacy.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.privacy.neighbours import gaussian_smooth

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ALTERATIONS = ("exact", "shift", "noise", "intensity", "blur")


def load_cxr() -> torch.Tensor:
    from PIL import Image

    files = sorted((DATA / "mednist64" / "CXR").glob("*.jpg"))
    assert len(files) == 400, f"expected the 400 MedNIST CXR images in {DATA}"
    arr = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in files])
    return torch.from_numpy(arr / 127.5 - 1.0)[:, None]


def translate(x: torch.Tensor, shift) -> torch.Tensor:
    """Translate (N, C, *S) by whole pixels; the uncovered border repeats the edge (no wrap-around)."""
    nd = len(shift)
    r = max(abs(s) for s in shift)
    pad = [r] * (2 * nd)
    big = torch.nn.functional.pad(x, pad, mode="replicate")
    sl = [slice(None), slice(None)] + [slice(r - s, r - s + n) for s, n in zip(shift, x.shape[2:])]
    return big[tuple(sl)]


def plant(train: torch.Tensor, seed: int = 1, max_translation: int = 2) -> dict[str, torch.Tensor]:
    """Every training image altered five ways: exact copy; translated by 1..max_translation pixels along
    each axis (random signs); Gaussian noise sigma 0.03 (4 grey levels of 255); intensity changed (contrast 0.8,
    brightness +0.1 for half, gamma 0.8 for the other half); Gaussian blur sigma 0.7 pixels."""
    g = torch.Generator().manual_seed(seed)
    nd = train.ndim - 2
    shifted = []
    for i in range(train.shape[0]):
        mag = torch.randint(1, max_translation + 1, (nd,), generator=g)
        sign = torch.randint(0, 2, (nd,), generator=g) * 2 - 1
        shifted.append(translate(train[i:i + 1], [int(v) for v in mag * sign]))
    half = train.shape[0] // 2
    unit = (train + 1) / 2
    intensity = torch.cat([(train[:half] * 0.8 + 0.1), unit[half:].clamp(0, 1) ** 0.8 * 2 - 1])
    blur = gaussian_smooth(train[:, 0], 0.7)[:, None]
    return {"exact": train.clone(), "shift": torch.cat(shifted),
            "noise": (train + 0.03 * torch.randn(train.shape, generator=g)).clamp(-1, 1),
            "intensity": intensity.clamp(-1, 1), "blur": blur}


@pytest.fixture(scope="session")
def cxr_sets() -> dict[str, torch.Tensor]:
    """400 MedNIST chest X-rays: 150 train, 125 holdout, 125 novel (seeded permutation)."""
    x = load_cxr()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(x.shape[0]))
    return {"train": x[perm[:150]], "holdout": x[perm[150:275]], "novel": x[perm[275:]]}


@pytest.fixture(scope="session")
def ixi_sets(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The 150 IXI T1 volumes at 32^3 in [-1, 1], split by subject: 50 train, 60 holdout, 40 novel."""
    import os

    from medsynth.config import resolve_config
    from medsynth.data import build_dataset

    os.environ["MEDSYNTH_CACHE_DIR"] = str(tmp_path_factory.mktemp("ixi_cache"))
    cfg = resolve_config(None, {"data.path": str(DATA / "ixi_t1"), "data.mode": "3d", "data.image_size": [32, 32, 32],
                                "data.holdout_fraction": 0.0, "data.workers": 2})
    b = build_dataset(cfg.data)
    vols = b.prepared.tensor(np.arange(len(b.prepared)), b.mapping)
    subjects = [it["record"].split("-")[0] for it in b.prepared.items]
    assert vols.shape == (150, 1, 32, 32, 32) and len(set(subjects)) == 150
    perm = torch.from_numpy(np.random.default_rng(0).permutation(150))
    return {"train": vols[perm[:50]], "holdout": vols[perm[50:110]], "novel": vols[perm[110:]]}
