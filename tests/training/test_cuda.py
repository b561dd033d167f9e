"""The CUDA fast path: bf16 autocast, channels-last, torch.compile and device-resident data on a GPU.

Skipped (and counted as skipped) where no CUDA GPU is present, as on CI; run on a GPU machine with
``pytest tests/training/test_cuda.py``. Each test uses tiny networks and a few steps on real images.
"""

import pytest
import torch

from medsynth.sampling import load_generator
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.loop import select_device, select_precision, train
from tests.conftest import REPO
from tests.training.conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_device_and_precision_are_cuda_and_bf16():
    dev = select_device("auto")
    assert dev.type == "cuda"
    assert select_precision("auto", dev) == "bf16"


@pytest.mark.parametrize("model, conditional", [("dcgan", False), ("resgan", True)])
def test_compiled_bf16_training_on_cuda_moves_weights_and_keeps_losses_finite(tmp_path, mednist_small, model,
                                                                               conditional, capfd):
    cfg = tiny_config(mednist_small, **{"model.name": model, "model.conditional": conditional, "train.steps": 6,
                                        "train.compile": True})
    from medsynth.models import build_model

    torch.manual_seed(cfg.seed)
    initial = build_model(cfg.model, (1, 32, 32), 2 if conditional else 0).generator.state_dict()
    result = train(cfg, tmp_path / "run", progress=True)
    err = capfd.readouterr().err
    assert "on cuda" in err and "bf16" in err and "compiled" in err, err[-2000:]
    assert "torch.compile failed" not in err
    assert result.step == 6
    assert next(result.model.generator.parameters()).device.type == "cuda"
    state = load_checkpoint(result.checkpoint)             # map_location=cpu: a GPU run loads anywhere
    assert all(t.device.type == "cpu" for t in state["generator"].values())
    changed = [k for k, v in state["generator"].items() if v.dtype.is_floating_point and not torch.equal(v, initial[k])]
    assert changed, "no generator weight moved"
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.dtype.is_floating_point)
    log = (tmp_path / "run" / "train_log.jsonl").read_text()
    assert "NaN" not in log and "Infinity" not in log


def test_a_gpu_checkpoint_samples_the_same_on_cuda_and_cpu(tmp_path, mednist_small, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)   # else cuDNN convolutions round to TF32
    cfg = tiny_config(mednist_small, **{"model.name": "resgan", "model.conditional": True, "train.compile": False})
    run = train(cfg, tmp_path / "run", progress=False).run_dir
    gpu = load_generator(run, device="cuda")
    a, ya = gpu.sample(24, labels="MRBrain", seed=5)
    b, _ = gpu.sample(24, labels="MRBrain", seed=5)
    assert torch.equal(a, b), "same seed, different images on the GPU"
    assert a.device.type == "cpu" and a.shape == (24, 1, 32, 32) and (ya == 1).all()
    c, _ = load_generator(run, device="cpu").sample(24, labels="MRBrain", seed=5)
    # the same latents through the same fp32 weights: only the kernels' summation order differs
    assert (a - c).abs().max().item() < 1e-3


def test_resume_on_cuda_continues_the_step_count(tmp_path, mednist_small):
    over = {"model.name": "resgan", "train.steps": 3, "train.compile": False}
    train(tiny_config(mednist_small, **over), tmp_path / "run", progress=False)
    result = train(tiny_config(mednist_small, **{**over, "train.steps": 6}), tmp_path / "run", progress=False,
                   resume=True)
    assert result.step == 6
    assert load_checkpoint(result.checkpoint)["step"] == 6


def test_out_of_gpu_memory_says_to_lower_the_batch_size(tmp_path, mednist_small, capsys):
    # this process's GPU memory capped at ~1.4 MiB: placing the networks or the first step runs out of memory
    from medsynth.cli import main

    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1e-5)
    try:
        code = main(["train", "--config", str(REPO / "configs" / "tiny-cpu.yaml"), "--run-dir", str(tmp_path / "run"),
                     f"data.path={mednist_small}", "model.name=dcgan", "train.batch_size=32", "train.steps=2",
                     "train.compile=false"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "out of GPU memory at train.batch_size=32; try train.batch_size=16" in err and "Traceback" not in err
