"""The ``medsynth`` command: parse options, call the library, print results.

Exit status: 0 success, 1 a check that ran and failed, 2 bad usage or input.
``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from medsynth import __version__

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A mistake in the command line or the input; printed without a traceback, exit status 2."""


# --------------------------------------------------------------------------------------------
# data inspect / data prepare


def _cmd_data_inspect(args) -> int:
    from medsynth.data.inspect import inspect_dataset, render_text
    from medsynth.data.sources import discover

    labels = [s for s in args.labels.split(",") if s] if args.labels else None
    disc = discover(args.path, manifest=args.manifest, layout=args.layout, labels=labels,
                    patient_pattern=args.patient_pattern)
    report = inspect_dataset(disc, holdout_fraction=args.holdout_fraction, split_seed=args.split_seed,
                             volume_index=args.volume_index, workers=args.workers)
    if args.json:
        print(json.dumps(report))
    else:
        print(render_text(report))
    return EXIT_OK


def _resolve(args):
    from medsynth.config import resolve_config

    return resolve_config(args.config, args.overrides)


def _cmd_data_prepare(args) -> int:
    from medsynth.runs import prepare_run_data

    cfg = _resolve(args)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    b = prepare_run_data(cfg, run_dir)
    p = b.prepared
    summary = {"run_dir": str(run_dir), "items": len(p), "shape": list(p.images.shape[1:]), "labels": p.labels,
               "train_items": int(b.train_indices.size), "holdout_items": int(b.holdout_indices.size),
               "train_patients": len(b.split.train_patients), "holdout_patients": len(b.split.holdout_patients),
               "intensity": b.mapping.to_dict(), "skipped": len(p.skipped) + len(b.discovery.skipped),
               "cache": p.path, "from_cache": p.from_cache, "seconds": round(p.seconds, 3),
               "fingerprint": p.content_sha256}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"Prepared {summary['items']} items of shape {'x'.join(map(str, summary['shape']))} "
              f"({'from cache' if p.from_cache else 'built'} in {p.seconds:.1f} s)")
        print(f"  train {summary['train_items']} items / {summary['train_patients']} patients, "
              f"holdout {summary['holdout_items']} / {summary['holdout_patients']}")
        m = b.mapping
        print(f"  intensity window [{m.source_min:.4g}, {m.source_max:.4g}] -> [-1, 1] ({m.mode})")
        if summary["skipped"]:
            print(f"  skipped {summary['skipped']} file(s); see 'medsynth data inspect' for reasons")
        print(f"  wrote {run_dir / 'config.yaml'} and {run_dir / 'split.json'}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# train / generate


def normalize_train_args(args):
    """``--resume`` takes an optional RUN, so ``--resume train.steps=9`` would read the override as
    the run: give such a value back to the overrides."""
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides = [args.resume, *args.overrides]
        args.resume = True
    return args


def _cmd_train(args) -> int:
    from medsynth.config import resolve_config
    from medsynth.training.loop import resume_config, train

    args = normalize_train_args(args)
    resume_dir = args.resume if isinstance(args.resume, str) else None
    if resume_dir and args.run_dir and Path(resume_dir) != Path(args.run_dir):
        raise UserError(f"--resume {resume_dir} and --run-dir {args.run_dir} name different runs")
    if args.resume:
        run_dir = Path(resume_dir or args.run_dir or "")
        if not str(run_dir) or str(run_dir) == ".":
            raise UserError("--resume needs the run directory: medsynth train --resume RUN")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir}: not a run directory (no config.yaml); nothing to resume")
        if args.init_from:
            raise UserError("--init-from starts a new run from another run's weights; --resume continues this "
                            "run from its own checkpoint: use one or the other")
        if args.config:
            print("note: --resume uses the run's own config.yaml; --config is ignored", file=sys.stderr)
        cfg = resume_config(run_dir, args.overrides)
    else:
        if not args.config:
            raise UserError("train needs --config FILE (or --resume RUN)")
        cfg = resolve_config(args.config, args.overrides)
        if args.init_from:
            cfg.train.init_from = args.init_from
        run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    result = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":      # torchrun: the other ranks stay quiet
        return 130 if result.interrupted else EXIT_OK
    if result.interrupted:
        print(f"stopped at step {result.step}; checkpoint {result.checkpoint}\n"
              f"continue with: medsynth train --resume {run_dir}", file=sys.stderr)
        return 130
    print(f"trained {result.step} steps ({result.images_per_second:.0f} images/s); "
          f"checkpoint {result.checkpoint}; sample grids in {run_dir / 'samples'}")
    return EXIT_OK


def _cmd_generate(args) -> int:
    from medsynth.sampling import listed_samples, load_generator, remove_earlier_samples, write_samples
    from medsynth.zoo import ZooError, available, model_path, summary

    if args.list_models:
        names = available()
        for name in names:
            print(f"{name:28s} {summary(name)}")
        if not names:
            print("no models shipped with this installation")
        return EXIT_OK
    if (args.source is None) == (args.model is None):
        raise UserError("generate needs RUN_OR_CHECKPOINT or --model NAME (one of them)")
    if args.n is None:
        raise UserError("generate needs -n N (the number of images)")
    if args.n < 1:
        raise UserError(f"-n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.model is not None:
        try:
            src = model_path(args.model)
        except ZooError as e:
            raise UserError(str(e)) from None
        default_out = Path(f"{args.model}_seed{args.seed}")
    else:
        src = Path(args.source)
    loaded = load_generator(src)
    if args.model is None:
        run_dir = src if src.is_dir() else loaded.checkpoint.parent.parent
        default_out = run_dir / "samples" / f"generated_seed{args.seed}"
    out = Path(args.out) if args.out else default_out
    earlier = listed_samples(out)
    if earlier is not None and not args.overwrite:
        raise UserError(f"{out} already holds samples of an earlier 'medsynth generate' ({len(earlier)} listed in "
                        f"its manifest.csv); pass --overwrite to replace them, or --out another folder")
    try:
        manifest = write_samples(loaded, out, args.n, labels=args.label, seed=args.seed,
                                 truncation=args.truncation, batch_size=args.batch_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.n} images and {manifest}")
    if earlier:
        removed = remove_earlier_samples(out, earlier)
        if removed:
            print(f"removed {removed} images of the earlier generate that this one did not replace")
    return EXIT_OK


def _cmd_evaluate(args) -> int:
    from medsynth.metrics.evaluate import EvaluationError, evaluate_folders, evaluate_run, render_text
    from medsynth.metrics.features import FeatureWeightsError

    if args.run and (args.real or args.synthetic):
        raise UserError("give either RUN or --real and --synthetic, not both")
    try:
        if args.run:
            if args.save_stats:
                raise UserError("--save-stats goes with --real/--synthetic")
            result = evaluate_run(args.run, n=args.n, seed=args.seed, bootstrap=args.bootstrap,
                                  fid_method=args.fid_method, n_real=args.n_real)
        elif args.real and args.synthetic:
            result = evaluate_folders(args.real, args.synthetic, save_stats_path=args.save_stats,
                                      bootstrap=args.bootstrap, seed=args.seed, fid_method=args.fid_method)
        else:
            raise UserError("evaluate needs RUN, or both --real DIR and --synthetic DIR")
    except (EvaluationError, FeatureWeightsError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(result))
    else:
        print(render_text(result))
    return EXIT_OK


def _cmd_export(args) -> int:
    from medsynth.export import ExportError, PrivacyGateError, dumps, export_run, export_summary_text

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        summary = export_run(args.run, args.format, n=args.n, from_samples=args.from_samples, out=args.out,
                             overwrite=args.overwrite, skip_privacy_check=args.skip_privacy_check,
                             modality=args.modality, secondary_capture=args.secondary_capture, bids=args.bids,
                             bids_suffix=args.bids_suffix, bits=args.bits, seed=args.seed, label=args.label,
                             deterministic_uids=args.deterministic_uids, nifti_float=args.nifti_float,
                             batch_size=args.batch_size)
    except (ExportError, PrivacyGateError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(dumps(summary))
    else:
        print(export_summary_text(summary))
    return EXIT_OK


def _cmd_utility(args) -> int:
    from medsynth.utility import UtilityError, render_text, utility_run

    try:
        result = utility_run(args.run, real_fraction=args.real_fraction, seeds=args.seeds, epochs=args.epochs,
                             ratio=args.ratio, model=args.model, batch_size=args.batch_size, lr=args.lr,
                             truncation=args.truncation, device=args.device)
    except UtilityError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(result))
    else:
        print(render_text(result))
    return EXIT_OK


def _cmd_privacy(args) -> int:
    from medsynth.metrics.features import FeatureWeightsError
    from medsynth.privacy import PrivacyError, check_folders, check_run, filter_samples, render_text

    folders = (args.real_train, args.real_holdout)
    if args.run and any(folders):
        raise UserError("give either RUN (optionally with --synthetic) or --real-train/--real-holdout/--synthetic")
    if args.n is not None and args.n < 1:
        raise UserError(f"-n must be at least 1, got {args.n}")
    settings = {"space": args.space, "quantile": args.quantile, "max_shift": args.max_shift,
                "pixel_size": args.pixel_size}
    limits = {"max_memorized": args.max_memorized, "max_mia_auc": args.max_mia_auc,
              "max_discriminator_auc": args.max_discriminator_auc}
    try:
        if args.run:
            if args.n is not None and args.synthetic:
                raise UserError("-n generates samples; it does not go with --synthetic")
            write = args.report is None
            report = check_run(args.run, args.synthetic, n=args.n, seed=args.seed, limits=limits, write=write,
                               **settings)
            if not write:
                from medsynth.runs import atomic_write_text

                atomic_write_text(args.report, json.dumps(report, indent=1) + "\n")
        elif all(folders) and args.synthetic:
            out = Path(args.report or "privacy.json")
            report, _ = check_folders(args.real_train, args.real_holdout, args.synthetic, report_path=out,
                                      figure_path=out.with_name(out.stem + "_closest_pairs.png"), limits=limits,
                                      seed=args.seed, **settings)
        else:
            raise UserError("privacy needs RUN, or all three of --real-train DIR, --real-holdout DIR, --synthetic DIR")
        filtered = filter_samples(report, args.filter) if args.filter and report["verdict"] == "pass" else None
    except (PrivacyError, FeatureWeightsError) as e:
        raise UserError(str(e)) from None
    if filtered is not None:
        report["filter"] = filtered
    if args.json:
        print(json.dumps(report))
    else:
        print(render_text(report))
        if filtered is not None:
            print(f"wrote {filtered['written']} samples that passed to {filtered['out']} "
                  f"({filtered['left_out']} left out)")
        elif args.filter:
            print(f"--filter: nothing written to {args.filter}: the verdict is fail")
    return EXIT_OK if report["verdict"] == "pass" else EXIT_CHECK_FAILED


def _cmd_report(args) -> int:
    from medsynth.report import ReportError, render_report, save_report

    try:
        rendered = render_report(args.run)
        path = save_report(rendered, args.out)
    except ReportError as e:
        raise UserError(str(e)) from None
    summary = {"report": str(path), **rendered.summary()}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {path}")
        for sid, note in summary["missing"].items():
            print(f"  {sid}: {note}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# demo


DEMO_CONFIG = {
    "name": "demo", "data.path": "sample:mednist", "data.image_size": [32, 32],
    "data.intensity.mode": "window", "data.intensity.window": [0, 255],
    "model.name": "resgan", "model.conditional": True, "model.latent_dim": 64, "model.width": 16,
    "train.batch_size": 32, "train.steps": 1500, "train.grid_every": 250, "train.checkpoint_every": 500,
}


def _cmd_demo(args) -> int:
    import time

    from medsynth.config import resolve_config
    from medsynth.data.inspect import inspect_dataset, render_text
    from medsynth.data.sources import discover
    from medsynth.export import export_run, export_summary_text
    from medsynth.metrics.evaluate import evaluate_run
    from medsynth.metrics.evaluate import render_text as render_metrics
    from medsynth.privacy import check_run
    from medsynth.privacy import render_text as render_privacy
    from medsynth.report import write_report
    from medsynth.sampling import load_generator, write_samples
    from medsynth.training.loop import train

    if args.steps < 1 or (args.samples is not None and args.samples < 8):
        raise UserError("--steps must be at least 1 and --samples at least 8")
    out = Path(args.out)
    t0 = time.perf_counter()
    print("medsynth demo on the bundled real sample (MedNIST chest X-ray and brain MRI, IXI T1 volumes)",
          file=sys.stderr)
    for sample in ("sample:mednist", "sample:ixi"):
        report = inspect_dataset(discover(sample), workers=args.workers)
        print(f"\n== {sample} ==")
        print(render_text(report))
    cfg = resolve_config(None, {**DEMO_CONFIG, "data.workers": args.workers, "train.steps": args.steps})
    print(f"\n== training a conditional {cfg.model.name} on CXR and MRBrain, {cfg.train.steps} steps "
          f"at {cfg.data.image_size[0]}x{cfg.data.image_size[1]} ==", flush=True)
    result = train(cfg, out, overwrite=True)
    print(f"trained {result.step} steps at {result.images_per_second:.0f} images/s; checkpoint {result.checkpoint}")
    loaded = load_generator(out, device="cpu")
    for label in loaded.labels:
        write_samples(loaded, out / "samples" / f"demo_{label}", 16, labels=label, seed=0)
    grids = sorted((out / "samples").glob("grid_*.png"))
    print(f"samples: {out / 'samples'} (grids: {grids[-1].name if grids else 'none'}; "
          f"16 per class in {', '.join('demo_' + lab for lab in loaded.labels)})")

    print("\n== fidelity: the EMA generator against the training split (appended to metrics.jsonl) ==", flush=True)
    print(render_metrics(evaluate_run(out, generator=loaded, bootstrap=50, n=args.samples, n_real=args.samples)))
    print("\n== privacy: memorization and membership inference against the holdout (privacy.json) ==", flush=True)
    report = check_run(out, n=args.samples, seed=0)
    print(render_privacy(report))
    exported = []
    if report["verdict"] != "pass":
        print("\nexport skipped: the privacy check failed, and medsynth does not export unchecked or failed "
              "samples (see privacy.json)")
    else:
        for fmt in ("dicom", "nifti"):
            print(f"\n== export: the checked samples as {fmt.upper()}, marked synthetic, with manifest.csv and "
                  "provenance.json ==", flush=True)
            summary = export_run(out, fmt, from_samples=out / "privacy" / "samples", out=out / "export" / fmt,
                                 overwrite=True)
            print(export_summary_text(summary))
            exported.append(fmt)
    print("\n== report ==", flush=True)
    page = write_report(out)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndemo finished in {minutes:.1f} min. Everything is in {out}:\n"
          f"  report      {page}   (open it in a browser: samples next to real images, curves, metrics, "
          "privacy, export)\n"
          f"  samples     {out / 'samples'}\n"
          f"  metrics     {out / 'metrics.jsonl'}\n"
          f"  privacy     {out / 'privacy.json'}\n"
          + "".join(f"  {fmt:<11} {out / 'export' / fmt}\n" for fmt in exported)
          + f"  checkpoint  {result.checkpoint}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _add_json(p):
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else there")


def _add_config(p, required=True):
    p.add_argument("--config", required=required, metavar="FILE", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides applied after the file, e.g. train.batch_size=64 data.image_size=[64,64]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medsynth", formatter_class=_Formatter,
        description="Train generative models on X-ray and MRI data, generate synthetic scans, check their "
                    "fidelity and privacy, and export them as DICOM, NIfTI or PNG.",
        epilog="Exit status: 0 success, 1 a check ran and failed (e.g. privacy verdict), 2 bad usage or input.\n"
               "Run 'medsynth COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # data
    data = sub.add_parser("data", help="inspect a dataset or build its tensor cache",
                          description="Look at a dataset before training.", formatter_class=_Formatter)
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    ins = dsub.add_parser(
        "inspect", help="counts per label, modality, size, spacing, patients; skipped files and why",
        description="Read every image in PATH and report counts per label, modality, size and spacing, the "
                    "number of patients, files skipped and why, and the train/holdout split sizes.\n"
                    "PATH is a folder (class folders or flat), or sample:mednist / sample:ixi for the "
                    "bundled sample. Nothing in PATH is modified.",
        formatter_class=_Formatter)
    ins.add_argument("path", metavar="PATH")
    ins.add_argument("--manifest", metavar="CSV", help="CSV with columns path,label,patient_id[,split] "
                                                       "(paths relative to the CSV)")
    ins.add_argument("--layout", default="auto", choices=["auto", "class-folders", "flat", "manifest"])
    ins.add_argument("--labels", metavar="A,B", help="keep only these labels")
    ins.add_argument("--patient-pattern", metavar="REGEX",
                     help="regex on the relative path whose group 1 is the patient ID")
    ins.add_argument("--holdout-fraction", type=float, default=0.2, metavar="F",
                     help="share of patients held out (default 0.2)")
    ins.add_argument("--split-seed", type=int, default=0, metavar="S")
    ins.add_argument("--volume-index", type=int, metavar="I", help="volume to read from 4D NIfTI files")
    ins.add_argument("--workers", type=int, default=0, metavar="N", help="reader processes (0: auto)")
    _add_json(ins)
    ins.set_defaults(func=_cmd_data_inspect)

    prep = dsub.add_parser(
        "prepare", help="preprocess into the tensor cache; write config.yaml and split.json",
        description="Resolve the config, preprocess the dataset into the tensor cache (or reuse it), split it "
                    "by patient and write the resolved config.yaml and split.json into the run directory. "
                    "An existing split.json there is reused, never rewritten.",
        formatter_class=_Formatter)
    _add_config(prep)
    prep.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<name>)")
    _add_json(prep)
    prep.set_defaults(func=_cmd_data_prepare)
    data.set_defaults(func=lambda a: _help_and_fail(data))

    # train
    tr = sub.add_parser(
        "train", help="train a generator; creates a run directory",
        description="Train a GAN on the dataset named in the config. Creates the run directory with the "
                    "resolved config.yaml, split.json, checkpoints/ (atomic, last K kept), samples/ (image "
                    "grids), train_log.jsonl and tensorboard/. Ctrl-C saves a checkpoint and exits; "
                    "'medsynth train --resume RUN' continues exactly where it stopped; "
                    "'--init-from OTHER_RUN' starts a new run from another run's weights (fine-tuning).",
        formatter_class=_Formatter)
    _add_config(tr, required=False)
    tr.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<name>)")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                    help="continue RUN (or --run-dir) from its newest checkpoint; only train.steps, "
                         "train.device, train.compile, the logging intervals and a learning-rate decay that "
                         "has not begun (train.lr_decay_start/final) may be overridden")
    tr.add_argument("--init-from", metavar="RUN_OR_CHECKPOINT",
                    help="fine-tune: start the networks from another run's newest checkpoint (or a checkpoint "
                         "file) of the same model, e.g. one trained on a larger dataset (sets train.init_from)")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an existing run directory (deleted only once the new run starts its first "
                         "step; a refused start puts it back, and so does the next train after a killed one)")
    tr.set_defaults(func=_cmd_train)

    gen = sub.add_parser("generate", help="sample synthetic images from a run, a checkpoint or a shipped model",
                         description="Sample images from a trained generator and write them with a manifest "
                                     "(seed, label, checkpoint hash per image). Same seed, same images. The "
                                     "generator is a run directory (its newest checkpoint), a checkpoint file, or "
                                     "--model NAME, one of the generators shipped with medsynth (--list-models; "
                                     "each has a model card in medsynth/zoo/NAME.md).",
                         formatter_class=_Formatter)
    gen.add_argument("source", nargs="?", metavar="RUN_OR_CHECKPOINT")
    gen.add_argument("--model", metavar="NAME", help="a generator shipped with medsynth instead of a run")
    gen.add_argument("--list-models", action="store_true", help="list the shipped generators and exit")
    gen.add_argument("-n", type=int, metavar="N", help="number of images")
    gen.add_argument("--label", metavar="L", help="class label to generate (conditional models)")
    gen.add_argument("--seed", type=int, default=0, metavar="S")
    gen.add_argument("--batch-size", type=int, default=64, metavar="B")
    gen.add_argument("--truncation", type=float, default=1.0, metavar="PSI", help="latent truncation (1: none)")
    gen.add_argument("--out", metavar="DIR", help="output folder (default RUN/samples/generated_seed<S>, or "
                                                  "NAME_seed<S> with --model)")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace the samples of an earlier generate into the same folder (without it, such a "
                          "folder is refused): the new images and manifest.csv are written first, then the "
                          "earlier manifest's images that were not rewritten are deleted; other files stay")
    gen.set_defaults(func=_cmd_generate)

    ev = sub.add_parser("evaluate", help="fidelity: FID (pytorch-fid's, offline), KID, precision/recall, diversity",
                        description="Compare synthetic with real images: FID (identical to pytorch-fid's, offline) "
                                    "with a bootstrap interval; KID (unbiased, mean +- std over subsets); "
                                    "precision, recall, density and coverage (k=3); MS-SSIM diversity of each set. "
                                    "Give a RUN (its generator's samples against its training images, per class "
                                    "for conditional models, 2.5D for 3D runs, plus the FID ratio "
                                    "FID(synthetic, holdout) / FID(train, holdout); appended to RUN/metrics.jsonl), "
                                    "or --real and --synthetic folders (--real may be a statistics file saved "
                                    "with --save-stats: FID only).", formatter_class=_Formatter)
    ev.add_argument("run", nargs="?", metavar="RUN")
    ev.add_argument("--real", metavar="DIR")
    ev.add_argument("--synthetic", metavar="DIR")
    ev.add_argument("-n", type=int, metavar="N", help="with RUN: synthetic images to generate (default: as many "
                                                     "as training images)")
    ev.add_argument("--n-real", type=int, metavar="N", help="with RUN: at most N real images from the training and "
                                                            "from the holdout split each (a seeded draw in "
                                                            "proportion to the classes; default: all)")
    ev.add_argument("--seed", type=int, default=0, metavar="S",
                    help="seed of the bootstrap and of the equal-sized parts that precision/recall compare; "
                         "with RUN also the sampling seed")
    ev.add_argument("--save-stats", metavar="NPZ", help="save the real set's feature statistics (pytorch-fid .npz); "
                                                       "pass the file as --real later to skip the real images")
    ev.add_argument("--bootstrap", type=int, default=100, metavar="B",
                    help="bootstrap draws for the FID and precision/recall intervals (0: none)")
    ev.add_argument("--fid-method", choices=["fast", "sqrtm"], default="fast",
                    help="fast: singular values of the cross-covariance, equal to pytorch-fid's within 1e-6 "
                         "relative, about a second; sqrtm: pytorch-fid's exact operations, bit-identical, tens "
                         "of seconds per FID on a CPU")
    _add_json(ev)
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser(
        "privacy", help="memorization and membership-inference checks; a verdict and a filter before export",
        description="Check synthetic images against real ones for memorized training images and membership "
                    "leakage, calibrated on real images the model never saw (the holdout).\n\n"
                    "  medsynth privacy RUN [--synthetic DIR]      the run's split; DIR from 'medsynth generate', "
                    "or -n samples\n"
                    "                                              generated into RUN/privacy/samples\n"
                    "  medsynth privacy --real-train DIR --real-holdout DIR --synthetic DIR\n\n"
                    "A synthetic image is memorized when it is more similar to a training image than the given "
                    "quantile of holdout images are. The distance attack's ROC AUC says whether training patients "
                    "sit closer to the synthetic set than holdout patients. Writes privacy.json (RUN/privacy.json, "
                    "or --report) and a figure of the closest pairs. Exit 0 when the verdict is pass, 1 when it "
                    "fails, 2 for bad input (empty or overlapping holdout, different image sizes...).",
        formatter_class=_Formatter)
    pr.add_argument("run", nargs="?", metavar="RUN")
    pr.add_argument("--real-train", metavar="DIR", help="folder of training images (folder mode)")
    pr.add_argument("--real-holdout", metavar="DIR", help="folder of real images of other patients (folder mode)")
    pr.add_argument("--synthetic", metavar="DIR", help="folder of synthetic images (with RUN: default generate -n)")
    pr.add_argument("-n", type=int, metavar="N", help="with RUN and no --synthetic: samples to generate "
                                                     "(default: as many as training images)")
    pr.add_argument("--seed", type=int, default=0, metavar="S", help="sampling and bootstrap seed")
    pr.add_argument("--space", default="pixel", choices=["pixel", "inception", "both"],
                    help="where similarity is measured: pixel (band-passed normalised cross-correlation, shift "
                         "searched), inception (FID features, slow on a CPU) or both (default pixel)")
    pr.add_argument("--quantile", type=float, default=0.995, metavar="Q",
                    help="holdout quantile that calibrates the memorization threshold (default 0.995)")
    pr.add_argument("--max-shift", type=int, metavar="PX", help="translation searched, pixels of the comparison "
                                                                 "grid (default 2 for 2D, 1 for 3D)")
    pr.add_argument("--pixel-size", type=int, metavar="PX", help="comparison grid, longest side (default 64 for 2D, "
                                                                  "32 for 3D)")
    pr.add_argument("--max-memorized", type=float, default=0.02, metavar="F",
                    help="fail when more than this share of samples is memorized (default 0.02)")
    pr.add_argument("--max-mia-auc", type=float, default=0.6, metavar="A",
                    help="fail when the distance attack's AUC exceeds this (default 0.6)")
    pr.add_argument("--max-discriminator-auc", type=float, metavar="A",
                    help="fail when the discriminator attack's AUC exceeds this (default: reported, not judged)")
    pr.add_argument("--filter", metavar="DIR", help="when the verdict is pass, copy the samples that passed (not "
                                                    "memorized) into the new folder DIR, with manifest.csv")
    pr.add_argument("--report", metavar="FILE", help="where to write the report (default RUN/privacy.json; "
                                                     "privacy.json in folder mode)")
    _add_json(pr)
    pr.set_defaults(func=_cmd_privacy)

    ex = sub.add_parser(
        "export", help="write synthetic images as DICOM, NIfTI or PNG",
        description="Export synthetic images with their provenance as standard-conformant, clearly synthetic "
                    "DICOM, NIfTI or PNG files plus manifest.csv and provenance.json.\n\n"
                    "-n N generates N samples into OUT/samples/ and privacy-checks them (medsynth privacy); "
                    "--from-samples DIR exports a 'medsynth generate' folder that 'medsynth privacy RUN "
                    "--synthetic DIR' has checked. Only samples that passed are exported; flagged ones are "
                    "left out and counted. --skip-privacy-check exports them anyway and records it.\n\n"
                    "DICOM IOD per label: --modality, else MR for 3D runs and slices of volumes, Secondary "
                    "Capture for 2D labels naming MR/CT (e.g. MRBrain), else DX (digital X-ray). Images "
                    "without a known pixel spacing get a nominal 1 mm (stated in provenance.json). "
                    "See docs/export.md.",
        formatter_class=_Formatter)
    ex.add_argument("run", metavar="RUN")
    ex.add_argument("--format", required=True, choices=["dicom", "nifti", "png"])
    ex.add_argument("-n", type=int, metavar="N", help="generate, privacy-check and export N new images")
    ex.add_argument("--from-samples", metavar="DIR", help="export images already generated into DIR "
                                                          "(by 'medsynth generate')")
    ex.add_argument("--out", metavar="DIR", help="output folder (default RUN/export); must be empty")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace a previous export in --out; it is kept aside (hidden sibling "
                         ".OUT.previous-export) until the new export is complete, and put back if it fails")
    ex.add_argument("--skip-privacy-check", action="store_true",
                    help="export samples that were not checked or failed (recorded in the provenance)")
    ex.add_argument("--seed", type=int, default=0, metavar="S", help="with -n: sampling seed (default 0)")
    ex.add_argument("--label", metavar="L", help="with -n: class label to generate (default: all, balanced)")
    ex.add_argument("--modality", choices=["DX", "MR", "SC"],
                    help="DICOM IOD for every image instead of the rule above (SC = Secondary Capture)")
    ex.add_argument("--secondary-capture", action="store_true",
                    help="DICOM: write Secondary Capture (ConversionType SYN) for every image")
    ex.add_argument("--deterministic-uids", action="store_true",
                    help="DICOM: derive UIDs from checkpoint, seed and index (same export, same UIDs) instead "
                         "of fresh ones")
    ex.add_argument("--bits", type=int, default=16, choices=[8, 16], help="PNG bit depth (default 16)")
    ex.add_argument("--bids", action="store_true",
                    help="NIfTI: BIDS-derivative layout (dataset_description.json, JSON sidecar per image)")
    ex.add_argument("--bids-suffix", metavar="SUFFIX",
                    help="NIfTI with --bids: file suffix (default T1w for MR, else the modality, e.g. dx)")
    ex.add_argument("--float", action="store_true", dest="nifti_float",
                    help="NIfTI: float32 source units instead of rounded integers")
    ex.add_argument("--batch-size", type=int, default=64, metavar="B", help="with -n: generation batch size")
    _add_json(ex)
    ex.set_defaults(func=_cmd_export)

    ut = sub.add_parser("utility", help="downstream classifier: real vs real+synthetic vs synthetic-only",
                        description="Does synthetic data help a downstream task? Train a small MONAI classifier "
                                    "of the run's classes on (a) its real training images, (b) those plus "
                                    "synthetic ones, (c) synthetic images only, and test each on the run's REAL "
                                    "holdout split: accuracy and macro one-vs-rest ROC AUC, mean, std and 95% "
                                    "interval over --seeds repetitions. Needs a conditional run with at least 2 "
                                    "classes in its holdout. Appends to RUN/utility.json. See "
                                    "docs/augmentation.md.",
                        formatter_class=_Formatter)
    ut.add_argument("run", metavar="RUN")
    ut.add_argument("--real-fraction", type=float, default=1.0, metavar="F",
                    help="use a seeded, stratified fraction F of the real training images (small-data regime; "
                         "default 1)")
    ut.add_argument("--seeds", type=int, default=3, metavar="K",
                    help="repetitions with seeds 0..K-1 (subset, initialisation, batch order, synthetic images); "
                         "mean, std and 95%% interval over them (default 3)")
    ut.add_argument("--epochs", type=int, default=10, metavar="E", help="training epochs per classifier (default 10)")
    ut.add_argument("--ratio", type=float, default=0.5, metavar="R",
                    help="synthetic share of the real+synthetic set, synthetic / (real + synthetic); 0.5: as many "
                         "synthetic as real images (default 0.5). The synthetic-only set uses the same images")
    ut.add_argument("--model", default="densenet", choices=["densenet", "densenet121"],
                    help="densenet: MONAI DenseNet, 3 blocks of 2 layers, 16 features, growth 8 (fast on a CPU; "
                         "default); densenet121: MONAI DenseNet121 at 16 features, growth 8 (for a GPU)")
    ut.add_argument("--batch-size", type=int, default=32, metavar="B")
    ut.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="Adam learning rate (default 1e-3)")
    ut.add_argument("--truncation", type=float, default=1.0, metavar="PSI", help="latent truncation of the "
                                                                                  "synthetic images (1: none)")
    ut.add_argument("--device", metavar="DEV", help="cpu or cuda (default: cuda when available)")
    _add_json(ut)
    ut.set_defaults(func=_cmd_utility)

    rp = sub.add_parser("report", help="one self-contained HTML page summarising a run (RUN/report.html)",
                        description="Write RUN/report.html: sample grids per class beside real training images "
                                    "(central slices of three planes for 3D runs), training curves, the newest "
                                    "'medsynth evaluate' metrics, the privacy verdict with the closest pairs, and the "
                                    "export summary with DICOM conformance (when dciodvfy, dcentvfy and dcmftest "
                                    "are installed). One file: inline CSS, embedded images, no scripts, nothing "
                                    "loaded from elsewhere. A section whose inputs are missing says which command "
                                    "produces them. See docs/report.md.", formatter_class=_Formatter)
    rp.add_argument("run", metavar="RUN")
    rp.add_argument("--out", metavar="FILE", help="where to write the page (default RUN/report.html)")
    _add_json(rp)
    rp.set_defaults(func=_cmd_report)

    demo = sub.add_parser("demo", help="the whole job on the bundled real sample, offline",
                          description="Run medsynth end to end on the bundled real sample, offline, on a CPU: "
                                      "inspect the sample, train a small conditional resgan on chest X-rays and "
                                      "brain MRI (32x32), generate samples per class, evaluate fidelity, check "
                                      "privacy against the holdout, export the checked samples as DICOM and NIfTI "
                                      "and write the run report (RUN/report.html). About 5-8 minutes on 2 CPU "
                                      "cores.",
                          formatter_class=_Formatter)
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (default runs/demo)")
    demo.add_argument("--workers", type=int, default=0, metavar="N", help="reader processes (0: auto)")
    demo.add_argument("--steps", type=int, default=DEMO_CONFIG["train.steps"], metavar="N",
                      help=f"training steps (default {DEMO_CONFIG['train.steps']})")
    demo.add_argument("--samples", type=int, metavar="N",
                      help="synthetic images to evaluate, privacy-check and export, and at most N real images per "
                           "split in the evaluation (default: as many as training images, 480)")
    demo.set_defaults(func=_cmd_demo)
    return p


def _help_and_fail(parser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    from medsynth.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medsynth: interrupted", file=sys.stderr)
        return 130
    except (UserError, ConfigError) as e:
        print(f"medsynth: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        # errors about the user's data are expected; anything else is a bug and keeps its traceback
        from medsynth.data.readers import UnreadableFile
        from medsynth.data.sources import DataError
        from medsynth.training.checkpoint import CheckpointError
        from medsynth.training.loop import TrainingError

        if isinstance(e, (DataError, UnreadableFile, CheckpointError, TrainingError)):
            print(f"medsynth: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise
