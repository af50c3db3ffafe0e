"""Cox proportional-hazards models and the survival >= 3.0 PH score test, agreeing with R.

Our own vectorised Newton-Raphson on the partial likelihood (Efron or Breslow ties,
right-censored or counting-process ``(start, stop]`` data with R's semantics: a row
is at risk at time t when start < t <= stop), converged to the MLE far beyond R's
``eps = 1e-9``, so coefficients agree with ``coxph`` to its printed digits.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from analyses._common import wald_table
from analyses._formula import complete_cases, design, drop_aliased
from analyses.survival import check_survival
from normfuse.errors import ColumnContractError, ConvergenceWarning
from normfuse.results import ResultMixin

__all__ = ["CoxResult", "PHTestResult", "fit_cox", "ph_test"]


class _CoxData:
    """Sorted arrays and event bookkeeping for one stratum."""

    def __init__(self, X, stop, event, start):
        self.X, self.stop, self.event = X, stop, event
        self.start = start
        ev = np.flatnonzero(event == 1)
        # event times and the tie structure of deaths
        self.times, gid = np.unique(stop[ev], return_inverse=True)
        self.death = ev
        self.gid = gid
        self.ndeath = np.bincount(gid, minlength=self.times.size).astype(float)
        order = np.argsort(gid, kind="stable")
        pos = np.empty(ev.size, int)
        pos[order] = np.arange(ev.size)
        first = np.concatenate([[0], np.cumsum(self.ndeath)[:-1]]).astype(int)
        self.l = pos - first[gid]                      # 0..d-1 within the tie group
        self.dorder, self.dstart = order, first         # deaths grouped by event time
        self.o_stop = np.argsort(stop, kind="stable")
        self.stop_sorted = stop[self.o_stop]
        self.idx_stop = np.searchsorted(self.stop_sorted, self.times, side="left")
        if start is not None:
            self.o_start = np.argsort(start, kind="stable")
            self.idx_start = np.searchsorted(start[self.o_start], self.times, side="left")


def _revcum(a, order, idx):
    """sum over rows (in ``order``) from position idx to the end, for each idx."""
    c = np.cumsum(a[order][::-1], axis=0)[::-1]
    c = np.concatenate([c, np.zeros((1,) + a.shape[1:])], axis=0)
    return c[idx]


def _pieces(cd: _CoxData, beta, efron: bool, need_info: bool = True):
    """Per-death loglik terms, centred covariate means and (optionally) variances."""
    X = cd.X
    eta = X @ beta
    r = np.exp(eta)
    rx = r[:, None] * X
    S0 = _revcum(r, cd.o_stop, cd.idx_stop)
    S1 = _revcum(rx, cd.o_stop, cd.idx_stop)
    if need_info:
        rxx = rx[:, :, None] * X[:, None, :]
        S2 = _revcum(rxx, cd.o_stop, cd.idx_stop)
    if cd.start is not None:
        S0 = S0 - _revcum(r, cd.o_start, cd.idx_start)
        S1 = S1 - _revcum(rx, cd.o_start, cd.idx_start)
        if need_info:
            S2 = S2 - _revcum(rxx, cd.o_start, cd.idx_start)
    g, dth = cd.gid, cd.death
    m = cd.times.size
    f = cd.l / cd.ndeath[g] if efron else np.zeros(dth.size)
    D0 = np.bincount(g, weights=r[dth], minlength=m)
    dsorted = dth[cd.dorder]
    D1 = np.add.reduceat(rx[dsorted], cd.dstart, axis=0)
    den = S0[g] - f * D0[g]
    M1 = (S1[g] - f[:, None] * D1[g]) / den[:, None]
    ll = float(np.sum(eta[dth] - np.log(den)))
    V = None
    if need_info:
        D2 = np.add.reduceat(rxx[dsorted], cd.dstart, axis=0)
        V = (S2[g] - f[:, None, None] * D2[g]) / den[:, None, None] - M1[:, :, None] * M1[:, None, :]
    return ll, M1, V


def _loglik_grad_info(cds, beta, efron):
    ll, U, info = 0.0, 0.0, 0.0
    for cd in cds:
        ll_s, M1, V = _pieces(cd, beta, efron)
        ll += ll_s
        U = U + (cd.X[cd.death] - M1).sum(0)
        info = info + V.sum(0)
    return ll, U, info


def _newton(cds, p, efron, maxiter=50, tol=1e-13):
    beta = np.zeros(p)
    ll, U, info = _loglik_grad_info(cds, beta, efron)
    ll0, U0, info0 = ll, U, info
    converged = False
    it = 0
    while it < maxiter:
        it += 1
        try:
            step = np.linalg.solve(info, U)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(info, U, rcond=None)[0]
        half = 0
        while True:
            nb = beta + step
            nll, nU, nI = _loglik_grad_info(cds, nb, efron)
            if np.isfinite(nll) and nll >= ll - 1e-12 * abs(ll) or half > 30:
                break
            step = step / 2
            half += 1
        done = abs(nll - ll) <= tol * max(1.0, abs(ll)) and np.max(np.abs(step)) < 1e-9
        beta, ll, U, info = nb, nll, nU, nI
        if done:
            converged = True
            break
    return beta, ll, U, info, ll0, U0, info0, converged, it


def _concordance_slow(t, e, risk, chunk=2048):
    """Harrell's C by direct pair comparison, O(n^2) (reference for :func:`_concordance`)."""
    ev = np.flatnonzero(e == 1)
    conc = disc = tie = 0.0
    for s in range(0, ev.size, chunk):
        i = ev[s:s + chunk]
        ti, ri = t[i][:, None], risk[i][:, None]
        comp = (t[None, :] > ti) | ((t[None, :] == ti) & (e[None, :] == 0))
        conc += np.sum(comp & (ri > risk[None, :]))
        disc += np.sum(comp & (ri < risk[None, :]))
        tie += np.sum(comp & (ri == risk[None, :]))
    tot = conc + disc + tie
    return float((conc + 0.5 * tie) / tot) if tot else np.nan


def _count_before(v: np.ndarray, strict: bool) -> np.ndarray:
    """For each position i: #{j < i : v_j < v_i} (``strict``) or <= v_i; v non-negative ints.

    Bottom-up merge counting, vectorised per level: at block width w, every element in
    the right half of a 2w-block counts the smaller elements of its left half with one
    global ``searchsorted`` on keys block * U + v. O(n log^2 n), no Python loop over rows.
    """
    n = v.size
    out = np.zeros(n, dtype=np.int64)
    U = int(v.max()) + 2 if n else 1
    idx = np.arange(n)
    w = 1
    side = "left" if strict else "right"
    while w < n:
        blk = idx // (2 * w)
        right = (idx % (2 * w)) >= w
        left_keys = np.sort(blk[~right] * U + v[~right])
        q_blk = blk[right] * U
        out[right] += (np.searchsorted(left_keys, q_blk + v[right], side=side)
                       - np.searchsorted(left_keys, q_blk, side="left"))
        w *= 2
    return out


def _concordance(t, e, risk):
    """Harrell's C as R's ``concordance``: pairs ordered by time, risk ties count 1/2.

    A pair (i, j) is comparable when i has the event and T_j > T_i, or T_j == T_i and j
    is censored; concordant when r_i > r_j. Counted in O(n log^2 n) without pairs.
    """
    o = np.lexsort((np.arange(t.size), -t))            # time descending, stable
    T, E = t[o], e[o]
    _, v = np.unique(risk[o], return_inverse=True)
    v = v.astype(np.int64)
    _, g = np.unique(-T, return_inverse=True)          # tie group, 0 = largest time
    g = g.astype(np.int64)
    start = np.searchsorted(g, g, side="left")         # number with strictly larger time
    U = int(v.max()) + 2
    key = g * U + v
    lt = _count_before(v, True) - (_count_before(key, True) - start)
    le = _count_before(v, False) - (_count_before(key, False) - start)
    ck = np.sort(key[E == 0])                          # censored, same time
    base = np.searchsorted(ck, g * U, side="left")
    c_lt = np.searchsorted(ck, key, side="left") - base
    c_le = np.searchsorted(ck, key, side="right") - base
    c_n = np.searchsorted(ck, (g + 1) * U, side="left") - base
    ev = E == 1
    conc = np.sum((lt + c_lt)[ev])
    tie = np.sum((le - lt + c_le - c_lt)[ev])
    tot = np.sum((start + c_n)[ev])
    return float((conc + 0.5 * tie) / tot) if tot else np.nan


@dataclass(frozen=True)
class CoxResult(ResultMixin):
    """A fitted Cox model.

    Attributes
    ----------
    params : DataFrame
        Per term: coef, se, z, p, ci_low, ci_high, hr, hr_ci_low, hr_ci_high.
    loglik : tuple
        Log partial likelihood at beta = 0 and at the estimate (R's ``fit$loglik``).
    lr_test, wald_test, score_test : float
        Global chi-square statistics (``summary(coxph)``) on ``df`` degrees of freedom.
    concordance : float
        Harrell's C (NaN for counting-process data).
    """

    params: pd.DataFrame
    formula: str
    ties: str
    loglik: tuple[float, float]
    lr_test: float
    wald_test: float
    score_test: float
    df: int
    concordance: float
    n_obs: int
    n_events: int
    converged: bool
    iterations: int
    vcov: np.ndarray = field(repr=False)
    _fit: dict = field(repr=False, default_factory=dict)
    _title = "Cox proportional hazards model"

    def summary(self) -> pd.DataFrame:
        """The coefficient table with hazard ratios (numbers only)."""
        return self.params.copy()

    def _header_lines(self) -> list[str]:
        return [f"{self.formula}; n = {self.n_obs}, events = {self.n_events}; ties = {self.ties}",
                f"concordance {self.concordance:.3f}; LR {self.lr_test:.2f}, Wald "
                f"{self.wald_test:.2f}, score {self.score_test:.2f} on {self.df} df"]

    def tests(self) -> pd.DataFrame:
        """Likelihood-ratio, Wald and score tests with p-values."""
        from scipy import stats

        v = [self.lr_test, self.wald_test, self.score_test]
        return pd.DataFrame({"chisq": v, "df": self.df, "p": stats.chi2.sf(v, self.df)},
                            index=["likelihood_ratio", "wald", "score"])

    def plot(self, ax=None, **kwargs):
        """Forest plot of hazard ratios (see :func:`analyses.plotting.forest_plot`)."""
        from analyses.plotting import forest_plot

        return forest_plot(self, ax=ax, **kwargs)


def fit_cox(formula_or_columns: str | Sequence[str], data: pd.DataFrame, duration: str, event: str,
            ties: Literal["efron", "breslow"] = "efron", start: str | None = None,
            strata: str | None = None, id: str | None = None,
            missing: Literal["drop", "raise"] = "drop", maxiter: int = 50) -> CoxResult:
    """Fit a Cox proportional-hazards model (R's ``coxph``).

    Parameters
    ----------
    formula_or_columns : str or list of str
        Right-hand side ``"age + sex"`` (or ``"~ age + C(group)"``), or column names.
    data : DataFrame
        One row per subject, or per interval for time-varying covariates; not modified.
    duration, event : str
        Time (the interval's stop in counting-process form) and 0/1 event (R's 1/2
        coding is recoded).
    ties : {"efron", "breslow"}
        Tie handling; Efron is R's default.
    start : str, optional
        Interval start for counting-process data ``Surv(start, stop, event)``: a row is
        at risk at t when start < t <= stop. ``stop <= start`` raises.
    strata : str, optional
        Column whose levels get separate baseline hazards (``strata()`` in R).
    id : str, optional
        Subject column for counting-process data: overlapping intervals of one subject
        raise, as do intervals after a subject's event.

    Returns
    -------
    CoxResult

    Raises
    ------
    ColumnContractError
        Covariates that are numbers stored as text, +-inf in any column of the model
        (naming column, row and value), bad survival columns, no events.
    """
    who = "fit_cox"
    if ties not in ("efron", "breslow"):
        raise ValueError(f"{who}: ties={ties!r}; expected 'efron' (R's default) or 'breslow'.")
    rhs = (formula_or_columns.split("~", 1)[-1] if isinstance(formula_or_columns, str)
           else " + ".join(f'Q("{c}")' for c in formula_or_columns))
    extra = [c for c in (duration, event, start, strata, id) if c]
    # the response is a dummy so that the formula helper finds a left-hand side
    d0 = complete_cases(data, [c for c in extra if c != id], who, missing)
    tmp = d0.assign(__surv__=0.0)
    _, X, d = design(f"__surv__ ~ {rhs}", tmp, who, missing, extra=extra)
    X = X.drop(columns=[c for c in X.columns if c == "Intercept"])
    if X.shape[1] == 0:
        raise ValueError(f"{who}: no covariates in {formula_or_columns!r}.")
    X, _ = drop_aliased(X, who)
    t, e, st = check_survival(d, duration, event, who, start)
    if id is not None and start is not None:
        _check_intervals(d, id, st, t, e, who)
    if e.sum() == 0:
        raise ColumnContractError(f"{who}: no events in {event!r}; a Cox model needs events.")
    A = X.to_numpy(float)
    center = A.mean(0)
    Ac = A - center                                   # R centres covariates too
    keys = d[strata].to_numpy() if strata else np.zeros(len(d))
    cds = [_CoxData(Ac[keys == k], t[keys == k], e[keys == k], None if st is None else st[keys == k])
           for k in pd.unique(pd.Series(keys))]
    efron = ties == "efron"
    beta, ll, U, info, ll0, U0, info0, conv, it = _newton(cds, A.shape[1], efron, maxiter)
    if not conv or np.max(np.abs(beta)) > 20:
        warnings.warn(f"{who}: the partial likelihood did not converge in {it} iterations or a "
                      f"coefficient is infinite (|beta| = {np.max(np.abs(beta)):.3g}); this is "
                      "usually monotone likelihood (separation: a covariate level with no events). "
                      "Remove or merge that level.", ConvergenceWarning, stacklevel=2)
    try:
        vcov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        vcov = np.linalg.pinv(info)
    se = np.sqrt(np.diag(vcov))
    params = wald_table(X.columns, beta, se, exp="hr")
    score = float(U0 @ np.linalg.lstsq(info0, U0, rcond=None)[0])
    conc = np.nan
    if st is None:
        conc = _concordance(t, e, Ac @ beta)
    return CoxResult(
        params=params, formula=f"Surv({duration}, {event}) ~ {rhs.strip()}", ties=ties,
        loglik=(ll0, ll), lr_test=2 * (ll - ll0), wald_test=float(beta @ info @ beta),
        score_test=score, df=A.shape[1], concordance=conc, n_obs=len(d), n_events=int(e.sum()),
        converged=conv, iterations=it, vcov=vcov,
        _fit={"cds": cds, "beta": beta, "efron": efron, "t": t, "e": e, "start": st,
              "names": list(X.columns)})


def _check_intervals(d, id, st, t, e, who):
    order = np.lexsort((st, d[id].to_numpy()))
    ids = d[id].to_numpy()[order]
    same = ids[1:] == ids[:-1]
    overlap = same & (st[order][1:] < t[order][:-1])
    if overlap.any():
        k = int(np.flatnonzero(overlap)[0])
        raise ColumnContractError(
            f"{who}: subject {ids[k]!r} has overlapping intervals (row {d.index[order[k + 1]]!r} "
            f"starts at {st[order][k + 1]!r} before the previous interval ends at "
            f"{t[order][k]!r}). Split follow-up into disjoint (start, stop] pieces.")
    after = same & (e[order][:-1] == 1)
    if after.any():
        k = int(np.flatnonzero(after)[0])
        raise ColumnContractError(
            f"{who}: subject {ids[k]!r} has follow-up after its event (row "
            f"{d.index[order[k + 1]]!r}); for a time-to-first-event model the event must be on "
            "the subject's last interval. Drop the later rows.")


@dataclass(frozen=True)
class PHTestResult(ResultMixin):
    """Score test of proportional hazards (``cox.zph``, survival >= 3.0).

    ``table`` has per term and ``GLOBAL``: chisq, df, p. ``test`` names the test.
    """

    table: pd.DataFrame
    transform: str
    test: str
    _title = "Proportional-hazards test"

    def summary(self) -> pd.DataFrame:
        """chisq, df, p per term and globally."""
        return self.table.copy()

    def _header_lines(self) -> list[str]:
        return [self.test]

    def plot(self, ax=None, **kwargs):
        """Chi-square per term with the 5 % critical value (see :func:`analyses.plotting.chisq_plot`)."""
        from analyses.plotting import chisq_plot

        return chisq_plot(self, ax=ax, **kwargs)


def ph_test(cox: CoxResult, transform: Literal["km", "rank", "identity", "log"] = "km") -> PHTestResult:
    """Test proportional hazards with the score test of R's ``cox.zph`` (survival >= 3.0).

    For each term the model is extended with beta_j(t) = beta_j + theta_j * g(t), g the
    time transform (``"km"``: 1 - KM(t-), R's default), and the score test of
    theta_j = 0 is computed at the fitted beta (other thetas fixed at 0); ``GLOBAL``
    tests all thetas. This is the exact score test of survival 3.0, not the
    older Grambsch-Therneau approximation that lifelines' ``proportional_hazard_test``
    and survival < 3.0 use (their numbers differ).
    """
    from scipy import stats

    f = cox._fit
    if not f:
        raise ValueError("ph_test: the CoxResult carries no fit data; refit with fit_cox.")
    if transform not in ("km", "rank", "identity", "log"):
        raise ValueError(f"ph_test: transform={transform!r}; expected 'km', 'rank', 'identity' or 'log'.")
    t_all, e_all, st_all = f["t"], f["e"], f["start"]
    p = f["beta"].size
    # g(t) evaluated at each death time
    if transform == "km":
        if st_all is None:
            times, n, dd, c, s, _ = _km(t_all, e_all)
        else:
            times, s = _km_cp(st_all, t_all, e_all)
        def g(tt):
            i = np.searchsorted(times, tt, side="left")      # times strictly below tt
            return 1.0 - np.concatenate([[1.0], s])[i]
    elif transform == "rank":
        from scipy.stats import rankdata

        deaths = t_all[e_all == 1]
        u, inv = np.unique(deaths, return_inverse=True)
        avg = np.bincount(inv, rankdata(deaths)) / np.bincount(inv)   # R: rank(times), ties averaged

        def g(tt):
            return avg[np.searchsorted(u, tt)]
    elif transform == "log":
        g = np.log
    else:
        def g(tt):
            return tt
    U = np.zeros(2 * p)
    Imat = np.zeros((2 * p, 2 * p))
    for cd in f["cds"]:
        _, M1, V = _pieces(cd, f["beta"], f["efron"])
        gt = g(cd.stop[cd.death])
        resid = cd.X[cd.death] - M1
        U[:p] += resid.sum(0)
        U[p:] += (gt[:, None] * resid).sum(0)
        Imat[:p, :p] += V.sum(0)
        Imat[:p, p:] += np.einsum("i,ijk->jk", gt, V)
        Imat[p:, p:] += np.einsum("i,ijk->jk", gt ** 2, V)
    Imat[p:, :p] = Imat[:p, p:].T
    rows = []
    for j in range(p):
        jj = np.r_[np.arange(p), p + j]
        u = U[jj]
        rows.append(float(u @ np.linalg.solve(Imat[np.ix_(jj, jj)], u)))
    rows.append(float(U @ np.linalg.solve(Imat, U)))
    df = np.r_[np.ones(p), p]
    tab = pd.DataFrame({"chisq": rows, "df": df, "p": stats.chi2.sf(rows, df)},
                       index=pd.Index(f["names"] + ["GLOBAL"], name="term"))
    name = (f"score test of beta(t) = beta + theta * g(t), g = {transform} transform "
            "(R survival >= 3.0 cox.zph)")
    return PHTestResult(table=tab, transform=transform, test=name)


def _km(t, e):
    from analyses.survival import _km_curve

    return _km_curve(t, e)


def _km_cp(st, t, e):
    times = np.unique(t[e == 1])
    ss, tt = np.sort(st), np.sort(t)
    n = (tt.size - np.searchsorted(tt, times, side="left")) - (ss.size - np.searchsorted(ss, times, side="left"))
    d = np.bincount(np.searchsorted(times, t[e == 1]), minlength=times.size)
    return times, np.cumprod(1 - d / n)
