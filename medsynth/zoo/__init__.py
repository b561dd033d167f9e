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
                  "geometry", "data_fingerprint", "step", "world_size", "runtime", "init_from", "jpeg_output")
# buffers that are settings, not learned weights: float16 would shift them (a percentile window such as
# 12.3..240.7 grey levels is off by up to 0.06 after rounding), so they stay as trained
KEEP_FLOAT32 = ("jpeg_table", "jpeg_window")


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
    weights (else the generator's) in float16 (the JPEG codec's table and window stay float32) and the
    metadata sampling needs. Returns ``out``."""
    from medsynth.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    weights = state.get("ema") or state.get("generator")
    if weights is None:
        raise ZooError(f"{checkpoint}: no generator weights")
    slim = {k: state[k] for k in GENERATOR_ONLY if k in state}
    slim["ema"] = {k: (v.half() if v.is_floating_point() and k.rsplit(".", 1)[-1] not in KEEP_FLOAT32 else v)
                   for k, v in weights.items()}
    slim["generator"] = None
    slim["source_checkpoint_sha256"] = _sha256(Path(checkpoint))
    save_checkpoint(out, slim)
    return Path(out)


def _sha256(path: Path) -> str:
    from medsynth.training.checkpoint import file_sha256

    return file_sha256(path)



def model_card(run_dir, name: str, *, title: str, summary_line: str, data: str, licence: str,
               hardware: str, notes: str = "") -> str:
    """A model card for a packaged run, its numbers read from the run's own files: the newest
    ``medsynth evaluate`` line of metrics.jsonl and privacy.json (each says so when missing)."""
    import json

    from medsynth.sampling import load_generator

    run_dir = Path(run_dir)
    g = load_generator(run_dir, device="cpu")
    cfg = g.state["config"]
    evals = []
    if (run_dir / "metrics.jsonl").is_file():
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("source") != "training":
                evals.append(rec)
    ev = evals[-1] if evals else None
    priv = json.loads((run_dir / "privacy.json").read_text()) if (run_dir / "privacy.json").is_file() else None
    steps, batch = g.state["step"], cfg["train"]["batch_size"]
    lines = [f"# {title}", "", summary_line, "",
             "## Data", "", data, "",
             "## Licence", "", licence, "",
             "## Training", "",
             f"* model `{cfg['model']['name']}`, width {cfg['model']['width']}, latent {cfg['model']['latent_dim']}, "
             f"{'conditional on ' + ', '.join(g.labels) if g.conditional else 'unconditional'}; image "
             f"{'x'.join(map(str, g.image_shape[1:]))}",
             f"* {steps} steps of batch {batch} ({steps * batch:,} images seen), seed {cfg['seed']}; {hardware}",
             f"* intensity mapping: {g.mapping.mode}, [{g.mapping.source_min:.4g}, {g.mapping.source_max:.4g}] "
             "-> [-1, 1] (export writes source units)",
             f"* training data fingerprint (SHA-256 of the preprocessed training tensors): "
             f"`{g.state.get('data_fingerprint', '?')}`",
             f"* shipped: the EMA generator only, float16 weights; medsynth {g.state.get('medsynth_version', '?')}", ""]
    nan = float("nan")
    lines += ["## Fidelity (FID ratio)", ""]
    if ev:
        r = ev.get("fid_ratio") or {}
        lines += [f"`medsynth evaluate` of {ev['n_synthetic']} samples against the {ev['n_real']} training images "
                  f"(FID {ev.get('fid_method', 'fast')}):", "",
                  "| metric | value |", "|---|---|",
                  f"| FID | {ev['fid']:.1f} |",
                  f"| FID ratio FID(synthetic, holdout) / FID(train, holdout) | {r.get('fid_ratio', nan):.2f} "
                  f"({r.get('fid_synthetic_holdout', nan):.1f} / {r.get('fid_train_holdout', nan):.1f}) |",
                  f"| KID | {ev.get('kid_mean', nan):.4f} ± {ev.get('kid_std', nan):.4f} |",
                  f"| precision / recall | {ev.get('precision', nan):.3f} / {ev.get('recall', nan):.3f} |",
                  f"| density / coverage | {ev.get('density', nan):.3f} / {ev.get('coverage', nan):.3f} |"]
        for lab, pc in (ev.get("per_class") or {}).items():
            lines.append(f"| FID {lab} ({pc['n_synthetic']} vs {pc['n_real']}) | {pc['fid']:.1f} |")
        lines.append("")
    else:
        lines += ["Not evaluated (run `medsynth evaluate RUN`).", ""]
    lines += ["## Privacy", ""]
    if priv:
        mem, lim = priv["memorization"], priv["limits"]
        aucs = ", ".join(f"{k} {m['auc']:.3f}" for k, m in priv["membership"]["distance"].items())
        lines += [f"`medsynth privacy` verdict **{priv['verdict']}** on {priv['n']['synthetic']} samples against "
                  f"{priv['n']['train']} training and {priv['n']['holdout']} holdout images: memorized "
                  f"{mem['memorized']} ({mem['memorized_share']:.2%}; limit {lim['max_memorized']:.0%}); "
                  f"distance-attack membership AUC {aucs} (limit {lim['max_mia_auc']}).", ""]
    else:
        lines += ["Not checked (run `medsynth privacy RUN`).", ""]
    lines += ["## Intended use and limits", "",
              "Research and software testing: demos, pipeline tests, augmentation experiments. Not for "
              "diagnosis, not a substitute for real patient data, and not evidence about any patient. Every "
              "exported file says it is synthetic.", ""]
    if notes:
        lines += [notes, ""]
    return "\n".join(lines)


def _main(argv=None) -> int:
    """``python -m medsynth.zoo RUN NAME --title ... --summary ...``: package a run as a shipped model."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m medsynth.zoo", description="Package a training run as a shipped "
                                 "generator: NAME.pt (EMA generator, float16) and NAME.md (model card).")
    ap.add_argument("run")
    ap.add_argument("name")
    ap.add_argument("--out", default=str(ZOO_DIR), help="folder (default: the package's zoo folder)")
    for opt in ("title", "summary", "data", "licence", "hardware"):
        ap.add_argument(f"--{opt}", required=True)
    ap.add_argument("--notes", default="")
    a = ap.parse_args(argv)
    from medsynth.sampling import resolve_checkpoint

    out = Path(a.out)
    package_model(resolve_checkpoint(a.run), out / f"{a.name}.pt")
    text = model_card(a.run, a.name, title=a.title, summary_line=a.summary, data=a.data, licence=a.licence,
                      hardware=a.hardware, notes=a.notes)
    from medsynth.runs import atomic_write_text

    atomic_write_text(out / f"{a.name}.md", text)
    print(f"wrote {out / (a.name + '.pt')} and {out / (a.name + '.md')}")
    return 0
