"""How fast does a fresh discriminator learn to tell a run's training images from its generator's samples?

Freezes the generator of a run (e.g. a 400-step ``bench_ablation.py`` run), draws 320 samples from it
(seed 1), and trains a freshly initialised ``resgan`` discriminator (R1 form: no spectral norm, no
penalty) alone with the non-saturating loss, Adam 2e-4 / (0, 0.99), batch 64 + 64, for ``--steps``
steps, once per augmentation setting (and per ``--d-norm``). Prints the loss every tenth of the run
(chance: 2 ln 2 = 1.39; lower: the discriminator separates them). Used in issue #3 to find which augmentation keeps the
discriminator at chance (docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_ablation.py --steps 400 --variant "model.d_regularization=r1" \\
        --out runs/dspeed-g
    .venv/bin/python benchmarks/bench_dspeed.py runs/dspeed-g/v0 --steps 150 \\
        --kinds all --kinds none --kinds translation --kinds cutout --kinds intensity   # ~2.5 min each
    .venv/bin/python benchmarks/bench_dspeed.py runs/dspeed-g/v0 --steps 100 --kinds all \\
        --d-norm none --d-norm instance     # model.d_norm: does instance norm let it learn?
    .venv/bin/python benchmarks/bench_dspeed.py runs/dspeed-g/v0 --steps 100 --kinds all \\
        --translation 0.125 --translation 0.0625   # model.augment_translation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory with a checkpoint")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--kinds", action="append", default=[],
                    help="comma-separated augmentations, 'all' or 'none' (repeat for more settings)")
    ap.add_argument("--d-norm", action="append", default=[], choices=["none", "instance"],
                    help="the discriminator's model.d_norm (repeat to compare; default none)")
    ap.add_argument("--translation", action="append", default=[], type=float,
                    help="the largest translation as a fraction of each side, as model.augment_translation "
                         "(repeat to compare; default 0.125)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from medsynth.config import ConfigError, ModelConfig, config_from_dict, load_yaml, resolve_config

    run = Path(args.run)
    try:   # each --translation through the config's own bounds and message for model.augment_translation
        for t in args.translation:
            resolve_config(run / "config.yaml", {"model.augment_translation": t})
    except ConfigError as e:
        ap.error(str(e))

    import torch

    from medsynth.models.resgan import ResDiscriminator
    from medsynth.runs import prepare_run_data
    from medsynth.sampling import load_generator
    from medsynth.training.augment import KINDS, augment, check_kinds
    from medsynth.training.loop import d_loss

    cfg = config_from_dict(load_yaml(run / "config.yaml"))
    bundle = prepare_run_data(cfg, run, progress=False, write=False)
    real = bundle.prepared.tensor(bundle.train_indices, bundle.mapping, "cpu")
    fake, _ = load_generator(run, device="cpu").sample(len(real), seed=1)
    rows = []
    settings = [(k, n, t) for t in args.translation or [ModelConfig.augment_translation]
                for n in args.d_norm or ["none"] for k in args.kinds or ["all", "none"]]
    for setting, d_norm, ratio in settings:
        kinds = KINDS if setting == "all" else () if setting == "none" else tuple(setting.split(","))
        check_kinds(kinds)
        torch.manual_seed(0)
        d = ResDiscriminator(tuple(real.shape[1:]), sn=False, norm_kind=d_norm)
        opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.99))
        gen = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(args.steps):
            i = torch.randint(0, len(real), (64,), generator=gen)
            r, f = real[i], fake[i]
            if kinds:
                r, f = augment(r, kinds, gen, translation_ratio=ratio), augment(f, kinds, gen, translation_ratio=ratio)
            out = d(torch.cat([r, f]))
            loss = d_loss("nonsaturating", out[:64], out[64:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        k = max(1, args.steps // 10)
        trace = [round(sum(losses[j:j + k]) / len(losses[j:j + k]), 3) for j in range(0, args.steps, k)]
        rows.append({"augment": list(kinds), "d_norm": d_norm, "translation": ratio, "loss_trace": trace})
        print(f"[{setting}, d_norm {d_norm}, translation {ratio:g}] D loss every {k} steps: {trace}",
              file=sys.stderr, flush=True)
    out = {"run": str(run), "steps": args.steps, "rows": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
