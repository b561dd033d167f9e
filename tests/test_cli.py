"""The command line as a user meets it: real --help, exit codes, JSON on stdout, no tracebacks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medsynth.cli import build_parser, main, normalize_train_args
from tests.conftest import MEDNIST

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [["data", "inspect"], ["data", "prepare"], ["train"], ["generate"], ["evaluate"], ["privacy"],
            ["export"], ["utility"], ["report"], ["demo"]]


def run(*argv, cwd=None):
    """The installed entry point in a subprocess: what a user's shell sees."""
    p = subprocess.run([sys.executable, "-m", "medsynth", *map(str, argv)], capture_output=True, text=True,
                       cwd=cwd or REPO, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_a_real_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: medsynth {' '.join(cmd)}" in out
    assert len(out.splitlines()) > 5


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("data", "train", "generate", "evaluate", "privacy", "export", "utility", "report", "demo"):
        assert f"    {cmd} " in out


def test_inspect_mednist_json_counts(shared_data):
    code, out, err = run("data", "inspect", MEDNIST, "--json")
    assert code == 0, err
    report = json.loads(out)      # stdout holds exactly one JSON object
    counts = {k: v["records"] for k, v in report["labels"].items()}
    assert counts == {"CTAbd": 500, "CTChest": 500, "CTHead": 500, "CXR": 400, "MRBrain": 400, "MRBreast": 500}
    assert report["labels"]["CXR"]["size"] == {"64x64": 400}
    assert report["patients"] == 2800 and report["patient_id_source"] == {"file": 2800}
    assert report["split"]["train"]["records"] + report["split"]["holdout"]["records"] == 2800
    assert report["split"]["holdout"]["records"] == 560
    assert report["skipped"]["count"] == 0


def test_inspect_text_table_on_the_ixi_sample():
    code, out, err = run("data", "inspect", "sample:ixi")
    assert code == 0, err
    assert "120x120x90" in out and "2x2x2 mm" in out
    assert "Patients  8  (IDs from IXI-style file names (8))" in out
    assert "holdout 2 / 2" in out


def test_inspect_reports_skips_and_fails_cleanly_on_nothing_usable(tmp_path, shared_data):
    from pydicom.data import get_testdata_file

    good = tmp_path / "mixed"
    good.mkdir()
    shutil.copy(sorted((MEDNIST / "CXR").iterdir())[0], good / "a.jpg")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), good / "trunc.dcm")
    (good / "fake.dcm").write_text("hello")
    code, out, err = run("data", "inspect", good, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["records"] == 1
    reasons = {f["path"]: f["reason"] for f in report["skipped"]["files"]}
    assert reasons["fake.dcm"] == "not a DICOM file" and "truncated" in reasons["trunc.dcm"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fake.dcm").write_text("hello")
    code, out, err = run("data", "inspect", bad)
    assert code == 2 and out == ""
    assert "no readable image" in err and "not a DICOM file" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = run("data", "inspect", tmp_path / "empty")
    assert code == 2 and "the folder is empty" in err and "Traceback" not in err


def test_config_errors_exit_2_with_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {path: sample:mednist, imagesize: [32, 32]}\n")
    code, out, err = run("data", "prepare", "--config", cfg, "--run-dir", tmp_path / "run")
    assert code == 2 and "unknown key 'data.imagesize' (did you mean 'data.image_size'?)" in err
    code, out, err = run("data", "prepare", "--config", "configs/tiny-cpu.yaml", "data.image_size=[32]",
                         "--run-dir", tmp_path / "run")
    assert code == 2 and "command line: data.image_size: 2d mode needs 2 sizes" in err
    assert "Traceback" not in err


def test_prepare_writes_full_config_and_reuses_its_split(tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run("data", "prepare", "--config", "configs/tiny-cpu.yaml", "--run-dir", run_dir,
                         "train.batch_size=8", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["items"] == 600 and first["shape"] == [32, 32] and first["labels"] == ["CXR", "MRBrain"]
    assert first["train_items"] + first["holdout_items"] == 600 and not first["from_cache"]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["train"]["batch_size"] == 8 and cfg["data"]["intensity"]["window"] == [0.0, 255.0]
    assert cfg["train"]["keep_last"] == 3 and cfg["data"]["split_seed"] == 0     # defaults written out too
    split_text = (run_dir / "split.json").read_text()
    # a different seed on the command line must not silently re-split an existing run
    code, out, err = run("data", "prepare", "--config", "configs/tiny-cpu.yaml", "--run-dir", run_dir,
                         "data.split_seed=5", "--json")
    assert code == 0, err
    assert (run_dir / "split.json").read_text() == split_text
    assert json.loads(out)["from_cache"]


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_bundled_sample(tmp_path):
    code, out, err = run("demo", "--out", tmp_path / "demo", "--steps", "4", "--samples", "48")
    assert code == 0, err
    assert "== sample:mednist ==" in out and "== sample:ixi ==" in out and "trained 4 steps" in out
    demo = tmp_path / "demo"
    assert (demo / "config.yaml").is_file() and (demo / "split.json").is_file()
    assert (demo / "checkpoints" / "step_0000004.pt").is_file()
    for label in ("CXR", "MRBrain"):
        rows = (demo / "samples" / f"demo_{label}" / "manifest.csv").read_text().splitlines()
        assert len(rows) == 17 and all(f",{label}," in r for r in rows[1:])
    assert "FID" in out and "precision" in out and "FID ratio" in out
    metrics = json.loads((demo / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["step"] == 4 and metrics["n_real"] == 48 and metrics["n_synthetic"] == 48
    # a 4-step generator makes noise, far from any training image: the check passes (seeded)
    assert json.loads((demo / "privacy.json").read_text())["verdict"] == "pass"
    for fmt, pattern in (("dicom", "*.dcm"), ("nifti", "*.nii.gz")):
        prov = json.loads((demo / "export" / fmt / "provenance.json").read_text())
        assert prov["format"] == fmt and len(list((demo / "export" / fmt).rglob(pattern))) == prov["files"] > 0
    page = (demo / "report.html").read_text()
    assert all(f'id="{s}"' in page for s in ("samples", "training", "metrics", "privacy", "export"))
    assert "dicom in dicom/" in page and "nifti in nifti/" in page
    assert f"report      {demo / 'report.html'}" in out


def test_parser_knows_the_design_shape():
    p = build_parser()
    args = p.parse_args(["export", "r", "--format", "dicom", "-n", "5", "--overwrite", "--skip-privacy-check"])
    assert (args.format, args.n, args.overwrite, args.skip_privacy_check) == ("dicom", 5, True, True)
    args = normalize_train_args(p.parse_args(["train", "--config", "c.yaml", "--run-dir", "d", "--resume",
                                              "train.steps=3", "train.keep_last=2"]))
    assert args.overrides == ["train.steps=3", "train.keep_last=2"] and args.resume is True
    args = normalize_train_args(p.parse_args(["train", "--resume", "runs/x", "train.steps=3"]))
    assert args.resume == "runs/x" and args.overrides == ["train.steps=3"]


def test_train_then_resume_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--config", "configs/tiny-cpu.yaml", "--run-dir", run_dir, "train.steps=2",
            "model.width=8", "model.latent_dim=16"]
    code, out, err = run(*args)
    assert code == 0, err
    assert "trained 2 steps" in out and (run_dir / "checkpoints" / "step_0000002.pt").is_file()
    code, out, err = run(*args)
    assert code == 2 and "already exists; use --resume to continue it or --overwrite" in err
    code, out, err = run("train", "--resume", run_dir, "train.steps=3")
    assert code == 0, err
    assert "trained 3 steps" in out
    code, out, err = run("train", "--resume", tmp_path / "nope")
    assert code == 2 and "not a run directory" in err and "Traceback" not in err


def test_fine_tune_from_another_run_on_the_command_line(tmp_path):
    from medsynth.training.checkpoint import file_sha256, latest_checkpoint, load_checkpoint

    small = ["model.width=8", "model.latent_dim=16", "train.steps=2"]
    src = tmp_path / "src"
    code, out, err = run("train", "--config", "configs/tiny-cpu.yaml", "--run-dir", src, *small)
    assert code == 0, err
    code, out, err = run("train", "--config", "configs/tiny-cpu.yaml", "--run-dir", tmp_path / "tuned",
                         "--init-from", src, *small)
    assert code == 0, err
    state = load_checkpoint(latest_checkpoint(tmp_path / "tuned" / "checkpoints"))
    assert state["init_from"]["sha256"] == file_sha256(latest_checkpoint(src / "checkpoints"))
    assert state["config"]["train"]["init_from"] == str(src)
    code, out, err = run("train", "--config", "configs/tiny-cpu.yaml", "--run-dir", tmp_path / "wide",
                         "--init-from", src, *small, "model.width=16")
    assert code == 2 and "its generator does not fit the configured one" in err and "Traceback" not in err
    assert not (tmp_path / "wide").exists()
    code, out, err = run("train", "--resume", tmp_path / "tuned", "--init-from", src)
    assert code == 2 and "--init-from starts a new run" in err


def test_out_of_gpu_memory_anywhere_in_train_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    # placing the networks on the GPU can run out of memory before the loop starts; the loop's own OOM path
    # is exercised on a real GPU by tests/training/test_cuda.py
    import torch

    from medsynth.training import loop

    def no_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "build_model", no_memory)
    code = main(["train", "--config", str(REPO / "configs" / "tiny-cpu.yaml"), "--run-dir", str(tmp_path / "run"),
                 "train.batch_size=48"])
    err = capsys.readouterr().err
    assert code == 2
    assert "out of GPU memory at train.batch_size=48; try train.batch_size=24" in err and "Traceback" not in err
