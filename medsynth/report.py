"""``medsynth report``: one self-contained HTML page (``RUN/report.html``) summarising a run directory.

Sections: ``samples`` (synthetic grids per class beside real training images of the class; central
slices of the three planes for 3D runs), ``training`` (losses, images/s and training FID as inline SVG),
``metrics`` (the newest ``medsynth evaluate`` line of metrics.jsonl), ``privacy`` (privacy.json and the
closest-pairs figure) and ``export`` (provenance.json, manifest.csv counts and DICOM conformance).

The page has inline CSS, images as base64 ``data:image/png`` URIs, no scripts and no external
references. A missing or unreadable piece never stops the report: its section says what is missing
and which command produces it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsynth import __version__

SECTIONS = {"samples": "Samples", "training": "Training", "metrics": "Fidelity metrics",
            "privacy": "Privacy", "export": "Export"}
N_PER_CLASS = 16          # 2D: a 4x4 grid per class and set
N_VOLUMES = 4             # 3D: volumes per class and set, one central slice per plane each
CONFORMANCE_FILES = 20    # DICOM files validated in the export section
PLANES = {"sagittal": 2, "coronal": 3, "axial": 4}   # axis normal to the plane in (N, C, D, H, W), RAS


class ReportError(ValueError):
    """The path is not a run directory, or the output path is unusable; the CLI exits 2."""


@dataclass
class Section:
    id: str
    title: str
    body: str
    content: bool                 # False: what the section needs is missing (``note`` says what)
    note: str | None = None


@dataclass
class RenderedReport:
    run_dir: Path
    html: str
    sections: dict[str, Section] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"run_dir": str(self.run_dir), "sections": {k: s.content for k, s in self.sections.items()},
                "missing": {k: s.note for k, s in self.sections.items() if not s.content}}


# --------------------------------------------------------------------------------------------
# small HTML helpers


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _cmd(*parts) -> str:
    return "<code>" + esc(" ".join(shlex.quote(str(p)) for p in parts)) + "</code>"


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return esc(v)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "∞" if f > 0 else "-∞"
    return f"{f:.{digits}f}"


def _ci(ci, digits: int = 3) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f" <span class=ci>[{_num(ci[0], digits)}, {_num(ci[1], digits)}]</span>"
    return ""


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Header cells are escaped; row cells are HTML already (use :func:`esc` / :func:`_num`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(rows: list[tuple[str, str]]) -> str:
    """A two-column table; keys escaped, values HTML."""
    return "<table class=kv><tbody>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + \
        "</tbody></table>"


def _missing(what: str, how: str) -> str:
    return f"<p class=missing><strong>Missing:</strong> {what}<br>To produce it: {how}</p>"


def _warnings(ws) -> str:
    ws = [w for w in (ws or []) if w]
    if not ws:
        return ""
    return "<ul class=warnings>" + "".join(f"<li>{esc(w)}</li>" for w in ws) + "</ul>"


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _img(data: bytes, alt: str, width: int | None = None, cls: str = "") -> str:
    w = f' width="{int(width)}"' if width else ""
    return f'<img class="{cls}" src="{png_data_uri(data)}" alt="{esc(alt)}"{w}>'


def _grid_png(tiles: list[np.ndarray], cols: int) -> tuple[bytes, int]:
    """2D tiles in [-1, 1] (same shape) -> an 8-bit PNG grid with 2-pixel gaps; (png, display width)."""
    h, w = tiles[0].shape
    cols = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2), 40, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = 2 + r * (h + 2), 2 + c * (w + 2)
        grid[y:y + h, x:x + w] = np.round((np.clip(t, -1, 1) + 1) * 127.5).astype(np.uint8)
    scale = max(1, 256 // grid.shape[1])     # small images are shown enlarged (pixelated in CSS)
    return _png_bytes(grid), grid.shape[1] * scale


def central_slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """(D, H, W) RAS volume -> its central sagittal, coronal and axial slice, superior/anterior up."""
    d, h, w = volume.shape
    return {"sagittal": volume[d // 2].T[::-1],          # (H, W) -> rows superior..inferior
            "coronal": volume[:, h // 2].T[::-1, ::-1],   # (D, W), patient right on the left
            "axial": volume[:, :, w // 2].T[::-1, ::-1]}  # (D, H), anterior up


# --------------------------------------------------------------------------------------------
# inline SVG line charts

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def svg_chart(series: list[tuple[str, list, list]], *, title: str, xlabel: str, ylabel: str,
              width: int = 560, height: int = 240) -> str:
    """Line chart of ``[(name, xs, ys), ...]`` as inline SVG (non-finite points dropped)."""
    clean = []
    for name, xs, ys in series:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys)
               if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
        if pts:
            clean.append((name, pts))
    if not clean:
        return f"<p class=missing>{esc(title)}: no finite values to plot</p>"
    left, right, top, bottom = 64, 16, 28, 44
    pw, ph = width - left - right, height - top - bottom
    xs = [p[0] for _, pts in clean for p in pts]
    ys = [p[1] for _, pts in clean for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.05
        y0, y1 = y0 - pad, y1 + pad

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg class=chart width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
           f'<text x="{left}" y="18" class=ctitle>{esc(title)}</text>']
    for t in _nice_ticks(y0, y1):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(_tick_label(t))}</text>')
    for t in _nice_ticks(x0, x1):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#999"/>'
                   f'<text x="{x:.1f}" y="{top + ph + 17}" text-anchor="middle">{esc(_tick_label(t))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2:.1f})">{esc(ylabel)}</text>')
    for k, (name, pts) in enumerate(clean):
        color = COLORS[k % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class=series data-series="{esc(name)}" fill="none" stroke="{color}" '
                   f'stroke-width="1.5" points="{path}"/>')
        if len(pts) <= 60:
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
        lx = left + 150 + k * 110           # legend in the top margin, right of the title
        out.append(f'<rect x="{lx}" y="13" width="12" height="3" fill="{color}"/>'
                   f'<text x="{lx + 16}" y="18">{esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# reading the run directory


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file; blank and malformed lines (e.g. a cut-off last line) skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    rec = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rec, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return rec


@dataclass
class _Run:
    dir: Path
    generator: object | None = None        # LoadedGenerator
    checkpoint_error: str | None = None

    @property
    def state(self) -> dict:
        return self.generator.state if self.generator is not None else {}


def _open_run(run_dir: Path) -> _Run:
    from medsynth.sampling import load_generator
    from medsynth.training.checkpoint import CheckpointError

    run = _Run(run_dir)
    try:
        run.generator = load_generator(run_dir, device="cpu")
    except CheckpointError as e:
        run.checkpoint_error = str(e)
    return run


def _train_cmd(run: _Run) -> str:
    return _cmd("medsynth", "train", "--config", "FILE", "--run-dir", run.dir)


# --------------------------------------------------------------------------------------------
# sections


def _real_images(run: _Run, per_label: list[str | None], n: int) -> dict:
    """{label: (n', 1, *size) tensor in [-1, 1]} of the run's training split, first ``n`` per label."""
    from medsynth.config import config_from_dict
    from medsynth.data import build_dataset
    from medsynth.data.sources import Split

    g = run.generator
    cfg = config_from_dict(g.state["config"], source=str(g.checkpoint))
    split_path = run.dir / "split.json"
    bundle = build_dataset(cfg.data, split=Split.load(split_path) if split_path.is_file() else None)
    train = bundle.train_indices
    labels = bundle.prepared.label_index[train]
    out = {}
    for name in per_label:
        if name is None:
            sel = train[:n]
        else:
            k = bundle.prepared.labels.index(name) if name in bundle.prepared.labels else -2
            sel = train[labels == k][:n]
        if len(sel):
            out[name] = bundle.prepared.batch(sel, bundle.mapping)
    return out


def _set_figures(images, alt: str) -> dict[str, str]:
    """{plane or "": <img>} for a (n, 1, H, W) or (n, 1, D, H, W) tensor in [-1, 1]."""
    arr = images.numpy()[:, 0]
    if arr.ndim == 3:
        png, w = _grid_png(list(arr), cols=4)
        return {"": _img(png, alt, w, "grid")}
    out = {}
    for plane in PLANES:
        tiles = [central_slices(v)[plane] for v in arr]
        png, w = _grid_png(tiles, cols=len(tiles))
        out[plane] = _img(png, f"{alt}, central {plane} slices", w, "grid")
    return out


def section_samples(run: _Run) -> Section:
    title = SECTIONS["samples"]
    if run.generator is None:
        note = f"no checkpoint ({run.checkpoint_error})"
        return Section("samples", title, _missing(esc(note), _train_cmd(run)), False, note)
    g = run.generator
    volumes = len(g.image_shape) == 4
    n = N_VOLUMES if volumes else N_PER_CLASS
    classes: list[str | None] = list(g.labels) if g.conditional else [None]
    real, real_note = {}, None
    try:
        real = _real_images(run, classes, n)
    except Exception as e:     # the training data moved or is unreadable: show the synthetic side only
        real_note = f"real training images unavailable: {type(e).__name__}: {e}"
    parts = [f"<p>Synthetic images from the EMA generator ({esc(g.checkpoint.name)}, seed 0) beside real images "
             f"of the same class from the training split{' (central slice of each plane)' if volumes else ''}."
             "</p>"]
    if real_note:
        parts.append(f"<p class=missing>{esc(real_note)}</p>")
    rows = []
    for name in classes:
        syn, _ = g.sample(n, labels=name, seed=0)
        label = name if name is not None else "all (unconditional)"
        s_fig = _set_figures(syn, f"synthetic {label}")
        r_fig = _set_figures(real[name], f"real {label}") if name in real else {}
        for plane, fig in s_fig.items():
            head = esc(label) + (f"<br><span class=plane>{esc(plane)}</span>" if plane else "")
            r = r_fig.get(plane) or "<span class=missing>no real training images of this class</span>"
            rows.append(f"<tr><th>{head}</th><td>{fig}</td><td>{r}</td></tr>")
    parts.append('<table class=samples><thead><tr><th>class</th><th>synthetic</th><th>real (training)</th>'
                 f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return Section("samples", title, "".join(parts), True, real_note)


def _by_step(records: list[dict]) -> list[dict]:
    """Sorted by step, the newest record of a step kept: a resumed run logs the steps after its checkpoint again."""
    out = {}
    for r in records:
        if isinstance(r.get("step"), (int, float)):
            out[r["step"]] = r
    return [out[k] for k in sorted(out)]


def section_training(run: _Run) -> Section:
    title = SECTIONS["training"]
    log = _by_step(read_jsonl(run.dir / "train_log.jsonl"))
    fid = _by_step([r for r in read_jsonl(run.dir / "metrics.jsonl") if r.get("source") == "training" and "fid" in r])
    grids = sorted((run.dir / "samples").glob("grid_*.png")) if (run.dir / "samples").is_dir() else []
    if not log and not fid and not grids:
        note = "no train_log.jsonl, training FID or sample grids"
        return Section("training", title, _missing(esc(note), _train_cmd(run)), False, note)
    parts = []
    if log:
        steps = [r.get("step") for r in log]
        parts.append(svg_chart([("loss_d", steps, [r.get("loss_d") for r in log]),
                                ("loss_g", steps, [r.get("loss_g") for r in log])],
                               title="Losses", xlabel="step", ylabel="loss"))
        parts.append(svg_chart([("images/s", steps, [r.get("images_per_s") for r in log])],
                               title="Training speed", xlabel="step", ylabel="images/s"))
        last = log[-1]
        parts.append(f"<p>{len(log)} log points; last at step {_num(last.get('step'))}: loss_d "
                     f"{_num(last.get('loss_d'))}, loss_g {_num(last.get('loss_g'))}, "
                     f"{_num(last.get('images_per_s'), 0)} images/s.</p>")
    else:
        parts.append(_missing("train_log.jsonl", _train_cmd(run)))
    if fid:
        parts.append(svg_chart([("FID", [r.get("step") for r in fid], [r.get("fid") for r in fid])],
                               title="FID during training", xlabel="step", ylabel="FID"))
        best = min(fid, key=lambda r: r.get("fid", math.inf))
        parts.append(f"<p>Best training FID {_num(best.get('fid'))} at step {_num(best.get('step'))} "
                     f"({_num(best.get('n_synthetic'))} samples against {_num(best.get('n_real'))} real).</p>")
    else:
        parts.append("<p class=note>No FID during training: train with <code>train.fid_every=N</code> to log it "
                     "(and keep <code>checkpoints/best.pt</code>).</p>")
    if grids:
        data = grids[-1].read_bytes()
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            parts.append(f"<figure>{_img(data, f'training sample grid {grids[-1].name}', cls='grid')}"
                         f"<figcaption>{esc(grids[-1].name)} (fixed latents)</figcaption></figure>")
    return Section("training", title, "".join(parts), bool(log or fid))


def newest_evaluation(run_dir: Path) -> dict | None:
    """The newest line of RUN/metrics.jsonl written by ``medsynth evaluate`` (not by training)."""
    recs = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r.get("source") != "training" and "fid" in r]
    return recs[-1] if recs else None


def _stale(rec: dict, run: _Run, what: str, cmd: str) -> str:
    sha = rec.get("checkpoint_sha256")
    if run.generator is None or not sha or sha == run.generator.checkpoint_sha256:
        return ""
    return (f"<p class=warn>These {what} are of {esc(rec.get('checkpoint', 'another checkpoint'))} (step "
            f"{_num(rec.get('step'))}); the newest checkpoint is step {_num(run.state.get('step'))}. "
            f"Rerun {cmd} to bring them up to date.</p>")


def section_metrics(run: _Run) -> Section:
    title = SECTIONS["metrics"]
    rec = newest_evaluation(run.dir)
    how = _cmd("medsynth", "evaluate", run.dir)
    if rec is None:
        note = "no evaluation in metrics.jsonl"
        return Section("metrics", title, _missing(esc(note), how), False, note)
    parts = [_stale(rec, run, "metrics", how)]
    ratio = rec.get("fid_ratio")
    if isinstance(ratio, dict):
        parts.append(f"<div class=headline><span class=big>{_num(ratio.get('fid_ratio'), 2)}</span> "
                     f"<span>FID ratio = FID(synthetic, holdout) {_num(ratio.get('fid_synthetic_holdout'), 2)} / "
                     f"FID(train, holdout) {_num(ratio.get('fid_train_holdout'), 2)} "
                     f"({_num(ratio.get('n'))} vs {_num(ratio.get('n_holdout'))} images). 1 means the synthetic "
                     "images are as close to unseen real patients as the training images are; higher is "
                     "further.</span></div>")
    else:
        parts.append("<p class=warn>No FID ratio (the holdout split is too small; see the warnings).</p>")
    ci = rec.get("prdc_ci") or {}
    rows = [("FID", _num(rec.get("fid")) + _ci(rec.get("fid_ci")))]
    if "kid_mean" in rec:
        rows.append(("KID", f"{_num(rec.get('kid_mean'), 5)} ± {_num(rec.get('kid_std'), 5)}"))
    for k in ("precision", "recall", "density", "coverage"):
        if k in rec:
            rows.append((k, _num(rec[k]) + _ci(ci.get(k))))
    sets = rec.get("prdc_sets")
    if isinstance(sets, dict) and sets.get("parts", 1) > 1:
        rows.append(("precision to coverage compare", f"{_num(sets.get('n_per_set'))} vs {_num(sets.get('n_per_set'))} "
                     f"images, mean of {_num(sets.get('parts'))} disjoint parts of the larger set"))
    div = rec.get("diversity") or {}
    if div.get("synthetic") or div.get("real"):
        s, r = (div.get("synthetic") or {}).get("ms_ssim"), (div.get("real") or {}).get("ms_ssim")
        rows.append(("MS-SSIM diversity", f"synthetic {_num(s)}, real {_num(r)} (lower = more diverse)"))
    rows += [("images", f"real {_num(rec.get('n_real'))}, synthetic {_num(rec.get('n_synthetic'))}"),
             ("checkpoint", f"{esc(rec.get('checkpoint', '?'))} (step {_num(rec.get('step'))})"),
             ("FID method", esc(rec.get("fid_method", "?"))), ("evaluated", esc(rec.get("time", "?")))]
    if rec.get("features"):
        rows.append(("features", esc(rec["features"])))
    parts.append(_kv(rows))
    planes = rec.get("planes") or {}
    if planes:
        parts.append("<h3>Per plane (2.5D)</h3>" + _table(
            ["plane", "FID", "KID", "precision", "recall"],
            [[esc(p), _num(r.get("fid")), f"{_num(r.get('kid_mean'), 5)} ± {_num(r.get('kid_std'), 5)}",
              _num(r.get("precision")), _num(r.get("recall"))] for p, r in planes.items()]))
    per_class = rec.get("per_class") or {}
    if per_class:
        parts.append("<h3>Per class</h3>" + _table(
            ["class", "FID", "KID", "precision", "recall", "real", "synthetic"],
            [[esc(c), _num(r.get("fid")), f"{_num(r.get('kid_mean'), 5)} ± {_num(r.get('kid_std'), 5)}",
              _num(r.get("precision")), _num(r.get("recall")), _num(r.get("n_real")), _num(r.get("n_synthetic"))]
             for c, r in per_class.items()]))
    parts.append(_warnings(rec.get("warnings")))
    return Section("metrics", title, "".join(parts), True)


def section_privacy(run: _Run) -> Section:
    title = SECTIONS["privacy"]
    how = _cmd("medsynth", "privacy", run.dir)
    path = run.dir / "privacy.json"
    rep = _read_json(path)
    if rep is None:
        note = "no privacy.json"
        return Section("privacy", title, _missing(esc(note), how), False, note)
    verdict = str(rep.get("verdict", "unknown"))
    cls = "pass" if verdict == "pass" else "fail"
    parts = [_stale(rep, run, "results", how),
             f"<div class=headline><span class='verdict {cls}'>{esc(verdict.upper())}</span> <span>privacy "
             f"verdict"]
    n = rep.get("n") or {}
    if n:
        parts.append(f": {_num(n.get('synthetic'))} synthetic images against {_num(n.get('train'))} training and "
                     f"{_num(n.get('holdout'))} holdout images")
    parts.append("</span></div>")
    reasons = rep.get("reasons") or []
    if reasons:
        parts.append("<ul class=reasons>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>")
    spaces = (rep.get("memorization") or {}).get("spaces") or {}
    if spaces:
        parts.append("<h3>Memorization</h3>" + _table(
            ["space", "memorized", "share", "by chance", "threshold", "closer to train (50% healthy)",
             "DCR median"],
            [[esc(s), _num(m.get("memorized")), _pct(m.get("memorized_share")),
              _pct(m.get("expected_share_by_chance")),
              f"{_num(m.get('threshold'), 4)} (holdout {_pct(m.get('quantile'), 1)} quantile)",
              _pct(m.get("closer_to_train_share"), 1), _num((m.get("dcr") or {}).get("median"), 4)]
             for s, m in spaces.items()]))
    mem = rep.get("membership") or {}
    rows = [[esc(s), _num(a.get("auc")) + _ci(a.get("ci95")), _sizes(a)]
            for s, a in (mem.get("distance") or {}).items()]
    d = mem.get("discriminator")
    if isinstance(d, dict):
        rows.append(["discriminator (white box)", _num(d.get("auc")) + _ci(d.get("ci95")), _sizes(d)])
    if rows:
        parts.append("<h3>Membership inference</h3>" + _table(["attack", "ROC AUC (95% CI)", "train / holdout"],
                                                               rows))
    lim = rep.get("limits") or {}
    if lim:
        parts.append("<p>Limits: " + ", ".join(f"{esc(k)} {_num(v)}" for k, v in lim.items()) + "</p>")
    parts.append(_warnings(rep.get("warnings")))
    fig = run.dir / "privacy" / "closest_pairs.png"
    if not fig.is_file() and rep.get("figure") and Path(str(rep["figure"])).is_file():
        fig = Path(str(rep["figure"]))
    data = fig.read_bytes() if fig.is_file() else b""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        parts.append(f"<figure>{_img(data, 'closest synthetic-training pairs', cls='figure')}<figcaption>The "
                     "synthetic images closest to a training image, each beside its nearest training "
                     "image.</figcaption></figure>")
    else:
        parts.append(_missing("the closest-pairs figure (privacy/closest_pairs.png)", how))
    parts.append(f"<p class=note>Checked {esc(rep.get('checkpoint', '?'))} (step {_num(rep.get('step'))}) at "
                 f"{esc(rep.get('time', '?'))}; details in privacy.json.</p>")
    return Section("privacy", title, "".join(parts), True)


def _sizes(attack: dict) -> str:
    unit = attack.get("unit")
    return f"{_num(attack.get('n_train'))} / {_num(attack.get('n_holdout'))}" + (f" {esc(unit)}s" if unit else "")


def _pct(v, digits: int = 2) -> str:
    try:
        return f"{float(v):.{digits}%}"
    except (TypeError, ValueError):
        return "–"


def _counts(rows: list[dict], key: str) -> str:
    c = Counter(r.get(key) or "(none)" for r in rows)
    return ", ".join(f"{esc(k)}: {v}" for k, v in sorted(c.items()))


def _conformance(export_dir: Path, rows: list[dict]) -> str:
    from medsynth.export.conformance import CONFORMANCE_TOOLS_NOTE, check_files, missing_validators

    files = [export_dir / r["file"] for r in rows if r.get("format") == "dicom" and r.get("file")]
    if not files:
        return "<h3>Conformance</h3><p>Not applicable: no DICOM files in this export.</p>"
    missing = missing_validators()
    if missing:
        return ("<h3>Conformance</h3><p class=warn>Conformance not checked: validators not installed "
                f"({esc(', '.join(missing))}; {esc(CONFORMANCE_TOOLS_NOTE)}).</p>")
    res = check_files([f for f in files if f.is_file()], limit=CONFORMANCE_FILES)
    body = [f"<h3>Conformance</h3><p class=conformance data-passed=\"{res['passed']}\" "
            f"data-failed=\"{res['failed']}\"><strong>{res['passed']} of {res['checked']}</strong> DICOM files "
            f"passed (dcmftest: Part 10 file; dciodvfy: no errors except the unknown-tag error for SyntheticData "
            f"(0008,001C) that older dicom3tools report); {res['total']} DICOM files in the export, the first "
            f"{res['checked']} checked.</p>"]
    body.append(_table(["file", "dcmftest", "dciodvfy errors", "result"],
                       [[esc(f["file"]), "pass" if f["dcmftest"] else "FAIL",
                         str(len(f["dciodvfy_errors"])) + ("".join(f"<br><small>{esc(e)}</small>"
                                                                   for e in f["dciodvfy_errors"][:5])),
                         "<span class=pass>pass</span>" if f["passed"] else "<span class=fail>FAIL</span>"]
                        for f in res["files"]], cls="files"))
    ent = res["dcentvfy_errors"]
    body.append(f"<p>dcentvfy over the checked files: {'no errors' if not ent else f'{len(ent)} error(s)'}.</p>"
                + _warnings(ent[:10]))
    return "".join(body)


def _export_dirs(run_dir: Path) -> list[Path]:
    """``RUN/export`` when it holds an export, else its sub-folders that do (e.g. export/dicom and
    export/nifti, as the demo writes them)."""
    root = run_dir / "export"
    if (root / "provenance.json").is_file():
        return [root]
    return sorted(p for p in root.glob("*/") if (p / "provenance.json").is_file()) if root.is_dir() else []


def _one_export(run: _Run, export_dir: Path) -> str | None:
    prov = _read_json(export_dir / "provenance.json")
    manifest = export_dir / "manifest.csv"
    if prov is None or not manifest.is_file():
        return None
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    priv = prov.get("privacy") or {}
    counts = priv.get("counts") or {}
    gate = ("SKIPPED (--skip-privacy-check)" if priv.get("skip_privacy_check")
            else f"verdict {priv.get('verdict', '?')}")
    parts = [f"<h3>{esc(prov.get('format', '?'))} in {esc(export_dir.name)}/</h3>"
             f"<p>{_num(prov.get('files', len(rows)))} {esc(prov.get('format', '?'))} file(s) from "
             f"{_num(prov.get('samples'))} sample(s), exported {esc(prov.get('exported_at', '?'))} by medsynth "
             f"{esc(prov.get('medsynth_version', '?'))} from step {_num(prov.get('training_step'))}.</p>",
             _kv([("format", _counts(rows, "format")), ("modality", _counts(rows, "modality")),
                  ("label", _counts(rows, "label")), ("privacy status (per file)", _counts(rows, "privacy")),
                  ("privacy gate", esc(gate) + (", " + ", ".join(f"{esc(k)} {_num(v)}" for k, v in counts.items())
                                                if counts else "")),
                  ("left out (failed the check)", _num(priv.get("left_out_failed"))),
                  ("checkpoint", esc(str(prov.get("checkpoint_sha256", ""))[:12])),
                  ("folder", esc(export_dir))])]
    if run.generator is not None and prov.get("checkpoint_sha256") not in (None, run.generator.checkpoint_sha256):
        parts.append("<p class=warn>This export is of an older checkpoint than the newest one.</p>")
    if any(r.get("format") == "dicom" for r in rows):
        parts.append(_conformance(export_dir, rows))
    return "".join(parts)


def section_export(run: _Run) -> Section:
    title = SECTIONS["export"]
    export_dir = run.dir / "export"
    how = (_cmd("medsynth", "export", run.dir, "--format", "dicom", "--from-samples", run.dir / "privacy" / "samples")
           + " (after " + _cmd("medsynth", "privacy", run.dir) + "), or " + _cmd("medsynth", "export", run.dir,
                                                                                  "--format", "dicom", "-n", "100"))
    parts = [html for html in (_one_export(run, d) for d in _export_dirs(run.dir)) if html]
    if not parts:
        note = f"no complete export in {export_dir} (provenance.json and manifest.csv)"
        return Section("export", title, _missing(esc(note), how), False, note)
    return Section("export", title, "".join(parts), True)


# --------------------------------------------------------------------------------------------
# page


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:16px 24px}
header h1{margin:0 0 8px;font-size:22px}
header table{border-collapse:collapse;font-size:13px}
header th{text-align:left;font-weight:normal;color:#bcd;padding:1px 12px 1px 0}
nav{padding:6px 24px;background:#e8ecf1}
nav a{margin-right:14px;color:#1d3557}
main{padding:0 24px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dde;border-radius:6px;margin:16px 0;padding:4px 18px 14px}
h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #dde;padding:3px 8px;vertical-align:top;text-align:left}
table.kv th{background:#f3f5f8;font-weight:600}
table.samples td{background:#282828}
img.grid{image-rendering:pixelated;display:block}
img.figure{max-width:100%}
.missing{color:#8a5a00;background:#fff8e6;border-left:3px solid #e0a800;padding:6px 10px}
.warn{color:#8a3b00}
.note{color:#555}
ul.warnings li{color:#8a3b00}
.headline{margin:10px 0;display:flex;align-items:center;gap:14px}
.big{font-size:34px;font-weight:700;color:#1d3557}
.verdict{font-size:24px;font-weight:700;padding:2px 12px;border-radius:4px}
.pass{color:#16692e}.fail{color:#b00020}
.verdict.pass{background:#e3f5e8}.verdict.fail{background:#fde7ea}
.ci{color:#666}
.plane{font-weight:normal;color:#666}
svg.chart{margin:6px 12px 6px 0;font:11px sans-serif}
svg.chart .ctitle{font-weight:700;font-size:12px}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
footer{color:#777;padding:0 24px 24px;font-size:12px}
"""


def _header(run: _Run) -> str:
    s = run.state
    g = run.generator
    created = time.strftime("%Y-%m-%d %H:%M:%S %z")
    if g is not None:
        cfg = s.get("config") or {}
        data = cfg.get("data") or {}
        model = s.get("model_name") or (cfg.get("model") or {}).get("name")
        kind = ("conditional on " + ", ".join(g.labels)) if g.conditional else "unconditional"
        size = "x".join(map(str, g.image_shape[1:]))
        rows = [("model", esc(f"{model} ({kind}), {size} {'3D' if len(g.image_shape) == 4 else '2D'}")),
                ("step", _num(s.get("step"))),
                ("checkpoint", f"{esc(g.checkpoint.name)} sha256 {esc(g.checkpoint_sha256[:12])}"),
                ("data", f"{esc(data.get('path', '?'))} fingerprint {esc(str(s.get('data_fingerprint', '?'))[:12])}"),
                ("medsynth", f"{esc(__version__)} (checkpoint written by {esc(s.get('medsynth_version', '?'))})")]
    else:
        rows = [("checkpoint", esc(f"none ({run.checkpoint_error})")), ("medsynth", esc(__version__))]
    rows.append(("created", esc(created)))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<header><h1>medsynth run report: {esc(run.dir.resolve().name)}</h1><table>{body}</table></header>"


BUILDERS = {"samples": section_samples, "training": section_training, "metrics": section_metrics,
            "privacy": section_privacy, "export": section_export}


def _check_run_dir(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ReportError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory; medsynth report takes a run directory "
                          "(the folder 'medsynth train' wrote)")
    if not ((run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()):
        raise ReportError(f"{run_dir}: not a run directory (no config.yaml and no checkpoints/); "
                          "create one with 'medsynth train --config FILE --run-dir DIR'")
    return run_dir


def render_report(run_dir) -> RenderedReport:
    """Build the page for ``run_dir``; every section is built even when others fail."""
    run_dir = _check_run_dir(run_dir)
    run = _open_run(run_dir)
    sections = {}
    for sid, build in BUILDERS.items():
        try:
            sections[sid] = build(run)
        except Exception as e:   # one unreadable artefact (bad JSON, truncated PNG...) must not hide the rest
            note = f"could not read this section's files: {type(e).__name__}: {e}"
            sections[sid] = Section(sid, SECTIONS[sid], f"<p class=missing>{esc(note)}</p>", False, note)
    nav = "".join(f'<a href="#{sid}">{esc(s.title)}</a>' for sid, s in sections.items())
    body = "".join(f'<section id="{sid}" data-content="{"yes" if s.content else "no"}"><h2>{esc(s.title)}</h2>'
                   f"{s.body}</section>" for sid, s in sections.items())
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>medsynth report: {esc(run_dir.resolve().name)}</title><style>{CSS}</style></head>"
            f"<body>{_header(run)}<nav>{nav}</nav><main>{body}</main>"
            f"<footer>Written by medsynth {esc(__version__)} (<code>medsynth report</code>); one self-contained "
            f"file: images are embedded, nothing is loaded from elsewhere.</footer></body></html>\n")
    return RenderedReport(run_dir, page, sections)


def save_report(rendered: RenderedReport, out=None) -> Path:
    """Write the page atomically to ``out`` (default RUN/report.html)."""
    from medsynth.runs import atomic_write_text

    path = Path(out) if out is not None else rendered.run_dir / "report.html"
    if path.is_dir():
        raise ReportError(f"--out {path}: is a directory; give a file name such as {path / 'report.html'}")
    atomic_write_text(path, rendered.html)
    return path


def write_report(run_dir, out=None) -> Path:
    """Write ``RUN/report.html`` (or ``out``) for a run directory; returns its path."""
    return save_report(render_report(run_dir), out)
