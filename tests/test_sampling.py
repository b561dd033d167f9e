"""Generation from trained checkpoints: deterministic by seed, labels as asked, safe loading."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medsynth
from medsynth.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from medsynth.training.loop import train
from tests.training.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, mednist_small):
    run = tmp_path_factory.mktemp("runs") / "cond"
    train(tiny_config(mednist_small, **{"model.name": "resgan", "model.conditional": True, "train.steps": 3}),
          run, progress=False)
    return run


def test_same_seed_same_images_independent_of_batch_size(conditional_run):
    g = medsynth.load_generator(conditional_run, device="cpu")
    a, ya = g.sample(10, seed=7, batch_size=3)
    b, yb = g.sample(10, seed=7, batch_size=10)
    c, _ = g.sample(4, seed=7)
    d, _ = g.sample(10, seed=8)
    assert a.shape == (10, 1, 32, 32) and float(a.min()) >= -1 and float(a.max()) <= 1
    # equal up to float rounding: convolution kernels sum in a batch-size-dependent order (differences of
    # ~1e-6 seen); a batch-dependent generator (batch norm in training mode) differs by orders more
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a[:4], c, rtol=0, atol=1e-5)
    assert not torch.allclose(a, d)
    assert torch.equal(ya, yb)


def test_conditional_sampling_returns_the_asked_labels(conditional_run):
    g = medsynth.load_generator(conditional_run, device="cpu")
    assert g.labels == ["CXR", "MRBrain"] and g.conditional
    _, y = g.sample(5, labels="MRBrain", seed=0)
    assert y.tolist() == [1] * 5
    _, y = g.sample(4, labels=["CXR", 1, "MRBrain", 0], seed=0)
    assert y.tolist() == [0, 1, 1, 0]
    _, y = g.sample(6, seed=0)
    assert y.tolist() == [0, 1, 0, 1, 0, 1]            # balanced by default
    x_cxr, _ = g.sample(3, labels="CXR", seed=1)
    x_mr, _ = g.sample(3, labels="MRBrain", seed=1)
    assert not torch.allclose(x_cxr, x_mr)               # the label reaches the network
    with pytest.raises(ValueError, match="unknown label 'Knee'; this generator knows CXR, MRBrain"):
        g.sample(2, labels="Knee")


def test_generate_cli_writes_images_and_a_manifest(conditional_run, tmp_path):
    out = tmp_path / "gen"
    p = subprocess.run([sys.executable, "-m", "medsynth", "generate", str(conditional_run), "-n", "4", "--seed", "3",
                        "--label", "MRBrain", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["label"] for r in rows] == ["MRBrain"] * 4 and {r["seed"] for r in rows} == {"3"}
    g = medsynth.load_generator(conditional_run, device="cpu")
    assert {r["checkpoint_sha256"] for r in rows} == {g.checkpoint_sha256}
    x, _ = g.sample(4, labels="MRBrain", seed=3)
    png = np.asarray(Image.open(out / rows[2]["file"]), dtype=np.float64) / 32767.5 - 1
    np.testing.assert_allclose(png, x[2, 0].numpy(), atol=2 / 65535)
    p = subprocess.run([sys.executable, "-m", "medsynth", "generate", str(conditional_run), "-n", "2", "--label", "Knee",
                        "--out", str(tmp_path / "bad")], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "unknown label 'Knee'" in p.stderr and "Traceback" not in p.stderr


def test_damaged_or_mismatched_checkpoints_are_refused(conditional_run, tmp_path):
    ckpt = sorted((conditional_run / "checkpoints").glob("step_*.pt"))[-1]
    state = load_checkpoint(ckpt)
    state["image_shape"] = [1, 64, 64]               # weights no longer fit the declared model
    save_checkpoint(tmp_path / "mismatch.pt", {k: v for k, v in state.items() if k not in ("format", "format_version")})
    with pytest.raises(CheckpointError, match="does not fit its own model config"):
        medsynth.load_generator(tmp_path / "mismatch.pt")
    (tmp_path / "trunc.pt").write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        medsynth.load_generator(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        medsynth.load_generator(tmp_path)
    p = subprocess.run([sys.executable, "-m", "medsynth", "generate", str(tmp_path / "trunc.pt"), "-n", "1"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "not a readable checkpoint" in p.stderr and "Traceback" not in p.stderr


def test_generate_into_an_earlier_generate_needs_overwrite_and_then_leaves_only_the_new_set(conditional_run, tmp_path,
                                                                                            capsys):
    from medsynth.cli import main

    out = tmp_path / "gen"
    assert main(["generate", str(conditional_run), "-n", "5", "--seed", "1", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    # refused: a second set would leave the first one's files unlisted beside it
    assert main(["generate", str(conditional_run), "-n", "2", "--seed", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds samples of an earlier 'medsynth generate' (5 listed" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # replaced: exactly the new manifest's images remain, plus the user's own file
    assert main(["generate", str(conditional_run), "-n", "2", "--seed", "2", "--out", str(out), "--overwrite"]) == 0
    assert "removed 5 images" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert sorted(p.name for p in out.iterdir()) == sorted([r["file"] for r in rows] + ["manifest.csv", "notes.txt"])
    assert [r["seed"] for r in rows] == ["2", "2"] and (out / "notes.txt").read_text() == "mine"
    # a rerun with the same seed and fewer images keeps the rewritten names and drops the rest
    assert main(["generate", str(conditional_run), "-n", "1", "--seed", "2", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("sample_*")) == ["sample_2_000000.png"]


def _folder(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_generate_stopped_while_writing_leaves_the_earlier_set_untouched(conditional_run, tmp_path, monkeypatch):
    import medsynth.runs
    from medsynth.cli import main

    out = tmp_path / "gen"
    assert main(["generate", str(conditional_run), "-n", "4", "--seed", "1", "--out", str(out)]) == 0
    before = _folder(out)
    real_write, calls = medsynth.runs.atomic_write_bytes, []

    def stop_at_third(path, data):       # Ctrl-C while the third image of the new set is being written
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(medsynth.runs, "atomic_write_bytes", stop_at_third)
    assert main(["generate", str(conditional_run), "-n", "4", "--seed", "1", "--out", str(out), "--overwrite",
                 "--truncation", "0.5"]) == 130
    monkeypatch.undo()
    # same names, other images: written in place they would now sit under the old manifest's checkpoint rows
    assert len(calls) == 3 and all(p.parent != out for p in calls)
    assert _folder(out) == before                        # nothing half-replaced, no staging folder left
    g = medsynth.load_generator(conditional_run, device="cpu")
    from medsynth.sampling import read_sample
    expected, _ = g.sample(4, seed=1)
    np.testing.assert_allclose(read_sample(out / "sample_1_000002.png"), expected[2, 0].numpy(), atol=1 / 32767)


def test_generate_stopped_while_renaming_is_cleaned_by_the_next_overwrite(conditional_run, tmp_path, monkeypatch,
                                                                           capsys):
    import medsynth.sampling
    from medsynth.cli import main
    from medsynth.sampling import listed_samples

    out = tmp_path / "gen"
    assert main(["generate", str(conditional_run), "-n", "3", "--seed", "1", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")

    def move_one_then_stop(staging, out_dir, names):
        os.replace(staging / names[0], out_dir / names[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(medsynth.sampling, "_move_into_place", move_one_then_stop)
    assert main(["generate", str(conditional_run), "-n", "2", "--seed", "5", "--out", str(out), "--overwrite"]) == 130
    monkeypatch.undo()
    # no manifest.csv lists a mix of two writes; both writes' files are still known, and no staging is left
    assert not (out / "manifest.csv").exists() and not list(out.glob(".staging-*"))
    assert sorted(listed_samples(out)) == sorted([f"sample_1_{i:06d}.png" for i in range(3)]
                                                 + [f"sample_5_{i:06d}.png" for i in range(2)])
    capsys.readouterr()
    assert main(["generate", str(conditional_run), "-n", "2", "--seed", "7", "--out", str(out)]) == 2
    assert "already holds samples of an earlier 'medsynth generate' (5 listed" in capsys.readouterr().err
    assert main(["generate", str(conditional_run), "-n", "2", "--seed", "7", "--out", str(out), "--overwrite"]) == 0
    # the three seed-1 files and the one seed-5 file that reached the folder
    assert "removed 4 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "notes.txt", "sample_7_000000.png",
                                                     "sample_7_000001.png"]


def test_staging_folders_of_dead_writers_are_removed_and_live_ones_kept(conditional_run, tmp_path):
    from medsynth.sampling import write_samples

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "gen"
    dead = out / f".staging-{int(done.stdout)}"
    live = out / f".staging-{os.getppid()}"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "sample_0_000000.png").write_bytes(b"half")
    write_samples(medsynth.load_generator(conditional_run, device="cpu"), out, 2, seed=0)
    assert not dead.exists() and live.is_dir()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".staging")) == [
        "manifest.csv", "sample_0_000000.png", "sample_0_000001.png"]
