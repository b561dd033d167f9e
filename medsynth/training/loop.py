"""The GAN training loop: one function, ``train``, driven by a resolved :class:`~medsynth.config.Config`.

Reproducible by construction: the networks are initialised from ``seed``, and every random draw of
the loop (batch order, latents, augmentation) comes from one CPU ``torch.Generator`` whose state is
saved in each checkpoint, together with the global RNG state (dropout), so that a resumed run takes
exactly the steps an uninterrupted one would have taken (bit-identical on CPU).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth import __version__
from medsynth.config import Config, config_from_dict, dump_config, load_yaml
from medsynth.data.cache import take_rows
from medsynth.models import GanModel, build_model
from medsynth.runs import append_jsonl, atomic_write_bytes, atomic_write_text, prepare_run_data, put_back
from medsynth.training import distributed
from medsynth.training.augment import AdaptiveP, augment
from medsynth.training.checkpoint import (
    CheckpointError,
    file_sha256,
    latest_checkpoint,
    load_checkpoint,
    prune,
    save_checkpoint,
)
from medsynth.training.distributed import SINGLE, Context


class TrainingError(ValueError):
    """A problem the user can fix (run directory state, dataset too small, out of memory...)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path
    images_per_second: float
    interrupted: bool = False
    model: GanModel | None = None    # the trained networks (generator and discriminator, not the EMA)
    ema: torch.nn.Module | None = None


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but no CUDA GPU is available; use train.device=auto or cpu")
    return dev


def cpu_has_bf16() -> bool:
    """True when this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX), where oneDNN's
    bf16 convolutions are 2x faster than float32; elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def select_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"


def auto_compile(device: torch.device, steps: int, precision: str, distributed: bool) -> bool:
    """Whether ``train.compile: null`` compiles: on CUDA, and on a CPU for float32 runs of 2,000+ steps
    (compiled kernels were up to 2x faster on an AVX2 EPYC, and the compile time, a minute or two, is
    then small). Not for bf16 on a CPU: on an AMX Xeon compiled bf16 training ran at 0.6x (resgan) and
    0.8x (dcgan) of eager (docs/benchmarks.md). Never for a distributed run: compiled modules under DDP
    are not exercised by our tests."""
    if distributed:
        return False
    return device.type == "cuda" or (steps >= 2000 and precision == "fp32")


# --------------------------------------------------------------------------------------------
# run directory


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check (and for a new run, create) the run folder. With ``overwrite``, an existing run is not
    deleted here but moved aside to a hidden sibling, whose path is returned: the caller deletes it once
    training starts, or puts it back when the new run is refused before its first step (a bad setting,
    too little data, Ctrl-C while caching), so a mistyped command never costs the previous run."""
    if resume and overwrite:
        raise TrainingError("--resume and --overwrite contradict each other; choose one")
    recover_replaced_run(run_dir)
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        if latest_checkpoint(run_dir / "checkpoints") is None:
            raise TrainingError(f"{run_dir}: nothing to resume (no checkpoints/step_*.pt)")
        return None
    if exists and not overwrite:
        raise TrainingError(f"{run_dir} already exists; use --resume to continue it or --overwrite to replace it")
    aside = None
    if exists:
        aside = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)     # left by a killed process with this PID, long ago
        try:
            run_dir.rename(aside)
        except OSError:                              # a mount point, or a folder we may not rename
            shutil.rmtree(run_dir)
            aside = None
    run_dir.mkdir(parents=True, exist_ok=True)
    return aside


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # someone else's process (PermissionError), or no way to tell: assume it runs
        return True
    return True


def recover_replaced_run(run_dir: Path) -> Path | None:
    """Undo what a ``train --overwrite`` killed before its first step left: the previous run in a hidden
    ``.NAME.replaced-PID`` beside ``run_dir`` (and a half-set-up new run in ``run_dir``). The previous run
    is put back; the half-set-up one, which never trained a step, goes. Folders of a process that is still
    alive are left alone, and so is an ambiguous case (several of them), with a warning. A replaced run
    whose deletion was under way (``.NAME.deleting-PID``) is deleted. Returns the run put back, if any."""
    parent = run_dir.parent
    if not parent.is_dir():
        return None
    for gone in parent.glob(f".{run_dir.name}.deleting-*"):
        shutil.rmtree(gone, ignore_errors=True)
    stale = []
    for p in sorted(parent.glob(f".{run_dir.name}.replaced-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            stale.append(p)
    if not stale:
        return None
    if len(stale) > 1:
        print(f"warning: {len(stale)} replaced runs of {run_dir} are left beside it by killed processes "
              f"({', '.join(p.name for p in stale)}); not putting any back: move the one you want to {run_dir}",
              file=sys.stderr)
        return None
    if run_dir.exists() and latest_checkpoint(run_dir / "checkpoints") is not None:
        # the new run trained: the old one was on its way out (killed while it was being deleted)
        shutil.rmtree(stale[0], ignore_errors=True)
        return None
    print(f"{run_dir}: an earlier 'train --overwrite' was stopped before its first step; putting the run it "
          "was replacing back", file=sys.stderr)
    put_back(stale[0], run_dir)
    return run_dir


def _delete_replaced(aside: Path) -> None:
    """Delete the run --overwrite replaced: renamed first, so a process killed while deleting leaves a
    folder that is only ever deleted, never put back (see :func:`recover_replaced_run`)."""
    gone = aside.with_name(aside.name.replace(".replaced-", ".deleting-", 1))
    try:
        aside.rename(gone)
    except OSError:
        gone = aside
    shutil.rmtree(gone, ignore_errors=True)


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run's own config.yaml; only train.steps, the train.* logging intervals, the device,
    train.compile (speed only, though compiled kernels round differently) and the learning-rate decay
    (checked against the checkpoint in ``_train``: only while it has not started) may change on resume."""
    from medsynth.config import parse_override

    raw = load_yaml(run_dir / "config.yaml")
    allowed = {"train.steps", "train.checkpoint_every", "train.grid_every", "train.keep_last", "train.device",
               "train.compile", "train.lr_decay_start", "train.lr_decay_final"}
    for text in overrides:
        key, value = parse_override(text)
        if key not in allowed:
            raise TrainingError(f"cannot change {key} when resuming (only {', '.join(sorted(allowed))}); "
                                "start a new run for other changes")
        raw.setdefault("train", {})[key.split(".", 1)[1]] = value
    return config_from_dict(raw, source=str(run_dir / "config.yaml"))


def lr_factor(train_cfg, step: int) -> float:
    """The learning-rate multiplier for the update taken at ``step`` (0-based): 1 until
    train.lr_decay_start, then linear down to train.lr_decay_final at train.steps."""
    start = train_cfg.lr_decay_start
    if start is None or step < start:
        return 1.0
    final = train_cfg.lr_decay_final
    done = min(1.0, (step - start) / max(1, train_cfg.steps - start))
    return 1.0 - (1.0 - final) * done


def check_lr_history(saved_train: dict, train_cfg, step: int) -> None:
    """Refuse a resume whose learning-rate schedule would differ, before ``step``, from the one the
    checkpoint was trained with: the resumed run must equal an uninterrupted run of its own config."""
    saved = (saved_train.get("lr_decay_start"), saved_train.get("lr_decay_final", 0.0), saved_train.get("steps"))
    now = (train_cfg.lr_decay_start, train_cfg.lr_decay_final, train_cfg.steps)
    started = [s is not None and s < step for s in (saved[0], now[0])]
    if not any(started) or saved == now:
        return
    if started[0]:
        raise TrainingError(f"the learning-rate decay began at step {saved[0]} (lr x {saved[1]:g} at step "
                            f"{saved[2]}) and the checkpoint is at step {step}; train.steps, "
                            "train.lr_decay_start and train.lr_decay_final cannot change once it has begun; "
                            "start a new run for another schedule")
    raise TrainingError(f"train.lr_decay_start {now[0]} is before the checkpoint's step {step}; a decay added "
                        f"on resume must start at step {step} or later")


# --------------------------------------------------------------------------------------------
# losses


R1_EVERY = 16


def d_loss(kind: str, real_logits, fake_logits):
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "nonsaturating":      # StyleGAN's: softplus(D(fake)) + softplus(-D(real))
        return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    if kind == "bce":                # MONAI's tutorial: the mean of the two BCE terms
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))) / 2
    raise ValueError(f"unknown loss {kind!r}")


class LeCam:
    """The LeCam regulariser (Tseng et al. 2021, "Regularizing generative adversarial networks under limited
    data"): ``mean(relu(D(real) - a_fake)^2) + mean(relu(a_real - D(fake))^2)``, where ``a_real`` and
    ``a_fake`` are moving averages (decay 0.99, as the paper's code) of the discriminator's mean score for
    training and generated images. It keeps D from pushing the two kinds of scores apart without bound,
    which on small datasets is how it memorises the training images.

    The averages are updated once per training step from the last discriminator update's mean scores,
    averaged over ranks, so every rank holds the same values; they start at the first step's means, and
    the penalty starts at the second step. ``state()`` goes into checkpoints so a resume is exact."""

    DECAY = 0.99

    def __init__(self, weight: float):
        self.weight = float(weight)
        self.real: float | None = None
        self.fake: float | None = None

    def penalty(self, real_logits, fake_logits):
        if self.real is None:
            return None
        return (F.relu(real_logits - self.fake).pow(2).mean()
                + F.relu(self.real - fake_logits).pow(2).mean()) * self.weight

    def update(self, real_mean: float, fake_mean: float) -> None:
        if self.real is None:
            self.real, self.fake = real_mean, fake_mean
        else:
            self.real = self.DECAY * self.real + (1 - self.DECAY) * real_mean
            self.fake = self.DECAY * self.fake + (1 - self.DECAY) * fake_mean

    def state(self) -> dict:
        return {"real": self.real, "fake": self.fake}

    def load_state(self, s: dict) -> None:
        self.real, self.fake = s["real"], s["fake"]


def g_loss(kind: str, fake_logits):
    if kind == "hinge":
        return -fake_logits.mean()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def standing_stats(generator: torch.nn.Module, num_classes: int, batch_size: int, device, seed: int,
                   batches: int = 16) -> bool:
    """Recompute the batch-norm running statistics of ``generator`` (the EMA copy) from its own
    output: ``batches`` forward passes of random latents in training mode, averaged with equal
    weights; the module's train/eval mode is restored (BigGAN's "standing statistics", Brock et al. 2019).

    The EMA generator otherwise evaluates with the training generator's running statistics, which
    were gathered under other weights: on MedNIST chest X-rays (1,500 steps) recomputing them moved
    FID from 159.0 to 151.0. Uses its own random generator (the training trajectory does not change)
    and leaves the weights alone; the EMA update overwrites these buffers at the next step. Returns
    whether there was any batch norm to recompute."""
    bns = [m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return False
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over the passes
    was = generator.training
    generator.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        z = torch.randn(batch_size, generator.latent_dim, generator=g).to(device)
        y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device) if num_classes else None
        generator(z, y)
    generator.train(was)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    return True


# --------------------------------------------------------------------------------------------
# data on the device


class BatchSource:
    """Epoch-wise shuffled batches (drop_last) from the training items, resumable from its state.

    In a distributed run every rank holds the same permutation (the same seeded generator) and takes
    its own ``batch_size`` slice of each global batch of ``batch_size * world_size`` items, like
    PyTorch's DistributedSampler; the state is the global position, so a run can resume on another
    number of ranks."""

    def __init__(self, bundle, batch_size: int, device, generator: torch.Generator, ctx: Context = SINGLE):
        self.bundle, self.batch_size, self.device, self.gen = bundle, batch_size, device, generator
        self.rank, self.global_batch = ctx.rank, batch_size * ctx.world_size
        idx = bundle.train_indices
        self.n = len(idx)
        if self.n < self.global_batch:
            ranks = f" x {ctx.world_size} ranks" if ctx.enabled else ""
            raise TrainingError(f"the training split has {self.n} images, fewer than train.batch_size="
                                f"{batch_size}{ranks}; lower train.batch_size (e.g. train.batch_size="
                                f"{max(1, self.n // (2 * ctx.world_size))})")
        self.labels = torch.from_numpy(bundle.prepared.label_index[idx]).clamp_min(0)
        nbytes = self.n * int(np.prod(bundle.prepared.images.shape[1:])) * 4
        self.resident = nbytes <= (2 << 30)      # keep the whole training set on the device when small
        if self.resident:
            self.images = bundle.prepared.tensor(idx, bundle.mapping, device)
            self.labels = self.labels.to(device)
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.pos = 0

    def next(self):
        if self.pos + self.global_batch > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        start = self.pos + self.rank * self.batch_size
        take = self.perm[start:start + self.batch_size]
        self.pos += self.global_batch
        if self.resident:
            return take_rows(self.images, take), take_rows(self.labels, take)
        x = self.bundle.prepared.batch(self.bundle.train_indices[take.numpy()], self.bundle.mapping, self.device)
        return x, self.labels[take].to(self.device)

    def state(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos}

    def load_state(self, s: dict) -> None:
        if len(s["perm"]) != self.n:
            raise TrainingError("the training data changed since the checkpoint was written "
                                f"({len(s['perm'])} images then, {self.n} now); start a new run")
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])


# --------------------------------------------------------------------------------------------
# sample grids


@torch.no_grad()
def save_grid(generator, z, labels, path: Path) -> None:
    """A PNG grid of 2D samples (middle slice for 3D) in [-1, 1] -> 0..255."""
    from PIL import Image

    was = generator.training
    generator.eval()
    x = generator(z, labels).float().cpu()
    generator.train(was)
    if x.dim() == 5:
        x = x[:, :, x.shape[2] // 2]
    n = x.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = x.shape[2:]
    grid = torch.full((rows * (h + 2) + 2, cols * (w + 2) + 2), -1.0)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = x[i, 0]
    img = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# the loop


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _checkpoint_state(cfg, model: GanModel, ema, opt_g, opt_d, step, gen, source, bundle, best,
                      world_size: int = 1, ada: AdaptiveP | None = None, runtime: dict | None = None,
                      lecam: LeCam | None = None, init_from: dict | None = None, jpeg: dict | None = None) -> dict:
    """Everything a resume or a sampler needs. ``runtime``: what the writing session resolved
    train.device/precision/compile to (``{"device": "cpu", "precision": "bf16", "compiled": False}``), which
    config.yaml's ``auto`` values do not say."""
    from medsynth.data.transforms import SLICE_IOP

    from_volumes = any(it.get("slice") is not None for it in bundle.prepared.items)
    geometry = {"mode": cfg.data.mode, "image_size": list(cfg.data.image_size), "spacing": _median_spacing(bundle),
                "orientation": "RAS" if cfg.data.mode == "3d" else None,
                "slice_axis": cfg.data.slice_axis if from_volumes else None,
                "slice_iop": list(SLICE_IOP[cfg.data.slice_axis]) if from_volumes else None}
    return {
        "medsynth_version": __version__, "model_name": cfg.model.name, "config": cfg.to_dict(),
        "image_shape": [1, *cfg.data.image_size], "labels": list(bundle.labels),
        "conditional": bool(cfg.model.conditional), "intensity": bundle.mapping.to_dict(), "geometry": geometry,
        "data_fingerprint": bundle.prepared.content_sha256, "step": step,
        "generator": model.generator.state_dict(), "discriminator": model.discriminator.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
        "rng": {"loop": gen.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "batches": source.state(), "best": best, "world_size": world_size,
        "ada": ada.state() if ada is not None else None, "runtime": runtime,
        "lecam": lecam.state() if lecam is not None else None, "init_from": init_from,
        "jpeg_output": jpeg,    # model.jpeg_output: the training files' table, count and compression ratio
    }


def _check_model_name(state: dict, cfg: Config, where: str) -> None:
    """A checkpoint to resume or fine-tune from must come from the model the config trains."""
    if state.get("model_name") != cfg.model.name:
        raise CheckpointError(f"{where}: written by model {state.get('model_name')!r}, config says "
                              f"{cfg.model.name!r}")


def _init_source(cfg: Config) -> tuple[dict, dict]:
    """The checkpoint named by ``train.init_from`` and what the new run records of it (its hash, step,
    data fingerprint and labels: provenance, not paths or names from the data)."""
    from medsynth.sampling import resolve_checkpoint

    path = resolve_checkpoint(cfg.train.init_from)
    state = load_checkpoint(path)
    where = f"train.init_from {path}"
    if state.get("generator") is None or state.get("discriminator") is None:
        raise CheckpointError(f"{where}: holds no discriminator (a generator-only snapshot, such as a shipped "
                              "model?); fine-tuning needs a training checkpoint, RUN/checkpoints/step_*.pt")
    _check_model_name(state, cfg, where)
    shape = [1, *cfg.data.image_size]
    if list(state.get("image_shape") or []) != shape:
        raise CheckpointError(f"{where}: its images are {state.get('image_shape')} (channels first), the config "
                              f"asks for {shape}; fine-tune at the source's data.image_size")
    info = {"sha256": file_sha256(path), "step": int(state.get("step", 0)),
            "data_fingerprint": state.get("data_fingerprint"), "labels": list(state.get("labels") or []),
            "conditional": bool(state.get("conditional"))}
    return state, info


def _set_jpeg_codec(G, bundle, cfg: Config) -> dict:
    """Give a ``model.jpeg_output`` generator the quantisation table of the training files and the window
    of the intensity mapping; refuse data that is not stored as one kind of 8-bit grayscale JPEG."""
    from medsynth.models.jpeg import training_jpeg_table

    keys = set(bundle.split.train)
    records = [r for r in bundle.discovery.records if r.key in keys]
    bad = next((r for r in records if r.format != "jpeg" or r.kind != "image"), None)
    if bad is not None:
        raise TrainingError(f"model.jpeg_output: {bad.files[0]} is a {bad.format} {bad.kind}, not a JPEG image; the "
                            "option needs every training image stored as JPEG (set model.jpeg_output: false)")
    try:
        info = training_jpeg_table([r.files[0] for r in records], cfg.data.image_size)
    except ValueError as e:
        raise TrainingError(f"model.jpeg_output: {e}") from None
    G.set_codec(info["table"], (bundle.mapping.source_min, bundle.mapping.source_max))
    return {**info, "in_training": bool(cfg.model.jpeg_in_training)}


def _init_networks(source: dict, info: dict, G, D, num_classes: int, labels, where: str) -> None:
    """Copy the source's generator and discriminator weights into G and D, refusing any difference in
    the networks' shapes (load_state_dict would name it in PyTorch's words, or not at all for a
    conditional model whose same number of classes means other labels)."""
    if info["conditional"] != bool(num_classes):
        raise CheckpointError(f"{where}: the source is {'' if info['conditional'] else 'un'}conditional and this "
                              f"config is {'' if num_classes else 'un'}conditional; set model.conditional: "
                              f"{str(info['conditional']).lower()}")
    if num_classes and info["labels"] != list(labels):
        raise CheckpointError(f"{where}: the source's labels {info['labels']} differ from this dataset's "
                              f"{list(labels)}; a conditional model is fine-tuned on the same labels")
    for what, module, weights in (("generator", G, source["generator"]), ("discriminator", D, source["discriminator"])):
        own = module.state_dict()
        problems = [f"{k} is missing" for k in own if k not in weights]
        problems += [f"{k} is extra" for k in weights if k not in own]
        problems += [f"{k} is {list(weights[k].shape)}, here {list(v.shape)}" for k, v in own.items()
                     if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise CheckpointError(f"{where}: its {what} does not fit the configured one ({'; '.join(problems[:3])}"
                                  f"{more}); the model settings that shape the networks (model.width, d_width, "
                                  "latent_dim, d_regularization, d_norm, g_norm, d_mbstd, discriminator, "
                                  "d_recon) must be the source run's")
        module.load_state_dict(weights)


def _median_spacing(bundle) -> list[float] | None:
    sp = [it["spacing"] for it in bundle.prepared.items if it.get("spacing")]
    if not sp:
        return None
    return [float(v) for v in np.median(np.asarray(sp, dtype=np.float64), axis=0)]


def _d_pair(d, real, fake, y, per_sample: bool):
    """D's logits for the real and the generated batch; one concatenated pass when D treats samples
    independently (fewer, larger kernels: ~15% faster on CPU), else two passes."""
    if per_sample:
        n = real.shape[0]
        out = d(torch.cat([real, fake]), torch.cat([y, y]) if y is not None else None).float()
        return out[:n], out[n:]
    return d(real, y).float(), d(fake, y).float()


def _d_pair_recon(d, real, fake, y, per_sample: bool = True):
    """As :func:`_d_pair` for a discriminator with a reconstruction head, plus the mean squared error
    of its reconstruction of the real images (area-downsampled to the reconstruction's size)."""
    n = real.shape[0]
    if per_sample:
        out, rec = d(torch.cat([real, fake]), torch.cat([y, y]) if y is not None else None, reconstruct=True)
        real_out, fake_out = out[:n], out[n:]
    else:
        real_out, rec = d(real, y, reconstruct=True)
        fake_out = d(fake, y)
    target = F.interpolate(real.detach().float(), size=rec.shape[2:], mode="area")
    return real_out.float(), fake_out.float(), F.mse_loss(rec[:n].float(), target)


def _has_spectral_norm(m: torch.nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return any(parametrize.is_parametrized(sub) for sub in m.modules())


def _compiled(G, D, model: GanModel, device, image_shape, num_classes, amp: bool):
    """torch.compile G, and D unless it uses spectral norm (its in-place power iteration breaks
    compiled autograd in torch 2.14). Compiles eagerly on a dummy batch so that a failure (e.g. no
    C++ compiler on a CPU machine) falls back to eager before any real step; weights, buffers and
    RNG state are restored afterwards, so compiling never changes the run's results."""
    g_c = torch.compile(G)
    # not compiled: D with spectral norm (see above), or with an R1 penalty (double backward)
    d_c = D if (_has_spectral_norm(D) or model.r1_gamma > 0) else torch.compile(D)
    saved = (copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict()), torch.get_rng_state())
    try:
        z = torch.zeros(2, G.latent_dim, device=device)
        y = torch.zeros(2, dtype=torch.long, device=device) if num_classes else None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            x = g_c(z, y)
            out = d_c(x, y).float().sum() + d_c(torch.cat([x.detach(), x.detach()]),
                                                 torch.cat([y, y]) if y is not None else None).float().sum()
        out.backward()
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
        print(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
              "training without it", file=sys.stderr)
        g_c, d_c = G, D
    finally:
        G.load_state_dict(saved[0])
        D.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
    return g_c, d_c


class FidHook:
    """FID of the (EMA) generator against the training split, every ``train.fid_every`` steps.

    The real features are computed once; each evaluation samples ``train.fid_samples`` images from a
    fixed latent seed (so evaluations differ only by the weights) and computes FID with
    :func:`~medsynth.metrics.fid.fid_from_features_fast` (pytorch-fid's distance without the 2048x2048
    square root: equal to it within 1e-6 relative, seconds instead of a minute). 3D runs use the 2.5D
    features (mean FID over the three planes). Uses its own random generator: the training
    trajectory is the same with the hook on or off.
    """

    def __init__(self, cfg: Config, bundle, device, num_classes: int):
        from medsynth.metrics.features import FeatureExtractor

        self.extractor = FeatureExtractor(device=device)
        self.n = cfg.train.fid_samples
        self.seed = cfg.seed + 1000003
        self.num_classes = num_classes
        real = bundle.prepared.batch(bundle.train_indices, bundle.mapping)
        self.real = self._features(real)
        self.n_real = len(real)

    def _features(self, x: torch.Tensor):
        if x.dim() == 5:
            return self.extractor.features_25d(x)
        return {"2d": self.extractor.features(x)}

    @torch.no_grad()
    def __call__(self, generator: torch.nn.Module) -> float:
        from medsynth.metrics.fid import fid_from_features_fast

        was = generator.training
        generator.eval()
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.n, generator.latent_dim, generator=g)
        y = torch.arange(self.n) % self.num_classes if self.num_classes else None
        dev = next(generator.parameters()).device
        out = []
        for i in range(0, self.n, 64):
            out.append(generator(z[i:i + 64].to(dev), y[i:i + 64].to(dev) if y is not None else None).float().cpu())
        generator.train(was)
        fake = self._features(torch.cat(out).clamp_(-1, 1))
        return float(np.mean([fid_from_features_fast(self.real[k], fake[k]) for k in self.real]))


class _StopFlag:
    """First Ctrl-C (SIGINT) or SIGTERM (torchrun stopping its workers, Slurm preemption): finish the
    current step, save a checkpoint, stop. A second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _setup_device(cfg: Config, ctx: Context) -> torch.device:
    if not ctx.enabled:
        return select_device(cfg.train.device)
    try:
        return distributed.setup(ctx, cfg.train.device)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def _wrap_ddp(module: torch.nn.Module, device: torch.device, ctx: Context):
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def train(cfg: Config, run_dir: Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool | None = None, stop_after: int | None = None) -> TrainResult:
    """Train per ``cfg`` into ``run_dir``. ``stop_after`` ends early after that many steps (tests).

    Under torchrun (``WORLD_SIZE`` > 1) this is one rank of a distributed run: see
    :mod:`medsynth.training.distributed`."""
    ctx = distributed.context_from_env()
    # undo: what a failed start removes, "folder" or "contents"; aside: the run --overwrite replaces
    stage = {"undo": None, "started": False, "aside": None}
    try:
        return _train(cfg, run_dir, ctx, resume=resume, overwrite=overwrite, progress=progress, stop_after=stop_after,
                      stage=stage)
    except torch.cuda.OutOfMemoryError:   # anywhere: placing the networks or the data, or a step
        b = cfg.train.batch_size
        raise TrainingError(f"out of GPU memory at train.batch_size={b}; try train.batch_size={max(1, b // 2)} "
                            "(or train.device=cpu)") from None
    finally:
        # a fresh run that failed before its first step (a model setting refused, the data too small, out of
        # memory while placing the networks, Ctrl-C while caching) leaves nothing behind that the corrected
        # command would then refuse as "already exists"; an empty folder that was there before stays, one with
        # contents was refused before anything was written, and a run that --overwrite was replacing comes back
        if stage["undo"] and not stage["started"]:
            _discard(run_dir, keep_folder=stage["undo"] == "contents")
        if stage["aside"] is not None:      # not deleted yet: the new run never started, so the old one returns
            _put_back(stage["aside"], run_dir)
        distributed.teardown(ctx)


def _put_back(aside: Path, run_dir: Path) -> None:
    """Rename the replaced run back; _discard has already removed the new folder (a run moved aside
    makes the undo "folder")."""
    try:
        aside.rename(run_dir)
    except OSError as e:
        print(f"warning: could not put the previous run back at {run_dir} ({e}); it is at {aside}", file=sys.stderr)


def _discard(run_dir: Path, keep_folder: bool) -> None:
    """Remove what a failed start wrote: the folder itself, or only its contents when the folder was
    there before (empty, or emptied by --overwrite)."""
    if not keep_folder:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for child in run_dir.iterdir() if run_dir.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _train(cfg: Config, run_dir: Path, ctx: Context, *, resume: bool, overwrite: bool, progress, stop_after,
           stage: dict):
    main = ctx.is_main
    device = _setup_device(cfg, ctx)
    if main:
        existed = run_dir.exists()              # empty, or with a run that --overwrite replaces
        stage["aside"] = prepare_run_dir(run_dir, resume, overwrite)
        if not resume:
            stage["undo"] = "contents" if existed and stage["aside"] is None else "folder"
    ckpt_dir = run_dir / "checkpoints"
    if resume:        # checked before prepare_run_data rewrites config.yaml: a refused resume changes nothing
        path = latest_checkpoint(ckpt_dir)
        state = load_checkpoint(path)
        _check_model_name(state, cfg, str(path))
        check_lr_history(state.get("config", {}).get("train", {}), cfg.train, int(state["step"]))
        init_state, init_info = None, state.get("init_from")     # the weights come from the run itself
    elif cfg.train.init_from:
        init_state, init_info = _init_source(cfg)
    else:
        init_state, init_info = None, None
    torch.manual_seed(cfg.seed)
    if main:
        bundle = prepare_run_data(cfg, run_dir, progress=progress)
    distributed.barrier(ctx)           # rank 0 has built the tensor cache and written split.json
    if not main:
        bundle = prepare_run_data(cfg, run_dir, progress=False, write=False)
    num_classes = len(bundle.labels) if cfg.model.conditional else 0
    if cfg.model.conditional and num_classes < 2:
        raise TrainingError(f"model.conditional is true but the dataset has {num_classes} label(s) "
                            f"({', '.join(bundle.labels) or 'none'}); conditional models need at least two classes "
                            "(class folders or a manifest label column), or set model.conditional: false")
    image_shape = (1, *cfg.data.image_size)
    if bundle.prepared.images.shape[1:] != image_shape[1:]:
        raise TrainingError(f"the prepared images are {list(bundle.prepared.images.shape[1:])}, the config asks for "
                            f"{list(image_shape[1:])}")
    try:
        model = build_model(cfg.model, image_shape, num_classes)
    except ValueError as e:
        raise TrainingError(f"model.{cfg.model.name}: {e}") from None
    G, D = model.generator.to(device), model.discriminator.to(device)
    if init_state is not None:
        where = f"train.init_from {cfg.train.init_from}"
        _init_networks(init_state, init_info, G, D, num_classes, bundle.labels, where)
    jpeg_info = _set_jpeg_codec(G, bundle, cfg) if cfg.model.jpeg_output else None
    if main and jpeg_info is not None and progress is not False:
        print(f"model.jpeg_output: samples go through the JPEG compression of the {jpeg_info['files']} training "
              f"files (quantisation table {jpeg_info['table'][:4]}...)"
              f"{'' if jpeg_info['in_training'] else '; training steps do not (model.jpeg_in_training: false)'}",
              file=sys.stderr)
    if main and model.ignored:
        by_reason: dict[str, list[str]] = {}
        for key, reason in model.ignored.items():
            by_reason.setdefault(reason, []).append(f"model.{key}")
        for reason, keys in by_reason.items():
            print(f"warning: {cfg.model.name} ignores {', '.join(keys)}: {reason}", file=sys.stderr)
    lr_g = cfg.train.lr_g if cfg.train.lr_g is not None else model.lr_g
    lr_d = cfg.train.lr_d if cfg.train.lr_d is not None else model.lr_d
    betas = tuple(cfg.train.betas) if cfg.train.betas is not None else model.betas
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if model.ema else None
    if ema is not None and init_state is not None and init_state.get("ema") is not None:
        ema.load_state_dict(init_state["ema"])
    init_state = None
    gen = torch.Generator().manual_seed(cfg.seed)
    source = BatchSource(bundle, cfg.train.batch_size, device, gen, ctx)
    step, best = 0, None
    if resume:
        G.load_state_dict(state["generator"])
        D.load_state_dict(state["discriminator"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        gen.set_state(state["rng"]["loop"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and device.type == "cuda" and not ctx.enabled:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        source.load_state(state["batches"])
        step, best = int(state["step"]), state.get("best")
        if main:
            was = state.get("world_size", 1)
            print(f"resuming {run_dir} at step {step}"
                  + (f" (written by {was} rank(s), now {ctx.world_size})" if was != ctx.world_size else ""),
                  file=sys.stderr)
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))

    precision = select_precision(cfg.train.precision, device)
    amp = precision == "bf16"
    if amp:   # channels-last is what oneDNN and cuDNN's bf16 convolutions run fastest on
        fmt = torch.channels_last if len(image_shape) == 3 else torch.channels_last_3d
        G = G.to(memory_format=fmt)
        D = D.to(memory_format=fmt)
        if ema is not None:
            ema = ema.to(memory_format=fmt)
    use_compile = cfg.train.compile if cfg.train.compile is not None else auto_compile(
        device, cfg.train.steps, precision, ctx.enabled)
    G_run, D_run = _compiled(G, D, model, device, image_shape, num_classes, amp) if use_compile else (G, D)
    runtime = {"device": device.type, "precision": precision, "compiled": G_run is not G}
    # G and D as DistributedDataParallel modules when distributed (gradients averaged over ranks);
    # the generator step calls the plain D, whose weights take no gradient there
    g_step, d_step, d_frozen = _wrap_ddp(G_run, device, ctx), _wrap_ddp(D_run, device, ctx), D_run
    if main and progress is not False:
        print(f"training {cfg.model.name} on {device} ({precision}"
              f"{', compiled' if G_run is not G else ''}), batch {cfg.train.batch_size}"
              + (f" per rank x {ctx.world_size} ranks = {source.global_batch} per step (learning rates as "
                 f"configured, not scaled: G {lr_g:g}, D {lr_d:g})" if ctx.enabled else ""), file=sys.stderr)
    # fixed latents for the grids, independent of the loop's generator
    grid_gen = torch.Generator().manual_seed(cfg.seed + 12345)
    n_grid = 16 if num_classes == 0 else max(num_classes, 4) * 4
    grid_z = torch.randn(n_grid, G.latent_dim, generator=grid_gen).to(device)
    grid_y = (torch.arange(n_grid) % num_classes).to(device) if num_classes else None
    fid_hook = FidHook(cfg, bundle, device, num_classes) if (cfg.train.fid_every and main) else None
    writer = _tensorboard(run_dir) if main else None
    log_path = run_dir / "train_log.jsonl"
    kinds = model.augment
    shift = model.augment_translation
    ada = AdaptiveP(model.ada_target, model.ada_images, source.global_batch) if (
        kinds and model.ada_target is not None) else None
    if ada is not None and resume and state.get("ada") is not None:
        ada.load_state(state["ada"])
    aug_p = ada.p if ada is not None else model.augment_p
    lecam = LeCam(model.lecam) if model.lecam > 0 else None
    if lecam is not None and resume and state.get("lecam") is not None:
        lecam.load_state(state["lecam"])
    d_steps = cfg.train.d_steps if cfg.train.d_steps is not None else model.d_steps
    total = cfg.train.steps
    end = total if stop_after is None else min(total, step + stop_after)
    b = cfg.train.batch_size
    part = (ctx.rank * b, source.global_batch)    # this rank's rows of the global batch's random draws
    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, desc="training", unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=(True if not main else None if progress is None else not progress))
    t0, seen0 = time.perf_counter(), step
    interrupted = False
    last_saved = None
    ips = 0.0

    standing_at = None

    def standing(at_step):
        """The EMA generator's standing batch-norm statistics, once per step they are needed."""
        nonlocal standing_at
        if ema is not None and standing_at != at_step:
            standing_stats(ema, num_classes, b, device, cfg.seed + 777)
            standing_at = at_step

    def save(at_step):
        nonlocal last_saved
        path = ckpt_dir / f"step_{at_step:07d}.pt"
        standing(at_step)
        distributed.broadcast_buffers(ctx, [G, D] + ([ema] if ema is not None else []))
        if ctx.enabled and not distributed.same_on_all_ranks(ctx, [G, D], device):
            raise TrainingError(f"step {at_step}: the ranks' weights differ; not writing a checkpoint")
        if main:
            save_checkpoint(path, _checkpoint_state(cfg, model, ema, opt_g, opt_d, at_step, gen, source, bundle, best,
                                                    ctx.world_size, ada, runtime, lecam, init_info, jpeg_info))
            prune(ckpt_dir, cfg.train.keep_last)
        last_saved = path
        return path

    stop = _StopFlag()
    stage["started"] = True
    if stage["aside"] is not None:        # the new run is set up: the one it replaces goes now
        _delete_replaced(stage["aside"])
        stage["aside"] = None
    try:
        while step < end:
            if cfg.train.lr_decay_start is not None:
                factor = lr_factor(cfg.train, step)
                for opt, base in ((opt_g, lr_g), (opt_d, lr_d)):
                    for group in opt.param_groups:
                        group["lr"] = base * factor
            real, y = source.next()
            y = y if num_classes else None
            # generator first, as in MONAI's tutorial: its output is then reused (detached) for the
            # discriminator updates, so G runs forward once per step; D's weights need no gradient here
            z = torch.randn(source.global_batch, G.latent_dim, generator=gen)[part[0]:part[0] + b].to(device)
            D.requires_grad_(False)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                fake = g_step(z, y)
                f_in = augment(fake, kinds, gen, part, aug_p, shift) if kinds else fake
                loss_g = g_loss(model.loss, d_frozen(f_in, y).float())
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            # discriminator: d_steps updates on the same real and generated batch
            fake = fake.detach()
            for _ in range(d_steps):
                # lazy R1 (Karras et al. 2020): the penalty every R1_EVERY steps, scaled by R1_EVERY; its
                # double backward bypasses DDP, so those steps average D's gradients by hand
                r1 = model.r1_gamma > 0 and step % R1_EVERY == 0
                net = D if r1 else d_step
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    r_in = augment(real, kinds, gen, part, aug_p, shift) if kinds else real
                    f_in = augment(fake, kinds, gen, part, aug_p, shift) if kinds else fake
                    if r1:
                        r_in = r_in.detach().requires_grad_(True)
                    if model.d_recon > 0:
                        real_logits, fake_logits, rec_loss = _d_pair_recon(net, r_in, f_in, y, model.d_per_sample)
                        loss_d = d_loss(model.loss, real_logits, fake_logits) + model.d_recon * rec_loss
                    else:
                        real_logits, fake_logits = _d_pair(net, r_in, f_in, y, model.d_per_sample)
                        loss_d = d_loss(model.loss, real_logits, fake_logits)
                    reg = lecam.penalty(real_logits, fake_logits) if lecam is not None else None
                    if reg is not None:
                        loss_d = loss_d + reg
                if r1:
                    grad, = torch.autograd.grad(real_logits.sum(), r_in, create_graph=True)
                    penalty = grad.float().pow(2).flatten(1).sum(1).mean()
                    loss_d = loss_d + penalty * (model.r1_gamma / 2 * R1_EVERY)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                if r1:
                    distributed.average_gradients(ctx, D)
                opt_d.step()
                if ada is not None:
                    ada.observe(real_logits)
            if ema is not None:
                # ramp-up: with a fixed 0.999, the EMA would still hold 0.999^1000 = 37% of the initial
                # weights after 1,000 steps; (1 + t) / (10 + t) lets it follow early training
                update_ema(ema, G, min(model.extra.get("ema_decay", 0.999), (1 + step) / (10 + step)))
            step += 1
            scalars = [loss_d.detach().item(), loss_g.detach().item()]
            if lecam is not None:
                scalars += [real_logits.detach().mean().item(), fake_logits.detach().mean().item()]
            (ld, lg, *means), stopping = distributed.mean_and_any(ctx, scalars, stop.requested, device)
            if lecam is not None:
                lecam.update(*means)
            if ada is not None and ada.due(step):
                (rt,), _ = distributed.mean_and_any(ctx, [ada.local_rt()], False, device)
                aug_p = ada.adjust(rt)
            if not (math.isfinite(ld) and math.isfinite(lg)):
                raise TrainingError(f"losses became non-finite at step {step} (D {ld}, G {lg}); "
                                    "try a lower learning rate (train.lr_g / train.lr_d)")
            elapsed = time.perf_counter() - t0
            ips = (step - seen0) * source.global_batch / max(elapsed, 1e-9)
            if main:
                bar.update(1)
                bar.set_postfix(loss_d=f"{ld:.3f}", loss_g=f"{lg:.3f}", img_s=f"{ips:.0f}", refresh=False)
                if writer is not None:
                    writer.add_scalar("loss/d", ld, step)
                    writer.add_scalar("loss/g", lg, step)
                    writer.add_scalar("speed/images_per_s", ips, step)
                    if ada is not None:
                        writer.add_scalar("augment/p", aug_p, step)
                if step % 10 == 0 or step == end:
                    rec = {"step": step, "loss_d": ld, "loss_g": lg, "images_per_s": ips}
                    if ada is not None:
                        rec.update(augment_p=aug_p, ada_rt=ada.rt)
                    with open(log_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                if step % cfg.train.grid_every == 0 or step == total:
                    standing(step)
                    save_grid(ema if ema is not None else G, grid_z, grid_y,
                              run_dir / "samples" / f"grid_{step:07d}.png")
            if fid_hook is not None and (step % cfg.train.fid_every == 0 or step == total):
                standing(step)
                fid = fid_hook(ema if ema is not None else G)
                is_best = best is None or fid < best["fid"]
                if is_best:
                    best = {"fid": fid, "step": step}
                append_jsonl(run_dir / "metrics.jsonl", {"step": step, "fid": fid, "n_real": fid_hook.n_real,
                                                          "n_synthetic": fid_hook.n, "source": "training",
                                                          "best": is_best, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
                if writer is not None:
                    writer.add_scalar("metrics/fid", fid, step)
                bar.write(f"step {step}: FID {fid:.2f} ({fid_hook.n} samples){' (best)' if is_best else ''}",
                          file=sys.stderr)
                if is_best:
                    save_checkpoint(ckpt_dir / "best.pt", _checkpoint_state(cfg, model, ema, opt_g, opt_d, step, gen,
                                                                            source, bundle, best, ctx.world_size, ada,
                                                                            runtime, lecam, init_info, jpeg_info))
            if step % cfg.train.checkpoint_every == 0 or step == end or stopping:
                save(step)
            if stopping:
                break
        interrupted = stopping if step > seen0 else stop.requested
    finally:
        stop.restore()
        bar.close()
        if writer is not None:
            writer.close()
    if last_saved is None:
        last_saved = latest_checkpoint(ckpt_dir) if main else None
        last_saved = last_saved or save(step)
    distributed.barrier(ctx)           # no rank leaves before rank 0 has written its checkpoint
    return TrainResult(run_dir, step, last_saved, ips, interrupted, model, ema)
