"""Import the braincharts zip and measure speed and calibration after new-site adaptation.

fcon1000 sites with >= 40 controls (none is a braincharts training site) and COBRE
controls: k local controls per site adapt the model, the rest are evaluated. Reports
held-out pooled Z sd and the fraction |Z| > 1.96 (target 1 +- 0.1 and 4-6 %),
averaged over seeds, for several values of ``scale_prior_sd``; then the foundation issue's
transfer protocol (k controls per site x sex cell) with the default prior.

Usage::

    python benchmarks/braincharts_import.py            # seeds 0-4, k = 5, 10 and 20
    python benchmarks/braincharts_import.py --quick    # seed 0, k = 20, default prior
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a checkout: use its packages
    sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared/data"


def _split(df, k, seed, by=("site",)):
    """k controls of every ``by`` cell adapt, the rest are evaluated."""
    rng = np.random.default_rng(seed)
    ad, ev = [], []
    for _, g in sorted(df.groupby(list(by)), key=lambda kv: kv[0]):
        idx = rng.permutation(g.index.to_numpy())
        ad += list(idx[:k])
        ev += list(idx[k:])
    return df.loc[ad], df.loc[ev]


def main(argv=None):
    from normative.braincharts import import_braincharts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    zp = args.data / "braincharts/lifespan_57K_82sites.zip"
    t = time.perf_counter()
    allm = import_braincharts(zp)
    print(f"import {len(allm.responses_)} measures: {time.perf_counter() - t:.2f} s")
    d = pd.read_csv(args.data / "controls/fcon1000.csv")
    d["sex"] = d["sex"].map({0: "F", 1: "M"})
    c = pd.read_csv(args.data / "controls/cobre.csv")
    c["sex"] = c["sex"].map({0: "F", 1: "M"})
    bc = import_braincharts(zp, measures=[m for m in allm.measures_ if m in d.columns])
    counts = d["site"].value_counts()
    fc = d[d["site"].isin(counts[counts >= 40].index)]
    ctrl = c[c["group"] == "Control"]
    t = time.perf_counter()
    bc.transform(d.assign(site="ixi"))
    print(f"transform {len(d)} rows x {len(bc.responses_)} measures: {time.perf_counter() - t:.2f} s")
    seeds = [0] if args.quick else range(5)
    ks = [20] if args.quick else [5, 10, 20]
    priors = [0.4] if args.quick else [0.2, 0.3, 0.4, 0.5]

    def run(k, p, by):
        rows = []
        for seed in seeds:
            out = []
            for data in (fc, ctrl):
                a, e = _split(data, k, seed, by)
                z = bc.adapt(a, scale_prior_sd=p).transform(e).to_numpy()
                out += [z.std(), (np.abs(z) > 1.96).mean(), len(a), len(e)]
            rows.append(out)
        r = np.asarray(rows)
        return r.mean(0), r.min(0), r.max(0)

    print("k controls per site:")
    print("| scale_prior_sd | k | fcon1000 6 sites: Z sd | |Z|>1.96 | COBRE controls: Z sd | |Z|>1.96 |")
    print("|---|---|---|---|---|---|")
    for p in priors:
        for k in ks:
            m, _, _ = run(k, p, ("site",))
            print(f"| {p} | {k} | {m[0]:.3f} | {100 * m[1]:.1f} % | {m[4]:.3f} | {100 * m[5]:.1f} % |")
    print("\nThe foundation issue's transfer protocol: k controls per (site, sex) cell, default prior "
          "(mean [min, max] over the seeds):")
    print("| k per site x sex | fcon1000: n adapt / eval | Z sd | |Z|>1.96 "
          "| COBRE: n adapt / eval | Z sd | |Z|>1.96 |")
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        m, lo, hi = run(k, 0.4, ("site", "sex"))
        print(f"| {k} | {m[2]:.0f} / {m[3]:.0f} | {m[0]:.3f} [{lo[0]:.2f}, {hi[0]:.2f}] | "
              f"{100 * m[1]:.1f} % [{100 * lo[1]:.1f}, {100 * hi[1]:.1f}] | {m[6]:.0f} / {m[7]:.0f} | "
              f"{m[4]:.3f} [{lo[4]:.2f}, {hi[4]:.2f}] | "
              f"{100 * m[5]:.1f} % [{100 * lo[5]:.1f}, {100 * hi[5]:.1f}] |")


if __name__ == "__main__":
    main()
