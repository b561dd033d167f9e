"""Trained generators shipped inside the package: ``medsynth generate --model NAME`` without training.

Each model is two files in this folder: ``NAME.pt``, a generator-only checkpoint (the EMA
generator's weights in float16, plus what sampling and export need: config, labels, intensity
mapping, geometry, data fingerprint; no discriminator, optimiser or image data; loaded with
``weights_only=True``), and ``NAME.md``, its model card (data, licence, training, fidelity and
privacy results). :func:`package_model` makes the pair from a training run.

    medsynth generate --list-models
    medsynth generate --model mednist64-conditional -n 64 --label CXR --out cxr/

From Python, ``medsynth.load_generator(medsynth.zoo.model_path(NAME))``.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
GENERATOR_ONLY = ("medsynth_version", "model_name", "config", "image_shape", "labels", "conditional", "intensity",
                  "geometry", "data_fingerprint", "step", "world_size")


class ZooError(ValueError):
    """An unknown model name, or a run that cannot be packaged."""


def available() -> list[str]:
    """Names of the shipped models (each has NAME.pt and NAME.md)."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.pt") if p.with_suffix(".md").is_file())


def model_path(name: str) -> Path:
    if name not in available():
        shipped = ", ".join(available()) or "none"
        raise ZooError(f"unknown model {name!r}; shipped models: {shipped} (medsynth generate --list-models)")
    return ZOO_DIR / f"{name}.pt"


def card(name: str) -> str:
    return model_path(name).with_suffix(".md").read_text(encoding="utf-8")


def summary(name: str) -> str:
    """The card's first paragraph after its title: one line for --list-models."""
    lines = [ln.strip() for ln in card(name).splitlines()]
    body = [ln for ln in lines[1:] if ln and not ln.startswith("#")]
    return body[0] if body else ""


def package_model(checkpoint, out: Path) -> Path:
    """Write the generator-only checkpoint ``out`` (NAME.pt) from a training checkpoint: the EMA
    weights (else the generator's) in float16 and the metadata sampling needs. Returns ``out``."""
    from medsynth.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    weights = state.get("ema") or state.get("generator")
    if weights is None:
        raise ZooError(f"{checkpoint}: no generator weights")
    slim = {k: state[k] for k in GENERATOR_ONLY if k in state}
    slim["ema"] = {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()}
    slim["generator"] = None
    slim["source_checkpoint_sha256"] = _sha256(Path(checkpoint))
    save_checkpoint(out, slim)
    return Path(out)


def _sha256(path: Path) -> str:
    from medsynth.training.checkpoint import file_sha256

    return file_sha256(path)

