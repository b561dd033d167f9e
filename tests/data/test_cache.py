import os
import shutil

import numpy as np
import pytest

from medsynth.config import DataConfig
from medsynth.data import CachedImageDataset, build_dataset
from medsynth.data import cache as cache_mod
from medsynth.data.cache import default_cache_dir, prepare_dataset
from medsynth.data.sources import DataError, discover
from tests.conftest import IXI, MEDNIST, tree_state


def _small_mednist(tmp_path, n=12):
    root = tmp_path / "ds"
    for lab in ("CXR", "MRBrain"):
        (root / lab).mkdir(parents=True)
        for f in sorted((MEDNIST / lab).iterdir())[:n]:
            shutil.copy(f, root / lab / f.name)
    return root


def test_second_prepare_reads_the_memory_mapped_cache(tmp_path, shared_data):
    root = _small_mednist(tmp_path)
    cfg = DataConfig(path=str(root), image_size=[32, 32])
    disc = discover(root)
    first = prepare_dataset(disc, cfg)
    second = prepare_dataset(disc, cfg)
    assert not first.from_cache and second.from_cache
    assert isinstance(second.images, np.memmap) and second.images.shape == (24, 32, 32)
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))
    assert first.content_sha256 == second.content_sha256
    assert second.labels == ["CXR", "MRBrain"] and list(second.label_index[:12]) == [0] * 12
    assert [p.name for p in default_cache_dir().iterdir()] == [first.key]   # no temporary leftovers


def test_cache_key_follows_files_and_geometry_not_intensity(tmp_path, shared_data):
    root = _small_mednist(tmp_path)
    disc = discover(root)
    base = prepare_dataset(disc, DataConfig(path=str(root), image_size=[32, 32]))
    window = DataConfig(path=str(root), image_size=[32, 32])
    window.intensity.mode, window.intensity.window = "window", [0.0, 255.0]
    assert prepare_dataset(disc, window).from_cache
    assert prepare_dataset(disc, DataConfig(path=str(root), image_size=[16, 16])).key != base.key
    f = root / "CXR" / sorted(os.listdir(root / "CXR"))[0]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    again = prepare_dataset(discover(root), DataConfig(path=str(root), image_size=[32, 32]))
    assert again.key != base.key and not again.from_cache


def test_serial_and_parallel_builds_are_identical(tmp_path, shared_data):
    root = _small_mednist(tmp_path, n=40)
    disc = discover(root)
    serial = prepare_dataset(disc, DataConfig(path=str(root), image_size=[32, 32], workers=1), use_cache=False)
    parallel = prepare_dataset(disc, DataConfig(path=str(root), image_size=[32, 32], workers=2), use_cache=False)
    assert serial.content_sha256 == parallel.content_sha256
    assert serial.items == parallel.items


def test_a_failed_build_leaves_no_entry(tmp_path, shared_data, monkeypatch):
    root = _small_mednist(tmp_path)
    calls = {"n": 0}
    real = cache_mod.prepare_record

    def flaky(record, cfg):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(record, cfg)

    monkeypatch.setattr(cache_mod, "prepare_record", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(discover(root), DataConfig(path=str(root), image_size=[32, 32], workers=1))
    assert list(default_cache_dir().iterdir()) == []


def test_unreadable_records_are_counted_and_nothing_usable_is_an_error(tmp_path, shared_data):
    root = _small_mednist(tmp_path, n=3)
    (root / "CXR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    data = prepare_dataset(discover(root), DataConfig(path=str(root), image_size=[32, 32]))
    assert len(data) == 6
    assert len(data.skipped) == 1 and data.skipped[0][0] == "CXR/broken.png"
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(root / "CXR" / "broken.png", only / "broken.png")
    with pytest.raises(DataError, match="no usable image after preprocessing"):
        prepare_dataset(discover(only), DataConfig(path=str(only)))


def test_mixed_sizes_are_resized_and_reported(tmp_path, shared_data):
    from PIL import Image

    root = _small_mednist(tmp_path, n=2)
    Image.open(sorted((root / "CXR").iterdir())[0]).resize((80, 80)).save(root / "CXR" / "big.png")
    data = prepare_dataset(discover(root), DataConfig(path=str(root), image_size=[64, 64]))
    assert data.images.shape == (5, 64, 64)
    assert data.notes == {"resized from 80x80": 1}


def test_build_dataset_splits_fits_intensity_and_serves_batches(tmp_path, shared_data):
    cfg = DataConfig(path=str(IXI), image_size=[32, 32], slice_range=[0.4, 0.6], min_foreground=0.0,
                     holdout_fraction=0.2, labels=None)
    # a handful of real volumes, several slices each: no patient may straddle the split
    sub = tmp_path / "ixi"
    sub.mkdir()
    for f in sorted(IXI.glob("*.nii.gz"))[:10]:
        shutil.copy(f, sub / f.name)
    cfg.path = str(sub)
    before = tree_state(sub)
    b = build_dataset(cfg)
    assert tree_state(sub) == before
    per_record = {}
    for it in b.prepared.items:
        per_record.setdefault(it["record"], 0)
        per_record[it["record"]] += 1
    assert set(per_record.values()) == {24}                   # 40%..60% of 120 axial slices
    train_rec = {b.prepared.items[i]["record"] for i in b.train_indices}
    hold_rec = {b.prepared.items[i]["record"] for i in b.holdout_indices}
    pid = {r.key: r.patient_id for r in b.discovery.records}
    assert len(hold_rec) == 2 and not {pid[k] for k in train_rec} & {pid[k] for k in hold_rec}
    assert b.mapping.mode == "percentile" and b.mapping.source_max > b.mapping.source_min
    x = b.prepared.batch(b.train_indices[[5, 1, 3]], b.mapping)
    assert x.shape == (3, 1, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1
    np.testing.assert_allclose(x[1, 0].numpy(), b.mapping.forward(np.asarray(b.prepared.images[b.train_indices[1]])),
                               atol=1e-6)
    ds = CachedImageDataset(b.prepared, b.train_indices, b.mapping)
    item = ds[1]
    assert item["image"].shape == (1, 32, 32) and item["label"] == -1
    np.testing.assert_allclose(item["image"].numpy(), x[1].numpy(), atol=1e-6)


def test_resident_batches_cover_every_item_once_per_epoch(tmp_path, shared_data):
    import torch

    from medsynth.data.cache import ResidentBatches
    from medsynth.data.transforms import IntensityMapping

    root = _small_mednist(tmp_path, n=10)
    data = prepare_dataset(discover(root), DataConfig(path=str(root), image_size=[32, 32]))
    m = IntensityMapping(0.0, 255.0)
    resident = data.tensor(np.arange(len(data)), m)
    np.testing.assert_allclose(resident.numpy(), data.batch(np.arange(len(data)), m).numpy())
    np.testing.assert_allclose(resident[:, 0].numpy(), m.forward(np.asarray(data.images)), atol=1e-6)
    labels = torch.from_numpy(data.label_index)
    gen = torch.Generator().manual_seed(0)
    full = [b for b, _ in ResidentBatches(resident, labels, 8, gen)]
    assert [len(b) for b in full] == [8, 8]                          # drop_last: 20 items -> 2 batches
    seen = torch.cat([y for _, y in ResidentBatches(resident, labels, 8, gen, drop_last=False)])
    assert sorted(seen.tolist()) == sorted(labels.tolist())          # every item exactly once
