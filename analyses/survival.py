"""Kaplan-Meier, log-rank / Fleming-Harrington tests and cohort endpoints, agreeing with R.

Numbers follow R's ``survival`` package: ``survfit`` (Greenwood variance; intervals on
the log scale by default, ``conf.type="log"``, or on the log(-log) scale,
``"log-log"``, lifelines' default), ``quantile.survfit`` medians, and ``survdiff``
(G-rho family with weights S(t-)^rho from the pooled Kaplan-Meier curve).
Cox models live in :mod:`analyses.cox`.

Cohort endpoint columns (years from the index date)
----------------------------------------------------
``time_cdp``/``event_cdp`` (confirmed disability progression), ``time_relapse``/
``event_relapse`` (first relapse), ``time_edss4``/``event_edss4`` (EDSS milestone, any
``time_edss<k>``), optionally ``followup`` (years of follow-up): see :func:`endpoint`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from analyses._common import Z975
from analyses._formula import complete_cases
from normfuse.checks import check_numeric, require_columns, require_dataframe
from normfuse.errors import ColumnContractError
from normfuse.results import ResultMixin

__all__ = ["KaplanMeierResult", "LogRankResult", "kaplan_meier", "logrank", "endpoint",
           "check_survival", "ENDPOINTS"]

#: endpoint name -> (time column, event column) in the cohort table
ENDPOINTS = {"cdp": ("time_cdp", "event_cdp"), "relapse": ("time_relapse", "event_relapse"),
             "edss4": ("time_edss4", "event_edss4"), "edss6": ("time_edss6", "event_edss6")}


def check_survival(data: pd.DataFrame, duration: str, event: str, who: str,
                   start: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate survival columns; return float time, 0/1 event and start arrays.

    Raises naming the row for negative times, events not coded 0/1 (or R's 1/2 coding,
    which is recoded), and ``stop <= start`` in counting-process data.
    """
    cols = [duration, event] + ([start] if start else [])
    require_columns(data, cols, who)
    a = check_numeric(data, cols, who)
    t, e = a[:, 0], a[:, 1]
    vals = set(np.unique(e).tolist())
    if vals <= {1.0, 2.0} and 2.0 in vals:
        e = (e == 2).astype(float)          # R's status coding 1 = censored, 2 = event
    elif not vals <= {0.0, 1.0}:
        bad = ~np.isin(e, (0.0, 1.0))
        i = int(np.flatnonzero(bad)[0])
        raise ColumnContractError(
            f"{who}: event column {event!r} must be 0/1 (or 1/2 = censored/event as in R); "
            f"row {data.index[i]!r} holds {float(e[i])!r}. Recode it, e.g. (df[col] == 'dead').astype(int).")
    st = None
    if start:
        st = a[:, 2]
        bad = t <= st
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ColumnContractError(
                f"{who}: counting-process intervals need stop > start (R's (start, stop]); row "
                f"{data.index[i]!r} has {start}={float(st[i])!r}, {duration}={float(t[i])!r} "
                f"({int(bad.sum())} such rows). Drop zero-length intervals or fix the times.")
    else:
        bad = t < 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ColumnContractError(
                f"{who}: durations must be >= 0; row {data.index[i]!r} has {duration}="
                f"{float(t[i])!r} ({int(bad.sum())} negative). An event dated before the index "
                "date usually means the index date or the event date is wrong.")
    return t, e, st


def endpoint(cohort: pd.DataFrame, name: str, followup: str | None = "followup",
             missing: Literal["drop", "raise"] = "drop") -> pd.DataFrame:
    """Extract a time-to-event endpoint from the cohort table, validated.

    Parameters
    ----------
    cohort : DataFrame
        One row per patient with ``time_<name>`` (years from index date to the event
        or to censoring) and ``event_<name>`` (1 event, 0 censored); e.g. ``cdp``
        (confirmed disability progression), ``relapse`` (first relapse), ``edss4``
        (EDSS milestone). If the column ``followup`` exists, event times after the end
        of follow-up are refused and censoring times must equal it (up to 1e-9).
    name : str
        Endpoint name (see :data:`ENDPOINTS`) or any ``<name>`` with those columns.

    Returns
    -------
    DataFrame
        The cohort's rows (index and order kept, incomplete rows dropped and counted)
        with all columns plus ``duration`` and ``event`` (0/1 float).
    """
    who = f"endpoint({name!r})"
    require_dataframe(cohort, who, "cohort")
    tcol, ecol = ENDPOINTS.get(name, (f"time_{name}", f"event_{name}"))
    require_columns(cohort, [tcol, ecol], who,
                    hint=f"The cohort table needs '{tcol}' (years from index date) and '{ecol}' (0/1).")
    d = complete_cases(cohort, [tcol, ecol], who, missing)
    t, e, _ = check_survival(d, tcol, ecol, who)
    if followup and followup in d.columns:
        # +inf is an open-ended follow-up (never before an event): let it through as before
        fu = check_numeric(d, [followup], who, allow_nan=True, allow_inf=True)[:, 0]
        late = (e == 1) & (t > fu + 1e-9)
        if late.any():
            i = int(np.flatnonzero(late)[0])
            raise ColumnContractError(
                f"{who}: row {d.index[i]!r} has an event at {float(t[i])!r} years, after the end of "
                f"follow-up ({followup}={float(fu[i])!r}): an event after censoring "
                f"({int(late.sum())} rows). Fix the follow-up or the event date.")
    out = d.copy()
    out["duration"] = t
    out["event"] = e
    return out


# ---------------------------------------------------------------- Kaplan-Meier

def _km_curve(t: np.ndarray, e: np.ndarray):
    """KM on unique times: time, n_risk, n_event, n_censor, surv, greenwood sum."""
    times, inv = np.unique(t, return_inverse=True)
    d = np.bincount(inv, weights=e, minlength=times.size)
    c = np.bincount(inv, minlength=times.size) - d
    n = t.size - np.concatenate([[0], np.cumsum(d + c)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.cumprod(1.0 - d / n)
        gw = np.cumsum(np.where(d > 0, d / (n * (n - d)), 0.0))
    return times, n, d, c, s, gw


def _ci(s, gw, conf_type, z):
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(gw)
        if conf_type == "log":
            lo, hi = s * np.exp(-z * sd), np.minimum(s * np.exp(z * sd), 1.0)
        else:
            ll = np.log(-np.log(s))
            w = z * sd / np.abs(np.log(s))
            lo, hi = np.exp(-np.exp(ll + w)), np.exp(-np.exp(ll - w))
        bad = (s <= 0) | ~np.isfinite(gw)
        lo = np.where(bad, np.nan, lo)
        hi = np.where(bad, np.nan, hi)
        if conf_type == "log-log":
            one = s >= 1
            lo, hi = np.where(one, np.nan, lo), np.where(one, np.nan, hi)
    return lo, hi


def _quantile(times, curve, p=0.5, tol=1e-8):
    """R's quantile.survfit: first time the curve is <= p; midpoint on an exactly flat p."""
    ok = np.isfinite(curve)
    hit = np.flatnonzero(ok & (curve <= p + tol))
    if hit.size == 0:
        return np.nan
    i = hit[0]
    if abs(curve[i] - p) < tol:
        later = np.flatnonzero(ok & (curve < p - tol))
        if later.size:
            return 0.5 * (times[i] + times[later[0]])
        return np.nan if i == times.size - 1 else times[i]
    return float(times[i])


@dataclass(frozen=True)
class KaplanMeierResult(ResultMixin):
    """Kaplan-Meier curves per group with Greenwood intervals.

    Attributes
    ----------
    table : DataFrame
        One row per group and distinct time: group, time, n_risk, n_event, n_censor,
        surv, se (standard error of S, as ``summary.survfit``), ci_low, ci_high.
    medians : DataFrame
        Per group: n, events, median, ci_low, ci_high (``quantile.survfit`` rules).
    conf_type : str
        ``"log"`` (R's default) or ``"log-log"`` (lifelines' default).
    """

    table: pd.DataFrame
    medians: pd.DataFrame
    conf_type: str
    conf_level: float
    duration: str
    group: str | None
    _title = "Kaplan-Meier estimate"

    def summary(self) -> pd.DataFrame:
        """Median survival per group with its confidence interval."""
        return self.medians.copy()

    def _header_lines(self) -> list[str]:
        return [f"Greenwood variance, {self.conf_level:.0%} intervals on the {self.conf_type} scale"]

    def survival_at(self, times: Sequence[float]) -> pd.DataFrame:
        """Curve values at ``times`` per group, as ``summary(survfit(...), times=)``.

        ``n_risk`` is the number still at risk at each time (duration >= time).
        """
        rows = []
        ts = np.asarray(times, float)
        for g, tab in self.table.groupby("group", sort=False):
            tt = tab["time"].to_numpy()
            idx = np.searchsorted(tt, ts, side="right") - 1
            nxt = np.searchsorted(tt, ts, side="left")
            for k, t in enumerate(ts):
                if idx[k] < 0:
                    vals = dict(surv=1.0, se=0.0, ci_low=1.0, ci_high=1.0)
                else:
                    vals = tab.iloc[idx[k]][["surv", "se", "ci_low", "ci_high"]].to_dict()
                n_risk = int(tab["n_risk"].iloc[nxt[k]]) if nxt[k] < len(tab) else 0
                rows.append({"group": g, "time": t, "n_risk": n_risk, **vals})
        return pd.DataFrame(rows)

    def plot(self, ax=None, **kwargs):
        """KM curves with a numbers-at-risk table (see :func:`analyses.plotting.km_plot`)."""
        from analyses.plotting import km_plot

        return km_plot(self, ax=ax, **kwargs)


def kaplan_meier(data: pd.DataFrame, duration: str, event: str, group: str | None = None,
                 conf_type: Literal["log", "log-log"] = "log", conf_level: float = 0.95,
                 missing: Literal["drop", "raise"] = "drop") -> KaplanMeierResult:
    """Kaplan-Meier survival curves with Greenwood confidence intervals.

    Parameters
    ----------
    data : DataFrame
        One row per subject; not modified.
    duration, event : str
        Follow-up time and event indicator (0/1, or R's 1/2 = censored/dead).
    group : str, optional
        Column defining the curves (one per level, in sorted order).
    conf_type : {"log", "log-log"}
        Scale of the pointwise interval: ``"log"`` is R's ``survfit`` default
        (exp(+/- z*se) on S); ``"log-log"`` is lifelines' default.

    Returns
    -------
    KaplanMeierResult

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"t": [1, 2, 2, 3, 4], "e": [1, 1, 0, 1, 0]})
    >>> kaplan_meier(d, "t", "e").table["surv"].round(3).tolist()
    [0.8, 0.6, 0.3, 0.3]
    """
    from scipy import stats

    who = "kaplan_meier"
    if conf_type not in ("log", "log-log"):
        raise ValueError(f"{who}: conf_type={conf_type!r}; expected 'log' (R) or 'log-log' (lifelines).")
    cols = [duration, event] + ([group] if group else [])
    d = complete_cases(data, cols, who, missing)
    t, e, _ = check_survival(d, duration, event, who)
    z = Z975 if conf_level == 0.95 else float(stats.norm.ppf(0.5 + conf_level / 2))
    keys = d[group].to_numpy() if group else np.zeros(len(d))
    levels = pd.unique(pd.Series(keys)).tolist()
    try:
        levels = sorted(levels)
    except TypeError:
        pass
    tabs, meds = [], []
    for g in levels:
        m = keys == g
        times, n, dd, c, s, gw = _km_curve(t[m], e[m])
        lo, hi = _ci(s, gw, conf_type, z)
        with np.errstate(invalid="ignore"):
            se = s * np.sqrt(gw)
        tabs.append(pd.DataFrame({"group": g, "time": times, "n_risk": n.astype(int),
                                  "n_event": dd.astype(int), "n_censor": c.astype(int), "surv": s,
                                  "se": se, "ci_low": lo, "ci_high": hi}))
        meds.append({"group": g, "n": int(m.sum()), "events": int(e[m].sum()),
                     "median": _quantile(times, s), "ci_low": _quantile(times, lo),
                     "ci_high": _quantile(times, hi)})
    return KaplanMeierResult(table=pd.concat(tabs, ignore_index=True),
                             medians=pd.DataFrame(meds).set_index("group"), conf_type=conf_type,
                             conf_level=conf_level, duration=duration, group=group)


# ---------------------------------------------------------------- log-rank

@dataclass(frozen=True)
class LogRankResult(ResultMixin):
    """A k-sample G-rho test (rho = 0 log-rank, rho > 0 Fleming-Harrington, R's ``survdiff``).

    ``table`` has per group: n, observed, expected (weighted when rho != 0, as R),
    (O-E)^2/E and (O-E)^2/V.
    """

    table: pd.DataFrame
    chisq: float
    df: int
    p: float
    rho: float
    test: str
    _title = "Log-rank test"

    def summary(self) -> pd.DataFrame:
        """Per-group observed and expected counts."""
        return self.table.copy()

    def _header_lines(self) -> list[str]:
        return [f"{self.test}: chisq = {self.chisq:.4g} on {self.df} df, p = {self.p:.4g}"]

    def plot(self, ax=None, **kwargs):
        """Observed versus expected events per group (see :func:`analyses.plotting.observed_expected_plot`)."""
        from analyses.plotting import observed_expected_plot

        return observed_expected_plot(self, ax=ax, **kwargs)


def logrank(data: pd.DataFrame, duration: str, event: str, group: str, rho: float = 0.0,
            missing: Literal["drop", "raise"] = "drop") -> LogRankResult:
    """Compare survival curves with the G-rho family of tests (R's ``survdiff``).

    Weights are S(t-)^rho with S the pooled Kaplan-Meier curve: ``rho=0`` is the
    log-rank test, ``rho=1`` the Peto-Peto modification of the Gehan-Wilcoxon test,
    other values Fleming-Harrington G-rho.

    Returns
    -------
    LogRankResult
    """
    from scipy import stats

    who = "logrank"
    d = complete_cases(data, [duration, event, group], who, missing)
    t, e, _ = check_survival(d, duration, event, who)
    levels, gi = np.unique(d[group].to_numpy(), return_inverse=True)
    k = levels.size
    if k < 2:
        raise ColumnContractError(f"{who}: group column {group!r} has a single level "
                                  f"{levels.tolist()!r}; a test needs at least two groups.")
    times = np.unique(t[e == 1])
    m = times.size
    # at risk per (time, group): number with t >= time
    nr = np.empty((m, k))
    for j in range(k):
        tj = np.sort(t[gi == j])
        nr[:, j] = tj.size - np.searchsorted(tj, times, side="left")
    dk = np.zeros((m, k))
    ev = e == 1
    np.add.at(dk, (np.searchsorted(times, t[ev]), gi[ev]), 1.0)
    n = nr.sum(1)
    dt = dk.sum(1)
    s_left = np.concatenate([[1.0], np.cumprod(1 - dt / n)[:-1]])
    w = s_left ** rho if rho else np.ones(m)
    obs = (w[:, None] * dk).sum(0)
    exp_ = (w[:, None] * dt[:, None] * nr / n[:, None]).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fac = np.where(n > 1, w ** 2 * dt * (n - dt) / (n - 1), 0.0) / n ** 2
    V = np.einsum("t,tk,tl->kl", -fac, nr, nr)
    V[np.diag_indices(k)] += (fac * n * nr.T).sum(1)
    diff = (obs - exp_)[1:]
    vv = V[1:, 1:]
    chisq = float(diff @ np.linalg.pinv(vv) @ diff)
    df = int(np.sum(exp_ > 0) - 1)
    p = float(stats.chi2.sf(chisq, df))
    with np.errstate(divide="ignore", invalid="ignore"):
        tab = pd.DataFrame({"n": np.bincount(gi, minlength=k), "observed": obs, "expected": exp_,
                            "oe2_e": (obs - exp_) ** 2 / exp_,
                            "oe2_v": (obs - exp_) ** 2 / np.diag(V)},
                           index=pd.Index(levels, name=group))
    name = "log-rank" if rho == 0 else f"Fleming-Harrington G-rho (rho = {rho:g})"
    return LogRankResult(table=tab, chisq=chisq, df=df, p=p, rho=float(rho), test=name)
