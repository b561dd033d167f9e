"""Distributed training: a real 2-process gloo run started by torchrun, on real MedNIST images.

The two ranks must end with identical weights; because every rank takes its slice of one global
batch (images, latents and augmentation draws), the 2 x 4 run must also match a single process
trained on batches of 8 (with the per-sample generator normalisation; batch norm normalises over each
rank's own slice, as usual with DDP); and its checkpoint must resume in a single process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.distributed import Context, context_from_env
from medsynth.training.loop import BatchSource, TrainingError, train
from tests.training.conftest import tiny_config

WORKER = Path(__file__).with_name("ddp_worker.py")


def _config_file(tmp_path, data, **over) -> Path:
    cfg = {"name": "ddp", "data": {"path": str(data), "image_size": [32, 32], "workers": 1,
                                   "intensity": {"mode": "window", "window": [0, 255]}},
           "model": {"name": "resgan", "conditional": True, "latent_dim": 16, "width": 8, "g_norm": "pixel"},
           "train": {"batch_size": 4, "steps": 4, "checkpoint_every": 2, "grid_every": 1000, "precision": "fp32"}}
    for key, value in over.items():
        section, name = key.split(".")
        cfg[section][name] = value
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(tmp_path, nproc, *argv, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(tmp_path), *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def _assert_close(a: dict, b: dict, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype.is_floating_point:
            torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m, k=name: f"{k}: {m}")


def _rank_states_identical(tmp_path):
    """The two ranks' final states (written by ddp_worker.py), asserted bit-identical; returns both."""
    r0, r1 = torch.load(tmp_path / "rank0.pt", weights_only=True), torch.load(tmp_path / "rank1.pt", weights_only=True)
    for net in ("generator", "discriminator", "ema"):
        assert r0[net].keys() == r1[net].keys()
        for name, t in r0[net].items():
            assert torch.equal(t, r1[net][name]), f"{net}.{name} differs between the ranks"
    return r0, r1


@pytest.mark.slow
def test_batch_norm_generator_with_default_precision_checkpoints_and_ranks_agree(tmp_path, mednist_small):
    """The default generator (batch norm, whose running statistics follow each rank's own slice) at the
    default precision (bf16 on CPUs that have it): the checkpoints are written and both ranks end
    with the same parameters and buffers (rank 0's statistics, as DDP broadcasts them)."""
    config = _config_file(tmp_path, mednist_small, **{"model.g_norm": "batch", "train.precision": "auto"})
    run = tmp_path / "run"
    p = _torchrun(tmp_path, 2, "train", "--config", config, "--run-dir", run)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = _rank_states_identical(tmp_path)
    assert any("running_mean" in name for name in r0["generator"])
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["step_0000002.pt", "step_0000004.pt"]


@pytest.mark.slow
def test_minibatch_std_discriminator_with_separate_real_and_generated_passes_under_ddp(tmp_path, mednist_small):
    """model.d_mbstd sends real and generated images through the DDP-wrapped discriminator in two
    forward passes before one backward (with R1 on real images and the reconstruction head): the run
    must finish and the ranks agree."""
    config = _config_file(tmp_path, mednist_small, **{"model.d_mbstd": 2, "model.d_regularization": "r1",
                                                      "model.d_norm": "instance", "model.d_recon": 0.5,
                                                      "model.conditional": False})
    run = tmp_path / "run"
    p = _torchrun(tmp_path, 2, "train", "--config", config, "--run-dir", run)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, _ = _rank_states_identical(tmp_path)
    assert any(".n1.weight" in name for name in r0["discriminator"])


@pytest.mark.slow
def test_two_gloo_ranks_train_identically_match_one_process_and_resume_alone(tmp_path, mednist_small):
    config = _config_file(tmp_path, mednist_small)
    run = tmp_path / "run"
    p = _torchrun(tmp_path, 2, "train", "--config", config, "--run-dir", run)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "batch 4 per rank x 2 ranks = 8 per step" in p.stderr
    r0, r1 = _rank_states_identical(tmp_path)
    assert r0["step"] == r1["step"] == 4
    # only rank 0 wrote: checkpoints 2 and 4, one training log
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["step_0000002.pt", "step_0000004.pt"]
    state = load_checkpoint(run / "checkpoints" / "step_0000004.pt")
    assert state["world_size"] == 2 and state["batches"]["pos"] % 8 == 0
    _assert_close(state["generator"], r0["generator"])

    # the same global batch in one process gives the same weights (up to float summation order)
    single = train(tiny_config(mednist_small, **{"model.conditional": True, "model.g_norm": "pixel", "train.batch_size": 8,
                                                 "train.precision": "fp32", "train.checkpoint_every": 2}),
                   tmp_path / "single", progress=False)
    ref = load_checkpoint(single.checkpoint)
    for net in ("generator", "discriminator", "ema"):
        _assert_close(ref[net], r0[net])

    # resume the 2-rank run in a single process (batch 8 there = the 2 x 4 global batch)
    env = {**os.environ}
    env.pop("WORLD_SIZE", None)
    q = subprocess.run([sys.executable, "-m", "medsynth", "train", "--resume", str(run), "train.steps=6"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert q.returncode == 0, q.stderr[-2000:]
    assert "written by 2 rank(s), now 1" in q.stderr
    resumed = load_checkpoint(run / "checkpoints" / "step_0000006.pt")
    assert resumed["world_size"] == 1 and resumed["step"] == 6
    # the batch order went on where the two ranks left it: two more global batches of 4
    assert resumed["batches"]["pos"] in (state["batches"]["pos"] + 8, 8)


def test_context_from_env():
    assert context_from_env({}) == Context()
    assert context_from_env({"WORLD_SIZE": "1"}) == Context()
    ctx = context_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled, ctx.is_main) == (3, 4, 1, True, False)
    with pytest.raises(ValueError, match="start distributed training with torchrun"):
        context_from_env({"WORLD_SIZE": "2"})


def test_ranks_take_disjoint_slices_of_one_global_batch(tmp_path, mednist_small):
    from medsynth.runs import prepare_run_data

    bundle = prepare_run_data(tiny_config(mednist_small), tmp_path / "run")
    seen = []
    for rank in range(3):
        src = BatchSource(bundle, 5, "cpu", torch.Generator().manual_seed(0), Context(rank, 3, rank))
        seen.append([src.next()[0] for _ in range(4)])
        assert src.state()["pos"] == 4 * 15
    whole = BatchSource(bundle, 15, "cpu", torch.Generator().manual_seed(0))
    for step in range(4):
        assert torch.equal(torch.cat([seen[r][step] for r in range(3)]), whole.next()[0])
    with pytest.raises(TrainingError, match="x 3 ranks"):
        BatchSource(bundle, 40, "cpu", torch.Generator().manual_seed(0), Context(0, 3, 0))


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (from /proc), or None while it is not started."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if int((p / "stat").read_text().split(")")[1].split()[1]) != launcher_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (p / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if env.get("RANK") == str(rank):
            return int(p.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the ranks")
def test_a_rank_that_dies_stops_the_job_and_the_last_checkpoint_resumes(tmp_path, mednist_small):
    import signal
    import time

    config = _config_file(tmp_path, mednist_small, **{"train.steps": 100000})
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "medsynth", "train", "--config", str(config), "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 240
        while not list((run / "checkpoints").glob("step_0000006.pt")) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)                 # rank 1 dies without a word
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0                          # torchrun stopped the job and says it failed
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    last = load_checkpoint(ckpts[-1])                     # intact: written atomically
    assert last["step"] >= 6 and last["step"] % 2 == 0
    q = subprocess.run([sys.executable, "-m", "medsynth", "train", "--resume", str(run),
                        f"train.steps={last['step'] + 2}"], capture_output=True, text=True, timeout=300, env=env)
    assert q.returncode == 0, q.stderr[-2000:]
    assert load_checkpoint(sorted((run / "checkpoints").glob("step_*.pt"))[-1])["step"] == last["step"] + 2
