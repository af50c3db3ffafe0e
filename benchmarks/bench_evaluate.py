"""Benchmark of models.evaluate and models.xgb: DeLong, bootstrap, XGBoost fit/SHAP.

Usage::

    python benchmarks/bench_evaluate.py            # full size (about a minute on 2 cores)
    python benchmarks/bench_evaluate.py --quick    # reduced size (a few seconds)

Compares the midrank DeLong (O(n log n), vectorised over predictors) with the
pairwise O(m n) kernel, times a 2000-replicate stratified bootstrap, and times the
XGBoost wrapper's fit + TreeSHAP on a simulated analysis table. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.evaluate import bootstrap_ci, delong  # noqa: E402
from models.xgb import XGBClassifierModel  # noqa: E402


def _pairwise_delong(y, s):
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    psi = (pos[:, None, :] > neg[None, :, :]) + 0.5 * (pos[:, None, :] == neg[None, :, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = v10.mean(axis=0)
    return auc, np.cov(v10.T) / m + np.cov(v01.T) / n


def _timed(fn, repeat=3):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (seconds)")
    ap.add_argument("--n-jobs", type=int, default=None,
                    help="XGBoost threads (default: all cores; use 1 on a busy shared machine, "
                         "where OpenMP threads oversubscribed by other jobs run 10x slower)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    sizes = [1_000, 4_000] if args.quick else [1_000, 4_000, 100_000]
    for n in sizes:
        y = (rng.random(n) < 0.3).astype(int)
        s = y[:, None] * 0.8 + rng.normal(size=(n, 3))
        t_fast, (r) = _timed(lambda y=y, s=s: delong(y, s))
        if n <= 4_000:
            t_slow, (auc, cov) = _timed(lambda y=y, s=s: _pairwise_delong(y, s), repeat=1)
            err = float(np.max(np.abs(cov - r.cov)))
            rows.append(("DeLong, 3 predictors", n, t_fast, t_slow, err))
        else:
            rows.append(("DeLong, 3 predictors", n, t_fast, np.nan, np.nan))
    nb = 2000
    for n in ([1_000] if args.quick else [1_000, 10_000]):
        y = (rng.random(n) < 0.3).astype(int)
        p = 1 / (1 + np.exp(-(y * 1.2 + rng.normal(size=n))))
        t, _ = _timed(lambda y=y, p=p: bootstrap_ci(y, p, n_boot=nb), repeat=1)
        rows.append((f"bootstrap {nb} reps (AUROC, AUPRC, Brier)", n, t, np.nan, np.nan))
    n = 2_000 if args.quick else 20_000
    X = pd.DataFrame(rng.normal(size=(n, 40)), columns=[f"dev__r{j}" for j in range(40)])
    X["patient_id"] = np.arange(n)
    y = (X["dev__r0"] - X["dev__r1"] + rng.normal(size=n) > 1).astype(int)
    model = XGBClassifierModel(feature_prefixes=("dev__",), device="cpu", n_estimators=300,
                               n_jobs=args.n_jobs)
    t_fit, _ = _timed(lambda: model.fit(X, y), repeat=1)
    t_shap, _ = _timed(lambda: model.shap_values(X), repeat=1)
    rows.append(("XGBoost fit (40 features, early stopping)", n, t_fit, np.nan, np.nan))
    rows.append(("XGBoost TreeSHAP (pred_contribs)", n, t_shap, np.nan, np.nan))
    print("| task | n | seconds | pairwise O(mn) seconds | max abs diff of cov |")
    print("|---|---|---|---|---|")
    for name, n, t, ts, e in rows:
        ts_s = "" if np.isnan(ts) else f"{ts:.3f}"
        e_s = "" if np.isnan(e) else f"{e:.1e}"
        print(f"| {name} | {n} | {t:.3f} | {ts_s} | {e_s} |")


if __name__ == "__main__":
    main()
