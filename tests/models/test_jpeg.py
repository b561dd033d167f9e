"""model.jpeg_output: the differentiable JPEG round trip against Pillow's codec, the training files' table,
and a generator that ends in the compression from training to sampling."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.models.jpeg import jpeg_round_trip, training_jpeg_table
from tests.conftest import MEDNIST


def _cxr_files(n):
    return sorted((MEDNIST / "CXR").iterdir())[:n]


def _pillow_round_trip(a: np.ndarray, table) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", qtables=[table])
    buf.seek(0)
    with Image.open(buf) as im:
        assert list(im.quantization[0]) == list(table)
        return np.asarray(im, dtype=np.float32)


def test_round_trip_matches_pillows_jpeg_codec(shared_data):
    info = training_jpeg_table(_cxr_files(40), (64, 64))
    table = info["table"]
    assert info["files"] == 40 and table[:8] == [8, 6, 5, 8, 12, 20, 26, 31]        # MedNIST: Pillow's quality 75
    ratios = sorted(64 * 64 / f.stat().st_size for f in _cxr_files(40))
    assert info["ratio"] == round(ratios[20], 2) and 2 < info["ratio"] < 8     # pixels per file byte, median
    q = torch.tensor(table, dtype=torch.float32).reshape(8, 8)
    rng = np.random.default_rng(0)
    ours, pillow, change = [], [], []
    for f in _cxr_files(40):
        # noise makes an image that is not already JPEG-compressed with this table
        a = np.clip(np.asarray(Image.open(f), dtype=np.float32) + rng.normal(0, 6, (64, 64)), 0, 255)
        a = a.round().astype(np.uint8)
        ours.append(jpeg_round_trip(torch.from_numpy(a.astype(np.float32))[None, None], q)[0, 0].numpy())
        pillow.append(_pillow_round_trip(a, table))
        change.append(np.abs(pillow[-1] - a).mean())
    diff = np.abs(np.stack(ours) - np.stack(pillow))
    # libjpeg's integer DCT rounds a few coefficients the other way: a small mean, most pixels within 1
    assert diff.mean() < 0.4 and (diff <= 1).mean() > 0.93, (diff.mean(), (diff <= 1).mean())
    assert np.mean(change) > 3           # while the codec itself moves pixels by ~4 grey levels on average
    # an odd size is padded by repeating the edge, as libjpeg does, and cropped back
    a = np.asarray(Image.open(_cxr_files(1)[0]))[:61, :59].copy()
    odd = jpeg_round_trip(torch.from_numpy(a.astype(np.float32))[None, None], q)[0, 0].numpy()
    assert odd.shape == (61, 59) and np.abs(odd - _pillow_round_trip(a, table)).mean() < 0.4


def test_round_trip_passes_gradients_straight_through():
    q = torch.full((8, 8), 16.0)
    x = (torch.rand(2, 1, 16, 16) * 255).requires_grad_(True)
    (jpeg_round_trip(x, q) * torch.arange(256.0).reshape(1, 1, 16, 16)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_training_table_refuses_files_that_do_not_share_one_jpeg_table(tmp_path, shared_data):
    src = _cxr_files(3)
    png = tmp_path / "a.png"
    Image.open(src[0]).save(png)
    with pytest.raises(ValueError, match="is PNG, not JPEG"):
        training_jpeg_table([*src, png], (64, 64))
    with pytest.raises(ValueError, match="is 64x64 pixels and is resized to the training size 32x32"):
        training_jpeg_table(src, (32, 32))
    other = tmp_path / "q50.jpg"
    Image.open(src[0]).save(other, "JPEG", quality=50)
    with pytest.raises(ValueError, match="2 different quantisation tables"):
        training_jpeg_table([*src, other], (64, 64))
    rgb = tmp_path / "rgb.jpg"
    Image.open(src[0]).convert("RGB").save(rgb, "JPEG")
    with pytest.raises(ValueError, match="RGB JPEG"):
        training_jpeg_table([rgb], (64, 64))


@pytest.fixture(scope="module")
def cxr_jpegs(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("cxr48") / "CXR"
    root.mkdir()
    for f in _cxr_files(48):
        shutil.copy(f, root / f.name)
    return root.parent


def _tiny(path, **over):
    from tests.training.conftest import tiny_config

    return tiny_config(path, **{"data.image_size": [64, 64], "model.jpeg_output": True, **over})


def test_a_jpeg_output_generator_samples_through_the_training_files_compression(tmp_path, cxr_jpegs):
    from medsynth.sampling import load_generator
    from medsynth.training.checkpoint import load_checkpoint
    from medsynth.training.loop import train

    table = training_jpeg_table(_cxr_files(48), (64, 64))["table"]
    for name in ("resgan", "dcgan"):
        res = train(_tiny(cxr_jpegs, **{"model.name": name, "train.steps": 2}), tmp_path / name, progress=False)
        g = load_generator(res.checkpoint)
        mapping = g.mapping
        assert g.generator.jpeg_table.flatten().tolist() == table
        assert g.generator.jpeg_window.tolist() == [mapping.source_min, mapping.source_max]
        x, _ = g.sample(6, seed=3)
        g.generator.compress = False
        clean, _ = g.sample(6, seed=3)
        # the samples are the network's images through the codec, in source units and back
        q = torch.tensor(table, dtype=torch.float32).reshape(8, 8)
        want = mapping.forward(jpeg_round_trip(mapping.inverse(clean), q))
        assert torch.allclose(x, want, atol=1e-5) and not torch.allclose(x, clean, atol=0.05)
        # stored pixels are whole grey levels, as in the files
        pixels = mapping.inverse(x)
        inside = (x > -1) & (x < 1)
        assert torch.allclose(pixels[inside], pixels[inside].round(), atol=1e-3)
        assert load_checkpoint(res.checkpoint)["config"]["model"]["jpeg_output"] is True
    # a zoo package keeps the codec: its table, and the record an export marks DICOM files from
    from medsynth import zoo

    zoo.package_model(res.checkpoint, tmp_path / "z.pt")
    packed = load_generator(tmp_path / "z.pt")
    assert load_checkpoint(tmp_path / "z.pt")["jpeg_output"] == load_checkpoint(res.checkpoint)["jpeg_output"]
    assert packed.generator.jpeg_table.flatten().tolist() == table
    # the weights go to float16, the codec's settings do not: a fractional window survives packaging exactly
    from medsynth.training.checkpoint import save_checkpoint

    state = load_checkpoint(res.checkpoint)
    (state["ema"] or state["generator"])["jpeg_window"] = torch.tensor([12.3, 240.7])
    save_checkpoint(tmp_path / "frac.pt", state)
    zoo.package_model(tmp_path / "frac.pt", tmp_path / "zf.pt")
    ema = load_checkpoint(tmp_path / "zf.pt")["ema"]
    assert ema["jpeg_window"].dtype == torch.float32
    assert ema["jpeg_window"].tolist() == torch.tensor([12.3, 240.7]).tolist()
    assert ema["jpeg_table"].dtype == torch.float32
    assert all(v.dtype == torch.float16 for k, v in ema.items() if v.is_floating_point() and not k.startswith("jpeg_"))


def test_jpeg_output_refuses_data_it_cannot_match(tmp_path, cxr_jpegs, capsys):
    from medsynth.cli import main
    from tests.conftest import REPO

    png = tmp_path / "png" / "CXR"
    png.mkdir(parents=True)
    for f in _cxr_files(12):
        Image.open(f).save(png / (f.stem + ".png"))
    base = ["train", "--config", str(REPO / "configs" / "tiny-cpu.yaml"), "--run-dir"]
    over = ["model.jpeg_output=true", "model.width=8", "model.latent_dim=16", "train.steps=1", "train.batch_size=4",
            "data.image_size=[64,64]", "data.workers=1"]
    assert main([*base, str(tmp_path / "r1"), f"data.path={png.parent}", *over]) == 2
    err = capsys.readouterr().err
    assert "model.jpeg_output:" in err and "is a png image, not a JPEG image" in err and "Traceback" not in err
    assert not (tmp_path / "r1").exists()
    assert main([*base, str(tmp_path / "r2"), f"data.path={cxr_jpegs}", *over[:-2], "data.image_size=[32,32]",
                 "data.workers=1"]) == 2
    assert "resized to the training size 32x32" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "r3"), "data.path=sample:ixi", "data.mode=3d",
                 "data.image_size=[16,16,16]", *over[:5]]) == 2
    assert "model.jpeg_output is for 2D images" in capsys.readouterr().err


def test_a_jpeg_output_run_resumes_exactly(tmp_path, cxr_jpegs):
    from medsynth.training import loop
    from tests.training.test_loop import _assert_same, _weights

    cfg = _tiny(cxr_jpegs, **{"train.steps": 4})
    straight = loop.train(cfg, tmp_path / "a", progress=False)
    assert loop.train(cfg, tmp_path / "b", progress=False, stop_after=2).step == 2
    resumed = loop.train(loop.resume_config(tmp_path / "b", []), tmp_path / "b", resume=True, progress=False)
    _assert_same(_weights(straight.checkpoint), _weights(resumed.checkpoint))
    assert "jpeg_table" in _weights(resumed.checkpoint)["ema"]


def test_a_generator_without_its_table_refuses_to_sample():
    from medsynth.config import resolve_config
    from medsynth.models import build_model

    cfg = resolve_config(None, {"data.path": "unused", "model.width": 8, "model.jpeg_output": True}).model
    g = build_model(cfg, (1, 32, 32)).generator
    with pytest.raises(RuntimeError, match="no quantisation table"):
        g(torch.zeros(2, g.latent_dim))
    g.set_codec([10] * 64, (0.0, 255.0))
    assert g(torch.zeros(2, g.latent_dim)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="at least 1"):
        g.set_codec([0] * 64, (0.0, 255.0))
    with pytest.raises(ValueError, match="for 2D images"):
        build_model(cfg, (1, 16, 16, 16))


def test_jpeg_in_training_false_keeps_the_codec_out_of_training_only(tmp_path, cxr_jpegs, monkeypatch):
    from medsynth.config import ConfigError, resolve_config
    from medsynth.models import build_model, jpeg
    from medsynth.sampling import load_generator
    from medsynth.training.checkpoint import load_checkpoint
    from medsynth.training.loop import train

    # the module: training mode gives the network's image, eval mode the compressed one
    cfg = resolve_config(None, {"data.path": "unused", "model.width": 8, "model.jpeg_output": True,
                                "model.jpeg_in_training": False}).model
    g = build_model(cfg, (1, 32, 32)).generator
    g.set_codec([16] * 64, (0.0, 255.0))
    z = torch.randn(3, g.latent_dim, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = g.train()(z)
    torch.manual_seed(0)
    assert torch.equal(a, g.net(z))            # batch-norm statistics move in training mode: compare at once
    g.eval()
    clean = g.net(z)
    want = (jpeg_round_trip((clean + 1) * 127.5, torch.full((8, 8), 16.0)) / 127.5 - 1).clamp(-1, 1)
    assert torch.allclose(g(z), want, atol=1e-5) and not torch.allclose(g(z), clean, atol=0.02)
    # a run: every round trip with gradients on (a training step) is skipped, the drawn images are compressed
    calls = []
    real = jpeg.jpeg_round_trip

    def spy(x, q):
        calls.append(torch.is_grad_enabled())
        return real(x, q)

    monkeypatch.setattr(jpeg, "jpeg_round_trip", spy)
    res = train(_tiny(cxr_jpegs, **{"model.jpeg_in_training": False, "train.steps": 2, "train.grid_every": 1}),
                tmp_path / "off", progress=False)
    assert calls and not any(calls)            # the grids went through the codec, no training step did
    assert load_checkpoint(res.checkpoint)["jpeg_output"]["in_training"] is False
    calls.clear()
    on = train(_tiny(cxr_jpegs, **{"train.steps": 2}), tmp_path / "on", progress=False)
    assert any(calls)                          # the default puts it in every step
    assert load_checkpoint(on.checkpoint)["jpeg_output"]["in_training"] is True
    s = load_generator(res.checkpoint)
    x, _ = s.sample(4, seed=1)
    pixels = s.mapping.inverse(x)
    inside = (x > -1) & (x < 1)
    assert torch.allclose(pixels[inside], pixels[inside].round(), atol=1e-3)
    # without the codec the setting means nothing, and says so
    with pytest.raises(ConfigError, match="model.jpeg_in_training: applies only with model.jpeg_output: true"):
        resolve_config(None, {"data.path": "unused", "model.jpeg_in_training": False})
