"""Benchmark: 5-fold cross-validation of every fusion strategy on the default cohort size.

Simulates a cohort shaped like the real pipeline's arrays (362 patients; 40 deviation
features = 37 Z + 3 counts; a 64-dim note embedding; 5 demographics; 3 EHR tables of
T = 64 windows x 10 variables with variable lengths; ~15 % of each non-deviation
modality missing; the outcome driven by the deviations only), runs stratified 5-fold CV
of ``FusionClassifier`` for each strategy with default settings, and reports wall time
and held-out AUROC. ``--write`` records the table in ``benchmarks/RESULTS.md`` under
``## Fusion network: 5-fold CV timing`` (replacing that section only).

Usage (from the repository root)::

    python benchmarks/models.py                 # full size (362 patients, 5 folds)
    python benchmarks/models.py --quick         # 120 patients, 3 folds, 15 epochs (seconds)
    python benchmarks/models.py --device cuda --write
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
# this file is called models.py: keep its folder off sys.path so `models` is the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_ROOT))

SECTION = "## Fusion network: 5-fold CV timing"
log = logging.getLogger("normfuse.benchmarks.fusion")


def run(n_patients: int, n_folds: int, epochs: int, device: str, seed: int = 0):
    """Time stratified k-fold CV of every strategy; return a list of result rows."""
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from models.fusion import STRATEGIES, FusionClassifier
    from models.fusion_data import simulate_fusion_data
    from normfuse.errors import ConvergenceWarning

    data, y = simulate_fusion_data(n_patients, random_state=seed)
    folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(y, y))
    # warm-up (torch lazy imports, allocator) so the first strategy is not penalised
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        FusionClassifier("concat", epochs=1, device=device).fit(data.subset(folds[0][0]),
                                                               y[folds[0][0]])
    rows = [_references(data, y, folds)]
    for strategy in STRATEGIES:
        aucs, epochs_run = [], []
        t0, c0 = time.perf_counter(), time.process_time()
        for tr, te in folds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = FusionClassifier(strategy, epochs=epochs, device=device,
                                       random_state=seed).fit(data.subset(tr), y[tr])
            aucs.append(roc_auc_score(y[te], clf.predict_proba(data.subset(te))[:, 1]))
            epochs_run.append(len(clf.history_))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append({"strategy": strategy, "seconds": dt, "cpu_seconds": cpu, "auroc_mean": float(np.mean(aucs)),
                     "auroc_sd": float(np.std(aucs, ddof=1)), "epochs_mean": float(np.mean(epochs_run))})
        log.warning("%-16s %6.1f s  AUROC %.3f (sd %.3f)  epochs %.0f", strategy, dt,
                    rows[-1]["auroc_mean"], rows[-1]["auroc_sd"], rows[-1]["epochs_mean"])
    return rows


def _references(data, y, folds) -> dict:
    """Context rows: the planted score itself and a logistic regression on the same folds."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seq_means = [
        (x * m[..., None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]
        for x, m in ((data.sequences[k], data.row_masks[k]) for k in data.sequences)
    ]
    X = np.column_stack([*data.static.values(), *seq_means, data.presence])
    oracle = data.static["dev"][:, :5].sum(1)
    a_or, a_lr = [], []
    for tr, te in folds:
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(X[tr], y[tr])
        a_lr.append(roc_auc_score(y[te], lr.predict_proba(X[te])[:, 1]))
        a_or.append(roc_auc_score(y[te], oracle[te]))
    log.warning("oracle AUROC %.3f; logistic regression AUROC %.3f", np.mean(a_or), np.mean(a_lr))
    return {"oracle": float(np.mean(a_or)), "logreg": float(np.mean(a_lr)),
            "logreg_sd": float(np.std(a_lr, ddof=1))}


def render(rows, args, device: str) -> str:
    import torch

    ref, rows = rows[0], rows[1:]
    total = sum(r["seconds"] for r in rows)
    total_cpu = sum(r["cpu_seconds"] for r in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        SECTION, "",
        f"`python benchmarks/models.py{' --quick' if args.quick else ''} --device {args.device}`: "
        f"{args.n_patients} simulated patients (40 deviation features, 64-dim note embedding, "
        f"5 demographics, 3 EHR tables of 64 windows x 10 variables, ~15 % of each other "
        f"modality missing; outcome driven by the deviations only), stratified {args.folds}-fold "
        f"CV, default `FusionClassifier` settings (embed_dim 32, batch 64, up to {args.epochs} "
        "epochs, early stopping with patience 10 on a 20 % grouped validation split, 1 torch thread).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"device `{device}`, torch {torch.__version__}; 1-minute load average at the end "
        f"{load:.1f} (the machine was shared with other jobs).",
        "",
        "| strategy | CV wall time (s) | CV CPU time (s) | mean epochs | AUROC mean | AUROC SD |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| `{r['strategy']}` | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['epochs_mean']:.0f} | "
                     f"{r['auroc_mean']:.3f} | {r['auroc_sd']:.3f} |")
    lines += ["", f"All strategies: **{total:.1f} s wall, {total_cpu:.1f} s CPU** (target <= 180 s "
              "wall); wall above CPU time is time spent waiting for a core on the shared machine.",
              "",
              f"Context on the same folds: the planted score itself (sum of the 5 signal deviation "
              f"features) reaches AUROC {ref['oracle']:.3f}; an L2 logistic regression (C = 0.1) on "
              f"all features (static columns, per-table means over observed rows, presence flags) "
              f"{ref['logreg']:.3f} (SD {ref['logreg_sd']:.3f}); the networks "
              f"{min(r['auroc_mean'] for r in rows):.3f}-{max(r['auroc_mean'] for r in rows):.3f}. "
              + ("With ~230 training patients per fold and 200+ pure-noise inputs, no fusion network "
                 "beats the regularised linear model on this cohort."
                 if max(r["auroc_mean"] for r in rows) < ref["logreg"] else ""),
              ""]
    if not device.startswith("cuda"):
        from normfuse.device import cuda_available

        lines += [("No CUDA device was available for this run; " if not cuda_available() else
                   "This run used the CPU; ") + "`--device cuda` times the GPU path.", ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving the others."""
    from normfuse.persist import atomic_write_text

    old = path.read_text() if path.exists() else ""
    if SECTION in old:
        head, rest = old.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + text
    atomic_write_text(path, new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="120 patients, 3 folds, 15 epochs")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, default=_HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.n_patients, args.folds, args.epochs = (120, 3, 15) if args.quick else (362, 5, 100)
    from normfuse.device import resolve_device

    device = resolve_device(args.device)
    rows = run(args.n_patients, args.folds, args.epochs, device)
    text = render(rows, args, device)
    sys.stdout.write(text + "\n")
    if args.write:
        write_section(args.results, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
