"""Typed configuration: dataclasses, YAML files, dotted command-line overrides, validation.

One defaults table (the dataclasses below) serves the CLI and the Python API. A config file only
states what differs from the defaults; ``resolve_config`` merges defaults, the file and
``key=value`` overrides, validates the result and returns a :class:`Config`. Every problem is a
:class:`ConfigError` whose message names the key and where it came from (the file or the command
line), e.g. ``configs/x.yaml: data.image_size: expected a list of integers, got 'big'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# DiffAugment's largest translation, as a fraction of each side (Zhao et al. 2020); the one default
# that model.augment_translation, GanModel and the augmentation functions share
TRANSLATION_RATIO = 0.125

REQUIRED: Any = "<required>"
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key and the source."""


def _choice(default, *choices, help=""):
    return field(default=default, metadata={"choices": choices, "help": help})


def _opt(default, help="", **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: list(d) if isinstance(d, list) else dict(d),
                     metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class IntensityConfig:
    """How source intensities map to the network's [-1, 1] range (recorded so export can invert it)."""

    mode: str = _choice("percentile", "percentile", "window",
                        help="percentile: window from dataset-level percentiles of the training split; "
                             "window: a fixed [min, max] in source units (e.g. HU)")
    lower: float = _opt(0.5, "lower percentile (percentile mode)", min=0.0, max=100.0)
    upper: float = _opt(99.5, "upper percentile (percentile mode)", min=0.0, max=100.0)
    window: list[float] | None = _opt(None, "[min, max] in source units (window mode)")


@dataclass
class DataConfig:
    """Where the images are and how they become training tensors."""

    path: str = _opt(REQUIRED, "dataset folder, or sample:mednist / sample:ixi for the bundled sample")
    manifest: str | None = _opt(None, "CSV manifest with columns path,label,patient_id[,split]")
    layout: str = _choice("auto", "auto", "class-folders", "flat", "manifest",
                          help="auto: class folders when the top level holds only folders, else flat")
    labels: list[str] | None = _opt(None, "keep only these labels (default: all)")
    patient_pattern: str | None = _opt(
        None, "regular expression applied to the file path relative to the dataset; group 1 is the "
              "patient ID (overrides DICOM PatientID and IXI-style names)")
    mode: str = _choice("2d", "2d", "3d", help="2d: images or slices of volumes; 3d: whole volumes")
    image_size: list[int] = _opt([64, 64], "output size: [H, W] in 2d mode, [X, Y, Z] in 3d mode")
    resize: str = _choice("pad", "pad", "crop", "stretch",
                          help="how a non-square 2D image reaches image_size: pad to square, "
                               "centre-crop to square, or stretch")
    slice_axis: str = _choice("axial", "axial", "coronal", "sagittal",
                              help="2d mode: the plane slices are taken in (after reorienting to RAS)")
    slice_range: list[float] = _opt([0.0, 1.0], "2d mode: [start, end] fraction of the volume along "
                                                "the slice axis to keep")
    min_foreground: float = _opt(0.05, "2d mode: drop volume slices whose foreground fraction is "
                                       "below this (0 keeps all)", min=0.0, max=1.0)
    spacing: list[float] | None = _opt(None, "resample volumes to this voxel spacing in mm before "
                                             "slicing/resizing (3d: [x, y, z]; 2d: in-plane [row, col])")
    volume_index: int | None = _opt(None, "which volume of a 4D NIfTI to use", min=0)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    holdout_fraction: float = _opt(0.2, "share of PATIENTS held out for evaluation and privacy checks",
                                   min=0.0, max=0.9)
    split_seed: int = _opt(0, "seed of the patient-level train/holdout split")
    cache: bool = _opt(True, "keep preprocessed tensors on disk and reuse them")
    cache_dir: str | None = _opt(None, "tensor cache folder (default: $MEDSYNTH_CACHE_DIR or "
                                       "~/.cache/medsynth)")
    workers: int = _opt(0, "processes for the cold preprocessing pass (0: one per CPU core, at most 8)",
                        min=0)


@dataclass
class ModelConfig:
    """Which generator/discriminator pair to build (see medsynth.models and docs/training.md)."""

    name: str = _choice("resgan", "resgan", "dcgan",
                        help="resgan: residual, spectrally normalised, conditional GAN with EMA and "
                             "augmentation (default); dcgan: MONAI's GAN tutorial networks (baseline)")
    latent_dim: int = _opt(64, "size of the latent vector", min=1)
    conditional: bool = _opt(False, "condition on the dataset's labels (needs at least two)")
    width: int = _opt(32, "resgan: channels at full resolution (doubling per halving, at most 256)", min=4)
    d_width: int | None = _opt(None, "resgan: the discriminator's channels at full resolution (doubling per halving, "
                                     "at most max(256, 8 x d_width)); unset: model.width", min=4)
    d_regularization: str = _choice("spectral_norm", "spectral_norm", "r1",
                                    help="resgan: how the discriminator is kept smooth: spectral normalisation of "
                                         "every weight with the hinge loss, or an R1 gradient penalty on real "
                                         "images (lazy, every 16 steps) with the non-saturating loss")
    g_norm: str = _choice("batch", "batch", "pixel",
                          help="resgan: generator normalisation: batch (batch norm, class-conditional gain and "
                               "bias) or pixel (per-sample feature normalisation: a sample never depends on its "
                               "batch; for per-device batches of a few volumes; more prone to mode collapse)")
    g_upsample: str = _choice("nearest", "nearest", "linear",
                              help="resgan: the generator's 2x upsampling: nearest (repeats each value) or linear "
                                   "(bilinear in 2D, trilinear in 3D: smoother, fewer blocky and striped "
                                   "artefacts)")
    d_norm: str = _choice("none", "none", "instance",
                          help="resgan (resnet discriminator): normalisation after each discriminator convolution: "
                               "none, or instance (per image and channel, with a learned gain and bias; each "
                               "image is judged on its own, so R1 and the concatenated real/fake pass still hold)")
    d_mbstd: int = _opt(0, "resgan (resnet discriminator): group size of a minibatch standard deviation feature "
                           "before the last discriminator block (Karras et al. 2018): lets D see when the "
                           "generator's samples look alike; real and generated images then go through D in "
                           "separate passes; 0: off", min=0)
    d_class_init: str = _choice("normal", "normal", "zero",
                                help="resgan (conditional, resnet discriminator, d_regularization r1): initial class "
                                     "embedding of the projection head: normal (N(0, 1), PyTorch's default) or zero "
                                     "(the discriminator starts unconditional and learns the class term; kept R1 "
                                     "with instance norm stable where normal ran away); spectral norm needs normal")
    discriminator: str = _choice("resnet", "resnet", "patch",
                                 help="resgan: resnet (residual, projection-conditioned, global score) or patch "
                                      "(MONAI PatchDiscriminator: a score per patch, unconditional; light for 3D)")
    checkpointing: bool = _opt(False, "resgan: gradient checkpointing of the network blocks (less activation "
                                      "memory for large 3D volumes, about a third more compute; the discriminator "
                                      "is checkpointed only with d_regularization r1)")
    r1_gamma: float = _opt(1.0, "resgan with d_regularization r1: weight of the R1 penalty", min=0.0)
    d_recon: float = _opt(0.0, "resgan (resnet discriminator): weight of a self-supervised loss that makes the "
                               "discriminator reconstruct real images from its 8x8 features (FastGAN, Liu et al. "
                               "2021); 0: off", min=0.0)
    lecam_weight: float = _opt(0.0, "resgan: weight of the LeCam regulariser on the discriminator (Tseng et al. "
                                    "2021, for small datasets): penalises real scores above, and generated scores "
                                    "below, the moving average of the other kind's scores; the paper's BigGAN runs "
                                    "use 0.3; 0: off", min=0.0)
    augment: list[str] | None = _opt(None, "resgan: differentiable augmentations applied to every image the "
                                           "discriminator sees, from translation, cutout, intensity (default: all "
                                           "three; [] for none)")
    augment_translation: float = _opt(
        TRANSLATION_RATIO, "resgan: largest shift of the translation augmentation, as a fraction of each side (at "
                           "least one pixel, so above 0; to turn translation off, leave it out of augment; "
                           "DiffAugment's 1/8)", min=0.0, max=0.5)
    augment_p: float = _opt(1.0, "resgan: probability that each augmentation is applied to each image (1: always, "
                                 "as DiffAugment; ignored when ada_target is set)", min=0.0, max=1.0)
    ada_target: float | None = _opt(None, "resgan: adaptive augmentation (ADA, Karras et al. 2020): p starts at 0 and "
                                          "follows the discriminator's overfitting, keeping the share of training "
                                          "images it scores as real (E[sign D(real)]) near this target (the paper: "
                                          "0.6); unset: fixed augment_p", min=0.0, max=1.0)
    ada_images: int = _opt(100000, "resgan with ada_target: images over which p can move from 0 to 1 (the paper: "
                                   "500k)", min=1)
    jpeg_output: bool = _opt(False, "any model, 2D: the generator ends in the JPEG compression that stored the "
                                    "training images (their quantisation table, read from the files, which must "
                                    "all be 8-bit grayscale JPEGs of data.image_size sharing one table), in "
                                    "sampling and (see jpeg_in_training) training: samples carry the same 8x8-block "
                                    "artefacts as the training files (docs/training.md)")
    jpeg_in_training: bool = _opt(True, "with jpeg_output: true (the default) also puts the codec between the "
                                        "generator and the discriminator in training; false applies it only to the "
                                        "images the run draws (sample grids, the FID hook, generate, evaluate, "
                                        "privacy, export), so the "
                                        "network learns without the codec's rounding in its gradients "
                                        "(docs/training.md)")


@dataclass
class TrainConfig:
    """Optimisation settings; unset learning rates and betas take the model's own recipe."""

    batch_size: int = _opt(64, "images per step", min=1)
    steps: int = _opt(1000, "optimisation steps (each: one discriminator and one generator update)", min=1)
    lr_g: float | None = _opt(None, "generator learning rate (default: the model's; dcgan 2e-4, resgan 5e-5)", min=0.0)
    lr_d: float | None = _opt(None, "discriminator learning rate (default: the model's, 2e-4 for both)", min=0.0)
    betas: list[float] | None = _opt(None, "Adam betas (default: the model's; dcgan [0.5, 0.999], "
                                           "resgan [0.0, 0.99])")
    lr_decay_start: int | None = _opt(None, "step from which both learning rates decay linearly, reaching "
                                            "lr x train.lr_decay_final at train.steps (null: constant rates); "
                                            "may be set or moved on --resume while it is not before the "
                                            "checkpoint's step", min=0)
    lr_decay_final: float = _opt(0.0, "fraction of the learning rates left at train.steps when "
                                      "train.lr_decay_start is set", min=0.0, max=1.0)
    d_steps: int | None = _opt(None, "discriminator updates per generator update (default: the model's; "
                                     "dcgan 5 as in MONAI's tutorial, resgan 1)", min=1)
    device: str = _opt("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    precision: str = _choice("auto", "auto", "bf16", "fp32",
                             help="bf16: bfloat16 autocast with channels-last memory; fp32: plain float32; auto: bf16 "
                                  "on CUDA and on CPUs with native bfloat16 instructions (AVX512-BF16 or AMX), "
                                  "else fp32")
    compile: bool | None = _opt(None, "torch.compile the networks (the discriminator only without spectral "
                                      "norm); null = auto: on for CUDA, and on a CPU for float32 runs of 2000+ "
                                      "steps (not bf16 there: slower than eager); falls back to eager with a "
                                      "warning when compilation fails")
    checkpoint_every: int = _opt(500, "steps between checkpoints", min=1)
    keep_last: int = _opt(3, "step checkpoints kept (older ones are deleted)", min=1)
    grid_every: int = _opt(250, "steps between sample-grid images in samples/", min=1)
    fid_every: int = _opt(0, "steps between FID evaluations during training (0: off); each one also keeps "
                             "checkpoints/best.pt, the checkpoint with the lowest FID so far", min=0)
    fid_samples: int = _opt(1000, "synthetic images per training-time FID (against the training split)", min=2)
    init_from: str | None = _opt(None, "fine-tune: start the generator, its EMA copy and the discriminator from "
                                       "this run's newest checkpoint (or this checkpoint file) instead of at random, "
                                       "e.g. a model trained on a larger dataset; optimiser, step and augmentation "
                                       "state start fresh. The source must be the same model with the same "
                                       "network shapes and image size (and, if conditional, the same labels)")


@dataclass
class Config:
    """The whole run configuration; written out in full as config.yaml in the run directory."""

    name: str = _opt("run", "run name (default run directory: runs/<name>)")
    seed: int = _opt(0, "seed for everything random in training")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Building and checking


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}s"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, where: str, source: str):
    """Check ``value`` against type ``tp``; return the converted value or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where, source)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, inner, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; everyone writes it anyway
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")  # programming error, not a user error


def _build(cls, raw: dict, prefix: str, sources: dict[str, str], default_source: str):
    """Build dataclass ``cls`` from ``raw``; ``sources`` maps dotted keys to where they were set."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{prefix}{key}"
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else f" (known keys: {', '.join(fields)})"
            raise ConfigError(f"{_source_of(where, sources, default_source)}: unknown key '{where}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        where = f"{prefix}{name}"
        tp = hints[name]
        src = _source_of(where, sources, default_source)
        if dataclasses.is_dataclass(tp):
            sub = raw.get(name, {})
            if sub is None:
                sub = {}
            if not isinstance(sub, dict):
                raise ConfigError(f"{src}: {where}: expected a mapping of keys, got {sub!r}")
            kwargs[name] = _build(tp, sub, where + ".", sources, default_source)
            continue
        if name in raw:
            value = _convert(raw[name], tp, where, src)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        if value is REQUIRED:
            raise ConfigError(f"{src}: missing required value '{where}'")
        meta = f.metadata
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{src}: {where}: must be one of {', '.join(meta['choices'])}; got {value!r}")
        for bound, ok in (("min", lambda v, b: v >= b), ("max", lambda v, b: v <= b)):
            if bound in meta and isinstance(value, (int, float)) and not ok(value, meta[bound]):
                word = "at least" if bound == "min" else "at most"
                raise ConfigError(f"{src}: {where}: must be {word} {meta[bound]}; got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _source_of(key: str, sources: dict[str, str], default: str) -> str:
    # the most specific source recorded for this key or one of its parents
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        k = ".".join(parts[:i])
        if k in sources:
            return sources[k]
    return default


def _validate(cfg: Config, sources: dict[str, str], default_source: str) -> None:
    d = cfg.data

    def err(key, msg):
        raise ConfigError(f"{_source_of(key, sources, default_source)}: {key}: {msg}")

    want = 2 if d.mode == "2d" else 3
    if len(d.image_size) != want:
        err("data.image_size", f"{d.mode} mode needs {want} sizes, got {d.image_size}")
    if any(s < 1 for s in d.image_size):
        err("data.image_size", f"sizes must be positive, got {d.image_size}")
    if len(d.slice_range) != 2 or not 0.0 <= d.slice_range[0] < d.slice_range[1] <= 1.0:
        err("data.slice_range", f"expected [start, end] with 0 <= start < end <= 1, got {d.slice_range}")
    if d.spacing is not None:
        n = 3 if d.mode == "3d" else 2
        if len(d.spacing) != n or any(s <= 0 for s in d.spacing):
            err("data.spacing", f"{d.mode} mode needs {n} positive spacings in mm, got {d.spacing}")
    it = d.intensity
    if it.mode == "window":
        if it.window is None or len(it.window) != 2 or not it.window[0] < it.window[1]:
            err("data.intensity.window", f"window mode needs [min, max] with min < max, got {it.window}")
    elif not it.lower < it.upper:
        err("data.intensity.lower", f"lower percentile ({it.lower}) must be below upper ({it.upper})")
    if d.layout == "manifest" and not d.manifest:
        err("data.layout", "layout 'manifest' needs data.manifest")
    if d.patient_pattern is not None:
        try:
            if re.compile(d.patient_pattern).groups < 1:
                err("data.patient_pattern", "needs one capturing group for the patient ID, e.g. '^(\\d+)_'")
        except re.error as e:
            err("data.patient_pattern", f"not a valid regular expression: {e}")
    if cfg.model.augment is not None:
        from medsynth.training.augment import check_kinds

        try:
            check_kinds(cfg.model.augment)
        except ValueError as e:
            err("model.augment", str(e))
    if not cfg.model.jpeg_in_training and not cfg.model.jpeg_output:
        err("model.jpeg_in_training", "applies only with model.jpeg_output: true (there is no codec to leave out of "
                                      "training)")
    if cfg.train.lr_decay_start is not None and cfg.train.lr_decay_start >= cfg.train.steps:
        err("train.lr_decay_start", f"the decay must start before train.steps ({cfg.train.steps}); "
                                    f"got {cfg.train.lr_decay_start}")
    if cfg.train.betas is not None and len(cfg.train.betas) != 2:
        err("train.betas", f"expected two numbers, got {cfg.train.betas}")


# --------------------------------------------------------------------------------------------
# Public entry points


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.batch_size=64'`` -> ``('train.batch_size', 64)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} must look like key=value, e.g. train.batch_size=64")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"command line: override {text!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def resolve_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                   base: dict | None = None) -> Config:
    """Defaults <- ``base`` dict <- YAML file <- overrides (``["a.b=1"]`` or ``{"a.b": 1}``)."""
    source = str(path) if path is not None else "defaults"
    raw: dict = {}
    sources: dict[str, str] = {}
    if base:
        _merge(raw, base)
    if path is not None:
        _merge(raw, load_yaml(path))
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set_dotted(raw, key, value)
        sources[key] = "command line"
    cfg = _build(Config, raw, "", sources, source)
    _validate(cfg, sources, source)
    return cfg


def config_from_dict(raw: dict, source: str = "checkpoint") -> Config:
    """Rebuild a Config from its ``to_dict()`` form (e.g. stored in a checkpoint or config.yaml)."""
    cfg = _build(Config, raw, "", {}, source)
    _validate(cfg, {}, source)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def _set_dotted(raw: dict, key: str, value) -> None:
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def describe_keys(cls=Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) rows for documentation and ``--help`` epilogues."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_keys(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = ("one of " + ", ".join(f.metadata["choices"])) if "choices" in f.metadata else _type_name(tp)
        rows.append((prefix + f.name, kind, default, f.metadata.get("help", "")))
    return rows


def reference_markdown() -> str:
    """docs/configuration.md, generated from the dataclasses (a test keeps the file in sync)."""
    lines = ["# Configuration reference", "",
             "Generated from `medsynth/config.py` by `python -m medsynth.config > docs/configuration.md`.",
             "A config file states only what differs from these defaults; `key=value` arguments on the",
             "command line override the file. Values are read as YAML (`data.labels=[CXR]`, `data.cache=false`).",
             "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, help_text in describe_keys():
        text = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        shown = "required" if default is REQUIRED else f"`{text}`"
        lines.append(f"| `{key}` | {tp} | {shown} | {help_text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
