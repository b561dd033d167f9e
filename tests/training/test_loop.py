"""Training on real MedNIST images: finite losses, moving weights, exact resume, clear refusals."""

import os
import signal

import pytest
import torch

from medsynth.training import loop
from medsynth.training.checkpoint import CheckpointError, load_checkpoint, step_checkpoints
from medsynth.training.loop import TrainingError, train
from tests.training.conftest import tiny_config


def _weights(path):
    state = load_checkpoint(path)
    return {k: state[k] for k in ("generator", "discriminator", "ema") if state.get(k) is not None}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for net in a:
        for name, t in a[net].items():
            assert torch.equal(t, b[net][name]), f"{net}.{name} differs"


@pytest.mark.parametrize("model, conditional, extra", [
    ("dcgan", False, {}), ("resgan", False, {}), ("resgan", True, {}),
    ("resgan", True, {"model.d_regularization": "r1", "model.d_norm": "instance"}),
    # separate real/generated passes (minibatch std), also with the reconstruction head
    ("resgan", False, {"model.d_regularization": "r1", "model.d_norm": "instance", "model.d_mbstd": 4,
                       "model.g_upsample": "linear", "model.d_recon": 0.5})])
def test_a_few_steps_keep_losses_finite_and_change_the_weights(tmp_path, mednist_small, model, conditional, extra):
    cfg = tiny_config(mednist_small, **{"model.name": model, "model.conditional": conditional, **extra})
    from medsynth.models import build_model

    torch.manual_seed(cfg.seed)
    initial = build_model(cfg.model, (1, 32, 32), 2 if conditional else 0).generator.state_dict()
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 4 and not result.interrupted
    state = load_checkpoint(result.checkpoint)
    assert state["labels"] == ["CXR", "MRBrain"] and state["conditional"] == conditional
    changed = [k for k, v in state["generator"].items() if v.dtype.is_floating_point and not torch.equal(v, initial[k])]
    assert changed, "no generator weight moved"
    if extra.get("model.d_norm") == "instance":      # the discriminator's norm gains are trained and saved
        gains = [k for k in state["discriminator"] if k.endswith(".n1.weight")]
        assert gains and any(not torch.equal(state["discriminator"][k], torch.ones_like(state["discriminator"][k]))
                             for k in gains)
    log = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert log and all("NaN" not in line and "Infinity" not in line for line in log)
    assert (tmp_path / "run" / "samples" / "grid_0000004.png").is_file()
    # what later stages need travels in the checkpoint, and no image data does
    assert state["intensity"]["source_max"] == 255.0 and len(state["data_fingerprint"]) == 64
    assert state["geometry"]["image_size"] == [32, 32]
    assert all(not (isinstance(v, torch.Tensor) and v.dim() >= 3 and v.shape[-2:] == (32, 32))
               for v in state.values())


def _bn_input_moments(generator, zs, labels):
    """Per batch: the mean and unbiased variance per channel of what the first batch norm sees."""
    bn = next(m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    generator.train()
    with torch.no_grad():
        for z, y in zip(zs, labels):
            generator(z, y)
    hook.remove()
    return [(t.mean((0, 2, 3)), t.var((0, 2, 3), unbiased=True)) for t in seen]


@pytest.mark.parametrize("num_classes", [0, 3])
def test_standing_stats_are_the_mean_statistics_of_the_generators_own_batches(num_classes):
    import copy

    from medsynth.models.resgan import ResGenerator

    torch.manual_seed(0)
    g = ResGenerator((1, 32, 32), latent_dim=16, num_classes=num_classes, width=8)
    with torch.no_grad():          # some stale running statistics, as a training generator leaves them
        g.train()(torch.randn(8, 16) * 3, torch.zeros(8, dtype=torch.long) if num_classes else None)
    g.eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    assert loop.standing_stats(g, num_classes, 8, torch.device("cpu"), seed=5, batches=3)
    assert not g.training
    # the same latents and labels as standing_stats draws
    gen = torch.Generator().manual_seed(5)
    zs, ys = [], []
    for _ in range(3):
        zs.append(torch.randn(8, 16, generator=gen))
        ys.append(torch.randint(0, num_classes, (8,), generator=gen) if num_classes else None)
    moments = _bn_input_moments(copy.deepcopy(g), zs, ys)
    bn = next(m for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(bn.running_mean, torch.stack([m for m, _ in moments]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([v for _, v in moments]).mean(0), atol=1e-5)
    assert not torch.allclose(bn.running_mean, before[[k for k in before if k.endswith("running_mean")][0]])
    for k, v in g.state_dict().items():       # weights untouched, momentum restored
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, before[k]), k
    assert all(m.momentum == 0.1 for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d))
    pixel = ResGenerator((1, 32, 32), latent_dim=16, width=8, norm="pixel")
    assert not loop.standing_stats(pixel, 0, 8, torch.device("cpu"), seed=5)


def test_checkpoints_hold_the_ema_generators_standing_stats(tmp_path, mednist_small):
    from medsynth.models import build_model

    cfg = tiny_config(mednist_small, **{"model.name": "resgan", "model.conditional": True})
    result = train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(result.checkpoint)
    ema = build_model(cfg.model, (1, 32, 32), 2).generator
    ema.load_state_dict(state["ema"])
    loop.standing_stats(ema, 2, cfg.train.batch_size, torch.device("cpu"), cfg.seed + 777)
    for k, v in ema.state_dict().items():
        assert torch.allclose(v.float(), state["ema"][k].float(), atol=1e-5), k
    key = next(k for k in state["ema"] if k.endswith("running_mean"))
    assert not torch.equal(state["ema"][key], state["generator"][key])   # not the training generator's


def test_lecam_penalty_follows_its_definition():
    lc = loop.LeCam(0.5)
    real, fake = torch.tensor([0.5, -2.0]), torch.tensor([1.5, 0.0])
    assert lc.penalty(real, fake) is None                 # no averages before the first step
    lc.update(1.0, -1.0)
    assert (lc.real, lc.fake) == (1.0, -1.0)              # they start at the first step's means
    # relu(real - a_fake)^2 = [1.5^2, 0], mean 1.125; relu(a_real - fake)^2 = [0, 1], mean 0.5
    assert lc.penalty(real, fake).item() == pytest.approx(0.5 * (1.125 + 0.5))
    lc.update(3.0, 1.0)
    assert (lc.real, lc.fake) == (pytest.approx(0.99 * 1.0 + 0.01 * 3.0), pytest.approx(0.99 * -1.0 + 0.01 * 1.0))
    copy = loop.LeCam(0.5)
    copy.load_state(lc.state())
    assert copy.penalty(real, fake).item() == lc.penalty(real, fake).item()


@pytest.mark.parametrize("extra", [{}, {"model.d_regularization": "r1", "model.d_norm": "instance",
                                        "model.lecam_weight": 0.3}], ids=["plain", "lecam"])
def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path, mednist_small, monkeypatch, extra):
    over = {"model.name": "resgan", "model.conditional": True, "train.steps": 6, **extra}
    straight = train(tiny_config(mednist_small, **over), tmp_path / "a", progress=False)

    calls = {"n": 0}
    real_g_loss = loop.g_loss

    def g_loss_then_ctrl_c(kind, logits):
        calls["n"] += 1
        if calls["n"] == 3:                    # Ctrl-C arrives in the middle of step 3
            os.kill(os.getpid(), signal.SIGINT)
        return real_g_loss(kind, logits)

    monkeypatch.setattr(loop, "g_loss", g_loss_then_ctrl_c)
    first = train(tiny_config(mednist_small, **over), tmp_path / "b", progress=False)
    assert first.interrupted and first.step == 3
    assert [p.name for p in step_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_0000003.pt"]
    monkeypatch.setattr(loop, "g_loss", real_g_loss)
    cfg = loop.resume_config(tmp_path / "b", [])
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 6
    _assert_same(_weights(straight.checkpoint), _weights(resumed.checkpoint))
    if "model.lecam_weight" in extra:       # the regulariser's averages travel in the checkpoint and act
        assert load_checkpoint(first.checkpoint)["lecam"]["real"] is not None
        without = train(tiny_config(mednist_small, **{**over, "model.lecam_weight": 0.0}), tmp_path / "c",
                        progress=False)
        assert load_checkpoint(without.checkpoint)["lecam"] is None
        d, d0 = _weights(straight.checkpoint)["discriminator"], _weights(without.checkpoint)["discriminator"]
        assert any(not torch.equal(d[k], d0[k]) for k in d if d[k].dtype.is_floating_point)


def test_resume_may_extend_steps_but_not_change_the_model(tmp_path, mednist_small):
    run = tmp_path / "run"
    train(tiny_config(mednist_small, **{"model.name": "dcgan"}), run, progress=False)
    cfg = loop.resume_config(run, ["train.steps=6"])
    assert train(cfg, run, resume=True, progress=False).step == 6
    with pytest.raises(TrainingError, match="cannot change model.name when resuming"):
        loop.resume_config(run, ["model.name=resgan"])


def test_resume_may_switch_compile_but_not_precision(tmp_path, mednist_small):
    run = tmp_path / "run"
    train(tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 1}), run, progress=False)
    assert loop.resume_config(run, ["train.compile=false"]).train.compile is False
    with pytest.raises(TrainingError, match="cannot change train.precision when resuming"):
        loop.resume_config(run, ["train.precision=fp32"])


def test_lr_factor_is_constant_then_linear_down_to_the_final_fraction(mednist_small):
    cfg = tiny_config(mednist_small, **{"train.steps": 10, "train.lr_decay_start": 6, "train.lr_decay_final": 0.2})
    got = [loop.lr_factor(cfg.train, s) for s in range(11)]
    assert got[:7] == [1.0] * 7
    assert got[7:] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert loop.lr_factor(tiny_config(mednist_small).train, 3) == 1.0      # no decay configured


def test_a_decay_added_on_resume_equals_a_run_configured_with_it(tmp_path, mednist_small):
    over = {"model.name": "resgan", "train.steps": 6, "train.lr_g": 1e-4}
    decayed = {"train.lr_decay_start": 3}
    straight = train(tiny_config(mednist_small, **over, **decayed), tmp_path / "a", progress=False)
    constant = train(tiny_config(mednist_small, **over), tmp_path / "c", progress=False)
    train(tiny_config(mednist_small, **{**over, "train.steps": 3}), tmp_path / "b", progress=False)
    cfg = loop.resume_config(tmp_path / "b", ["train.steps=6", "train.lr_decay_start=3"])
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    _assert_same(_weights(straight.checkpoint), _weights(resumed.checkpoint))
    with pytest.raises(AssertionError, match="differs"):             # the decay did change the updates
        _assert_same(_weights(straight.checkpoint), _weights(constant.checkpoint))
    state = load_checkpoint(resumed.checkpoint)
    # the last update (step index 5) ran at 1 - 2/3 of the rates
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4 / 3)
    assert state["config"]["train"]["lr_decay_start"] == 3


def test_a_decay_cannot_be_changed_once_begun_or_added_in_the_past(tmp_path, mednist_small):
    run = tmp_path / "run"
    train(tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 4, "train.lr_decay_start": 2}), run,
          progress=False)
    before = (run / "config.yaml").read_text()
    for change in (["train.steps=8"], ["train.lr_decay_final=0.5"], ["train.lr_decay_start=3"]):
        with pytest.raises(TrainingError, match="began at step 2 .* cannot change once it has begun"):
            train(loop.resume_config(run, change), run, resume=True, progress=False)
    assert (run / "config.yaml").read_text() == before          # a refused resume leaves the run as it was
    assert [p.name for p in step_checkpoints(run / "checkpoints")] == ["step_0000004.pt"]
    plain = tmp_path / "plain"
    train(tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 4}), plain, progress=False)
    with pytest.raises(TrainingError, match="lr_decay_start 2 is before the checkpoint's step 4"):
        train(loop.resume_config(plain, ["train.steps=8", "train.lr_decay_start=2"]), plain, resume=True,
              progress=False)


def test_a_decay_must_start_before_the_last_step(mednist_small):
    from medsynth.config import ConfigError

    with pytest.raises(ConfigError, match="train.lr_decay_start: the decay must start before train.steps"):
        tiny_config(mednist_small, **{"train.steps": 4, "train.lr_decay_start": 4})


@pytest.mark.parametrize("device, steps, precision, distributed, expected", [
    ("cuda", 10, "bf16", False, True),     # CUDA: always
    ("cpu", 2000, "fp32", False, True),    # long float32 CPU runs: compiled kernels were up to 2x faster
    ("cpu", 1999, "fp32", False, False),   # short runs: the compile time would not pay back
    ("cpu", 20000, "bf16", False, False),  # bf16 on a CPU: compiled ran 0.6-0.8x of eager
    ("cuda", 10, "bf16", True, False),     # DDP: compiled modules are not exercised by our tests
])
def test_auto_compile_rule(device, steps, precision, distributed, expected):
    assert loop.auto_compile(torch.device(device), steps, precision, distributed) is expected


def test_a_long_bf16_cpu_run_is_not_compiled_by_default(tmp_path, mednist_small, capsys):
    cfg = tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 2000, "train.precision": "bf16",
                                        "train.device": "cpu"})
    assert cfg.train.compile is None
    result = train(cfg, tmp_path / "run", progress=True, stop_after=1)
    err = capsys.readouterr().err
    assert "training dcgan on cpu (bf16), batch" in err, err[-2000:]
    # the checkpoint records what auto resolved to, which config.yaml does not say
    assert load_checkpoint(result.checkpoint)["runtime"] == {"device": "cpu", "precision": "bf16", "compiled": False}


def test_existing_run_directory_is_refused_unless_resume_or_overwrite(tmp_path, mednist_small):
    run = tmp_path / "run"
    cfg = tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 2})
    train(cfg, run, progress=False)
    with pytest.raises(TrainingError, match="already exists; use --resume to continue it or --overwrite"):
        train(cfg, run, progress=False)
    assert train(cfg, run, overwrite=True, progress=False).step == 2
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(cfg, tmp_path / "empty", resume=True, progress=False)


def test_overwrite_keeps_the_previous_run_until_the_new_one_starts(tmp_path, mednist_small):
    run = tmp_path / "run"
    cfg = tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 2})
    first = train(cfg, run, progress=False)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # refused before its first step (too little data for the batch): the previous run is back, byte for byte
    with pytest.raises(TrainingError, match="fewer than train.batch_size=500"):
        train(tiny_config(mednist_small, **{"model.name": "dcgan", "train.batch_size": 500}), run, overwrite=True,
              progress=False)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert first.checkpoint.exists() and sorted(tmp_path.iterdir()) == [run]
    # one that starts replaces it, and nothing of the old run is left beside it
    second = train(tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 1}), run, overwrite=True,
                   progress=False)
    assert second.step == 1 and not first.checkpoint.exists() and sorted(tmp_path.iterdir()) == [run]


def test_a_killed_overwrite_is_undone_by_the_next_train(tmp_path, mednist_small, capsys):
    import subprocess
    import sys

    run = tmp_path / "run"
    cfg = tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 2})
    train(cfg, run, progress=False)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # what a 'train --overwrite' killed while caching leaves: the old run aside, a half-set-up new one
        run.rename(tmp_path / f".run.replaced-{dead}")
        run.mkdir()
        (run / "config.yaml").write_text("name: half\n")
        (tmp_path / ".run.deleting-7").mkdir()                           # killed while deleting: only deleted
        (tmp_path / f".run.replaced-{alive.pid}").mkdir()                 # another live process's: left alone
        with pytest.raises(TrainingError, match="already exists"):
            train(cfg, run, progress=False)
        assert "putting the run it was replacing back" in capsys.readouterr().err
        assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".run.replaced-{alive.pid}", "run"]
    finally:
        alive.kill()
        alive.wait()


def test_bad_setups_get_clear_messages(tmp_path, mednist_small):
    with pytest.raises(TrainingError, match=r"has \d+ images, fewer than train.batch_size=500"):
        train(tiny_config(mednist_small, **{"train.batch_size": 500}), tmp_path / "a", progress=False)
    with pytest.raises(TrainingError, match="conditional models need at least two classes"):
        train(tiny_config(mednist_small, **{"model.conditional": True, "data.labels": ["CXR"]}), tmp_path / "b",
              progress=False)
    with pytest.raises(TrainingError, match="resgan needs a square .*power-of-two image size from 32 to 256"):
        train(tiny_config(mednist_small, **{"data.image_size": [48, 48]}), tmp_path / "c", progress=False)
    with pytest.raises(TrainingError, match="dcgan is unconditional"):
        train(tiny_config(mednist_small, **{"model.name": "dcgan", "model.conditional": True}), tmp_path / "d",
              progress=False)


def test_dcgan_warns_about_the_resgan_settings_it_ignores(tmp_path, mednist_small, capsys):
    # the tiny config is a resgan config (model.width: 8); switched to dcgan, that setting does nothing
    train(tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 1}), tmp_path / "run", progress=False)
    assert "warning: dcgan ignores model.width: resgan-only settings (dcgan is MONAI's tutorial networks)" in \
        capsys.readouterr().err


def test_resgan_warns_about_settings_its_configuration_does_not_use(tmp_path, mednist_small, capsys):
    train(tiny_config(mednist_small, **{"model.r1_gamma": 0.1, "model.ada_images": 5000, "train.steps": 1}),
          tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "warning: resgan ignores model.r1_gamma: used only with model.d_regularization: r1" in err
    assert "warning: resgan ignores model.ada_images: used only with model.ada_target" in err
    train(tiny_config(mednist_small, **{"train.steps": 1}), tmp_path / "plain", progress=False)
    assert "warning" not in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, mednist_small):
    run = tmp_path / "run"
    train(tiny_config(mednist_small, **{"model.name": "dcgan", "train.steps": 2}), run, progress=False)
    cfg = tiny_config(mednist_small, **{"model.name": "resgan", "train.steps": 4})
    with pytest.raises(CheckpointError, match="written by model 'dcgan', config says 'resgan'"):
        train(cfg, run, resume=True, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dcgan", "resgan"])
def test_compiled_networks_train(tmp_path, mednist_small, model):
    cfg = tiny_config(mednist_small, **{"model.name": model, "train.compile": True, "train.steps": 2})
    result = train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(result.checkpoint)
    assert result.step == 2 and all(torch.isfinite(v).all() for v in state["generator"].values()
                                    if v.dtype.is_floating_point)


def test_a_failing_compiler_falls_back_to_eager_with_identical_results(tmp_path, mednist_small, monkeypatch, capsys):
    over = {"model.name": "resgan", "model.conditional": True, "train.steps": 2}
    eager = train(tiny_config(mednist_small, **over, **{"train.compile": False}), tmp_path / "a", progress=False)

    def broken_compile(module, *a, **k):
        def fail(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    fallback = train(tiny_config(mednist_small, **over, **{"train.compile": True}), tmp_path / "b", progress=False)
    assert "torch.compile failed (RuntimeError: InductorError" in capsys.readouterr().err
    _assert_same(_weights(eager.checkpoint), _weights(fallback.checkpoint))


def test_checkpoint_of_mri_slices_records_their_geometry(tmp_path, shared_data):
    import shutil

    from tests.conftest import IXI

    sub = tmp_path / "ixi"
    sub.mkdir()
    for f in sorted(IXI.glob("*.nii.gz"))[:4]:
        shutil.copy(f, sub / f.name)
    cfg = tiny_config(sub, **{"model.name": "resgan", "data.slice_range": [0.45, 0.55], "data.min_foreground": 0.0,
                              "data.intensity.mode": "percentile", "train.steps": 1, "data.holdout_fraction": 0.25})
    state = load_checkpoint(train(cfg, tmp_path / "run", progress=False).checkpoint)
    geo = state["geometry"]
    assert geo["slice_axis"] == "axial" and geo["slice_iop"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert geo["spacing"] == pytest.approx([240 / 32, 240 / 32])     # 120x90 slices at 2 mm, padded to 120x120
    assert state["intensity"]["mode"] == "percentile"


def test_fid_hook_logs_keeps_the_best_checkpoint_and_leaves_training_unchanged(tmp_path, mednist_small):
    import json

    import numpy as np

    from medsynth.metrics.features import FeatureExtractor
    from medsynth.metrics.fid import fid_from_features
    from medsynth.runs import prepare_run_data
    from medsynth.sampling import load_generator

    over = {"model.name": "resgan", "model.conditional": True, "train.checkpoint_every": 2}
    hooked = tiny_config(mednist_small, **over, **{"train.fid_every": 2, "train.fid_samples": 12})
    train(hooked, tmp_path / "hooked", progress=False)
    train(tiny_config(mednist_small, **over), tmp_path / "plain", progress=False)
    # the hook draws from its own random generator: the trajectory is the same with it on or off
    _assert_same(_weights(tmp_path / "hooked/checkpoints/step_0000004.pt"),
                 _weights(tmp_path / "plain/checkpoints/step_0000004.pt"))
    assert not (tmp_path / "plain" / "metrics.jsonl").exists()
    lines = [json.loads(x) for x in (tmp_path / "hooked/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4] and all(r["source"] == "training" for r in lines)
    best = min(lines, key=lambda r: r["fid"])
    state = load_checkpoint(tmp_path / "hooked/checkpoints/best.pt")
    assert state["step"] == best["step"] and state["best"] == {"fid": best["fid"], "step": best["step"]}
    # the logged number is the FID of the best checkpoint's EMA generator, recomputed independently with
    # pytorch-fid's arithmetic: same latents (seed + 1000003), balanced labels, the training split
    g = load_generator(tmp_path / "hooked/checkpoints/best.pt", device="cpu")
    fake, _ = g.sample(12, seed=hooked.seed + 1000003)
    bundle = prepare_run_data(hooked, tmp_path / "hooked")
    ext = FeatureExtractor(device="cpu")
    real = ext.features(bundle.prepared.batch(bundle.train_indices, bundle.mapping))
    ref = fid_from_features(real, ext.features(fake))
    assert best["fid"] == pytest.approx(ref, rel=1e-6) and np.isfinite(ref) and ref > 0
    # best.pt carries the same records as the step checkpoints, e.g. the fine-tuning source
    tuned = tiny_config(mednist_small, **over, **{"train.fid_every": 1, "train.fid_samples": 12, "train.steps": 1,
                                                  "train.init_from": str(tmp_path / "plain")})
    train(tuned, tmp_path / "tuned", progress=False)
    best_state = load_checkpoint(tmp_path / "tuned/checkpoints/best.pt")
    assert best_state["init_from"] is not None
    assert best_state["init_from"] == load_checkpoint(tmp_path / "tuned/checkpoints/step_0000001.pt")["init_from"]


@pytest.mark.slow
def test_3d_patch_discriminator_with_checkpointing_and_r1_on_ixi_volumes(tmp_path):
    """A tiny 3D model on real IXI T1 volumes (resampled to 8 mm, 32^3): losses finite, weights move,
    and the sampled volumes come with the training grid's geometry."""
    from medsynth.models import build_model
    from medsynth.sampling import load_generator

    over = {"data.mode": "3d", "data.image_size": [32, 32, 32], "data.spacing": [8, 8, 8],
            "data.intensity.mode": "percentile", "model.discriminator": "patch", "model.checkpointing": True,
            "model.d_regularization": "r1", "train.batch_size": 2, "train.steps": 3}
    cfg = tiny_config("sample:ixi", **over)
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg.model, (1, 32, 32, 32), 0)
    result = train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(result.checkpoint)
    for net, before in (("generator", initial.generator), ("discriminator", initial.discriminator)):
        moved = [k for k, v in before.state_dict().items()
                 if v.dtype.is_floating_point and not torch.equal(v, state[net][k])]
        assert moved, f"no {net} weight moved"
    assert state["geometry"] == {**state["geometry"], "mode": "3d", "image_size": [32, 32, 32],
                                 "spacing": [8.0, 8.0, 8.0], "orientation": "RAS"}
    g = load_generator(result.run_dir, device="cpu")
    volumes, labels = g.sample(2, seed=1)
    assert volumes.shape == (2, 1, 32, 32, 32) and labels is None and torch.isfinite(volumes).all()
    assert volumes.min() >= -1 and volumes.max() <= 1


def test_a_3d_config_on_2d_images_is_one_clear_error(tmp_path, mednist_small):
    from medsynth.data.sources import DataError

    cfg = tiny_config(mednist_small, **{"data.mode": "3d", "data.image_size": [16, 16, 16]})
    with pytest.raises(DataError, match="2D image in a 3d-mode dataset"):
        train(cfg, tmp_path / "run", progress=False)


def test_patch_discriminator_refuses_a_conditional_model(tmp_path, mednist_small):
    cfg = tiny_config(mednist_small, **{"model.discriminator": "patch", "model.conditional": True})
    with pytest.raises(TrainingError, match="discriminator=patch is unconditional"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.parametrize("setting, expect", [(None, ("translation", "cutout", "intensity")), (["cutout"], ("cutout",)),
                                             ([], None)])
def test_model_augment_chooses_what_the_discriminator_sees(tmp_path, mednist_small, monkeypatch, setting, expect):
    calls = []
    real_augment = loop.augment

    def spy(x, kinds, *args):
        calls.append(tuple(kinds))
        return real_augment(x, kinds, *args)

    monkeypatch.setattr(loop, "augment", spy)
    over = {"train.steps": 2} if setting is None else {"train.steps": 2, "model.augment": setting}
    train(tiny_config(mednist_small, **over), tmp_path / "run", progress=False)
    # per step: G's fake batch, then D's real and fake batches
    assert calls == ([expect] * 6 if expect else [])


def test_discriminator_reconstruction_head_learns_to_reconstruct_real_images(tmp_path, mednist_small):
    import torch.nn.functional as F

    from medsynth.models import build_model
    from medsynth.runs import prepare_run_data

    cfg = tiny_config(mednist_small, **{"model.d_regularization": "r1", "model.d_recon": 1.0, "train.steps": 60, "train.lr_d": 1e-3,
                                        "model.augment": []})
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg.model, (1, 32, 32), 0).discriminator
    result = train(cfg, tmp_path / "run", progress=False)
    trained = build_model(cfg.model, (1, 32, 32), 0).discriminator
    trained.load_state_dict(load_checkpoint(result.checkpoint)["discriminator"])
    bundle = prepare_run_data(cfg, tmp_path / "run", progress=False, write=False)
    real = bundle.prepared.tensor(bundle.train_indices, bundle.mapping, "cpu")

    def error(d):
        with torch.no_grad():
            _, rec = d(real, reconstruct=True)
        return F.mse_loss(rec, F.interpolate(real, size=rec.shape[2:], mode="area")).item()

    before, after = error(initial), error(trained)
    assert after < 0.5 * before, (before, after)
    # without the option the discriminator has no decoder, so earlier checkpoints load unchanged
    plain = build_model(tiny_config(mednist_small).model, (1, 32, 32), 0).discriminator
    assert not any(k.startswith("decoder") for k in plain.state_dict())
    with pytest.raises(ValueError, match="no reconstruction head"):
        plain(real[:2], reconstruct=True)


def test_reconstruction_head_needs_the_resnet_discriminator(tmp_path, mednist_small):
    cfg = tiny_config(mednist_small, **{"model.discriminator": "patch", "model.d_recon": 1.0})
    with pytest.raises(TrainingError, match="d_recon needs model.discriminator=resnet"):
        train(cfg, tmp_path / "run", progress=False)
    # the refused start leaves no folder, so the corrected command is not refused as "already exists"
    assert not (tmp_path / "run").exists()
    train(tiny_config(mednist_small, **{"train.steps": 1}), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_a_refused_start_never_removes_a_folder_that_was_there(tmp_path, mednist_small):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="already exists"):
        train(tiny_config(mednist_small), run, progress=False)
    assert (run / "notes.txt").read_text() == "mine"
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_config(mednist_small), run, resume=True, progress=False)
    assert (run / "notes.txt").read_text() == "mine"
    # an empty folder the user made stays, empty, after a refused start; and the corrected command works
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = tiny_config(mednist_small, **{"model.discriminator": "patch", "model.d_recon": 1.0})
    with pytest.raises(TrainingError, match="d_recon needs"):
        train(refused, empty, progress=False)
    assert empty.is_dir() and not any(empty.iterdir())
    train(tiny_config(mednist_small, **{"train.steps": 1}), empty, progress=False)
    assert (empty / "checkpoints").is_dir()


def _params(state, net):
    """The trained weights, without the buffers a forward pass updates (batch-norm statistics, the
    spectral norm's power-iteration vectors)."""
    return {k: v for k, v in state[net].items() if v.dtype.is_floating_point and "running" not in k
            and not k.endswith(("._u", "._v"))}


def test_init_from_starts_both_networks_from_the_source_and_everything_else_afresh(tmp_path, mednist_small):
    from medsynth.training.checkpoint import file_sha256

    src = train(tiny_config(mednist_small, **{"data.labels": ["MRBrain"]}), tmp_path / "src", progress=False)
    source = load_checkpoint(src.checkpoint)
    # learning rates of 0 keep the starting weights, so the first checkpoint shows where training started
    still = {"data.labels": ["CXR"], "train.lr_g": 0.0, "train.lr_d": 0.0, "train.steps": 1}
    tuned = train(tiny_config(mednist_small, **still, **{"train.init_from": str(tmp_path / "src")}),
                  tmp_path / "tuned", progress=False)
    fresh = train(tiny_config(mednist_small, **still), tmp_path / "fresh", progress=False)
    t, f = load_checkpoint(tuned.checkpoint), load_checkpoint(fresh.checkpoint)
    for net in ("generator", "discriminator"):
        want, got, other = _params(source, net), _params(t, net), _params(f, net)
        assert all(torch.equal(got[k], want[k]) for k in want), f"{net} did not start from the source"
        assert any(not torch.equal(other[k], want[k]) for k in want)       # a fresh run does not
    # the EMA generator starts from the source's EMA: one step of its warm-up (decay 0.1) towards the
    # unchanged generator
    ema, g, src_ema = _params(t, "ema"), _params(source, "generator"), _params(source, "ema")
    assert all(torch.allclose(ema[k], 0.1 * src_ema[k] + 0.9 * g[k], atol=1e-6) for k in ema)
    assert t["step"] == 1 and t["opt_g"]["state"][0]["step"] == 1        # a new run, a new optimiser
    assert t["init_from"] == {"sha256": file_sha256(src.checkpoint), "step": 4,
                              "data_fingerprint": source["data_fingerprint"], "labels": ["MRBrain"],
                              "conditional": False}
    assert t["data_fingerprint"] != source["data_fingerprint"] and f["init_from"] is None


def test_a_fine_tuned_run_resumes_exactly_without_starting_over(tmp_path, mednist_small):
    src = train(tiny_config(mednist_small, **{"data.labels": ["MRBrain"]}), tmp_path / "src", progress=False)
    over = {"data.labels": ["CXR"], "train.steps": 4, "train.init_from": str(src.checkpoint)}
    straight = train(tiny_config(mednist_small, **over), tmp_path / "a", progress=False)
    first = train(tiny_config(mednist_small, **over), tmp_path / "b", progress=False, stop_after=2)
    assert first.step == 2
    resumed = train(loop.resume_config(tmp_path / "b", []), tmp_path / "b", resume=True, progress=False)
    _assert_same(_weights(straight.checkpoint), _weights(resumed.checkpoint))
    assert load_checkpoint(resumed.checkpoint)["init_from"] == load_checkpoint(straight.checkpoint)["init_from"]
    with pytest.raises(TrainingError, match="cannot change train.init_from when resuming"):
        loop.resume_config(tmp_path / "b", [f"train.init_from={tmp_path / 'src'}"])


def test_init_from_refuses_a_source_that_does_not_fit(tmp_path, mednist_small):
    from pathlib import Path

    import medsynth.zoo
    from medsynth.training.checkpoint import save_checkpoint

    src = tmp_path / "src"
    train(tiny_config(mednist_small, **{"data.labels": ["MRBrain"]}), src, progress=False)
    cond = tmp_path / "cond"
    train(tiny_config(mednist_small, **{"model.conditional": True, "train.steps": 1}), cond, progress=False)
    state = load_checkpoint(step_checkpoints(src / "checkpoints")[-1])
    slim = tmp_path / "slim.pt"
    save_checkpoint(slim, {k: v for k, v in state.items() if k not in ("discriminator", "opt_d")})
    cases = [({"model.name": "dcgan"}, src, "written by model 'resgan', config says 'dcgan'"),
             ({"data.image_size": [64, 64]}, src, r"its images are \[1, 32, 32\].*asks for \[1, 64, 64\]"),
             ({"model.width": 16}, src, r"its generator does not fit the configured one \(.* is \[.*\], here \[.*\]"),
             ({"model.d_norm": "instance", "model.d_regularization": "r1"}, src,
              "its discriminator does not fit the configured one .*is missing"),
             ({"model.conditional": True}, src, "the source is unconditional and this config is conditional"),
             ({}, cond, "the source is conditional and this config is unconditional"),
             ({}, slim, "holds no discriminator .*fine-tuning needs a training checkpoint"),
             ({}, Path(medsynth.zoo.__file__).parent / "mednist64-conditional.pt", "holds no discriminator"),
             ({}, tmp_path / "nowhere", "no such run directory or checkpoint")]
    for i, (over, source, message) in enumerate(cases):
        run = tmp_path / f"r{i}"
        with pytest.raises(CheckpointError, match=message):
            train(tiny_config(mednist_small, **{**over, "train.init_from": str(source)}), run, progress=False)
        assert not run.exists()                  # a refused start leaves nothing behind


def test_init_from_refuses_a_conditional_source_with_other_labels(tmp_path, mednist_small, shared_data):
    import shutil

    other = tmp_path / "other"                   # two classes again, but not the same two
    for lab in ("CXR", "CTHead"):
        (other / lab).mkdir(parents=True)
        for f in sorted((shared_data / "mednist64" / lab).iterdir())[:16]:
            shutil.copy(f, other / lab / f.name)
    over = {"model.conditional": True, "train.steps": 1}
    train(tiny_config(mednist_small, **over), tmp_path / "src", progress=False)
    with pytest.raises(CheckpointError, match=r"labels \['CXR', 'MRBrain'\] differ from this dataset's "
                                              r"\['CTHead', 'CXR'\]"):
        train(tiny_config(other, **over, **{"train.init_from": str(tmp_path / "src")}), tmp_path / "run",
              progress=False)
