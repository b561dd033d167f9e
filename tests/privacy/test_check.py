"""The check on a run and on folders (medsynth/privacy/__init__.py), its report, the filter, bad input,
and the ``medsynth privacy`` command."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsynth.cli import main
from medsynth.privacy import PrivacyError, check_run, filter_samples
from medsynth.training.checkpoint import file_sha256, latest_checkpoint
from tests.conftest import MEDNIST
from tests.training.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mednist_small):
    from medsynth.training.loop import train

    run = tmp_path_factory.mktemp("runs") / "r"
    train(tiny_config(mednist_small, **{"model.name": "resgan", "model.conditional": True, "train.steps": 3}),
          run, progress=False)
    return run


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_check_run_writes_the_report_export_relies_on(tiny_run):
    report = check_run(tiny_run, n=40, seed=3, progress=False)
    on_disk = json.loads((tiny_run / "privacy.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["schema"] == "medsynth-privacy/1" and report["verdict"] in ("pass", "fail")
    assert report["checkpoint_sha256"] == file_sha256(latest_checkpoint(tiny_run / "checkpoints"))
    samples_dir = (tiny_run / "privacy" / "samples").resolve()
    assert report["synthetic_dir"] == str(samples_dir)
    assert [s["file"] for s in report["samples"]] == [f"sample_3_{i:06d}.png" for i in range(40)]
    for s in report["samples"]:
        assert s["sha256"] == _sha(samples_dir / s["file"])
        assert s["passed"] is (not s["memorized"]) and -1 <= s["nn_similarity"] <= 1
    mem = report["memorization"]
    assert mem["memorized"] == sum(s["memorized"] for s in report["samples"])
    auc = report["membership"]["distance"]["pixel"]
    assert auc["unit"] == "patient" and auc["ci95"][0] <= auc["auc"] <= auc["ci95"][1]
    fails = mem["memorized_share"] > 0.02 or auc["auc"] > 0.6
    assert report["verdict"] == ("fail" if fails else "pass")
    assert any("holdout images" in w for w in report["warnings"])          # ~19 holdout images: tiny
    assert Image.open(tiny_run / "privacy" / "closest_pairs.png").size[0] > 200


def test_discriminator_attack_uses_the_checkpoints_discriminator(tiny_run):
    import torch

    from medsynth.config import config_from_dict
    from medsynth.data import build_dataset
    from medsynth.data.sources import Split
    from medsynth.models import build_model
    from medsynth.privacy.membership import roc_auc
    from medsynth.training.checkpoint import load_checkpoint

    report = check_run(tiny_run, n=20, seed=0, write=False, progress=False)
    state = load_checkpoint(latest_checkpoint(tiny_run / "checkpoints"))
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model, tuple(state["image_shape"]), len(state["labels"]))
    model.discriminator.load_state_dict(state["discriminator"])
    d = model.discriminator.eval()
    b = build_dataset(cfg.data, split=Split.load(tiny_run / "split.json"))
    with torch.no_grad():
        def logits(idx):
            idx = np.sort(idx)
            return d(b.prepared.tensor(idx, b.mapping), torch.from_numpy(b.prepared.label_index[idx])).numpy()
        want = roc_auc(logits(b.train_indices), logits(b.holdout_indices))
    got = report["membership"]["discriminator"]
    assert got["image_auc"] == pytest.approx(want, abs=1e-6)
    assert got["n_holdout"] == len(b.split.holdout_patients)


def test_generated_folder_filter_and_tampering(tiny_run, tmp_path):
    from medsynth.sampling import load_generator, write_samples

    folder = tmp_path / "gen"
    write_samples(load_generator(tiny_run, device="cpu"), folder, 12, seed=5)
    report = check_run(tiny_run, folder, limits={"max_memorized": 1.0, "max_mia_auc": 1.0}, write=False,
                       progress=False)
    assert report["verdict"] == "pass" and report["synthetic_dir"] == str(folder.resolve())
    report["samples"][3]["passed"] = False                  # as if sample 3 had been flagged
    out = filter_samples(report, tmp_path / "ok")
    assert out == {"written": 11, "left_out": 1, "out": str(tmp_path / "ok")}
    kept = sorted(p.name for p in (tmp_path / "ok").glob("*.png"))
    assert kept == [f"sample_5_{i:06d}.png" for i in range(12) if i != 3]
    assert all((tmp_path / "ok" / k).read_bytes() == (folder / k).read_bytes() for k in kept)
    rows = list(csv.DictReader(open(tmp_path / "ok" / "manifest.csv")))
    assert [r["file"] for r in rows] == kept and rows[0]["seed"] == "5"
    with pytest.raises(PrivacyError, match="not an empty folder"):
        filter_samples(report, tmp_path / "ok")
    (folder / "sample_5_000000.png").write_bytes(b"changed")
    with pytest.raises(PrivacyError, match="changed since it was checked"):
        filter_samples(report, tmp_path / "ok2")
    assert not (tmp_path / "ok2").exists()
    report["verdict"] = "fail"
    with pytest.raises(PrivacyError, match="verdict is 'fail'"):
        filter_samples(report, tmp_path / "ok3")


def _copy_run(run: Path, dest: Path, edit_split) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("privacy*", "tensorboard"))
    split = json.loads((dest / "split.json").read_text())
    edit_split(split)
    (dest / "split.json").write_text(json.dumps(split))
    return dest


def test_run_with_empty_or_overlapping_holdout_or_other_sizes_is_refused(tiny_run, tmp_path):
    def empty(s):
        s["train"] += s["holdout"]
        s["holdout"], s["holdout_patients"] = [], []

    def overlap(s):
        s["holdout"].append(s["train"][0])

    with pytest.raises(PrivacyError, match="holdout is empty"):
        check_run(_copy_run(tiny_run, tmp_path / "a", empty), n=4, progress=False)
    with pytest.raises(PrivacyError, match="in both train and holdout"):
        check_run(_copy_run(tiny_run, tmp_path / "b", overlap), n=4, progress=False)
    big = tmp_path / "big"
    big.mkdir()
    for f in sorted((MEDNIST / "CXR").glob("*.jpg"))[:3]:
        shutil.copy(f, big / f.name)                      # 64x64, the run makes 32x32
    with pytest.raises(PrivacyError, match="different image sizes"):
        check_run(tiny_run, big, progress=False)


# ------------------------------------------------------------------------------------------------
# folder mode and the command


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """CXR: 120 train, 110 holdout, and a synthetic folder of 40 novel images plus 10 training copies."""
    root = tmp_path_factory.mktemp("folders")
    files = sorted((MEDNIST / "CXR").glob("*.jpg"))
    for name, part in (("train", files[:120]), ("holdout", files[120:230]), ("synthetic", files[230:270])):
        (root / name).mkdir()
        for f in part:
            shutil.copy(f, root / name / f.name)
    for f in files[:10]:
        shutil.copy(f, root / "synthetic" / f"copy_{f.name}")
    return root


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_folder_mode_flags_copies_and_fails(folders, tmp_path, capsys):
    code, out, err = _cli(capsys, "privacy", "--real-train", folders / "train", "--real-holdout", folders / "holdout",
                          "--synthetic", folders / "synthetic", "--report", tmp_path / "p.json", "--json",
                          "--filter", tmp_path / "f")
    assert code == 1, err
    report = json.loads(out)                              # exactly one JSON object on stdout
    flagged = {s["file"] for s in report["samples"] if s["memorized"]}
    assert {f for f in flagged if f.startswith("copy_")} == {s["file"] for s in report["samples"]
                                                               if s["file"].startswith("copy_")}
    assert len(flagged) <= 10 + 1                         # at most one of the 40 novel images
    assert report["verdict"] == "fail" and "memorized" in report["reasons"][0]
    assert json.loads((tmp_path / "p.json").read_text())["verdict"] == "fail"
    assert (tmp_path / "p_closest_pairs.png").is_file()
    assert not (tmp_path / "f").exists()                 # a failed verdict writes no filtered samples


def test_cli_folder_mode_pass_with_looser_limits_writes_the_filter(folders, tmp_path, capsys):
    code, out, err = _cli(capsys, "privacy", "--real-train", folders / "train", "--real-holdout", folders / "holdout",
                          "--synthetic", folders / "synthetic", "--report", tmp_path / "p.json",
                          "--max-memorized", "0.5", "--max-mia-auc", "1", "--filter", tmp_path / "f")
    assert code == 0, err
    assert "verdict: PASS" in out and "warning: only 110 holdout images" in out
    report = json.loads((tmp_path / "p.json").read_text())
    kept = sorted(p.name for p in (tmp_path / "f").glob("*.jpg"))
    assert kept == sorted(s["file"] for s in report["samples"] if s["passed"])
    assert not any(k.startswith("copy_") for k in kept) and len(kept) >= 39
    rows = list(csv.DictReader(open(tmp_path / "f" / "manifest.csv")))
    assert sorted(r["file"] for r in rows) == kept and all(len(r["sha256"]) == 64 for r in rows)


def test_cli_bad_input_exits_2_with_a_message(folders, tmp_path, capsys):
    t, h, s = folders / "train", folders / "holdout", folders / "synthetic"
    code, _, err = _cli(capsys, "privacy", "--real-train", t, "--real-holdout", t, "--synthetic", s)
    assert code == 2 and "same folder" in err and "Traceback" not in err
    mixed = tmp_path / "mixed"
    shutil.copytree(h, mixed)
    shutil.copy(next(t.iterdir()), mixed / "dup.jpg")
    code, _, err = _cli(capsys, "privacy", "--real-train", t, "--real-holdout", mixed, "--synthetic", s)
    assert code == 2 and "1 file(s) appear in both" in err
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(small / "a.png")
    code, _, err = _cli(capsys, "privacy", "--real-train", t, "--real-holdout", h, "--synthetic", small)
    assert code == 2 and "different image sizes" in err
    code, _, err = _cli(capsys, "privacy", "runs/x", "--real-train", t)
    assert code == 2 and "either RUN" in err
    code, _, err = _cli(capsys, "privacy", "--real-train", t, "--synthetic", s)
    assert code == 2 and "all three" in err
    code, _, err = _cli(capsys, "privacy", "--real-train", t, "--real-holdout", h, "--synthetic", s,
                        "--quantile", "1.5")
    assert code == 2 and "quantile" in err
