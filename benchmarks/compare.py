"""Benchmark: the full model comparison (models.compare.compare_models) on a planted cohort.

Simulates the default cohort size (362 patients; 30 regional Z scores + 3 deviation
counts, 20 EHR summary features, a 16-dim note embedding, age and sex; only the
deviations and the notes carry signal, EHR is pure noise; 10 % of patients lack notes
and 10 % lack EHR summaries), runs every model of ``MODEL_NAMES`` plus the
leave-one-modality-out ablations of ``all_xgb`` and ``fusion_concat`` on 2 x 5 identical
grouped, stratified folds with default model settings, and reports the wall/CPU time
and the comparison table. It then runs the same comparison again with ``n_jobs``
worker processes (``--n-jobs``, default 2), checks that the out-of-fold risks agree, and
times the all-features XGBoost of every fold run one after another, in 2 threads and in
2 processes (which backend suits the XGBoost-bound part of the jobs). ``--write``
records it in ``benchmarks/RESULTS.md`` under ``## Model comparison`` (replacing that
section only, appended at the end otherwise).

Usage (from the repository root)::

    python benchmarks/compare.py              # 362 patients, 2 x 5 folds, default settings
    python benchmarks/compare.py --quick      # 200 patients, 1 x 3 folds, small models (seconds)
    python benchmarks/compare.py --n-jobs 1   # sequential only (no parallel side-by-side)
    python benchmarks/compare.py --device cuda --write
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
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_ROOT))

SECTION = "## Model comparison"
log = logging.getLogger("normfuse.benchmarks.compare")


def run(n_patients: int, n_splits: int, n_repeats: int, device: str, quick: bool, seed: int = 0,
        n_jobs: int = 1):
    """Run the comparison once; return (result, wall seconds, CPU seconds of this process)."""
    from models.compare import compare_models, simulate_comparison_table
    from normfuse.errors import ConvergenceWarning

    tab = simulate_comparison_table(n_patients, random_state=seed)
    xgb = {"n_estimators": 60} if quick else {}
    fusion = {"epochs": 8, "embed_dim": 16} if quick else {}
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = compare_models(tab, "y", n_splits=n_splits, n_repeats=n_repeats, device=device,
                             random_state=seed, xgb_params=xgb, fusion_params=fusion, n_jobs=n_jobs)
    return res, time.perf_counter() - t0, time.process_time() - c0


def _xgb_fold(tab, tr_pos, te_pos, quick: bool, seed: int):
    """Fit + predict the all-features XGBoost of one fold (the jobs' XGBoost-bound part)."""
    import numpy as np

    from models.xgb import XGBClassifierModel

    kw = {"n_estimators": 60} if quick else {}
    tr, te = tab.iloc[tr_pos], tab.iloc[te_pos]
    est = XGBClassifierModel(feature_prefixes=("dev__", "ehr__", "txt__", "demo__"), n_jobs=1,
                             random_state=seed, device="cpu", **kw)
    est.fit(tr.drop(columns="y"), tr["y"])
    return np.asarray(est.predict_proba(te)[:, 1])


def backends(n_patients: int, folds, quick: bool, seed: int = 0) -> dict:
    """Wall seconds of every fold's all-features XGBoost: sequential, 2 threads, 2 processes."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from joblib import Parallel, delayed

    from models.compare import simulate_comparison_table

    tab = simulate_comparison_table(n_patients, random_state=seed)
    jobs = [(np.flatnonzero(f != k), np.flatnonzero(f == k), seed + r)
            for r, f in enumerate(folds.T) for k in range(int(f.max()) + 1)]
    out = {}
    t0 = time.perf_counter()
    ref = [_xgb_fold(tab, a, b, quick, s) for a, b, s in jobs]
    out["sequential"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        thr = list(ex.map(lambda j: _xgb_fold(tab, j[0], j[1], quick, j[2]), jobs))
    out["threads"] = time.perf_counter() - t0
    Parallel(n_jobs=2, backend="loky")(delayed(len)([i]) for i in range(2))  # start the workers
    t0 = time.perf_counter()
    prc = Parallel(n_jobs=2, backend="loky")(delayed(_xgb_fold)(tab, a, b, quick, s) for a, b, s in jobs)
    out["processes"] = time.perf_counter() - t0
    out["identical"] = all(np.array_equal(x, y) and np.array_equal(x, z) for x, y, z in zip(ref, thr, prc,
                                                                                             strict=True))
    out["n_fits"] = len(jobs)
    return out


def _parallel_lines(res, wall: float, par, back) -> list[str]:
    """The side-by-side paragraph: sequential vs n_jobs worker processes, threads vs processes."""
    import numpy as np

    if par is None:
        return []
    pres, pwall, nj, warm = par
    a, b = res.oof_predictions, pres.oof_predictions
    fus = a["model"].str.startswith("fusion").to_numpy()
    d_other = float(np.max(np.abs(a["p"].to_numpy()[~fus] - b["p"].to_numpy()[~fus]), initial=0.0))
    d_fus = float(np.max(np.abs(a["p"].to_numpy()[fus] - b["p"].to_numpy()[fus]), initial=0.0))
    lines = [
        f"**Parallel folds** (`n_jobs={nj}`, {pres.settings['n_workers']} worker processes; this "
        f"machine has {os.cpu_count()} cores): **{pwall:.1f} s wall** vs "
        f"{wall:.1f} s sequential, **{wall / pwall:.2f}x**, on fresh workers (each imports torch and "
        "XGBoost and pays torch's first-fit set-up, about 4 s on an idle core); called again in the "
        f"same session (loky keeps its workers) **{warm:.1f} s, {wall / warm:.2f}x**. Out-of-fold "
        f"risks: largest difference {d_other:.1g} (XGBoost, logistic) and {d_fus:.1g} (fusion "
        "networks) from the sequential run.",
        "",
    ]
    if back:
        lines += [
            f"Threads or processes: the {back['n_fits']} folds' all-features XGBoost fits (1 XGBoost "
            f"thread each) take {back['sequential']:.1f} s one after another, {back['threads']:.1f} s "
            f"in 2 threads ({back['sequential'] / back['threads']:.2f}x) and {back['processes']:.1f} s "
            f"in 2 warm processes ({back['sequential'] / back['processes']:.2f}x); identical risks: "
            f"{back['identical']}. compare_models uses processes: besides XGBoost a job runs pandas "
            "slicing and SHAP under the GIL, and its torch networks draw from torch's "
            "process-wide random generator and thread setting, so fusion fits in threads of one "
            "process would not reproduce.",
            "",
        ]
    return lines


def _markdown(res, wall: float, cpu: float, args, device_used: str, par=None, back=None) -> str:
    import torch
    import xgboost

    s = res.summary()
    cols = ["auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "cal_slope", "cal_intercept",
            "delta_vs_baseline", "p_vs_baseline", "delta_vs_full", "p_vs_full", "fit_seconds"]
    head = "| model | modalities | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * 2 + "---:|" * len(cols)]
    for name, row in s.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if v != v:  # NaN
                cells.append("")
            elif c.startswith("p_vs"):
                cells.append(f"{v:.3g}")
            elif c == "fit_seconds":
                cells.append(f"{v:.1f}")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| `{name}` | {row['modalities']} | " + " | ".join(cells) + " |")
    ran = s[s["skipped"] == ""]
    above = [f"`{m}`" for m in ran.index if ran.at[m, "kind"] == "model" and ran.at[m, "auroc_ci_low"] > 0.5]
    chance = [f"`{m}`" for m in ran.index if ran.at[m, "kind"] == "model" and ran.at[m, "auroc_ci_low"] <= 0.5]
    abl = ran[ran["kind"] == "ablation"]
    sig = [f"`{m}` ({abl.at[m, 'delta_vs_full']:+.3f}, p {abl.at[m, 'p_vs_full']:.2g})"
           for m in abl.index if abl.at[m, "p_vs_full"] < 0.05]
    ns = [f"`{m}`" for m in abl.index if abl.at[m, "p_vs_full"] >= 0.05]
    reading = (
        f"Reading (generated from the table): AUROC CI above 0.5: {', '.join(above) or 'none'}; "
        f"CI including 0.5: {', '.join(chance) or 'none'}. Ablations that lose AUROC significantly "
        f"(p < 0.05 vs the full model): {', '.join(sig) or 'none'}; not significant: "
        f"{', '.join(ns) or 'none'}. The planted truth is dev and txt informative, EHR and demo noise."
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    n = int(s["n_patients"].iloc[0])
    ev = int(s["n_events"].iloc[0])
    return "\n".join([
        SECTION, "",
        f"`python benchmarks/compare.py{' --quick' if args.quick else ''} --device {args.device}"
        f" --n-jobs {args.n_jobs}`: "
        f"`simulate_comparison_table({args.n})` ({n} patients, {ev} events; 30 Z + 3 counts, 20 EHR "
        "summaries, 16-dim note embedding, age, sex; **signal planted in dev and txt only, EHR pure "
        "noise**), every model of `MODEL_NAMES` plus leave-one-modality-out ablations of `all_xgb` "
        f"and `fusion_concat`, on {res.n_repeats} x {res.n_splits} identical patient-grouped, "
        "outcome-stratified folds; "
        + ("small models (XGBoost 60 trees, fusion 8 epochs)." if args.quick else
           "default XGBoost (<= 500 trees, early stopping 30, 1 thread) and FusionClassifier (<= 100 epochs, "
           "patience 10, 1 torch thread) settings."),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, device `{device_used}`, torch "
        f"{torch.__version__}, xgboost {xgboost.__version__}; 1-minute load average at the end "
        f"{load:.1f} (shared machine).",
        "",
        f"Total: **{wall:.1f} s wall, {cpu:.1f} s CPU** for {len(s)} models x "
        f"{res.n_repeats * res.n_splits} folds, one (repeat, fold) job after another (`n_jobs=1`). "
        "`fit_seconds` is each model's fitting + prediction time summed over folds.",
        "",
        *_parallel_lines(res, wall, par, back),
        "AUROC = mean over repeats of the pooled out-of-fold AUROC; CI = mean +/- 1.96 sqrt(mean "
        "per-repeat DeLong variance); p = paired DeLong (vs `dev_count_logistic`; ablations also vs "
        "their full model), combined the same way. Calibration slope/intercept on the pooled "
        "out-of-fold risks (class-weighted models are not calibrated by design: intercepts < 0).",
        "",
        *lines, "", reading, "",
    ])


def _write(text: str) -> None:
    path = _HERE / "RESULTS.md"
    cur = path.read_text() if path.exists() else ""
    if SECTION in cur:
        start = cur.index(SECTION)
        nxt = cur.find("\n## ", start + len(SECTION))
        cur = cur[:start] + text + ("" if nxt < 0 else cur[nxt + 1:])
    else:
        cur = cur.rstrip("\n") + "\n\n" + text
    from normfuse.persist import atomic_write_text

    atomic_write_text(path, cur)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 patients, 1 x 3 folds, small models")
    p.add_argument("--n", type=int, default=None, help="patients (default 362; 200 with --quick)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--n-jobs", type=int, default=2, help="worker processes of the side-by-side "
                   "parallel run (default 2; 1 skips it)")
    p.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.n = args.n or (200 if args.quick else 362)
    splits, repeats = (3, 1) if args.quick else (5, 2)
    from normfuse.device import resolve_device

    res, wall, cpu = run(args.n, splits, repeats, args.device, args.quick)
    par = back = None
    if args.n_jobs != 1:
        pres, pwall, _ = run(args.n, splits, repeats, args.device, args.quick, n_jobs=args.n_jobs)
        _, warm, _ = run(args.n, splits, repeats, args.device, args.quick, n_jobs=args.n_jobs)
        par = (pres, pwall, args.n_jobs, warm)
        back = backends(args.n, res.folds.to_numpy(), args.quick)
    text = _markdown(res, wall, cpu, args, resolve_device(args.device), par, back)
    sys.stdout.write(text + "\n")
    if args.write:
        _write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
