"""medsynth.augment on real MedNIST/IXI runs: SyntheticDataset (on the fly and from folders), mix, balance."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

import medsynth
from medsynth.augment import PrivacyCheckMissing, SyntheticDataset, balance, item_seed, mix
from medsynth.sampling import load_generator, read_sample, write_samples
from medsynth.training.loop import train
from tests.conftest import MEDNIST
from tests.training.conftest import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory, mednist_small):
    """A conditional resgan, 4 steps at 32x32, on 48 real CXR and 48 real MRBrain images."""
    out = tmp_path_factory.mktemp("runs") / "cond"
    train(tiny_config(mednist_small, **{"model.conditional": True}), out, progress=False)
    return out


@pytest.fixture(scope="module")
def real_items(run):
    """The run's real training split as medsynth's own pipeline gives it: {"image", "label"} dicts."""
    from medsynth.config import config_from_dict
    from medsynth.data import CachedImageDataset, build_dataset
    from medsynth.data.sources import Split

    state = load_generator(run, device="cpu").state
    b = build_dataset(config_from_dict(state["config"]).data, split=Split.load(run / "split.json"))
    return CachedImageDataset(b.prepared, b.train_indices, b.mapping)


def _img(item):
    return item["image"].as_tensor() if hasattr(item["image"], "as_tensor") else item["image"]


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# SyntheticDataset on the fly


def test_items_depend_only_on_seed_and_index(run):
    ds = SyntheticDataset(run, length=8, seed=3, device="cpu")
    forward = [_img(ds[i]) for i in range(8)]
    backward = [_img(ds[i]) for i in reversed(range(8))][::-1]
    longer = SyntheticDataset(run, length=20, seed=3, device="cpu")     # a fresh process-local generator
    for i in range(8):
        assert torch.equal(forward[i], backward[i])
        assert torch.equal(forward[i], _img(longer[i]))
    assert torch.equal(_img(ds[-1]), forward[7])
    other = SyntheticDataset(run, length=8, seed=4, device="cpu")
    assert not torch.equal(_img(other[0]), forward[0])
    assert len({item_seed(3, i) for i in range(1000)}) == 1000 and item_seed(3, 5) == item_seed(3, 5)
    with pytest.raises(IndexError):
        ds[8]


def test_layout_range_and_metadata_match_the_real_pipeline(run, real_items):
    from monai.data import MetaTensor

    ds = SyntheticDataset(run, length=4, seed=0, device="cpu")
    item, real = ds[1], real_items[0]
    assert set(item) == set(real) == {"image", "label"}
    assert isinstance(item["image"], MetaTensor) and item["image"].dtype == torch.float32
    assert item["image"].shape == real["image"].shape == (1, 32, 32)
    assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert item["label"] == 1 and ds.labels == ["CXR", "MRBrain"]          # balanced: i % 2
    meta = item["image"].meta
    assert meta["synthetic"] is True and meta["label_name"] == "MRBrain" and meta["index"] == 1
    assert meta["checkpoint_sha256"] == load_generator(run, device="cpu").checkpoint_sha256
    assert meta["spacing_nominal"] is True                                 # JPEGs carry no spacing
    assert torch.allclose(item["image"].pixdim, torch.ones(2, dtype=torch.float64))


def _collect(loader):
    images, labels, index = [], [], []
    for batch in loader:
        images.append(batch["image"].as_tensor())
        labels += batch["label"].tolist()
        index += batch["image"].meta["index"].tolist()
    return torch.cat(images), labels, index


def test_monai_dataloader_with_two_forked_workers_gives_the_same_items(run):
    from monai.data import DataLoader

    ds = SyntheticDataset(run, length=10, seed=7, labels="MRBrain")
    ref = torch.stack([_img(ds[i]) for i in range(10)])                   # generated in this process
    images, labels, index = _collect(DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="fork"))
    assert torch.equal(images, ref)
    assert labels == [1] * 10 and index == list(range(10))


@pytest.mark.slow
def test_spawned_workers_give_the_same_items(run):
    from monai.data import DataLoader

    ds = SyntheticDataset(run, length=6, seed=7)
    ref = torch.stack([_img(ds[i]) for i in range(6)])
    images, labels, _ = _collect(DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn"))
    assert torch.equal(images, ref) and labels == [0, 1, 0, 1, 0, 1]


def test_labels_asked_are_returned(run):
    fixed = SyntheticDataset(run, length=5, labels="MRBrain", device="cpu")
    assert [fixed[i]["label"] for i in range(5)] == [1] * 5
    assert fixed.label_index.tolist() == [1] * 5
    listed = SyntheticDataset(run, labels=["MRBrain", "CXR", 1, 0], device="cpu")
    assert len(listed) == 4 and [listed[i]["label"] for i in range(4)] == [1, 0, 1, 0]
    assert [listed[i]["image"].meta["label_name"] for i in range(2)] == ["MRBrain", "CXR"]
    balanced = SyntheticDataset(run, length=5, labels="balanced", device="cpu")
    assert balanced.label_index.tolist() == [0, 1, 0, 1, 0]
    # the label reaches the generator: same latent, other class, other image
    as_cxr = SyntheticDataset(run, length=5, labels="CXR", device="cpu")
    assert not torch.equal(_img(fixed[0]), _img(as_cxr[0]))
    with pytest.raises(ValueError, match="unknown label 'Hand'"):
        SyntheticDataset(run, length=2, labels="Hand")
    with pytest.raises(ValueError, match="length is required"):
        SyntheticDataset(run, labels="CXR")
    with pytest.raises(ValueError, match="got 3 labels for 2 images"):
        SyntheticDataset(run, length=2, labels=["CXR", "CXR", "CXR"])
    with pytest.raises(ValueError, match="intensity must be one of"):
        SyntheticDataset(run, length=2, intensity="hounsfield")
    with pytest.raises(ValueError, match="privacy_checked=True needs a folder"):
        SyntheticDataset(run, length=2, privacy_checked=True)


def test_source_intensity_is_the_mapping_inverse_of_model(run):
    model = SyntheticDataset(run, length=4, seed=1, device="cpu")
    source = SyntheticDataset(run, length=4, seed=1, intensity="source", device="cpu")
    mapping = model.mapping
    assert (mapping.source_min, mapping.source_max) == (0.0, 255.0)         # the run's window
    for i in range(4):
        m, s = _img(model[i]), _img(source[i])
        assert torch.allclose(s, mapping.inverse(m), atol=1e-4)
        assert float(s.min()) >= 0 and float(s.max()) <= 255 and float(s.max() - s.min()) > 1
        assert source[i]["image"].meta["intensity"] == "source"


def test_truncation_scales_the_latent(run):
    g = load_generator(run, device="cpu")
    ds = SyntheticDataset(g, length=2, seed=5, truncation=0.5, labels="CXR")
    z = torch.randn(1, g.generator.latent_dim, generator=torch.Generator().manual_seed(item_seed(5, 1))) * 0.5
    with torch.no_grad():
        want = g.generator(z, torch.tensor([0])).clamp(-1, 1)[0]
    assert torch.equal(_img(ds[1]), want)


def test_monai_transform_is_applied_after_synthesis(run):
    from monai.transforms import ScaleIntensityRanged

    plain = SyntheticDataset(run, length=3, seed=2, device="cpu")
    scaled = SyntheticDataset(run, length=3, seed=2, device="cpu",
                              transform=ScaleIntensityRanged(keys="image", a_min=-1, a_max=1, b_min=0, b_max=1))
    assert torch.allclose(_img(scaled[2]), (_img(plain[2]) + 1) / 2, atol=1e-6)
    assert scaled[2]["label"] == plain[2]["label"]


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    """3D resgan on the bundled real IXI T1 sample at 16^3 (spacing known), 1 step."""
    out = tmp_path_factory.mktemp("runs") / "mr3d"
    cfg = tiny_config("sample:ixi", **{"data.mode": "3d", "data.image_size": [16, 16, 16],
                                       "data.intensity.mode": "percentile", "train.steps": 1, "train.batch_size": 2})
    train(cfg, out, progress=False)
    return out


@pytest.mark.slow
def test_volumes_carry_the_run_spacing_and_export_round_trips(run3d, tmp_path):
    from medsynth.export import export_run
    from medsynth.export.geometry import volume_affine

    g = load_generator(run3d, device="cpu")
    spacing = g.state["geometry"]["spacing"]
    ds = SyntheticDataset(run3d, length=2, seed=0, device="cpu")
    item = ds[0]
    assert item["image"].shape == (1, 16, 16, 16) and item["label"] == -1
    assert np.allclose(item["image"].affine.numpy(), volume_affine((16, 16, 16), spacing))
    assert np.allclose(item["image"].pixdim.numpy(), spacing) and item["image"].meta["spacing_nominal"] is False
    # an export folder reads back as the volumes that were exported (NIfTI float: exact; DICOM: rounded units)
    for fmt, extra in (("nifti", {"nifti_float": True}), ("dicom", {})):
        out = tmp_path / fmt
        export_run(run3d, fmt, n=2, out=out, skip_privacy_check=True, **extra)
        folder = SyntheticDataset(out, device="cpu")
        assert len(folder) == 2
        for i in range(2):
            want = torch.from_numpy(read_sample(out / "samples" / f"sample_0_{i:06d}.npy"))
            got = _img(folder[i])[0]
            units = float(ds.mapping.source_max - ds.mapping.source_min) / 2
            tol = 1e-5 if fmt == "nifti" else 0.51 / units + 1e-6
            assert got.shape == want.shape and float((got - want).abs().max()) <= tol, fmt


# ------------------------------------------------------------------------------------------------
# SyntheticDataset from folders


def test_folder_of_generate_reads_what_write_samples_wrote(run):
    g = load_generator(run, device="cpu")
    folder = run / "samples" / "generated_seed2"                # the `medsynth generate` default place
    write_samples(g, folder, 6, labels=["CXR", "MRBrain", "MRBrain", "CXR", "CXR", "MRBrain"], seed=2)
    ds = SyntheticDataset(folder)                                 # the run is found above the folder
    assert len(ds) == 6 and ds.mode == "folder"
    assert ds.label_index.tolist() == [0, 1, 1, 0, 0, 1]
    images, _ = g.sample(6, labels=["CXR", "MRBrain", "MRBrain", "CXR", "CXR", "MRBrain"], seed=2)
    for i in range(6):
        item = ds[i]
        assert torch.equal(_img(item)[0], torch.from_numpy(read_sample(folder / f"sample_2_{i:06d}.png")))
        assert float((_img(item) - images[i]).abs().max()) <= 1 / 32767.5 + 1e-6   # 16-bit quantisation
        assert item["image"].meta["seed"] == 2 and item["image"].meta["index"] == i
    src = SyntheticDataset(folder, intensity="source")
    assert torch.allclose(_img(src[3]), ds.mapping.inverse(_img(ds[3])), atol=1e-4)
    assert len(SyntheticDataset(folder, labels="MRBrain")) == 3 and len(SyntheticDataset(folder, length=2)) == 2
    with pytest.raises(ValueError, match="seed and truncation apply to a run"):
        SyntheticDataset(folder, seed=1)
    with pytest.raises(ValueError, match="length 7 asked, but only 6"):
        SyntheticDataset(folder, length=7)


def test_folder_outside_the_run_needs_run(run, tmp_path):
    write_samples(load_generator(run, device="cpu"), tmp_path / "s", 2, seed=0)
    with pytest.raises(ValueError, match="cannot find the run"):
        SyntheticDataset(tmp_path / "s")
    assert len(SyntheticDataset(tmp_path / "s", run=run)) == 2


def _write_privacy(run, samples_dir, verdict="pass", flagged=(), tamper=()):
    """RUN/privacy.json in the medsynth-privacy/1 form the export gate reads (as tests/export/test_gate.py)."""
    samples = [{"file": p.name, "sha256": "0" * 64 if p.name in tamper else _sha(p), "passed": p.name not in flagged,
                "memorized": p.name in flagged, "nn_similarity": 0.5} for p in sorted(samples_dir.glob("sample_*"))]
    (run / "privacy.json").write_text(json.dumps({"schema": "medsynth-privacy/1", "verdict": verdict,
                                                  "synthetic_dir": str(samples_dir.resolve()), "samples": samples}))


@pytest.fixture
def checked(run, tmp_path):
    samples = tmp_path / "samples"
    write_samples(load_generator(run, device="cpu"), samples, 5, seed=9)
    yield run, samples
    (run / "privacy.json").unlink(missing_ok=True)


def test_privacy_checked_keeps_only_samples_that_passed(checked):
    run, samples = checked
    names = lambda ds: [ds[i]["image"].meta["index"] for i in range(len(ds))]  # noqa: E731
    with pytest.raises(PrivacyCheckMissing, match=r"no privacy check applies: .*privacy.json does not exist.*"
                                                  r"medsynth privacy"):
        SyntheticDataset(samples, run=run, privacy_checked=True)
    _write_privacy(run, samples, flagged={"sample_9_000001.png", "sample_9_000003.png"})
    ds = SyntheticDataset(samples, run=run, privacy_checked=True)
    assert names(ds) == [0, 2, 4] and ds.privacy["counts"] == {"passed": 3, "failed": 2, "unchecked": 0}
    assert len(SyntheticDataset(samples, run=run)) == 5                       # unfiltered without the option
    _write_privacy(run, samples, tamper={"sample_9_000000.png"})
    with pytest.warns(UserWarning, match="1 sample"):
        ds = SyntheticDataset(samples, run=run, privacy_checked=True)
    assert names(ds) == [1, 2, 3, 4]
    _write_privacy(run, samples, verdict="fail")
    with pytest.raises(PrivacyCheckMissing, match="none of the 5 sample"):
        SyntheticDataset(samples, run=run, privacy_checked=True)


@pytest.mark.slow
def test_privacy_checked_with_the_real_check(run):
    from medsynth.privacy import check_run

    try:
        report = check_run(run, n=12, seed=0, progress=False)
        samples = run / "privacy" / "samples"
        passed = sorted(s["file"] for s in report["samples"] if s["passed"]) if report["verdict"] == "pass" else []
        if not passed:
            with pytest.raises(PrivacyCheckMissing):
                SyntheticDataset(samples, privacy_checked=True)
        else:
            ds = SyntheticDataset(samples, privacy_checked=True)
            assert sorted(f"sample_0_{ds[i]['image'].meta['index']:06d}.png" for i in range(len(ds))) == passed
            victim = samples / passed[0]
            victim.write_bytes(victim.read_bytes() + b"\0")             # changed after the check: not passed
            with pytest.warns(UserWarning, match="changed since the check"):
                assert len(SyntheticDataset(samples, privacy_checked=True)) == len(passed) - 1
    finally:
        (run / "privacy.json").unlink(missing_ok=True)


def test_export_folders_read_back_and_privacy_column(checked, tmp_path):
    from medsynth.export import export_run

    run, samples = checked
    _write_privacy(run, samples, flagged={"sample_9_000002.png"})
    want = [torch.from_numpy(read_sample(samples / f"sample_9_{i:06d}.png")) for i in range(5)]
    units = 255.0 / 2
    for fmt, tol in (("png", 1e-6), ("dicom", 0.51 / units), ("nifti", 0.51 / units)):
        out = tmp_path / fmt
        export_run(run, fmt, from_samples=samples, out=out, skip_privacy_check=True)
        every = SyntheticDataset(out)
        assert len(every) == 5 and every.label_index.tolist() == [0, 1, 0, 1, 0]
        for i in range(5):
            assert float((_img(every[i])[0] - want[i]).abs().max()) <= tol, fmt
        kept = SyntheticDataset(out, privacy_checked=True)                 # the export's gate column
        assert [kept[i]["image"].meta["index"] for i in range(len(kept))] == [0, 1, 3, 4]
    (run / "privacy.json").unlink()
    export_run(run, "png", from_samples=samples, out=tmp_path / "unchecked", skip_privacy_check=True)
    with pytest.raises(PrivacyCheckMissing, match="exported without a privacy check"):
        SyntheticDataset(tmp_path / "unchecked", privacy_checked=True)


# ------------------------------------------------------------------------------------------------
# mix


@pytest.mark.parametrize("ratio, n_syn", [(0.5, 76), (0.2, 19), (0.05, 4), (0.6, 114), (0.0, 0), (1 / 3, 38)])
def test_mix_honours_the_ratio_exactly(run, real_items, ratio, n_syn):
    assert len(real_items) == 76
    m = mix(real_items, run, ratio, seed=1, device="cpu")
    assert (m.n_real, m.n_synthetic, len(m)) == (76, n_syn, 76 + n_syn)
    assert m.synthetic_fraction == pytest.approx(ratio, abs=1e-12)
    assert sum(m.is_synthetic(i) for i in range(len(m))) == n_syn


def test_mix_with_length_rounding_and_determinism(run, real_items):
    syn = SyntheticDataset(run, length=50, seed=0, device="cpu")
    m = mix(real_items, syn, 0.3, length=40, seed=2)
    assert (m.n_real, m.n_synthetic) == (28, 12) and m.synthetic_fraction == 0.3
    again = mix(real_items, syn, 0.3, length=40, seed=2)
    assert [again.is_synthetic(i) for i in range(40)] == [m.is_synthetic(i) for i in range(40)]
    assert all(torch.equal(_img(m[i]), _img(again[i])) for i in range(0, 40, 7))
    other = mix(real_items, syn, 0.3, length=40, seed=3)
    assert [other.is_synthetic(i) for i in range(40)] != [m.is_synthetic(i) for i in range(40)]
    # 10 real items at ratio 0.3 would need 30/7 synthetic: rounded to 4, the share reached is stated
    small = mix(torch.utils.data.Subset(real_items, range(10)), syn, 0.3, seed=0)
    assert small.n_synthetic == 4 and small.synthetic_fraction == pytest.approx(4 / 14)
    with pytest.raises(ValueError, match="needs 76 synthetic items; the synthetic dataset has 50"):
        mix(real_items, syn, 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        mix(real_items, syn, 1.5)
    with pytest.raises(ValueError, match="needs 80 real items"):
        mix(real_items, syn, 0.2, length=100)


def test_mix_in_a_dataloader_with_medsynth_and_monai_pipelines(run, mednist_small):
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.transforms import Compose, EnsureTyped, LoadImaged, Resized, ScaleIntensityRanged

    files = [{"image": str(p), "label": lab} for lab in ("CXR", "MRBrain")
             for p in sorted((mednist_small / lab).glob("*.jpg"))[:6]]
    assert len(files) == 12
    pipeline = Compose([LoadImaged(keys="image", ensure_channel_first=True, image_only=True),
                        Resized(keys="image", spatial_size=(32, 32)),
                        ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=-1, b_max=1),
                        EnsureTyped(keys="image", dtype=torch.float32)])
    for real in (Dataset(files, pipeline), CacheDataset(files, pipeline, progress=False)):
        m = mix(real, run, 0.5, seed=0, device="cpu")
        assert len(m) == 24
        labels = []
        for batch in DataLoader(m, batch_size=8, num_workers=0):
            assert batch["image"].shape[1:] == (1, 32, 32)
            labels += batch["label"]
        assert Counter(labels) == {"CXR": 12, "MRBrain": 12}        # synthetic labels as names, like the real ones


def test_mix_gives_synthetic_items_the_form_of_tuple_datasets(run, real_items):
    x = torch.stack([real_items[i]["image"] for i in range(8)])
    y = torch.tensor([real_items[i]["label"] for i in range(8)])
    m = mix(torch.utils.data.TensorDataset(x, y), run, 0.5, seed=0, device="cpu")
    syn = [m[i] for i in range(len(m)) if m.is_synthetic(i)]
    assert len(syn) == 8
    assert all(isinstance(s, tuple) and type(s[0]) is torch.Tensor and s[1].dim() == 0 for s in syn)
    images, labels = next(iter(torch.utils.data.DataLoader(m, batch_size=16)))
    assert images.shape == (16, 1, 32, 32) and labels.dtype == torch.int64


# ------------------------------------------------------------------------------------------------
# balance


def _monai_imbalanced(mednist_small, n_cxr, n_mr):
    from monai.data import Dataset
    from monai.transforms import Compose, LoadImaged, Resized, ScaleIntensityRanged

    files = [{"image": str(p), "label": "CXR"} for p in sorted((mednist_small / "CXR").glob("*.jpg"))[:n_cxr]]
    files += [{"image": str(p), "label": "MRBrain"} for p in sorted((mednist_small / "MRBrain").glob("*.jpg"))[:n_mr]]
    return Dataset(files, Compose([LoadImaged(keys="image", ensure_channel_first=True, image_only=True),
                                   Resized(keys="image", spatial_size=(32, 32)),
                                   ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=-1, b_max=1)]))


def test_balance_reaches_the_target_counts_exactly(run, mednist_small):
    real = _monai_imbalanced(mednist_small, 20, 5)
    b = balance(real, run, "equal", seed=0, device="cpu")
    assert len(b) == 40 and b.counts_real == {"CXR": 20, "MRBrain": 5} and b.counts == {"CXR": 20, "MRBrain": 20}
    assert Counter(b[i]["label"] for i in range(len(b))) == {"CXR": 20, "MRBrain": 20}
    assert all(b.is_synthetic(i) and b[i]["label"] == "MRBrain" for i in range(25, 40))
    assert b.synthetic.label_index.tolist() == [1] * 15
    d = balance(real, run, {"CXR": 24, "MRBrain": 30}, seed=0, device="cpu")
    assert Counter(d[i]["label"] for i in range(len(d))) == {"CXR": 24, "MRBrain": 30}
    with pytest.raises(ValueError, match="below the 20 real items"):
        balance(real, run, {"CXR": 10})
    with pytest.raises(ValueError, match="not one of the generator's labels"):
        balance(real, run, {"Hand": 10})


def test_balance_from_labels_and_integer_labels_in_another_order(run, real_items):
    add = balance(["CXR"] * 7 + ["MRBrain"] * 3, run, "equal", seed=1, device="cpu")
    assert isinstance(add, SyntheticDataset) and add.label_index.tolist() == [1] * 4
    add = balance([0, 0, 1], run, {0: 5, 1: 4}, seed=1, device="cpu")
    assert Counter(add.label_index.tolist()) == {0: 3, 1: 3}
    # the user's classes are numbered MRBrain=0, CXR=1: synthetic labels follow that numbering
    x = torch.stack([real_items[i]["image"] for i in range(6)])
    names = ["CXR", "MRBrain"]
    y_user = torch.tensor([1 - real_items[i]["label"] for i in range(6)])      # CXR->1, MRBrain->0
    have = Counter(names[1 - int(v)] for v in y_user)
    b = balance(torch.utils.data.TensorDataset(x, y_user), run, {"CXR": 8, "MRBrain": 8},
                class_names=["MRBrain", "CXR"], device="cpu")
    assert len(b) == 16 and b.counts_real == {n: have.get(n, 0) for n in names}
    labels = [int(b[i][1]) for i in range(16)]
    assert Counter(labels) == {0: 8, 1: 8}
    assert [int(b[i][1]) for i in range(6, 16)] == [1 - k for k in b.synthetic.label_index.tolist()]


def test_balance_and_labels_need_a_conditional_generator(tmp_path, mednist_small):
    uncond = tmp_path / "uncond"
    train(tiny_config(mednist_small, **{"train.steps": 1}), uncond, progress=False)
    ds = SyntheticDataset(uncond, length=3, device="cpu")
    assert [ds[i]["label"] for i in range(3)] == [-1, -1, -1]
    with pytest.raises(ValueError, match="unconditional"):
        SyntheticDataset(uncond, length=3, labels="CXR")
    with pytest.raises(ValueError, match="needs a conditional generator"):
        balance(["CXR", "MRBrain", "MRBrain"], uncond)


def test_lazy_exports_and_pickling_without_the_network(run):
    import pickle

    assert medsynth.SyntheticDataset is SyntheticDataset and medsynth.mix is mix and medsynth.balance is balance
    ds = SyntheticDataset(run, length=3, seed=1, device="cpu")
    first = _img(ds[0])
    state = pickle.dumps(ds)
    assert len(state) < 20_000                                              # no generator weights travel
    assert torch.equal(_img(pickle.loads(state)[0]), first)


def test_folder_manifest_rows_are_what_the_dataset_lists(run, tmp_path):
    folder = tmp_path / "g"
    write_samples(load_generator(run, device="cpu"), folder, 4, labels="MRBrain", seed=3)
    with open(folder / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    shutil.copy(MEDNIST / "CXR" / sorted(p.name for p in (MEDNIST / "CXR").iterdir())[0], folder / "stray.jpg")
    ds = SyntheticDataset(folder, run=run)                 # files not in the manifest are not samples
    assert [ds[i]["image"].meta["index"] for i in range(len(ds))] == [int(r["index"]) for r in rows]
