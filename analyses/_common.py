"""Small helpers shared by the analyses modules (Wald tables, BH FDR, warnings)."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["Z975", "wald_table", "bh_fdr", "check_counts"]

#: qnorm(0.975), the multiplier R's ``confint.default`` uses.
Z975 = 1.959963984540054


def wald_table(names, coef, se, exp: str | None = None, level: float = 0.95) -> pd.DataFrame:
    """A numeric coefficient table: coef, se, z, p, ci_low, ci_high (+ exp columns).

    ``exp`` names the exponentiated quantity (``"irr"``, ``"hr"``): adds ``exp``,
    ``exp_ci_low``, ``exp_ci_high`` columns with Wald limits exp(b +/- z*se).
    """
    from scipy import stats

    coef = np.asarray(coef, dtype=float)
    se = np.asarray(se, dtype=float)
    q = Z975 if level == 0.95 else float(stats.norm.ppf(0.5 + level / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = coef / se
    p = 2 * stats.norm.sf(np.abs(z))
    tab = pd.DataFrame({"coef": coef, "se": se, "z": z, "p": p,
                        "ci_low": coef - q * se, "ci_high": coef + q * se},
                       index=pd.Index([str(n) for n in names], name="term"))
    if exp:
        tab[exp] = np.exp(coef)
        tab[f"{exp}_ci_low"] = np.exp(tab["ci_low"])
        tab[f"{exp}_ci_high"] = np.exp(tab["ci_high"])
    return tab


def bh_fdr(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (R's ``p.adjust(p, "BH")``); NaN stays NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q)[::-1]
    ranks = np.arange(m, 0, -1)
    adj = np.minimum.accumulate(q[order] * m / ranks)
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def check_counts(y: pd.Series, who: str) -> np.ndarray:
    """Return ``y`` as float, raising (naming the row) on negative or non-integer counts."""
    from normfuse.errors import ColumnContractError

    v = y.to_numpy(dtype=np.float64)
    bad = (v < 0) | (np.abs(v - np.round(v)) > 1e-8)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "negative" if v[i] < 0 else "non-integer"
        raise ColumnContractError(
            f"{who}: the response {y.name!r} must hold non-negative integer counts; row "
            f"{y.index[i]!r} holds {float(v[i])!r} ({kind}; {int(bad.sum())} bad rows). Counts of "
            "critical deviations are whole numbers: check that you passed counts, not Z-scores "
            "or rates (use offset= for exposure).")
    return v
