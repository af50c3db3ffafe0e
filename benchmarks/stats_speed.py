"""Wall-clock of the analyses against the libraries users would otherwise call.

Cox (Efron) vs lifelines ``CoxPHFitter`` (tight precision, as needed to match R),
random-intercept LMM vs statsmodels ``mixedlm``, Kaplan-Meier vs lifelines
``KaplanMeierFitter``. Prints a markdown table; writes nothing.

Usage::

    python benchmarks/stats_speed.py           # n = 20 000 subjects (Cox, KM), 2 000 x 5 visits (LMM)
    python benchmarks/stats_speed.py --quick   # n = 2 000, 300 x 5
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.cox import fit_cox  # noqa: E402
from analyses.mixed import fit_mixed  # noqa: E402
from analyses.survival import kaplan_meier  # noqa: E402


def _best(f, repeat=2):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = f()
        out.append(time.perf_counter() - t)
    return min(out), r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n, g = (2000, 300) if a.quick else (20000, 2000)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4))
    t = rng.exponential(1 / np.exp(X @ [0.5, -0.3, 0.2, 0.0]))
    c = rng.exponential(1.0, n)
    d = pd.DataFrame(X, columns=["x1", "x2", "x3", "x4"]).assign(
        time=np.round(np.minimum(t, c), 2), status=(t <= c).astype(int))
    warnings.simplefilter("ignore")
    from lifelines import CoxPHFitter, KaplanMeierFitter

    rows = []
    t_ours, ours = _best(lambda: fit_cox(["x1", "x2", "x3", "x4"], d, "time", "status"))
    t_ll, ll = _best(lambda: CoxPHFitter().fit(d, "time", "status",
                                               fit_options=dict(precision=1e-14, r_precision=1e-15)))
    diff = np.max(np.abs(ours.params["coef"].to_numpy() - ll.params_.to_numpy()))
    rows.append(("Cox, Efron ties, 4 covariates", n, t_ours, "lifelines CoxPHFitter", t_ll, diff))
    t_ours, km = _best(lambda: kaplan_meier(d, "time", "status"))
    t_ll, kl = _best(lambda: KaplanMeierFitter().fit(d["time"], d["status"]))
    ref = kl.survival_function_.iloc[:, 0].reindex(km.table["time"].to_numpy()).to_numpy()
    diff = np.max(np.abs(km.table["surv"].to_numpy() - ref))
    rows.append(("Kaplan-Meier", n, t_ours, "lifelines KaplanMeierFitter", t_ll, diff))
    pid = np.repeat(np.arange(g), 5)
    v = pd.DataFrame({"pid": pid, "years": np.tile(np.arange(5.0), g), "x": rng.normal(size=g)[pid]})
    v["y"] = 2 + 0.3 * v["x"] + 0.1 * v["years"] + rng.normal(0, 1, g)[pid] + rng.normal(0, 0.5, len(v))
    import statsmodels.formula.api as smf

    t_ours, lm = _best(lambda: fit_mixed("y ~ x + years", v, group="pid"))
    t_sm, sm = _best(lambda: smf.mixedlm("y ~ x + years", v, groups="pid").fit(reml=True))
    diff = np.max(np.abs(lm.params["coef"].to_numpy() - sm.fe_params.to_numpy()))
    rows.append(("LMM, random intercept, REML", len(v), t_ours, "statsmodels mixedlm", t_sm, diff))
    sys.stdout.write("| analysis | rows | normfuse (s) | reference | reference (s) | max |coef diff| |\n"
                     "|---|---|---|---|---|---|\n")
    for r in rows:
        sys.stdout.write(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]} | {r[4]:.3f} | {r[5]:.1e} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
