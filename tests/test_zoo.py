"""The shipped generators (medsynth/zoo): packaging a run, loading safely, generate --model."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import medsynth.zoo as zoo
from medsynth.cli import main
from medsynth.sampling import load_generator, read_sample
from medsynth.training.checkpoint import load_checkpoint

CARD_MUST_SAY = ("Data", "Licence", "Training", "FID ratio", "Privacy")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mednist_small):
    from medsynth.training.loop import train
    from tests.training.conftest import tiny_config

    run = tmp_path_factory.mktemp("zoo") / "run"
    train(tiny_config(mednist_small, **{"model.conditional": True}), run, progress=False)
    return run


@pytest.fixture
def own_zoo(tmp_path, tiny_run, monkeypatch):
    """A zoo folder holding one model packaged from the tiny run."""
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    zoo.package_model(load_generator(tiny_run, device="cpu").checkpoint, tmp_path / "tiny.pt")
    (tmp_path / "tiny.md").write_text("# tiny\n\nA 4-step test generator.\n")
    return tmp_path


def test_packaged_model_is_generator_only_and_samples_like_the_run(tiny_run, own_zoo):
    state = load_checkpoint(own_zoo / "tiny.pt")
    assert state["generator"] is None and not {"discriminator", "opt_g", "opt_d", "rng", "batches"} & set(state)
    assert all(v.dtype == torch.float16 for v in state["ema"].values() if v.is_floating_point())
    run_ckpt = load_generator(tiny_run, device="cpu").checkpoint
    assert (own_zoo / "tiny.pt").stat().st_size < run_ckpt.stat().st_size / 3
    a, ya = load_generator(tiny_run, device="cpu").sample(8, seed=3)
    b, yb = load_generator(zoo.model_path("tiny"), device="cpu").sample(8, seed=3)
    assert torch.equal(ya, yb)
    assert (a - b).abs().max() < 0.05          # float16 weights: close, not equal
    assert state["labels"] == ["CXR", "MRBrain"] and state["intensity"] == load_checkpoint(run_ckpt)["intensity"]


def test_generate_model_from_the_command_line(own_zoo, tmp_path, capsys):
    assert main(["generate", "--list-models"]) == 0
    listed = capsys.readouterr().out
    assert "tiny" in listed and "A 4-step test generator." in listed
    out = tmp_path / "cxr"
    assert main(["generate", "--model", "tiny", "-n", "5", "--label", "CXR", "--seed", "2", "--out", str(out)]) == 0
    rows = (out / "manifest.csv").read_text().splitlines()
    assert len(rows) == 6 and all(",CXR," in r for r in rows[1:])
    img = read_sample(out / "sample_2_000000.png")
    assert img.shape == (32, 32) and np.isfinite(img).all()


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "nope", "-n", "2"], "unknown model 'nope'"),
    (["generate", "-n", "2"], "RUN_OR_CHECKPOINT or --model NAME"),
    (["generate", "--model", "tiny"], "needs -n N")])
def test_generate_bad_input(own_zoo, argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_at_least_one_model_ships():
    assert "mednist64-conditional" in zoo.available()
    g = load_generator(zoo.model_path("mednist64-conditional"), device="cpu")
    assert g.labels == ["CTAbd", "CTChest", "CTHead", "CXR", "MRBrain", "MRBreast"] and g.image_shape == (1, 64, 64)


@pytest.mark.parametrize("name", zoo.available())
def test_every_shipped_model_loads_samples_and_has_a_card(name, tmp_path):
    g = load_generator(zoo.model_path(name), device="cpu")
    labels = g.labels if g.conditional else [None]
    for label in labels:
        x, _ = g.sample(4, labels=label, seed=0)
        assert x.shape == (4, *g.image_shape) and torch.isfinite(x).all() and x.std() > 0.05
    text = zoo.card(name)
    for heading in CARD_MUST_SAY:
        assert heading in text, f"{name}.md says nothing about {heading}"
    p = subprocess.run([sys.executable, "-m", "medsynth", "generate", "--model", name, "-n", "2", "--out",
                        str(tmp_path / "g")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len((tmp_path / "g" / "manifest.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_package_a_run_with_its_model_card(tiny_run, tmp_path):
    from medsynth.metrics.evaluate import evaluate_run
    from medsynth.metrics.features import FeatureExtractor
    from medsynth.privacy import check_run

    ev = evaluate_run(tiny_run, n=8, n_real=8, bootstrap=0, extractor=FeatureExtractor(device="cpu",
                                                                                       allow_download=False))
    report = check_run(tiny_run, n=16, seed=0, progress=False)
    assert zoo._main([str(tiny_run), "tiny", "--out", str(tmp_path), "--title", "Tiny", "--summary", "One line.",
                      "--data", "MedNIST", "--licence", "CC BY-SA 4.0", "--hardware", "2 CPU cores"]) == 0
    card = (tmp_path / "tiny.md").read_text()
    for heading in CARD_MUST_SAY:
        assert f"## {heading}" in card or heading in card
    assert f"| FID | {ev['fid']:.1f} |" in card and f"{ev['fid_ratio']['fid_ratio']:.2f}" in card
    assert f"verdict **{report['verdict']}** on 16 samples" in card
    assert "4 steps of batch 8 (32 images seen)" in card and "conditional on CXR, MRBrain" in card
    assert load_checkpoint(tmp_path / "tiny.pt")["ema"] is not None
