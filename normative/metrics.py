"""Held-out quality of normative models: EXPV, SMSE, MSLL, Rho and Z calibration.

Definitions follow the normative-modelling literature (Marquand et al. 2019;
Rutherford et al. 2022) and pcntoolkit, so numbers are comparable:

- EXPV = 1 - var(y - yhat) / var(y)
- SMSE = mean((y - yhat)^2) / var(y)
- MSLL = mean[ 0.5 log(2 pi s2) + (y - yhat)^2 / (2 s2) ]
       - mean[ 0.5 log(2 pi v0) + (y - m0)^2 / (2 v0) ]
  with (m0, v0) the training mean and variance (the trivial model); lower is better.
  The predictive distribution enters through its mean and variance (Gaussian
  approximation), as in pcntoolkit.
- Rho = Pearson correlation of y and yhat.
- Z calibration: mean, sd, skewness, excess kurtosis and the fraction |Z| > 1.96
  (0.05 when calibrated).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["expv", "smse", "msll", "rho", "z_calibration", "evaluate"]


def _masked(*arrays):
    arrs = [np.asarray(a, dtype=float) for a in arrays]
    ok = np.ones(arrs[0].shape, dtype=bool)
    for a in arrs:
        ok &= np.isfinite(a) if a.shape == arrs[0].shape else True
    return arrs, ok


def _colwise(fn, y, *others):
    y = np.asarray(y, dtype=float)
    y2 = y if y.ndim == 2 else y[:, None]
    others2 = [np.asarray(o, dtype=float) for o in others]
    others2 = [o if o.ndim == 2 else o[:, None] for o in others2]
    out = np.empty(y2.shape[1])
    for j in range(y2.shape[1]):          # one column per region; rows are vectorised
        cols = [o[:, j] if o.shape[1] > 1 else o[:, 0] for o in others2]
        ok = np.isfinite(y2[:, j])
        for c in cols:
            ok &= np.isfinite(c)
        # a response without two complete rows (e.g. one left out of the fit) has no value
        out[j] = fn(y2[ok, j], *[c[ok] for c in cols]) if ok.sum() >= 2 else np.nan
    return out if y.ndim == 2 else out[0]


def expv(y, yhat):
    """Explained variance 1 - var(y - yhat)/var(y), per column."""
    return _colwise(lambda a, b: 1.0 - np.var(a - b) / np.var(a), y, yhat)


def smse(y, yhat):
    """Standardised mean squared error mean((y - yhat)^2)/var(y), per column."""
    return _colwise(lambda a, b: np.mean((a - b) ** 2) / np.var(a), y, yhat)


def rho(y, yhat):
    """Pearson correlation of y and yhat, per column."""
    return _colwise(lambda a, b: float(np.corrcoef(a, b)[0, 1]), y, yhat)


def msll(y, yhat, s2, train_mean, train_var):
    """Mean standardised log loss (lower is better), per column."""
    y = np.asarray(y, float)
    tm = np.broadcast_to(np.asarray(train_mean, float), y.shape[1:] if y.ndim == 2 else ())
    tv = np.broadcast_to(np.asarray(train_var, float), tm.shape)
    def f(a, b, v, m0, v0):
        loss = 0.5 * np.log(2 * np.pi * v) + (a - b) ** 2 / (2 * v)
        loss0 = 0.5 * np.log(2 * np.pi * v0) + (a - m0) ** 2 / (2 * v0)
        return float(np.mean(loss - loss0))
    if y.ndim == 1:
        ok = np.isfinite(y) & np.isfinite(yhat) & np.isfinite(s2)
        return f(y[ok], np.asarray(yhat)[ok], np.asarray(s2)[ok], float(tm), float(tv))
    m0 = np.broadcast_to(tm[None, :], y.shape)
    v0 = np.broadcast_to(tv[None, :], y.shape)
    return _colwise(f, y, yhat, s2, m0, v0)


def z_calibration(z, threshold: float = 1.96) -> dict:
    """Calibration of pooled deviation scores: mean, sd, skew, excess kurtosis, |Z| > t."""
    from scipy.stats import kurtosis, skew

    z = np.asarray(z, float).ravel()
    z = z[np.isfinite(z)]
    return {
        "z_mean": float(z.mean()), "z_sd": float(z.std(ddof=1)), "z_skew": float(skew(z)),
        "z_exkurt": float(kurtosis(z, fisher=True)),
        "frac_abs_z_gt": float(np.mean(np.abs(z) > threshold)), "n": int(z.size),
    }


def evaluate(y, mean, sd, z, *, train_mean, train_sd, responses: Sequence[str]):
    """Per-response table of EXPV, SMSE, MSLL, Rho and Z calibration on held-out data."""
    import pandas as pd
    from scipy.stats import kurtosis, skew

    y = np.asarray(y, float)
    mean = np.asarray(mean, float)
    sd = np.asarray(sd, float)
    z = np.asarray(z, float)
    rows = {
        "expv": expv(y, mean), "smse": smse(y, mean),
        "msll": msll(y, mean, sd ** 2, train_mean, np.asarray(train_sd, float) ** 2),
        "rho": rho(y, mean),
    }
    zm = np.where(np.isfinite(z), z, np.nan)
    n = np.isfinite(zm).sum(0)
    has = n >= 2                # responses without Z (left out of the fit) get NaN
    stats = {"z_mean": lambda a: np.nanmean(a, 0), "z_sd": lambda a: np.nanstd(a, 0, ddof=1),
             "z_skew": lambda a: skew(a, 0, nan_policy="omit"),
             "z_exkurt": lambda a: kurtosis(a, 0, fisher=True, nan_policy="omit"),
             "frac_abs_z_gt_1.96": lambda a: np.nanmean(
                 np.where(np.isfinite(a), np.abs(a) > 1.96, np.nan), 0)}
    for k, fn in stats.items():
        rows[k] = np.full(zm.shape[1], np.nan)
        if has.any():
            rows[k][has] = fn(zm[:, has])
    rows["n"] = n
    return pd.DataFrame({k: np.asarray(v, float) for k, v in rows.items()},
                        index=pd.Index(list(responses), name="response"))
