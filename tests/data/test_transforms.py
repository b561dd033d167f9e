import warnings

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsynth.config import DataConfig, IntensityConfig
from medsynth.data.readers import UnreadableFile
from medsynth.data.sources import discover
from medsynth.data.transforms import SLICE_IOP, IntensityMapping, fit_intensity, prepare_record, slice_volume
from tests.conftest import IXI, MEDNIST

IXI_FILE = IXI / "IXI012-HH-1211_T1.nii.gz"


def _record(path, **kw):
    disc = discover(path.parent, **kw)
    return next(r for r in disc.records if r.files[0] == str(path))


def test_image_at_target_size_is_unchanged(shared_data):
    f = sorted((MEDNIST / "CXR").iterdir())[0]
    (item,) = prepare_record(_record(f), DataConfig(path=str(f.parent), image_size=[64, 64]))
    np.testing.assert_array_equal(item.array, np.asarray(Image.open(f), dtype=np.float32))
    assert item.array.dtype == np.float32 and item.notes == ()


@pytest.mark.parametrize("resize, expect_pad", [("pad", True), ("crop", False), ("stretch", False)])
def test_non_square_images_reach_the_target_size(tmp_path, shared_data, resize, expect_pad):
    src = np.asarray(Image.open(sorted((MEDNIST / "CXR").iterdir())[0]), dtype=np.uint8)
    wide = np.concatenate([src, src[:, :32]], axis=1) // 2 + 100       # 64 x 96, values 100..227
    Image.fromarray(wide).save(tmp_path / "wide.png")
    (item,) = prepare_record(_record(tmp_path / "wide.png"),
                             DataConfig(path=str(tmp_path), image_size=[32, 32], resize=resize))
    assert item.array.shape == (32, 32)
    assert item.notes == ("resized from 64x96",)
    top_rows_are_background = np.allclose(item.array[:4], wide.min())
    assert top_rows_are_background == expect_pad


def _world_volume(shape, affine):
    """Volume whose voxels hold their own world coordinates (x, y, z) as three arrays."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return [xyz[..., a] for a in range(3)]


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_slices_follow_the_radiological_convention_recorded_in_slice_iop(plane):
    shape, spacing = (6, 7, 8), np.array([1.5, 2.0, 2.5])
    affine = np.diag([*spacing, 1.0])               # RAS
    coords = _world_volume(shape, affine)
    index = 2
    ras = [slice_volume(c, index, plane) for c in coords]
    lps = [-ras[0], -ras[1], ras[2]]
    col_step = np.array([c[0, 1] - c[0, 0] for c in lps])
    row_step = np.array([c[1, 0] - c[0, 0] for c in lps])
    iop = np.array(SLICE_IOP[plane])
    np.testing.assert_allclose(col_step / np.linalg.norm(col_step), iop[:3], atol=1e-9)
    np.testing.assert_allclose(row_step / np.linalg.norm(row_step), iop[3:], atol=1e-9)


def test_ixi_axial_slices_orientation_range_and_empty_slice_filter(shared_data):
    img = nib.as_closest_canonical(nib.load(IXI_FILE))
    canon = img.get_fdata(dtype=np.float32)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    rec = _record(IXI_FILE)
    cfg = DataConfig(path=str(IXI), image_size=list(canon.shape[:2][::-1]), min_foreground=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)      # MONAI's Orientation once warned here, in every reader
        items = prepare_record(rec, cfg)
    assert len(items) == canon.shape[2]
    k = 45
    np.testing.assert_allclose(items[k].array, canon[::-1, ::-1, k].T, atol=1e-4)
    np.testing.assert_allclose(items[k].spacing, (2.0, 2.0), atol=1e-4)
    # a slice range keeps the middle, the foreground filter drops the air above the head
    mid = prepare_record(rec, DataConfig(path=str(IXI), image_size=[64, 64], slice_range=[0.25, 0.75],
                                         min_foreground=0.0))
    assert [it.slice_index for it in mid] == list(range(30, 90))   # 120 axial slices in RAS
    top = prepare_record(rec, DataConfig(path=str(IXI), image_size=[64, 64], slice_range=[0.9, 1.0],
                                         min_foreground=0.3))
    assert len(top) < 9


def test_3d_volumes_are_resampled_to_the_target_grid(shared_data):
    rec = _record(IXI_FILE)
    (item,) = prepare_record(rec, DataConfig(path=str(IXI), mode="3d", image_size=[32, 32, 24],
                                             spacing=[6.0, 6.0, 6.0]))
    assert item.array.shape == (32, 32, 24) and item.spacing == (6.0, 6.0, 6.0)
    (fit,) = prepare_record(rec, DataConfig(path=str(IXI), mode="3d", image_size=[16, 16, 16]))
    assert fit.array.shape == (16, 16, 16)
    np.testing.assert_allclose(fit.spacing, (180 / 16, 240 / 16, 240 / 16), rtol=1e-6)   # RAS: 90x120x120


def test_2d_image_in_3d_mode_is_a_clear_skip(shared_data):
    f = sorted((MEDNIST / "CXR").iterdir())[0]
    with pytest.raises(UnreadableFile, match="2D image in a 3d-mode dataset"):
        prepare_record(_record(f), DataConfig(path=str(f.parent), mode="3d", image_size=[8, 8, 8]))


@pytest.mark.parametrize("mode", ["3d", "2d"])
def test_sheared_volume_is_refused_with_a_reason(tmp_path, mode):
    """A real IXI volume with a shear in its affine: refused (a counted skip), never resampled as if orthogonal."""
    img = nib.load(IXI_FILE)
    shear = np.eye(4)
    shear[0, 1] = 0.3
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shear @ img.affine), tmp_path / "sheared.nii.gz")
    size = [16, 16, 16] if mode == "3d" else [16, 16]
    with pytest.raises(UnreadableFile, match="affine has shear"):
        prepare_record(_record(tmp_path / "sheared.nii.gz"), DataConfig(path=str(tmp_path), mode=mode, image_size=size))
    # an oblique but orthogonal affine (a rotation) is fine
    c, s_ = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s_, 0, 0], [s_, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), rot @ img.affine), tmp_path / "rotated.nii.gz")
    assert prepare_record(_record(tmp_path / "rotated.nii.gz"), DataConfig(path=str(tmp_path), mode=mode,
                                                                           image_size=size))


def test_nan_volume_is_skipped(tmp_path):
    arr = np.ones((8, 8, 8), np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(UnreadableFile, match="NaN or Inf"):
        prepare_record(_record(tmp_path / "nan.nii.gz"), DataConfig(path=str(tmp_path)))


def test_intensity_mapping_round_trip_and_clipping():
    m = IntensityMapping(-1000.0, 3000.0)
    x = np.array([-2000.0, -1000.0, 1000.0, 3000.0, 5000.0])
    y = m.forward(x)
    np.testing.assert_allclose(y, [-1, -1, 0, 1, 1])
    np.testing.assert_allclose(m.inverse(y[1:4]), x[1:4])
    assert IntensityMapping.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError):
        IntensityMapping(5.0, 5.0)


def test_percentiles_are_fitted_on_the_given_items_only():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 16, 16)).astype(np.float32)
    images[10:] += 100          # items 10.. are "holdout" and must not move the window
    m = fit_intensity(IntensityConfig(mode="percentile", lower=1, upper=99), images, np.arange(10))
    ref = np.percentile(images[:10], [1, 99])
    assert (m.source_min, m.source_max) == pytest.approx(tuple(ref))
    assert m.percentiles == (1, 99)
    # subsampling path for large sets stays close to the exact percentiles
    big = fit_intensity(IntensityConfig(lower=1, upper=99), images, np.arange(10), max_values=500)
    assert big.source_min == pytest.approx(ref[0], abs=0.4) and big.source_max == pytest.approx(ref[1], abs=0.4)
    w = fit_intensity(IntensityConfig(mode="window", window=[0, 255]), images)
    assert (w.source_min, w.source_max, w.mode) == (0, 255, "window")
